"""`hf-maxsup reanalyze`: a report written again from its own results.json (no checkpoints), its figures, notes and
training time kept; a distillation study's claims on teachers tested over the teachers of other studies too."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from _runs import classifier_result, run_result

from hf_maxsup import cli
from hf_maxsup.report.classification import write_report
from hf_maxsup.report.distillation import write_distillation_report
from hf_maxsup.report.reanalysis import reanalyze


def classifier_results(rng):
    results = []
    for seed in (0, 1, 2):
        for label, shift in (("ce", 3.0), ("ls", 2.0), ("maxsup", 1.5)):
            labels = np.arange(60) % 3
            logits = rng.normal(size=(60, 3)) + shift * np.eye(3)[labels]
            noise = rng.normal(scale=0.005, size=2)
            metrics = {"accuracy": 0.8 + 0.02 * shift + noise[0], "ece": 0.05 * shift + noise[1]}
            metrics.update(confidence_minus_accuracy=0.01 * shift - 0.02, mean_confidence=0.8, d_within=0.1 * shift)
            results.append(classifier_result(label, metrics, seed, rng, logits, labels, ["cat", "dog", "fox"]))
    return results


def test_a_report_is_written_again_from_its_results(tmp_path):
    notes = ["Recipe: `recipes/x.py`; recipe arguments: `--a 1`."]
    first = write_report(
        classifier_results(np.random.default_rng(0)),
        str(tmp_path),
        command="hf-maxsup compare ...",
        data_note="Synthetic.",
        notes=notes,
        training_time="Training time: 9.0 min for the 9 runs.",
    )
    report = (tmp_path / "report.md").read_text()
    figures = {name: (tmp_path / name).read_bytes() for name in first["figures"].values()}
    # An older results.json: no checks, no notes, no training time, no class names (the report.md holds them).
    content = json.loads((tmp_path / "results.json").read_text())
    saved_checks = content["checks"]
    assert saved_checks and [check["verdict"] for check in saved_checks] == [c["verdict"] for c in first["checks"]]
    for key in ("checks", "notes", "training_time", "projection_class_names"):
        content.pop(key)
    (tmp_path / "results.json").write_text(json.dumps(content))
    assert cli.main(["reanalyze", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["checks"] == saved_checks
    assert again["notes"] == notes and again["training_time"] == "Training time: 9.0 min for the 9 runs."
    assert again["projection_class_names"] == ["cat", "dog", "fox"] and again["runs"] == content["runs"]
    assert (tmp_path / "report.md").read_text() == report
    assert {name: (tmp_path / name).read_bytes() for name in figures} == figures  # not redrawn


def distillation_study(folder, teacher_seed, shift, student_seeds=(0, 1, 2)):
    """A distillation study's report by hand: the teachers of one seed, students of every teacher per seed."""
    teachers = {label: f"/gone/{label}-seed{teacher_seed}" for label in ("ce", "ls")}
    entropy = {"ce": 0.40 + shift, "ls": 0.87 - shift}
    teacher_metrics = {
        label: {"teacher_accuracy": 0.89, "teacher_non_target_entropy": entropy[label]} for label in teachers
    }
    students = [
        run_result(label, {"accuracy": 0.86 + 0.001 * seed + (0.002 if label == "ls" else 0.0)}, seed)
        for label in ("ce", "ls", "no teacher")
        for seed in student_seeds
    ]
    return write_distillation_report(
        str(folder),
        students,
        {**teachers, "no teacher": None},
        teacher_metrics,
        command="hf-maxsup distill ...",
        notes=["Evaluated on the test split."],
        extra={"seeds": list(student_seeds), "distill_temperature": 4.0},
        training_time="Training time: 1.0 min for the 6 students.",
    )


def test_the_teachers_of_other_studies_join_the_claims_on_teachers(tmp_path):
    main, other, third = tmp_path / "main", tmp_path / "seed1", tmp_path / "seed2"
    alone = distillation_study(main, 0, 0.000)
    distillation_study(other, 1, 0.002, student_seeds=(0,))
    distillation_study(third, 2, -0.001, student_seeds=(0,))
    flatter = next(check for check in alone["checks"] if check["metric"] == "teacher_non_target_entropy")
    assert flatter["verdict"] == "untestable" and flatter["n_a"] == 1
    content = reanalyze(str(main), teachers_from=[str(other), str(third)], log=lambda message: None)
    flatter = next(check for check in content["checks"] if check["metric"] == "teacher_non_target_entropy")
    # Three teachers per loss, their seeds unknown (no member record in their gone folders): Welch's test.
    assert (flatter["n_a"], flatter["n_b"], flatter["test"]) == (3, 3, "Welch t-test")
    assert flatter["verdict"] == "supported" and flatter["mean_a"] == pytest.approx(0.87 - 0.001 / 3)
    assert len(content["teacher_runs"]) == 6
    # The students' claims stay on this study's students.
    students = next(check for check in content["checks"] if check["metric"] == "accuracy")
    assert (students["n_a"], students["n_b"]) == (3, 3)
    report = (main / "report.md").read_text()
    assert "Teachers over their seeds" in report and "| teacher | teachers |" in report
    assert "Training time: 1.0 min for the 6 students." in report
    # Re-analysing again with the same studies gives the same numbers (the teachers are not counted twice).
    saved = json.loads((main / "results.json").read_text())
    reanalyze(str(main), teachers_from=[str(other), str(third)], log=print)
    assert json.loads((main / "results.json").read_text()) == saved


def test_what_reanalyze_refuses(tmp_path, capsys):
    assert cli.main(["reanalyze", str(tmp_path / "missing")]) == 1
    assert "has no results.json" in capsys.readouterr().err
    write_report(classifier_results(np.random.default_rng(1)), str(tmp_path / "compare"))
    distillation_study(tmp_path / "distill", 0, 0.0)
    assert cli.main(["reanalyze", str(tmp_path / "compare"), "--teachers_from", str(tmp_path / "distill")]) == 1
    assert "--teachers_from is for the report of hf-maxsup distill" in capsys.readouterr().err
    assert cli.main(["reanalyze", str(tmp_path / "distill"), "--teachers_from", str(tmp_path / "compare")]) == 1
    assert "not the report of hf-maxsup distill" in capsys.readouterr().err
    other = json.loads((tmp_path / "distill" / "results.json").read_text())
    for student in other["students"]:
        student["num_examples"] = 10
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "results.json").write_text(json.dumps(other))
    assert cli.main(["reanalyze", str(tmp_path / "distill"), "--teachers_from", str(tmp_path / "small")]) == 1
    assert "evaluated on the same data" in capsys.readouterr().err
