"""γ-PO (selfplay/control/gammapo.py: the controller's γ0 and the trainer's GammaPOTargets) against the authors' algorithm (sunjie279/gammaPO,
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

from selfplay.control import (CONTROLLERS, GammaPO, GammaPOConfig, GammaPOTargets,
                              MarginObservation, build_pair_targets)
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


GAMMA0 = 0.5  # the iteration's γ: the mean target


def controller(tau=10.0, beta=10.0, seed=0, queue=None):
    """The trainer's per-pair targets, optionally with a given queue of past gaps."""
    made = GammaPOTargets(beta=beta, tau=tau, seed=seed)
    if queue is not None:
        made.load_state_dict({**made.state_dict(), "queue": list(queue)})
    return made


def test_four_pairs_at_margin_two_get_the_authors_targets():
    # β = 10, γ0 = 0.5, τ = 10 (their llama-3 config but γ0): a queue of 8 zeros is sampled
    # whole (8 < 256 − 4), so the pool is 8 gaps of 0 and 4 of β·2 = 20.
    got = controller(queue=[0.0] * 8)([2.0] * 4, GAMMA0)
    assert got == pytest.approx([0.674842179470035] * 4, abs=1e-12)
    # γ after the 20th update would be 0.6748423148549443: the port returns the earlier one.
    assert got[0] != pytest.approx(0.6748423148549443, abs=1e-9)
    # The "0.672": the same pool with the queue's initial 8 standard-normal draws; the
    # exact value depends on the draws (seed 0 here: 0.67308), the old in-batch code gave 0.50.
    assert controller(seed=0)([2.0] * 4, GAMMA0) == pytest.approx([0.67308] * 4, abs=1e-5)
    assert controller(queue=[])([2.0] * 4, GAMMA0) == pytest.approx([0.5] * 4)


def test_mixed_margins_match_the_transcription_and_favour_confident_pairs():
    margins = [-0.5, 0.0, 0.3, 1.0]
    got = controller(queue=[1.0, -1.0, 0.5])(margins, GAMMA0)
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
    made([0.5, -0.25, 1.0], GAMMA0)
    assert made.queue == [0.0] * 8 + [1.0, -0.5, 2.0]  # reward gaps β·M, newest last
    made.load_state_dict({**made.state_dict(), "queue": [float(i) for i in range(2046)]})
    made([3.0, 4.0, 5.0, 6.0], GAMMA0)
    assert len(made.queue) == 2048
    assert made.queue[:2] == [2.0, 3.0] and made.queue[-4:] == [6.0, 8.0, 10.0, 12.0]


def test_the_pool_is_256_pairs_once_the_queue_is_long_enough(monkeypatch):
    sizes = []
    solve = gammapo_module.gammapo_targets
    monkeypatch.setattr(gammapo_module, "gammapo_targets",
                        lambda gaps, gamma0, tau: sizes.append(len(gaps)) or solve(gaps, gamma0, tau))
    made = controller(queue=[0.0] * 8)
    made([0.1] * 4, GAMMA0)  # 8 sampled + 4
    made.load_state_dict({**made.state_dict(), "queue": [0.0] * 1000})
    made([0.1] * 4, GAMMA0)  # 252 sampled + 4
    made([0.1] * 300, GAMMA0)  # more than 256 pairs: none sampled (the authors' code raises)
    assert sizes == [12, 256, 300]


def test_state_round_trip_through_json_continues_identically():
    rng = np.random.default_rng(1)
    batches = [rng.normal(0.3, 0.5, size=4).tolist() for _ in range(80)]
    first = controller(seed=3)
    for batch in batches[:70]:  # queue 288 > 252: which past gaps are sampled matters
        first(batch, GAMMA0)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = controller(seed=99)  # another seed: everything must come from the state
    resumed.load_state_dict(state)
    assert [resumed(b, GAMMA0) for b in batches[70:]] == \
        [first(b, GAMMA0) for b in batches[70:]]
    assert resumed.state_dict() == first.state_dict()


def test_the_seed_decides_the_initial_queue_and_the_sampling():
    assert controller(seed=4).queue == controller(seed=4).queue
    assert controller(seed=4).queue != controller(seed=5).queue
    assert len(controller(seed=4).queue) == 8


def test_value_is_gamma0_and_update_changes_nothing():
    made = GammaPO(GammaPOConfig(value=0.4))
    before = made.state_dict()
    made.update(MarginObservation(1, 3, [0.1, 0.2]))
    assert made.value == 0.4 and made.state_dict() == before == {"controller": "gammapo"}
    assert CONTROLLERS["gammapo"] is GammaPO


def test_the_targets_are_built_with_explicit_beta_tau_and_seed():
    made = build_pair_targets(GammaPOConfig(tau=3.0), loss_beta=2.5, seed=7)
    assert (made.beta, made.tau, made.queue) == (2.5, 3.0, controller(seed=7).queue)
    assert build_pair_targets(GammaPOConfig(), loss_beta=2.5, seed=7)(
        [0.1, 0.4], 0.7) != made([0.1, 0.4], 0.5)  # the iteration's γ sets their mean
    with pytest.raises(ValueError, match="beta must be > 0"):
        GammaPOTargets(beta=0.0, tau=10.0, seed=0)


def test_the_mean_target_is_the_gamma_passed_in():
    # An empty queue and equal margins: every pair gets exactly the iteration's γ.
    assert controller(queue=[])([2.0] * 4, 0.8) == pytest.approx([0.8] * 4)


def test_loading_another_controllers_state_is_an_error():
    with pytest.raises(ValueError, match="'gammapo' cannot load the state of controller 'fixed'"):
        GammaPO(GammaPOConfig()).load_state_dict({"controller": "fixed"})


def test_simpo_with_the_targets_is_the_authors_loss():
    # Theirs: −log σ(β·M_i − γ_i) with γ_i in reward units; here simpo(γ = γ_i / β).
    beta = 10.0
    chosen = torch.tensor([-1.0, -0.8, -1.5, -0.4])
    rejected = torch.tensor([-1.5, -0.8, -1.8, -1.4])
    margins = (chosen - rejected).tolist()
    gammas = controller(queue=[1.0, -1.0, 0.5], beta=beta)(margins, GAMMA0)
    out = get_loss("simpo")(chosen, rejected, gamma=torch.tensor(gammas), beta=beta)
    theirs = sum(-math.log(1 / (1 + math.exp(-(beta * m - beta * g))))
                 for m, g in zip(margins, gammas)) / 4
    assert out.loss.item() == pytest.approx(theirs, rel=1e-6)
