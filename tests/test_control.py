import json

import pytest

from selfplay.control import (
    CONFIGS,
    CONTROLLERS,
    AdaptiveConfig,
    FixedConfig,
    FixedGamma,
    GammaController,
    GammaPOConfig,
    MarginObservation,
    ScheduleConfig,
    ScheduledGamma,
    build_controller,
)


def fixed(value):
    return FixedGamma(FixedConfig(value=value))


def schedule(start, end, iterations, shape="linear"):
    return ScheduledGamma(ScheduleConfig(start=start, end=end, shape=shape), iterations)


def observe(iteration, iterations=10, start=(), end=()):
    return MarginObservation(iteration, iterations, list(start), list(end))


def trajectory(controller, first, last, iterations):
    """γ used for iterations first..last, calling update after each as the loop does."""
    values = []
    for iteration in range(first, last + 1):
        values.append(controller.value)
        controller.update(observe(iteration, iterations))
    return values


def test_fixed_stays_fixed():
    controller = fixed(0.5)
    assert trajectory(controller, 1, 5, 5) == [0.5] * 5
    assert controller.value == 0.5
    assert controller.describe() == {"gamma": 0.5}


def test_linear_schedule_by_hand():
    # The paper's 1.0 → 0.2 over 5 iterations: step (0.2 − 1.0) / 4 = −0.2.
    controller = schedule(1.0, 0.2, 5)
    assert trajectory(controller, 1, 5, 5) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_cosine_schedule_by_hand():
    # γ = 1.0 − 0.8 · (1 − cos(π t)) / 2 with t = (k − 1) / 4:
    # t = 0.25: (1 − 0.7071068) / 2 = 0.1464466 → 0.8828427
    # t = 0.5:  0.5 → 0.6 (the midpoint is the same as linear)
    # t = 0.75: (1 + 0.7071068) / 2 = 0.8535534 → 0.3171573
    controller = schedule(1.0, 0.2, 5, "cosine")
    assert trajectory(controller, 1, 5, 5) == pytest.approx([1.0, 0.8828427, 0.6, 0.3171573, 0.2])


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("start,end", [(1.0, 0.2), (0.2, 1.0)])
def test_schedule_endpoints_and_monotonicity(shape, start, end):
    controller = schedule(start, end, 7, shape)
    values = trajectory(controller, 1, 10, 7)
    assert values[0] == pytest.approx(start)
    assert values[6] == pytest.approx(end)
    assert values[7:] == pytest.approx([end] * 3)  # beyond the planned iterations γ stays at end
    ordered = sorted(values, reverse=start > end)
    assert values == ordered and len(set(values[:7])) == 7


def test_single_iteration_schedule_uses_start_then_end():
    controller = schedule(1.0, 0.2, 1)
    assert trajectory(controller, 1, 2, 1) == [1.0, 0.2]


def test_update_advances_from_the_observation():
    controller = schedule(1.0, 0.2, 5)
    assert controller.value == 1.0  # asked before iteration 1
    controller.update(observe(1, 5))
    assert controller.value == pytest.approx(0.8)
    controller.update(observe(3, 5))  # the loop's iteration number wins
    assert controller.value == pytest.approx(0.4)


def test_an_observation_needs_its_iteration_numbers():
    for bad in (0, None, True, 1.0):
        with pytest.raises(ValueError, match="observation.iteration must be an int >= 1"):
            MarginObservation(bad, 5)
    with pytest.raises(ValueError, match="observation.iterations must be an int >= 1"):
        MarginObservation(1, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: fixed(0.5),
        lambda: schedule(1.0, 0.2, 6, "linear"),
        lambda: schedule(1.0, 0.2, 6, "cosine"),
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
        schedule(1.0, 0.2, 5).load_state_dict(fixed(0.5).state_dict())


def test_build_controller():
    assert set(CONTROLLERS) == set(CONFIGS) == {"fixed", "schedule", "adaptive", "gammapo"}
    assert all(issubclass(cls, GammaController) for cls in CONTROLLERS.values())
    controller = build_controller(ScheduleConfig(start=1.0, end=0.2, shape="cosine"), 5)
    assert isinstance(controller, ScheduledGamma) and controller.value == 1.0
    assert controller.gamma_at(5) == pytest.approx(0.2)
    assert build_controller(FixedConfig(value=0.4), 5).value == 0.4
    assert build_controller(AdaptiveConfig(initial=0.3), 5).value == 0.3
    assert build_controller(GammaPOConfig(value=0.7), 5).value == 0.7


def test_bad_controller_fields_are_refused():
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got 0"):
        schedule(1.0, 0.2, 0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="value\n  Input should be a finite number"):
            fixed(bad)
    with pytest.raises(ValueError, match="gamma.initial: must lie within"):
        AdaptiveConfig(initial=3.0, gamma_max=2.0)


# --- adaptive ---------------------------------------------------------------------------------
import numpy as np  # noqa: E402

from selfplay.control import AdaptiveGamma  # noqa: E402


def adaptive(iterations, **fields):
    return AdaptiveGamma(AdaptiveConfig(**fields), iterations)


def simulated_iteration(controller, rng, center, push=0.3, pairs=256):
    """A stand-in for one online update: fresh margins around `center`; every pair below γ is
    pushed up by `push` (RePO moves only active pairs)."""
    gamma = controller.value
    start = rng.normal(center, 0.4, size=pairs)
    end = np.where(start < gamma, start + push, start)
    return start.tolist(), end.tolist(), float(np.mean(end < gamma))


def run_adaptive(controller, iterations, centers, seed=0, pairs=256):
    rng = np.random.default_rng(seed)
    history = []
    for iteration in range(1, iterations + 1):
        target = controller.target
        start, end, active_end = simulated_iteration(controller, rng, centers[iteration - 1],
                                                     pairs=pairs)
        history.append((controller.value, target, active_end))
        controller.update(observe(iteration, iterations, start, end))
    return history


def test_adaptive_does_not_chase_noise_with_few_pairs():
    # The quickstart sees 6-10 pairs per iteration. On stationary margins γ must settle and then
    # mostly stay: the earlier rule (one iteration's margins, a 0.05 band) moved γ by a median
    # 0.07 per iteration here, with a standard deviation of 0.12 around its mean.
    iterations = 40
    steps, spreads = [], []
    for seed in range(10):
        history = run_adaptive(adaptive(iterations), iterations, [0.3] * iterations,
                               seed=seed, pairs=8)
        gammas = np.array([g for g, _, _ in history])[10:]
        steps.append(np.median(np.abs(np.diff(gammas))))
        spreads.append(gammas.std())
    assert np.median(steps) <= 0.01, steps
    assert np.mean(spreads) <= 0.09, spreads


def test_adaptive_follows_margins_that_drift_right():
    # The paper's offline observation: margins grow as the policy learns. γ must follow them.
    iterations = 30
    centers = np.linspace(0.0, 1.5, iterations)
    history = run_adaptive(adaptive(iterations, initial=0.5, gamma_max=5.0), iterations,
                           centers, pairs=32)
    settled = history[5:]
    mean_active = np.mean([active for _, _, active in settled])
    mean_target = np.mean([target for _, target, _ in settled])
    assert abs(mean_active - mean_target) <= 0.15, (mean_active, mean_target)
    gammas = [g for g, _, _ in history]
    assert gammas[-1] > gammas[0] + 0.8  # it tracked the drift instead of filtering everything
    # A fixed γ on the same drift ends up filtering almost every pair.
    fixed_active = np.mean(np.random.default_rng(1).normal(centers[-1], 0.4, 256) < 0.5)
    assert fixed_active < 0.05


def test_adaptive_uses_a_trend_only_when_noise_cannot_explain_it():
    steady = adaptive(10)
    rising = adaptive(10)
    rng = np.random.default_rng(0)
    for iteration in range(1, 5):
        noise = rng.normal(0.0, 0.4, size=8)
        steady.update(observe(iteration, 10, (0.3 + noise).tolist(), (0.5 + noise).tolist()))
        ramp = 0.5 * iteration + np.linspace(-0.05, 0.05, 64)
        rising.update(observe(iteration, 10, ramp.tolist(), (ramp + 0.2).tolist()))
    assert steady.describe()["gamma_drift"] == 0.0
    assert rising.describe()["gamma_drift"] == pytest.approx(0.5)


def test_adaptive_target_falls_over_the_run():
    controller = adaptive(11, target_start=0.7, target_end=0.2)
    targets = []
    for iteration in range(1, 12):
        targets.append(controller.target)
        controller.update(observe(iteration, 11))
    assert targets[0] == pytest.approx(0.7) and targets[-1] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(targets, targets[1:]))


def test_adaptive_respects_bounds_and_ignores_iterations_without_pairs():
    controller = adaptive(5, gamma_min=0.1, gamma_max=1.0, smoothing=1.0, window=1)
    controller.update(observe(1, 5, [50.0] * 8, [60.0] * 8))
    assert controller.value == 1.0
    controller.update(observe(2, 5, [-50.0] * 8, [-40.0] * 8))
    assert controller.value == 0.1
    controller.update(observe(3, 5))
    assert controller.value == 0.1


def test_adaptive_stays_put_inside_the_band():
    controller = adaptive(10, target_start=0.5, target_end=0.5, band_z=1.0)
    # 4 of the 9 end margins are below γ = 0.5: a share of 0.44, within one standard error
    # (√(0.25/9) = 0.17) of 0.5.
    end = [0.0, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 1.0]
    controller.update(observe(1, 10, [m - 0.2 for m in end], end))
    assert controller.value == 0.5
    controller.update(observe(2, 10, [m - 0.2 for m in end], [m + 0.5 for m in end]))
    assert controller.value != 0.5  # pooled, 4 of 18 active: out of the band, γ moves


def test_adaptive_state_round_trip_continues_the_same_trajectory():
    iterations = 12
    centers = np.linspace(0.0, 1.0, iterations)
    straight = adaptive(iterations)
    expected = run_adaptive(straight, iterations, centers, seed=3)

    first = adaptive(iterations)
    rng = np.random.default_rng(3)
    got = []
    for iteration in range(1, 6):
        start, end, active = simulated_iteration(first, rng, centers[iteration - 1])
        got.append((first.value, first.target, active))
        first.update(observe(iteration, iterations, start, end))
    state = json.loads(json.dumps(first.state_dict()))
    second = adaptive(iterations)
    second.load_state_dict(state)
    for iteration in range(6, iterations + 1):
        start, end, active = simulated_iteration(second, rng, centers[iteration - 1])
        got.append((second.value, second.target, active))
        second.update(observe(iteration, iterations, start, end))
    assert got == expected
