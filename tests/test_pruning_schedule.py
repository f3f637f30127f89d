"""bermo.pruning's cubic schedule, set_pruning_level and the penalty weight that follows the schedule."""
import pytest
import torch
from torch import nn

from bermo.nn import MaskedLinear
from bermo.pruning import CubicSchedule, level_attribute, penalty_weight, set_pruning_level


def cubic(initial, final, progress):
    """The schedule's formula, written out here."""
    return final + (initial - final) * (1 - progress) ** 3


# total 11 steps (0..10), 2 of initial warm-up, 3 of final warm-up: the pruning phase spans steps 2 -> 8 (6 steps)
SCHED = dict(initial=1.0, final=0.1, total_steps=11, initial_warmup_steps=2, final_warmup_steps=3)


@pytest.mark.parametrize("step, expected", [
    (0, 1.0),                              # first step: initial
    (1, 1.0),                              # inside the initial warm-up
    (2, 1.0),                              # end of the initial warm-up = start of the pruning phase
    (3, cubic(1.0, 0.1, 1 / 6)),           # first pruning step
    (5, cubic(1.0, 0.1, 0.5)),             # mid-way: 0.1 + 0.9 / 8
    (7, cubic(1.0, 0.1, 5 / 6)),           # last step before the final warm-up
    (8, 0.1),                              # start of the final warm-up (the last 3 steps: 8, 9, 10)
    (10, 0.1),                             # last step
    (25, 0.1),                             # past the end: stays final
], ids=["step0", "warmup", "end-of-initial-warmup", "first-pruning", "mid", "before-final", "start-of-final",
        "last", "past-end"])
def test_cubic_schedule_values_at_every_phase_boundary(step, expected):
    s = CubicSchedule(**SCHED)
    assert s.value(step) == pytest.approx(expected, rel=1e-12, abs=0)
    assert s(step) == s.value(step)
    assert cubic(1.0, 0.1, 0.5) == pytest.approx(0.2125)  # the formula's mid value, by hand


def test_warmups_hold_the_exact_levels_and_the_curve_falls_monotonically():
    s = CubicSchedule(**SCHED)
    values = [s.value(k) for k in range(11)]
    assert values[:3] == [1.0, 1.0, 1.0] and values[8:] == [0.1, 0.1, 0.1]  # exact, not approximately
    assert all(a > b for a, b in zip(values[2:9], values[3:9]))  # strictly falling across the pruning phase
    assert [s.progress(k) for k in (0, 2, 5, 8, 10)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_threshold_schedules_rise_and_zero_warmups_work():
    s = CubicSchedule(0.0, 0.2, total_steps=4)
    assert [s.value(k) for k in range(5)] == pytest.approx([0.0, cubic(0, 0.2, 0.25), cubic(0, 0.2, 0.5),
                                                            cubic(0, 0.2, 0.75), 0.2])
    one = CubicSchedule(1.0, 0.5, total_steps=3, initial_warmup_steps=1, final_warmup_steps=1)  # 1 pruning step
    assert [one.value(k) for k in range(3)] == [1.0, 1.0, 0.5]


@pytest.mark.parametrize("total, initial_warmup, final_warmup", [(5, 2, 3), (5, 5, 0), (4, 2, 3), (1, 0, 1)])
def test_a_run_too_short_to_leave_the_warmups_is_an_error(total, initial_warmup, final_warmup):
    with pytest.raises(ValueError, match="leaves no pruning phase"):
        CubicSchedule(1.0, 0.1, total, initial_warmup, final_warmup)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(total_steps=0), ValueError, "total_steps must be >= 1"),
    (dict(total_steps=10.0), TypeError, "total_steps must be an int"),
    (dict(total_steps=True), TypeError, "total_steps must be an int"),
    (dict(initial_warmup_steps=-1), ValueError, "initial_warmup_steps must be >= 0"),
    (dict(final_warmup_steps=1.5), TypeError, "final_warmup_steps must be an int"),
    (dict(initial=float("nan")), ValueError, "initial must be a finite"),
    (dict(final="0.1"), ValueError, "final must be a finite"),
])
def test_bad_schedule_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CubicSchedule(**{**dict(initial=1.0, final=0.1, total_steps=10), **kwargs})


@pytest.mark.parametrize("step, error", [(-1, ValueError), (1.5, TypeError), (None, TypeError)])
def test_bad_steps(step, error):
    with pytest.raises(error, match="step must be"):
        CubicSchedule(1.0, 0.1, 10).value(step)


def test_penalty_weight_follows_the_cubic_fraction():
    s = CubicSchedule(**SCHED)
    weights = [penalty_weight(4.0, s, k) for k in range(11)]
    assert weights[:3] == [0.0, 0.0, 0.0] and weights[8:] == [4.0, 4.0, 4.0]
    assert weights[5] == pytest.approx(4.0 * (1 - 0.5 ** 3))
    # for a threshold schedule from 0 it is the reference's final_lambda * threshold / final_threshold
    t = CubicSchedule(0.0, 0.3, total_steps=11, initial_warmup_steps=2, final_warmup_steps=3)
    assert [penalty_weight(4.0, t, k) for k in range(11)] == pytest.approx([4.0 * t.value(k) / 0.3 for k in range(11)])
    for bad in (-1.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match="regularization_weight must be"):
            penalty_weight(bad, s, 3)


class Net(nn.Module):
    def __init__(self, methods):
        super().__init__()
        self.layers = nn.ModuleList(MaskedLinear(8, 8, method=m, block_shape=(2, 2)) for m in methods)
        self.head = nn.Linear(8, 2)


def test_set_pruning_level_sets_density_or_threshold_by_method():
    net = Net(["topK", "magnitude", "l0"])
    assert set_pruning_level(net, 0.25) == "density"
    assert [m.density for m in net.layers[:2]] == [0.25, 0.25]
    assert net.layers[0].kept_fraction() == 0.25 and net.layers[1].kept_fraction() == 0.25
    assert net.layers[2].density == 1.0  # l0 has no level: untouched
    net = Net(["threshold", "sigmoied_threshold"])
    assert set_pruning_level(net, 0.7) == "threshold"
    assert [m.threshold for m in net.layers] == [0.7, 0.7]
    assert set_pruning_level(Net(["l0"]), 0.5) is None
    assert level_attribute(Net(["magnitude"])) == "density"


def test_set_pruning_level_refuses_bad_values_before_changing_anything():
    net = Net(["threshold", "sigmoied_threshold", "threshold"])
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        set_pruning_level(net, 1.5)  # fine for 'threshold', not for sigmoid(scores)
    assert [m.threshold for m in net.layers] == [0.0, 0.0, 0.0]
    net = Net(["topK", "topK"])
    with pytest.raises(ValueError, match="density must be in \\(0, 1\\]"):
        set_pruning_level(net, 0.0)
    assert [m.density for m in net.layers] == [1.0, 1.0]
    with pytest.raises(ValueError, match="one pruning level cannot be both"):
        set_pruning_level(Net(["topK", "threshold"]), 0.5)
    with pytest.raises(ValueError, match="has no bermo.nn.MaskedLinear"):
        set_pruning_level(nn.Sequential(nn.Linear(4, 4)), 0.5)
    with pytest.raises(TypeError, match="density must be a real number"):
        set_pruning_level(Net(["topK"]), "0.5")
    assert torch.equal(Net(["topK"]).layers[0].mask(), torch.ones(8, 8))
