"""γ-PO (selfplay/control/gammapo.py) against the authors' algorithm (sunjie279/gammaPO,
scripts/simpo_trainer.py, `get_gamma_dq`).

`authors_targets` below is a line-by-line transcription of their loop in plain Python (lists and
`math`, no numpy), independent of the port's vectorised code. The hard-coded values were computed
with that same transcription in a separate script (/tmp/gpo_ref2.py while writing this file).
"""
import json
import math

import numpy as np
import pytest
import torch

from selfplay.control import CONTROLLERS, GammaPO, GammaPOConfig, MarginObservation
from selfplay.control import gammapo as gammapo_module
from selfplay.losses import get_loss


def authors_targets(queue_gaps, batch_gaps, gamma0, tau, eps=1e-10):
    """Their loop over the pool `sampled + batch` (reward units), γ of the batch's pairs."""
    gaps = list(queue_gaps) + list(batch_gaps)
    n = len(gaps)
    p = [1.0 / n] * n
    p_lr = min(0.5 / tau, 1)
    for _ in range(20):
        gamma = [gamma0 * n * p_i for p_i in p]
        kl_grad = [tau * (1 + math.log(n * (p_i + eps))) for p_i in p]
        p_grad = [k + (gamma0 * n) / (1 + math.exp(g - gm)) / n
                  for k, g, gm in zip(kl_grad, gaps, gamma)]
        e = [math.exp(-p_lr * pg) for pg in p_grad]
        total = sum(p_i * e_i for p_i, e_i in zip(p, e))
        p = [p_i * e_i / total for p_i, e_i in zip(p, e)]
    return gamma[-len(batch_gaps):]  # γ from the start of the 20th step, as theirs


def controller(value=0.5, tau=10.0, beta=10.0, seed=0, queue=None):
    made = GammaPO(GammaPOConfig(value=value, tau=tau), beta=beta, seed=seed)
    if queue is not None:
        made.load_state_dict({**made.state_dict(), "queue": list(queue)})
    return made


def test_four_pairs_at_margin_two_get_the_authors_targets():
    # β = 10, γ0 = 0.5, τ = 10 (their llama-3 config but γ0): a queue of 8 zeros is sampled
    # whole (8 < 256 − 4), so the pool is 8 gaps of 0 and 4 of β·2 = 20.
    got = controller(queue=[0.0] * 8).pair_gammas([2.0] * 4)
    assert got == pytest.approx([0.674842179470035] * 4, abs=1e-12)
    # γ after the 20th update would be 0.6748423148549443: the port returns the earlier one.
    assert got[0] != pytest.approx(0.6748423148549443, abs=1e-9)
    # The "0.672": the same pool with the queue's initial 8 standard-normal draws; the
    # exact value depends on the draws (seed 0 here: 0.67308), the old in-batch code gave 0.50.
    assert controller(seed=0).pair_gammas([2.0] * 4) == pytest.approx([0.67308] * 4, abs=1e-5)
    assert controller(queue=[]).pair_gammas([2.0] * 4) == pytest.approx([0.5] * 4)


def test_mixed_margins_match_the_transcription_and_favour_confident_pairs():
    margins = [-0.5, 0.0, 0.3, 1.0]
    got = controller(queue=[1.0, -1.0, 0.5]).pair_gammas(margins)
    expected = [0.4547298219418129, 0.45704922424996763, 0.48630714441542783, 0.7270770336968473]
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(
        [g / 10 for g in authors_targets([1.0, -1.0, 0.5], [-5.0, 0.0, 3.0, 10.0], 5.0, 10.0)],
        abs=1e-12)
    assert got == sorted(got)  # larger margin, larger target


def test_targets_average_gamma0_over_the_whole_pool():
    gaps = np.array([-3.0, 0.5, 2.0, 7.0, 12.0, 20.0])
    targets = gammapo_module.gammapo_targets(gaps, gamma0=5.0, tau=3.0)
    assert targets.mean() == pytest.approx(5.0)
    assert targets.tolist() == pytest.approx(authors_targets([], gaps.tolist(), 5.0, 3.0),
                                             abs=1e-12)
    # Equal gaps: the gradient is equal for every entry, p stays uniform, every target is γ0.
    assert gammapo_module.gammapo_targets(np.full(5, 4.0), 5.0, 10.0).tolist() == \
        pytest.approx([5.0] * 5)


def test_the_queue_takes_each_batch_and_keeps_the_newest_2048():
    made = controller(queue=[0.0] * 8, beta=2.0)
    made.pair_gammas([0.5, -0.25, 1.0])
    assert made.queue == [0.0] * 8 + [1.0, -0.5, 2.0]  # reward gaps β·M, newest last
    made.load_state_dict({**made.state_dict(), "queue": [float(i) for i in range(2046)]})
    made.pair_gammas([3.0, 4.0, 5.0, 6.0])
    assert len(made.queue) == 2048
    assert made.queue[:2] == [2.0, 3.0] and made.queue[-4:] == [6.0, 8.0, 10.0, 12.0]
    assert made.describe() == {"gamma": 0.5, "gamma_queue": 2048}


def test_the_pool_is_256_pairs_once_the_queue_is_long_enough(monkeypatch):
    sizes = []
    solve = gammapo_module.gammapo_targets
    monkeypatch.setattr(gammapo_module, "gammapo_targets",
                        lambda gaps, gamma0, tau: sizes.append(len(gaps)) or solve(gaps, gamma0, tau))
    made = controller(queue=[0.0] * 8)
    made.pair_gammas([0.1] * 4)  # 8 sampled + 4
    made.load_state_dict({**made.state_dict(), "queue": [0.0] * 1000})
    made.pair_gammas([0.1] * 4)  # 252 sampled + 4
    made.pair_gammas([0.1] * 300)  # more than 256 pairs: none sampled (the authors' code raises)
    assert sizes == [12, 256, 300]


def test_state_round_trip_through_json_continues_identically():
    rng = np.random.default_rng(1)
    batches = [rng.normal(0.3, 0.5, size=4).tolist() for _ in range(80)]
    first = controller(seed=3)
    for batch in batches[:70]:  # queue 288 > 252: which past gaps are sampled matters
        first.pair_gammas(batch)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = controller(seed=99)  # another seed: everything must come from the state
    resumed.load_state_dict(state)
    assert [resumed.pair_gammas(b) for b in batches[70:]] == \
        [first.pair_gammas(b) for b in batches[70:]]
    assert resumed.state_dict() == first.state_dict()


def test_the_seed_decides_the_initial_queue_and_the_sampling():
    assert controller(seed=4).queue == controller(seed=4).queue
    assert controller(seed=4).queue != controller(seed=5).queue
    assert len(controller(seed=4).queue) == 8


def test_value_is_gamma0_and_update_changes_nothing():
    made = controller(value=0.4)
    before = made.state_dict()
    made.update(MarginObservation(1, 3, [0.1, 0.2], [0.3, 0.4]))
    assert made.value == 0.4 and made.state_dict() == before
    assert CONTROLLERS["gammapo"] is GammaPO


def test_building_without_the_loss_beta_is_an_error():
    with pytest.raises(ValueError, match="gammapo needs the simpo loss's beta"):
        GammaPO(GammaPOConfig())
    bound = GammaPOConfig()
    bound.bind(loss_beta=2.5, seed=7)
    made = GammaPO(bound)
    assert made.beta == 2.5 and made.queue == controller(seed=7).queue


def test_loading_another_controllers_state_is_an_error():
    with pytest.raises(ValueError, match="'gammapo' cannot load the state of controller 'fixed'"):
        controller().load_state_dict({"controller": "fixed"})


def test_simpo_with_the_targets_is_the_authors_loss():
    # Theirs: −log σ(β·M_i − γ_i) with γ_i in reward units; here simpo(γ = γ_i / β).
    beta = 10.0
    chosen = torch.tensor([-1.0, -0.8, -1.5, -0.4])
    rejected = torch.tensor([-1.5, -0.8, -1.8, -1.4])
    margins = (chosen - rejected).tolist()
    gammas = controller(queue=[1.0, -1.0, 0.5], beta=beta).pair_gammas(margins)
    out = get_loss("simpo")(chosen, rejected, gamma=torch.tensor(gammas), beta=beta)
    theirs = sum(-math.log(1 / (1 + math.exp(-(beta * m - beta * g))))
                 for m, g in zip(margins, gammas)) / 4
    assert out.loss.item() == pytest.approx(theirs, rel=1e-6)


class _FakeTrainer:
    def __init__(self, rank):
        self.rank = rank

    def train(self, pairs, gamma, iteration, progress):
        self.last = gamma([0.5, 1.5])  # what a micro-batch does to the controller
        return self.last  # stands in for the TrainStats


def test_under_ray_rank_zero_returns_the_controller_state_and_the_driver_loads_it(monkeypatch):
    """The ranks get a pickled copy of `controller.pair_gammas`; rank 0 hands the copy's state
    back and the driver's group loads it, so the queue survives (no Ray started here)."""
    pytest.importorskip("ray")
    import pickle

    from selfplay.distributed import ray_placement
    from selfplay.distributed.ray_actors import TrainerRank

    driver = controller(queue=[0.0] * 8)
    ranks = []
    for rank in (0, 1):
        actor = TrainerRank.__new__(TrainerRank)  # no process environment to prepare
        actor.trainer = _FakeTrainer(rank)
        ranks.append(actor)

    class Remote:  # actor.train.remote(...) → the result, on a copy, as Ray's pickling makes
        def __init__(self, actor):
            self.train = type("M", (), {"remote": lambda _, *args: actor.train(
                *pickle.loads(pickle.dumps(args)))})()
            self.lr = type("M", (), {"remote": lambda _: 1e-3})()

    monkeypatch.setattr(ray_placement, "wait_all", lambda results, role: list(results))
    group = ray_placement.RayTrainerGroup([Remote(actor) for actor in ranks])
    expected = controller(queue=[0.0] * 8).pair_gammas([0.5, 1.5])
    assert group.train([], driver.pair_gammas, 1) == expected  # the stats come back as before
    assert driver.queue == [0.0] * 8 + [5.0, 15.0]  # the ranks' queue update reached the driver
    stats, state = ranks[1].train([], pickle.loads(pickle.dumps(driver.pair_gammas)), 1)
    assert state is None and stats == ranks[1].trainer.last  # only rank 0 sends the state
    assert ranks[0].train([], lambda margins: 0.5, 1) == (0.5, None)  # no controller: no state
