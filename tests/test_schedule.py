import pytest

from alexnet.config import OptimConfig
from alexnet.train.schedule import Schedule


def test_plateau_divides_by_ten_at_most_three_times():
    sched = Schedule(OptimConfig(lr=0.01, schedule="plateau", plateau_patience=1, plateau_max_drops=3), 10)
    assert sched.lr(0) == 0.01
    assert not sched.end_epoch(0.5)  # a new best
    drops = [sched.end_epoch(0.6) for _ in range(5)]  # never improves again
    assert drops == [True, True, True, False, False]
    assert sched.lr(100) == pytest.approx(1e-5)


def test_onecycle_warms_up_then_decays_to_the_final_fraction():
    sched = Schedule(OptimConfig(lr=1.0, epochs=10, schedule="onecycle", warmup_epochs=2, final_lr_fraction=0.0), 10)
    assert sched.lr(0) == pytest.approx(0.05) and sched.lr(19) == pytest.approx(1.0)
    assert sched.lr(60) == pytest.approx(0.5) and sched.lr(100) == pytest.approx(0.0)


def test_cosine_and_step():
    cosine = Schedule(OptimConfig(lr=1.0, epochs=4, schedule="cosine", final_lr_fraction=0.1), 5)
    assert [cosine.lr(s) for s in (0, 10, 20)] == pytest.approx([1.0, 0.55, 0.1])
    step = Schedule(OptimConfig(lr=1.0, schedule="step", step_epochs=2), 5)
    assert [step.lr(s) for s in (0, 9, 10, 20)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_state_round_trip_and_bad_name():
    sched = Schedule(OptimConfig(schedule="plateau", plateau_patience=1), 1)
    sched.end_epoch(0.3), sched.end_epoch(0.4)
    other = Schedule(OptimConfig(schedule="plateau", plateau_patience=1), 1)
    other.load_state_dict(sched.state_dict())
    assert other.lr(5) == sched.lr(5) and other.state_dict() == sched.state_dict()
    with pytest.raises(ValueError, match="onecycle"):  # the config refuses it before any Schedule is made
        OptimConfig(schedule="linear")
