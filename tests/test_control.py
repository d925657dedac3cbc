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
    expected = "unknown gamma controller 'fxed'; choose from: adaptive, fixed, gammapo, schedule"
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


# --- adaptive ---------------------------------------------------------------------------------
import numpy as np  # noqa: E402

from selfplay.control import AdaptiveGamma, GammaPOMargins  # noqa: E402


def simulated_iteration(controller, rng, center, push=0.3, pairs=256):
    """A stand-in for one online update: fresh margins around `center`; every pair below γ is
    pushed up by `push` (RePO moves only active pairs)."""
    gamma = controller.value
    start = rng.normal(center, 0.4, size=pairs)
    end = np.where(start < gamma, start + push, start)
    return start.tolist(), end.tolist(), float(np.mean(end < gamma))


def run_adaptive(controller, iterations, centers, seed=0):
    rng = np.random.default_rng(seed)
    history = []
    for iteration in range(1, iterations + 1):
        target = controller.target
        start, end, active_end = simulated_iteration(controller, rng, centers[iteration - 1])
        history.append((controller.value, target, active_end))
        controller.update({"iteration": iteration, "iterations": iterations, "margins": start,
                           "margins_end": end, "active_fraction_end": active_end})
    return history


def test_adaptive_holds_the_band_while_margins_drift_right():
    # The paper's offline observation: margins grow as the policy learns. γ must follow them.
    iterations = 30
    centers = np.linspace(0.0, 1.5, iterations)
    controller = AdaptiveGamma(iterations=iterations, initial=0.5, gamma_max=5.0)
    history = run_adaptive(controller, iterations, centers)
    settled = history[5:]
    misses = [abs(active - target) for _, target, active in settled]
    assert sum(m <= 0.1 for m in misses) >= 0.8 * len(settled), misses
    gammas = [g for g, _, _ in history]
    assert gammas[-1] > gammas[0] + 0.8  # it tracked the drift instead of filtering everything
    # A fixed γ on the same drift ends up filtering almost every pair.
    fixed_active = np.mean(np.random.default_rng(1).normal(centers[-1], 0.4, 256) < 0.5)
    assert fixed_active < 0.05


def test_adaptive_target_falls_over_the_run():
    controller = AdaptiveGamma(iterations=11, target_start=0.7, target_end=0.2)
    targets = []
    for iteration in range(1, 12):
        targets.append(controller.target)
        controller.update({"iteration": iteration})
    assert targets[0] == pytest.approx(0.7) and targets[-1] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(targets, targets[1:]))


def test_adaptive_respects_bounds_and_ignores_iterations_without_pairs():
    controller = AdaptiveGamma(iterations=5, gamma_min=0.1, gamma_max=1.0, smoothing=1.0)
    controller.update({"iteration": 1, "margins": [50.0] * 8, "margins_end": [60.0] * 8,
                       "active_fraction_end": 0.0})
    assert controller.value == 1.0
    controller.update({"iteration": 2, "margins": [-50.0] * 8, "margins_end": [-40.0] * 8,
                       "active_fraction_end": 1.0})
    assert controller.value == 0.1
    controller.update({"iteration": 3, "margins": [], "margins_end": [],
                       "active_fraction_end": None})
    assert controller.value == 0.1


def test_adaptive_stays_put_inside_the_band():
    controller = AdaptiveGamma(iterations=10, target_start=0.5, target_end=0.5, band=0.1)
    controller.update({"iteration": 1, "margins": [0.0, 1.0], "margins_end": [3.0, 4.0],
                       "active_fraction_end": 0.45})
    assert controller.value == 0.5


def test_adaptive_state_round_trip_continues_the_same_trajectory():
    iterations = 12
    centers = np.linspace(0.0, 1.0, iterations)
    straight = AdaptiveGamma(iterations=iterations)
    expected = run_adaptive(straight, iterations, centers, seed=3)

    first = AdaptiveGamma(iterations=iterations)
    rng = np.random.default_rng(3)
    got = []
    for iteration in range(1, 6):
        start, end, active = simulated_iteration(first, rng, centers[iteration - 1])
        got.append((first.value, first.target, active))
        first.update({"iteration": iteration, "margins": start, "margins_end": end,
                      "active_fraction_end": active})
    state = json.loads(json.dumps(first.state_dict()))
    second = AdaptiveGamma(iterations=iterations)
    second.load_state_dict(state)
    for iteration in range(6, iterations + 1):
        start, end, active = simulated_iteration(second, rng, centers[iteration - 1])
        got.append((second.value, second.target, active))
        second.update({"iteration": iteration, "margins": start, "margins_end": end,
                       "active_fraction_end": active})
    assert got == expected


def test_gammapo_targets_average_gamma0_and_favour_confident_pairs():
    controller = GammaPOMargins(value=0.5, tau=10.0, beta=10.0)
    gammas = controller.pair_gammas([-0.5, 0.0, 0.3, 1.0])
    assert np.mean(gammas) == pytest.approx(0.5)
    assert gammas == sorted(gammas) and gammas[-1] > gammas[0]
    nearly_uniform = GammaPOMargins(value=0.5, tau=1e6).pair_gammas([-0.5, 1.0])
    assert nearly_uniform == pytest.approx([0.5, 0.5], abs=1e-3)
