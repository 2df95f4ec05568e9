"""The alpha schedules: pure functions of the training progress, clamped to its ends."""

import pytest

from hf_maxsup.schedules import alpha_at


def test_linear_schedule_values_and_its_clamp():
    assert alpha_at(0.0, "linear", 0.1, 0.2) == pytest.approx(0.1)
    assert alpha_at(0.5, "linear", 0.1, 0.2) == pytest.approx(0.15)
    assert alpha_at(1.0, "linear", 0.1) == pytest.approx(0.2)  # alpha_end defaults to alpha + 0.1
    # Progress beyond 1 happens when a resumed run's max_steps changed; before 0 only by mistake: both clamp.
    assert alpha_at(1.5, "linear", 0.1, 0.2) == pytest.approx(0.2)
    assert alpha_at(-0.5, "linear", 0.1, 0.2) == pytest.approx(0.1)
    assert alpha_at(7.0, "constant", 0.3) == 0.3


def test_unknown_schedule_and_a_constant_schedule_with_another_end_are_refused():
    with pytest.raises(ValueError, match="unknown alpha schedule 'cosine'"):
        alpha_at(0.5, "cosine", 0.1)
    with pytest.raises(ValueError, match="use the linear schedule or drop alpha_end"):
        alpha_at(0.5, "constant", 0.1, 0.2)
