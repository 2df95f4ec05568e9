"""`hf-maxsup compare` end to end on the image recipe (tiny settings), resuming it, and `hf-maxsup analyze`."""

import contextlib
import io
import json
import os
import shutil
import sys

import pytest
from _runs import tiny_training_args

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from hf_maxsup import cli
from hf_maxsup.report.classification import REPORT_FILES
from hf_maxsup.report.runs import MEMBER_FILE
from hf_maxsup.studies.compare import check_reportable
from hf_maxsup.studies.members import Member, check_same_settings, is_finished

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "image_classification.py")
# A few optimizer steps on a few images: the point is the plumbing, not the numbers.
RECIPE_ARGS = tiny_training_args(32, 32)
REPORT_ARGS = ["--max_analysis_samples", "64", "--probe_samples", "100"]


def run_cli(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    report = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--recipe", RECIPE, "--output_dir", str(report), "--seeds", "0", *REPORT_ARGS, *RECIPE_ARGS]
    code, log = run_cli(argv)
    assert code == 0, log
    return report, argv, log


def test_compare_writes_the_report(compared):
    report, _, log = compared
    for i, loss in enumerate(("ce", "ls", "maxsup"), 1):
        assert f"member {i}/3 ({loss} seed 0): training into" in log
        assert is_finished(str(report / "runs" / f"{loss}-seed0"))
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert (
        "| loss | runs | accuracy (%) | NLL | ECE (%) | adaptive ECE (%) | AURC (%) | d_within | R² | "
        "mean confidence on errors | linear probe (digits) (%) |" in text
    )
    for loss in ("ce", "ls", "maxsup"):
        assert f"| {loss} | 1 |" in text
    assert "![reliability diagrams](reliability_diagrams.png)" in text
    results = json.loads((report / "results.json").read_text())
    assert [(run["label"], run["seed"]) for run in results["runs"]] == [("ce", 0), ("ls", 0), ("maxsup", 0)]
    assert all(run["num_examples"] == 64 and run["split"] == "test" for run in results["runs"])
    for run in results["runs"]:
        assert 0 <= run["metrics"]["accuracy"] <= 1 and run["metrics"]["d_within"] > 0
        assert 0 <= run["metrics"]["linear_probe_digits"] <= 1
    assert results["recipe_args"] == RECIPE_ARGS and results["seeds"] == [0]


def test_compare_resumes_without_retraining_finished_members(compared):
    report, argv, _ = compared
    runs = report / "runs"
    finished = {loss: (runs / f"{loss}-seed0" / "model.safetensors").stat().st_mtime_ns for loss in ("ce", "ls")}
    # maxsup was "killed" after its checkpoint was written and before the final save.
    interrupted = runs / "maxsup-seed0"
    (interrupted / "model.safetensors").unlink()
    (interrupted / "eval_results.json").unlink()
    assert not is_finished(str(interrupted)) and (interrupted / "checkpoint-2").is_dir()

    code, log = run_cli(argv)
    assert code == 0, log
    assert "member 1/3 (ce seed 0): finished earlier, skipped" in log
    assert "member 2/3 (ls seed 0): finished earlier, skipped" in log
    assert f"member 3/3 (maxsup seed 0): resuming from {interrupted / 'checkpoint-2'}" in log
    assert "--resume_from_checkpoint last" in log
    for loss, mtime in finished.items():
        assert (runs / f"{loss}-seed0" / "model.safetensors").stat().st_mtime_ns == mtime
    assert is_finished(str(interrupted))
    # Resumed at its last step: no step was trained twice.
    assert json.loads((interrupted / "trainer_state.json").read_text())["global_step"] == 2


def test_analyze_saved_checkpoints(compared, tmp_path):
    report, _, _ = compared
    runs = report / "runs"
    # A copy without our member file: its label comes from the model card; the checkpoint-* folder of ce is
    # labelled from its run folder, so "ce" holds two runs.
    card_only = tmp_path / "ls-copy"
    shutil.copytree(runs / "ls-seed0", card_only, ignore=shutil.ignore_patterns("checkpoint-*", MEMBER_FILE))
    out = tmp_path / "analysis"
    code, log = run_cli(
        [
            "analyze",
            str(runs / "ce-seed0"),
            str(card_only),
            str(runs / "ce-seed0" / "checkpoint-2"),
            "--output_dir",
            str(out),
            *REPORT_ARGS,
        ]
    )
    assert code == 0, log
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in results["runs"]] == ["ce", "ls", "ce"]
    assert results["summary"]["ce"]["accuracy"]["n"] == 2
    # The final model and its last checkpoint hold the same weights (one epoch, saved at its end).
    first, _, checkpoint = results["runs"]
    assert first["metrics"]["nll"] == pytest.approx(checkpoint["metrics"]["nll"])
    text = (out / "report.md").read_text()
    assert "| ce | 2 |" in text and "±" in text


def test_compare_rejects_flags_it_sets_itself(tmp_path):
    for flag in ("--loss", "--seed", "--resume_from_checkpoint"):
        code = cli.main(["compare", "--recipe", RECIPE, "--output_dir", str(tmp_path), flag, "1"])
        assert code == 1
    assert not (tmp_path / "runs").exists()


def test_member_trained_with_other_arguments_is_not_reused(tmp_path):
    member = Member("ce", 0, str(tmp_path / "ce-seed0"))
    check_same_settings(member, RECIPE, ["--num_train_epochs", "1"])
    check_same_settings(member, RECIPE, ["--num_train_epochs", "1"])  # same arguments: fine
    with pytest.raises(ValueError, match="other arguments"):
        check_same_settings(member, RECIPE, ["--num_train_epochs", "2"])


def test_recipe_compare_flag(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    assert (
        cli.compare_from_recipe(
            "recipes/image_classification.py", ["--compare", "--seeds", "0", "1", "--num_train_epochs", "1"]
        )
        == 0
    )
    assert seen == [
        [
            "compare",
            "--recipe",
            os.path.abspath("recipes/image_classification.py"),
            "--seeds",
            "0",
            "1",
            "--num_train_epochs",
            "1",
        ]
    ]


def test_models_the_report_cannot_analyse_stop_the_comparison_early(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ConvNextForImageClassification"]}))
    check_reportable(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MarianMTModel"]}))
    check_reportable(str(tmp_path))  # translation models have their own report
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="image and text classifiers and translation"):
        check_reportable(str(tmp_path))


def test_device_reaches_the_model(compared, tmp_path, monkeypatch):
    import hf_maxsup.report.measures as measures

    seen = []
    collect_features = measures.collect_features

    def spy(model, dataloader, device=None, **kwargs):
        seen.append((str(device), {str(parameter.device) for parameter in model.parameters()}))
        return collect_features(model, dataloader, device=device, **kwargs)

    monkeypatch.setattr(measures, "collect_features", spy)
    report, _, _ = compared
    out = tmp_path / "analysis"
    argv = ["analyze", str(report / "runs" / "ce-seed0"), "--output_dir", str(out), "--device", "cpu"]
    code, log = run_cli([*argv, "--max_analysis_samples", "16", "--no_probe", "--train_samples", "0"])
    assert code == 0, log
    assert seen and all(device == "cpu" and parameters == {"cpu"} for device, parameters in seen)


def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, capsys):
    import torch

    from hf_maxsup.report import resolve_device

    assert resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu") and resolve_device("cpu") == "cpu"
    for device, message in (("gpu", "--device gpu: not a device"), ("cuda:99", "--device cuda:99: this machine has")):
        code = cli.main(
            ["compare", "--recipe", RECIPE, "--output_dir", str(tmp_path), "--device", device, *RECIPE_ARGS]
        )
        assert code == 1 and message in capsys.readouterr().err
        assert cli.main(["analyze", "org/model", "--output_dir", str(tmp_path / "a"), "--device", device]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "a").exists()


def test_the_report_flags_are_the_fields_of_its_options():
    from dataclasses import fields

    from hf_maxsup.report import DataOptions

    args = cli.build_parser().parse_args(
        ["analyze", "x", "--output_dir", "o", "--train_dir", "d", "--max_analysis_samples", "3", "--no_probe"]
    )
    assert {spec.name for spec in fields(DataOptions)} <= set(vars(args))
    assert (args.train_dir, args.max_samples, args.probe, args.batch_size) == ("d", 3, False, None)


def test_run_recipe_runs_main_and_ends_the_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(sys, "argv", ["recipe.py", "--output_dir", str(tmp_path)])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ran = []
    try:
        cli.run_recipe(lambda: ran.append(dist.is_initialized()), "recipe.py")
        assert ran == [True] and not dist.is_initialized()  # main ran inside the group; the group is gone after
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
