import json

import pytest

from selfplay.control import (
    CONTROLLERS,
    FixedGamma,
    GammaController,
    ScheduledGamma,
    build_controller,
)


def trajectory(controller, first, last, iterations):
    """γ used for iterations first..last, calling update after each as the loop does."""
    values = []
    for iteration in range(first, last + 1):
        values.append(controller.value)
        observation = {"iteration": iteration, "iterations": iterations, "active_fraction": 0.5}
        controller.update(observation)
    return values


def test_fixed_stays_fixed():
    controller = FixedGamma(0.5)
    assert trajectory(controller, 1, 5, 5) == [0.5] * 5
    assert controller.value == 0.5
    assert controller.describe() == {"gamma": 0.5}


def test_linear_schedule_by_hand():
    # The paper's 1.0 → 0.2 over 5 iterations: step (0.2 − 1.0) / 4 = −0.2.
    controller = ScheduledGamma(1.0, 0.2, iterations=5)
    assert trajectory(controller, 1, 5, 5) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_cosine_schedule_by_hand():
    # γ = 1.0 − 0.8 · (1 − cos(π t)) / 2 with t = (k − 1) / 4:
    # t = 0.25: (1 − 0.7071068) / 2 = 0.1464466 → 0.8828427
    # t = 0.5:  0.5 → 0.6 (the midpoint is the same as linear)
    # t = 0.75: (1 + 0.7071068) / 2 = 0.8535534 → 0.3171573
    controller = ScheduledGamma(1.0, 0.2, iterations=5, shape="cosine")
    assert trajectory(controller, 1, 5, 5) == pytest.approx([1.0, 0.8828427, 0.6, 0.3171573, 0.2])


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("start,end", [(1.0, 0.2), (0.2, 1.0)])
def test_schedule_endpoints_and_monotonicity(shape, start, end):
    controller = ScheduledGamma(start, end, iterations=7, shape=shape)
    values = trajectory(controller, 1, 10, 7)
    assert values[0] == pytest.approx(start)
    assert values[6] == pytest.approx(end)
    assert values[7:] == pytest.approx([end] * 3)  # beyond the planned iterations γ stays at end
    ordered = sorted(values, reverse=start > end)
    assert values == ordered and len(set(values[:7])) == 7


def test_single_iteration_schedule_uses_start_then_end():
    controller = ScheduledGamma(1.0, 0.2, iterations=1)
    assert trajectory(controller, 1, 2, 1) == [1.0, 0.2]


def test_update_advances_from_the_observation():
    controller = ScheduledGamma(1.0, 0.2, iterations=5)
    assert controller.value == 1.0  # asked before iteration 1
    controller.update({"iteration": 1, "iterations": 5})
    assert controller.value == pytest.approx(0.8)
    controller.update({"iteration": 3, "iterations": 5})  # the loop's iteration number wins
    assert controller.value == pytest.approx(0.4)


def test_update_needs_the_iteration():
    for controller in (FixedGamma(0.5), ScheduledGamma(1.0, 0.2, iterations=5)):
        with pytest.raises(ValueError, match="observation\\['iteration'\\] must be an int >= 1"):
            controller.update({"iterations": 5})


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedGamma(0.5),
        lambda: ScheduledGamma(1.0, 0.2, 6, "linear"),
        lambda: ScheduledGamma(1.0, 0.2, 6, "cosine"),
    ],
)
def test_state_dict_round_trip_continues_the_trajectory(make):
    uninterrupted = trajectory(make(), 1, 8, 6)

    first = make()
    before = trajectory(first, 1, 3, 6)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores

    resumed = make()
    resumed.load_state_dict(state)
    assert before + trajectory(resumed, 4, 8, 6) == uninterrupted


def test_loading_another_controllers_state_is_an_error():
    with pytest.raises(ValueError, match="'schedule' cannot load the state of controller 'fixed'"):
        ScheduledGamma(1.0, 0.2, 5).load_state_dict(FixedGamma(0.5).state_dict())


def test_build_controller():
    assert set(CONTROLLERS) >= {"fixed", "schedule"}
    assert all(issubclass(cls, GammaController) for cls in CONTROLLERS.values())
    controller = build_controller("schedule", start=1.0, end=0.2, iterations=5, shape="cosine")
    assert isinstance(controller, ScheduledGamma) and controller.value == 1.0
    assert build_controller("fixed", value=0.4).value == 0.4


def test_unknown_controller_names_the_choices():
    expected = "unknown gamma controller 'fxed'; choose from: fixed, schedule"
    with pytest.raises(ValueError, match=expected):
        build_controller("fxed", value=0.5)


def test_bad_controller_fields_name_the_controller():
    expected = "gamma controller 'fixed': unknown field 'valu'; fields: value"
    with pytest.raises(ValueError, match=expected):
        build_controller("fixed", valu=0.5)
    with pytest.raises(ValueError, match="gamma controller 'schedule': missing field 'iterations'"):
        build_controller("schedule", start=1.0, end=0.2)
    with pytest.raises(ValueError, match="shape must be one of cosine, linear, got 'step'"):
        build_controller("schedule", start=1.0, end=0.2, iterations=5, shape="step")
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got 0"):
        ScheduledGamma(1.0, 0.2, iterations=0)
    with pytest.raises(ValueError, match="value must be finite"):
        FixedGamma(float("nan"))
