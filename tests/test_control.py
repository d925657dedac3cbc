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


def observe(iteration, iterations=10, start=()):
    return MarginObservation(iteration, iterations, list(start))


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


def fresh_margins(rng, center, pairs, spread=0.4, shared=0.1):
    """One iteration's fresh margins: pair noise around `center`, plus a shift shared by the
    whole iteration (its pairs share one policy and one update), which pair counts cannot see."""
    return (center + rng.normal(0.0, shared) + rng.normal(0.0, spread, size=pairs)).tolist()


def run_adaptive(controller, centers, seed=0, pairs=8, **noise):
    """γ used at each iteration, with the controller fed the simulated fresh margins."""
    rng = np.random.default_rng(seed)
    iterations = len(centers)
    gammas = []
    for iteration, center in enumerate(centers, start=1):
        gammas.append(controller.value)
        controller.update(observe(iteration, iterations,
                                  fresh_margins(rng, center, pairs, **noise)))
    return np.array(gammas)


Z80 = 0.8416  # the standard normal's 0.8-quantile: the default share left active


def test_adaptive_sits_at_the_quantile_on_stationary_margins_and_moves_both_ways():
    # The quickstart sees 6-10 pairs per iteration. On stationary margins γ settles where 80% of
    # fresh pairs are active, moves in both directions, and stays inside its noise band.
    truth, iterations = 0.3 + Z80 * 0.4, 80
    settled, ups, downs = [], 0, 0
    for seed in range(20):
        gammas = run_adaptive(adaptive(iterations), [0.3] * iterations, seed=seed)[10:]
        settled.append(gammas)
        steps = np.diff(gammas)
        ups, downs = ups + int(np.sum(steps > 0)), downs + int(np.sum(steps < 0))
    settled = np.concatenate(settled)
    assert abs(settled.mean() - truth) <= 0.05, settled.mean()
    assert ups >= 0.3 * (ups + downs) and downs >= 0.3 * (ups + downs), (ups, downs)
    # One iteration's quantile of 8 margins varies by about 0.2 (simulated: 0.21); over a window
    # of 6 that is 0.09. γ stays within 3 of those of the truth nearly always.
    assert np.mean(np.abs(settled - truth) > 3 * 0.09) <= 0.02
    assert np.median(np.abs(np.diff(settled))) == 0.0  # most iterations γ stays


def test_adaptive_standard_error_matches_the_spread_between_iterations():
    # A shift shared by each iteration's pairs (0.3 here) dominates when pairs are many: the
    # reported standard error must still match the estimate's real error, which an error from
    # pair counts (about 0.4·1.1/√(6·64) = 0.02) would understate fivefold.
    errors, reported = [], []
    for seed in range(200):
        controller = adaptive(20)
        run_adaptive(controller, [0.0] * 6, seed=seed, pairs=64, shared=0.3)
        state = controller.describe()
        errors.append(state["gamma_estimate"] - Z80 * 0.4)
        reported.append(state["gamma_stderr"])
    actual = float(np.sqrt(np.mean(np.square(errors))))
    assert 0.7 <= np.mean(reported) / actual <= 1.3, (np.mean(reported), actual)
    assert actual > 0.1


def test_adaptive_follows_margins_down_as_well_as_up():
    # No ratchet: margins that rise and fall again take γ up and back down.
    centers = np.concatenate([np.linspace(0.0, 1.2, 30), np.linspace(1.2, 0.0, 30),
                              np.zeros(20)])
    gammas = run_adaptive(adaptive(len(centers), gamma_max=5.0), centers, pairs=16)
    truth = centers + Z80 * 0.4
    assert gammas.max() >= truth.max() - 0.3
    assert abs(gammas[-1] - truth[-1]) <= 0.2, gammas[-1]
    peak = int(np.argmax(gammas))
    assert np.sum(np.diff(gammas[peak:]) < 0) >= 3  # it came down in steps, not by a bound


def test_adaptive_estimate_by_hand():
    # Three iterations; the share falls 0.9 → 0.1 over 5 iterations, so the estimate after
    # iteration 3 uses the share of iteration 4 (0.3) on each iteration's own margins.
    controller = adaptive(5, active_start=0.9, active_end=0.1, band_z=0.0)
    margins = [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [-1.0, 0.0, 1.0]]
    for iteration, observed in enumerate(margins, start=1):
        controller.update(observe(iteration, 5, observed))
    assert controller.target == pytest.approx(0.3)
    per_iteration = [np.quantile(m, 0.3, method="median_unbiased") for m in margins]
    state = controller.describe()
    assert state["gamma_estimate"] == pytest.approx(np.mean(per_iteration))
    assert state["gamma_stderr"] == pytest.approx(np.std(per_iteration, ddof=1) / np.sqrt(3))
    assert controller.value == pytest.approx(np.mean(per_iteration))  # all the way, not halfway


def test_adaptive_skips_non_finite_margins_and_loads_the_earlier_rules_state():
    controller = adaptive(10, band_z=0.0)
    for iteration in (1, 2, 3):
        controller.update(observe(iteration, 10, [0.1, float("nan"), 0.3, float("inf")]))
    assert controller.value == pytest.approx(np.quantile([0.1, 0.3], 0.8, method="median_unbiased"))
    # A checkpoint of the earlier rule: end margins too, and iterations with too few pairs.
    old = {"controller": "adaptive", "gamma": 0.7, "iteration": 4, "last": {},
           "history": [{"iteration": 1, "start": [], "end": []},
                       {"iteration": 2, "start": [0.2], "end": [0.4]},
                       {"iteration": 3, "start": [0.1, 0.5], "end": [0.3, 0.7]}]}
    resumed = adaptive(10)
    resumed.load_state_dict(old)
    assert resumed.value == 0.7
    assert resumed.state_dict()["history"] == [{"iteration": 3, "start": [0.1, 0.5]}]
    resumed.update(observe(4, 10, [0.0, 1.0]))  # waits: two usable iterations so far
    assert resumed.value == 0.7


def test_adaptive_target_share_moves_over_the_run():
    controller = adaptive(11, active_start=0.7, active_end=0.2)
    targets = []
    for iteration in range(1, 12):
        targets.append(controller.target)
        controller.update(observe(iteration, 11))
    assert targets[0] == pytest.approx(0.7) and targets[-1] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(targets, targets[1:]))


def test_adaptive_waits_for_three_iterations_and_respects_bounds():
    controller = adaptive(8, gamma_min=0.1, gamma_max=1.0, band_z=0.0, window=3)
    for iteration in (1, 2):
        controller.update(observe(iteration, 8, [50.0, 51.0]))
        assert controller.value == 0.5
    controller.update(observe(3, 8))  # no pairs: nothing to learn from
    controller.update(observe(4, 8, [5.0]))  # one pair: no quantile
    assert controller.value == 0.5
    controller.update(observe(5, 8, [50.0, 52.0]))
    assert controller.value == 1.0
    for iteration in (6, 7, 8):
        controller.update(observe(iteration, 8, [-50.0, -49.0]))
    assert controller.value == 0.1


def test_adaptive_stays_put_inside_the_band():
    controller = adaptive(10, band_z=2.0)
    # Quantiles near 0.5 with a spread of about 0.3 between iterations: 0.5 is within two
    # standard errors of their mean, so γ stays.
    for iteration, shift in enumerate((0.3, -0.3, 0.2), start=1):
        controller.update(observe(iteration, 10, [0.5 + shift] * 4))
    assert controller.value == 0.5 and controller.describe()["gamma_stderr"] > 0.1
    for iteration in (4, 5, 6):
        controller.update(observe(iteration, 10, [2.0] * 4))
    assert controller.value != 0.5  # the estimate left the band: γ moves


def test_adaptive_state_round_trip_continues_the_same_trajectory():
    centers = np.linspace(0.0, 1.0, 12)
    expected = run_adaptive(adaptive(12), centers, seed=3)

    rng = np.random.default_rng(3)
    first, got = adaptive(12), []
    for iteration in range(1, 6):
        got.append(first.value)
        first.update(observe(iteration, 12, fresh_margins(rng, centers[iteration - 1], 8)))
    second = adaptive(12)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for iteration in range(6, 13):
        got.append(second.value)
        second.update(observe(iteration, 12, fresh_margins(rng, centers[iteration - 1], 8)))
    assert got == expected.tolist()
