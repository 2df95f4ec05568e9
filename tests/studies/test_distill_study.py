"""hf-maxsup distill: the non-target entropy from its definition, and the arguments refused before any training."""

import math

import numpy as np
import pytest

from hf_maxsup.cli import main
from hf_maxsup.report.distillation import non_target_entropy


def test_non_target_entropy_from_its_definition():
    labels = np.array([0, 2])
    # Row 0: equal non-target logits (uniform, entropy 1) whatever the target's logit; row 1: 1, 2, 3 on the others.
    logits = np.array([[9.0, 1.0, 1.0, 1.0], [1.0, 2.0, 7.0, 3.0]])
    q = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    expected = (1.0 + float(-(q * np.log(q)).sum() / math.log(3))) / 2
    assert non_target_entropy(logits, labels) == pytest.approx(expected, rel=1e-12)
    # A higher temperature flattens the distribution: closer to 1.
    assert expected < non_target_entropy(logits, labels, temperature=4.0) < 1.0
    with pytest.raises(ValueError, match="at least 3 classes"):
        non_target_entropy(logits[:, :2], np.array([0, 1]))


def test_bad_study_arguments(tmp_path, capsys):
    teacher = tmp_path / "ce"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    common = ["distill", "--output_dir", str(tmp_path / "report"), "--teachers", str(teacher)]
    assert main([*common, "--teacher_model_name_or_path", "x"]) == 1
    assert "--teacher_model_name_or_path is set by the study" in capsys.readouterr().err
    assert main([*common, str(tmp_path / "missing")]) == 1
    assert "no config.json there" in capsys.readouterr().err
    assert main([*common, "--teacher_labels", "a", "b"]) == 1
    assert "names 2 teachers for 1" in capsys.readouterr().err
