"""Runs that lose nothing (issue 11): every mistake a user can make ends in a clear error before any work, and a crash
or a failed push loses nothing on disk. Each test names the item of the issue it checks; docs/reliability.md lists
them all."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from _hub import FakeHub, make_trainer
from _runs import RECIPES, TINY, run_recipe
from _tiny import collate, tiny_bert, tiny_dataset
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments, cli
from hf_maxsup.hub import HubPushError
from hf_maxsup.runner import last_complete_checkpoint
from hf_maxsup.studies.members import Member, check_same_settings, train_members

IMAGE = "image_classification"


def image_folder(root, classes=("circle", "square"), n=12):
    from PIL import Image

    for c, label in enumerate(classes):
        os.makedirs(root / label, exist_ok=True)
        for i in range(n):
            Image.new("L", (28, 28), color=(20 * i + 90 * c) % 256).save(root / label / f"{i}.png")
    return root


def image_args(tmp_path, out, *extra, classes=("circle", "square")):
    folder = tmp_path / ("images-" + "-".join(classes))
    if not folder.exists():
        image_folder(folder, classes)
    return [
        "--train_dir",
        str(folder),
        "--output_dir",
        str(out),
        "--do_train",
        *TINY,
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        *extra,
    ]


def text_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def text_args(train, out, *extra):
    return ["--train_file", str(train), "--output_dir", str(out), "--do_train", *TINY, *extra]


GOOD_ROWS = [f"{'good' if i % 2 else 'bad'} movie {i},{['neg', 'pos'][i % 2]}" for i in range(20)]


# Item 1: a finished run is not overwritten.
def test_refuses_to_train_over_a_finished_run(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_args(tmp_path, out))
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(
        ValueError, match=r"holds an earlier run.*--resume_from_checkpoint last.*--overwrite_output_dir"
    ):
        run_recipe(IMAGE, *image_args(tmp_path, out, "--seed", "1"))
    assert (out / "model.safetensors").read_bytes() == weights
    run_recipe(IMAGE, *image_args(tmp_path, out, "--seed", "1", "--save_strategy", "no", "--overwrite_output_dir"))
    assert (out / "model.safetensors").read_bytes() != weights
    assert not list(out.glob("checkpoint-*"))  # the old run's checkpoints would be taken for this run's


# Item 2: two runs into one output_dir.
def test_second_run_into_a_locked_output_dir_fails_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from hf_maxsup.runner.output_dir import lock_output_dir
        lock_output_dir({str(out)!r}); print("locked", flush=True); time.sleep(120)"""),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by process {holder.pid} on .*another --output_dir"):
            run_recipe(IMAGE, *image_args(tmp_path, out))
        assert not (out / "model.safetensors").exists()
    finally:
        holder.kill()  # the kernel releases a killed process's flock: no stale lock
        holder.wait()
    run_recipe(IMAGE, *image_args(tmp_path, out))
    assert (out / "model.safetensors").exists()


# Item 3: a crash during a save does not block resuming.
def checkpoint_files(folder, names):
    """The files `names` of a checkpoint, readable as the Trainer writes them (a state, weights, a config)."""
    os.makedirs(folder, exist_ok=True)
    for name in names:
        if name == "model.safetensors":
            save_file({"weight": torch.zeros(2)}, folder / name)
        else:
            (folder / name).write_text(json.dumps({"global_step": 1} if name == "trainer_state.json" else {}))


def test_last_complete_checkpoint_skips_incomplete_ones(tmp_path):
    for step, files in (
        (2, ["model.safetensors", "trainer_state.json"]),
        (3, ["model.safetensors"]),
        (4, ["config.json"]),
        (10, ["trainer_state.json"]),
    ):
        checkpoint_files(tmp_path / f"checkpoint-{step}", files)
    skipped = []
    assert last_complete_checkpoint(str(tmp_path), log=skipped.append) == str(tmp_path / "checkpoint-2")
    assert [message.split(":")[0] for message in skipped] == [
        f"skipping {tmp_path / f'checkpoint-{step}'}" for step in (10, 4, 3)
    ]
    assert "no model weights" in skipped[0] and "no trainer_state.json" in skipped[2]


KILL_DURING_SAVE = """
import os, runpy, signal, sys
from transformers import Trainer

save_rng_state = Trainer._save_rng_state  # after the weights and the optimizer, before trainer_state.json

def save_then_die(self, output_dir):
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)

Trainer._save_rng_state = save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_kill_during_a_checkpoint_save_then_resume_last_gives_the_uninterrupted_result(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    # No augmentation: the Trainer skips the resumed epoch's first batches through the data loader, whose transform
    # draws from `random` after the checkpoint's RNG state is restored, so augmented runs differ after a mid-epoch
    # resume.
    fixed = ["--augment", "false"]
    script = tmp_path / "kill_during_save.py"
    script.write_text(KILL_DURING_SAVE)
    result = subprocess.run(
        [sys.executable, str(script), RECIPES[IMAGE], *image_args(tmp_path, killed, *fixed)],
        env={**os.environ, "KILL_AT_STEP": "3", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert (killed / "checkpoint-3" / "model.safetensors").exists()
    assert not (killed / "checkpoint-3" / "trainer_state.json").exists()

    run_recipe(IMAGE, *image_args(tmp_path, killed, *fixed, "--resume_from_checkpoint", "last"))
    run_recipe(IMAGE, *image_args(tmp_path, reference, *fixed))
    resumed, uninterrupted = load_file(killed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (
        json.load(open(killed / "trainer_state.json"))["global_step"]
        == json.load(open(reference / "trainer_state.json"))["global_step"]
    )


def test_resume_of_an_incomplete_checkpoint_folder_names_it(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out / "checkpoint-5")
    (out / "checkpoint-5" / "config.json").write_text("{}")
    with pytest.raises(
        ValueError,
        match=r"checkpoint-5: the checkpoint is incomplete \(no model weights, "
        r"trainer_state.json\).*earlier checkpoint",
    ):
        run_recipe(IMAGE, *image_args(tmp_path, out, "--resume_from_checkpoint", str(out / "checkpoint-5")))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_recipe(IMAGE, *image_args(tmp_path, out, "--resume_from_checkpoint", "last"))


FAKE_RECIPE = """
import json, os, sys
out = sys.argv[sys.argv.index("--output_dir") + 1]
os.makedirs(out, exist_ok=True)
json.dump(sys.argv[1:], open(os.path.join(out, "argv.json"), "w"))
open(os.path.join(out, "model.safetensors"), "w").close()
json.dump({}, open(os.path.join(out, "eval_results.json"), "w"))
"""


def test_compare_resumes_a_member_from_its_last_complete_checkpoint(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(FAKE_RECIPE)
    member = Member("ce", 0, str(tmp_path / "ce-seed0"))
    check_same_settings(member, str(recipe), [])  # the member's record, as the interrupted comparison left it
    for step, files in ((1, ["model.safetensors", "trainer_state.json"]), (2, ["config.json"])):
        checkpoint_files(tmp_path / "ce-seed0" / f"checkpoint-{step}", files)
    logs = []
    train_members([member], str(recipe), [], log=logs.append, check=None)
    assert any("skipping" in line and "checkpoint-2" in line for line in logs)
    assert any(f"resuming from {tmp_path / 'ce-seed0' / 'checkpoint-1'}" in line for line in logs)
    assert json.load(open(tmp_path / "ce-seed0" / "argv.json"))[-2:] == ["--resume_from_checkpoint", "last"]


# Item 4: a failed push does not skip evaluation and prediction.
def test_failed_push_comes_after_eval_and_predict(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(HubPushError, match=r"(?s)hf upload user/model.*metrics .* are in"):
        run_recipe(
            IMAGE, *image_args(tmp_path, out, "--do_eval", "--push_to_hub", "true", "--hub_model_id", "user/model")
        )
    assert {"eval_results.json", "all_results.json", "model.safetensors", "README.md"} <= set(os.listdir(out))
    assert "eval_accuracy" in json.load(open(out / "all_results.json"))


# Item 5: the model card names the real data and the loss history.
def test_card_names_the_local_data(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_args(tmp_path, out))
    card = (out / "README.md").read_text()
    assert "local data (train: images-circle-square)" in card and "fashion_mnist" not in card


def test_resume_with_other_loss_settings_is_refused_unless_allowed(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_args(tmp_path, out, "--loss", "maxsup", "--max_steps", "2"))
    resume = ["--resume_from_checkpoint", str(out / "checkpoint-1"), "--max_steps", "3"]
    with pytest.raises(
        ValueError,
        match=r"trained with maxsup \(alpha 0.1 to 0.2, linear\).*asks for ce"
        r".*--allow_loss_change",
    ):
        run_recipe(IMAGE, *image_args(tmp_path, out, "--loss", "ce", *resume))
    run_recipe(IMAGE, *image_args(tmp_path, out, "--loss", "ce", *resume, "--allow_loss_change"))
    settings = ModelCard.load(out / "README.md").data.to_dict()["hf_maxsup"]
    assert settings["loss"] == "ce"
    assert [(entry["loss"], entry["from_step"]) for entry in settings["history"]] == [("maxsup", 0), ("ce", 1)]


# Item 6: fewer than two classes.
def test_one_class_data_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="only one class folder.*at least two"):
        run_recipe(IMAGE, *image_args(tmp_path, out, classes=("circle",)))
    assert not list(out.glob("checkpoint-*"))


def test_a_one_output_classifier_is_refused(tmp_path):
    args = MaxSupTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"num_labels=1.*num_labels=K >= 2.*problem_type='regression'"):
        MaxSupTrainer(model=tiny_bert(num_labels=1), args=args, train_dataset=tiny_dataset(8, 1), data_collator=collate)


# Items 10 and 11: bad data files.
@pytest.mark.parametrize(
    "rows, expected",
    [
        (GOOD_ROWS[:2] + [",pos"] + GOOD_ROWS[2:], r"column 'text' is empty in row 3"),
        (GOOD_ROWS[:4] + ["fine movie,"] + GOOD_ROWS[4:], r"column 'label' is empty in row 5"),
    ],
)
def test_empty_cells_are_named_by_file_column_and_row(rows, expected, tmp_path):
    train = text_csv(tmp_path / "train.csv", rows)
    with pytest.raises(ValueError, match=rf"--train_file {train}: {expected}"):
        run_recipe("text_classification", *text_args(train, tmp_path / "run"))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b"text,label\n", r"has no rows \(only a header\?\)"),
        ("text,label\ncafé crème,pos\nthé,neg\n".encode("latin-1"), r"is not UTF-8 \(byte 14.*iconv"),
    ],
)
def test_empty_header_only_and_non_utf8_files(content, expected, tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes(content)
    with pytest.raises(ValueError, match=rf"--train_file {train} {expected}"):
        run_recipe("text_classification", *text_args(train, tmp_path / "run"))


def test_missing_data_file_and_missing_train_split(tmp_path):
    with pytest.raises(ValueError, match=r"--train_file .*nope.csv: no such file"):
        run_recipe("text_classification", *text_args(tmp_path / "nope.csv", tmp_path / "run"))
    validation = text_csv(tmp_path / "validation.csv", GOOD_ROWS)
    with pytest.raises(ValueError, match=r"no train split .*pass --train_file"):
        run_recipe(
            "text_classification",
            "--validation_file",
            str(validation),
            "--output_dir",
            str(tmp_path / "run"),
            "--do_train",
            *TINY,
        )


# Item 12: a corrupt image.
def test_corrupt_image_is_named_before_training(tmp_path):
    folder = image_folder(tmp_path / "images")
    broken = folder / "square" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])
    (folder / "circle" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=rf"(?s)2 of 25 images cannot be read:.*notes.png.*{broken}"):
        run_recipe(IMAGE, "--train_dir", str(folder), "--output_dir", str(tmp_path / "run"), "--do_train", *TINY)


# Item 13: a model path that does not exist.
@pytest.mark.parametrize(
    "path, expected", [("./no/such/model", "no such directory"), ("{tmp}", "this folder has no config.json")]
)
def test_model_path_that_is_not_a_model(path, expected, tmp_path):
    with pytest.raises(ValueError, match=expected):
        run_recipe(IMAGE, *image_args(tmp_path, tmp_path / "run", "--model_name_or_path", path.format(tmp=tmp_path)))


# Item 14: resuming what cannot be resumed.
def test_resume_last_without_output_dir(tmp_path):
    with pytest.raises(ValueError, match=r"--output_dir .*missing does not exist.*leave out --resume_from_checkpoint"):
        run_recipe(IMAGE, *image_args(tmp_path, tmp_path / "missing", "--resume_from_checkpoint", "last"))
    assert not (tmp_path / "missing").exists()


def test_resume_of_a_checkpoint_of_another_model(tmp_path):
    out = tmp_path / "run"
    run_recipe(IMAGE, *image_args(tmp_path, out, "--max_steps", "1"))
    with pytest.raises(ValueError, match=r"holds another model .*classifier.weight is \[2, 192\] there, \[3, 192\]"):
        run_recipe(
            IMAGE,
            *image_args(
                tmp_path,
                out,
                "--resume_from_checkpoint",
                str(out / "checkpoint-1"),
                classes=("circle", "square", "star"),
            ),
        )


# Item 15: analyze on something that is not a checkpoint.
@pytest.mark.parametrize(
    "name, expected", [("empty", "is not a checkpoint: it has no config.json"), ("./missing/folder", "no such folder")]
)
def test_analyze_on_a_non_checkpoint_prints_an_error_not_a_traceback(name, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs(tmp_path / "empty")
    assert cli.main(["analyze", name, "--output_dir", str(tmp_path / "report")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hf-maxsup analyze: error:") and expected in err and "Traceback" not in err


# Item 17: no pickles on the Hub.
def test_push_uploads_no_pickles(tmp_path, serve):
    fake_hub = serve(FakeHub())
    trainer = make_trainer(tmp_path, loss="maxsup", push_to_hub=True, hub_model_id="user/model", hub_token="x")
    trainer.train()
    trainer.push_to_hub()
    assert (tmp_path / "training_args.bin").exists()  # still written locally, as by the Trainer
    for commit in fake_hub.commits:
        assert "model.safetensors" in commit["files"]
        assert not [name for name in commit["files"] if name.endswith((".bin", ".pt", ".pth"))], commit["summary"]


# The other inputs a user gives: config files and numeric flags.
@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no such file"),
        ("{not json", "config file .*Expecting property name"),
        (json.dumps({"output_dir": "x", "lossy": "ce"}), r"(?s)config file .*lossy.*--help lists"),
    ],
)
def test_bad_config_file(content, expected, tmp_path):
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(ValueError, match=expected):
        run_recipe(IMAGE, str(config))


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--validation_split_percentage", "100", r"must be in \[0, 100\)"),
        ("--max_train_samples", "0", "must be at least 1"),
    ],
)
def test_bad_numeric_data_flags(flag, value, expected, tmp_path):
    with pytest.raises(ValueError, match=expected):
        run_recipe(IMAGE, *image_args(tmp_path, tmp_path / "run", flag, value))
