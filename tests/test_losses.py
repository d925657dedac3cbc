import dataclasses
import math

import pytest
import torch

from selfplay import losses
from selfplay.losses import (available_losses, get_loss, needs_reference, register_loss,
                             scale_to_active)

ALL_LOSSES = ["dpo", "ipo", "repo", "repo++", "simpo"]


def logps(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def two_pairs(grad=False):
    # Margins M = chosen − rejected = [0.3, 0.9].
    return logps(-1.0, -0.5, grad=grad), logps(-1.3, -1.4, grad=grad)


def call(name, chosen, rejected, **kwargs):
    """Call a loss, supplying reference log-probs (equal to the policy's) when it needs them."""
    if needs_reference(name) and "ref_chosen_logps" not in kwargs:
        kwargs.update(ref_chosen_logps=chosen.detach(), ref_rejected_logps=rejected.detach())
    return get_loss(name)(chosen, rejected, **kwargs)


# ---- hand-computed values ----

def test_repo_value():
    # M = [0.3, 0.9], γ = 0.5: ReLU(0.2) = 0.2 and ReLU(−0.4) = 0, mean (0.2 + 0) / 2 = 0.1.
    out = get_loss("repo")(*two_pairs(), gamma=0.5)
    assert out.loss.item() == pytest.approx(0.1)
    assert out.margins.tolist() == pytest.approx([0.3, 0.9])
    assert out.active.tolist() == [True, False]


def test_simpo_value():
    # β = 2, γ = 0.5: β(M − γ) = [−0.4, 0.8].
    # −log σ(−0.4) = log(1 + e^0.4) = log(2.4918247) = 0.9130153
    # −log σ(0.8)  = log(1 + e^−0.8) = log(1.4493290) = 0.3711007
    # mean = 0.6420580
    out = get_loss("simpo")(*two_pairs(), gamma=0.5, beta=2.0)
    assert out.loss.item() == pytest.approx(0.6420580, abs=1e-6)
    assert out.active.tolist() == [True, False]


def test_repo_plus_plus_value():
    # Same terms as SimPO, but the pair with M = 0.9 ≥ γ is filtered: (0.9130153 + 0) / 2.
    out = get_loss("repo++")(*two_pairs(), gamma=0.5, beta=2.0)
    assert out.loss.item() == pytest.approx(0.4565077, abs=1e-6)
    assert out.active.tolist() == [True, False]


def dpo_inputs():
    # h = (c − ref_c) − (r − ref_r):
    # pair 1: (−10 + 10.5) − (−11 + 10.5) = 0.5 + 0.5 = 1.0;  pair 2: 0 − 0 = 0.
    return dict(
        chosen_logps=logps(-10.0, -12.0),
        rejected_logps=logps(-11.0, -12.0),
        ref_chosen_logps=logps(-10.5, -12.0),
        ref_rejected_logps=logps(-10.5, -12.0),
    )


def test_dpo_value_and_default_beta():
    # β = 0.1 (the default): −log σ(0.1) = log(1 + e^−0.1) = log(1.9048374) = 0.6443967,
    # −log σ(0) = log 2 = 0.6931472; mean = 0.6687720. γ plays no part.
    inputs = dpo_inputs()
    chosen, rejected = inputs.pop("chosen_logps"), inputs.pop("rejected_logps")
    out = get_loss("dpo")(chosen, rejected, gamma=0.5, **inputs)
    assert out.loss.item() == pytest.approx(0.6687720, abs=1e-6)
    assert out.margins.tolist() == pytest.approx([1.0, 0.0])
    assert out.active.tolist() == [True, True]
    explicit = get_loss("dpo")(chosen, rejected, gamma=123.0, beta=0.1, **inputs)
    assert explicit.loss.item() == out.loss.item()


def test_ipo_value_with_reference():
    # h = [1.0, 0.0], β = 0.1: 1/(2β) = 5; (1 − 5)² = 16, (0 − 5)² = 25; mean 20.5.
    inputs = dpo_inputs()
    chosen, rejected = inputs.pop("chosen_logps"), inputs.pop("rejected_logps")
    out = get_loss("ipo")(chosen, rejected, gamma=0.5, beta=0.1, **inputs)
    assert out.loss.item() == pytest.approx(20.5)
    assert out.active.tolist() == [True, True]


def test_ipo_value_reference_free():
    # M = [−1 + 2, −3 + 1] = [1, −2], β = 0.25: 1/(2β) = 2; (1 − 2)² = 1, (−2 − 2)² = 16; mean 8.5.
    out = get_loss("ipo")(logps(-1.0, -3.0), logps(-2.0, -1.0), gamma=0.5, beta=0.25)
    assert out.loss.item() == pytest.approx(8.5)
    assert out.margins.tolist() == pytest.approx([1.0, -2.0])


@pytest.mark.parametrize("name,beta", [("simpo", 2.0), ("repo++", 2.0), ("dpo", 0.1), ("ipo", 0.1)])
def test_default_beta_comes_from_registry(name, beta):
    assert get_loss(name).default_beta == beta
    chosen, rejected = two_pairs()
    default = call(name, chosen, rejected, gamma=0.5)
    explicit = call(name, chosen, rejected, gamma=0.5, beta=beta)
    assert default.loss.item() == explicit.loss.item()


# ---- gradients ----

def test_repo_gradient_is_zero_for_filtered_pairs():
    # d/dc ReLU(γ − (c − r)) / n = −1/n when M < γ, 0 when M ≥ γ; the rejected side gets +1/n.
    chosen, rejected = two_pairs(grad=True)
    get_loss("repo")(chosen, rejected, gamma=0.5).loss.backward()
    assert chosen.grad.tolist() == [-0.5, 0.0]
    assert rejected.grad.tolist() == [0.5, 0.0]


def test_repo_plus_plus_gradient_is_zero_for_filtered_pairs():
    chosen, rejected = two_pairs(grad=True)
    get_loss("repo++")(chosen, rejected, gamma=0.5, beta=2.0).loss.backward()
    # Active pair: d/dc −log σ(β(M − γ)) / n = −β σ(−β(M − γ)) / n = −2 σ(0.4) / 2 = −0.5986877.
    assert chosen.grad[0].item() == pytest.approx(-0.5986877, abs=1e-6)
    assert rejected.grad[0].item() == pytest.approx(0.5986877, abs=1e-6)
    assert chosen.grad[1].item() == 0.0
    assert rejected.grad[1].item() == 0.0


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradients_reach_both_sides(name):
    chosen, rejected = logps(-2.0, -1.0, grad=True), logps(-1.0, -1.5, grad=True)  # M = [−1, 0.5]
    call(name, chosen, rejected, gamma=1.0).loss.backward()
    assert chosen.grad is not None and chosen.grad.abs().sum() > 0
    assert rejected.grad is not None and rejected.grad.abs().sum() > 0


# ---- RePO averaged over its active pairs (reduction="active") ----

def four_pairs(grad=False):
    # M = [0.3, 0.9, −0.2, 0.55]: with γ = 0.5 active, filtered, active, filtered.
    return (logps(-1.0, -0.5, -1.2, -0.85, grad=grad), logps(-1.3, -1.4, -1.0, -1.4, grad=grad))


def test_repo_active_reduction_divides_by_the_active_pairs():
    chosen, rejected = four_pairs(grad=True)
    out = get_loss("repo")(chosen, rejected, gamma=0.5, reduction="active")
    # ReLU(γ − M) = [0.2, 0, 0.7, 0]: sum 0.9 over 2 active pairs = 0.45 (mean over all: 0.225).
    assert out.loss.item() == pytest.approx(0.45)
    out.loss.backward()
    # d/dc = −1/#active for an active pair, 0 for a filtered one; the rejected side mirrors it.
    assert chosen.grad.tolist() == [-0.5, 0.0, -0.5, 0.0]
    assert rejected.grad.tolist() == [0.5, 0.0, 0.5, 0.0]
    assert out.active.tolist() == [True, False, True, False]


def test_repo_active_reduction_without_active_pairs_is_zero_not_nan():
    chosen, rejected = four_pairs(grad=True)
    out = get_loss("repo")(chosen, rejected, gamma=-1.0, reduction="active")
    out.loss.backward()
    assert out.loss.item() == 0.0 and chosen.grad.tolist() == [0.0] * 4


def test_repo_active_reduction_over_rank_shares_adds_up_to_the_whole_batch():
    # Two ranks hold pairs 0, 2 and 1, 3 of the micro-batch. As the trainer does: each share's
    # loss over all its pairs, scaled by the whole batch's counts (4 pairs; the shares' own
    # n_active summed: 2). Each share's loss × its pair count, summed, is the whole batch's
    # loss × 4 (the trainer's weighting), and the gradients are the whole batch's.
    chosen, rejected = four_pairs(grad=True)
    whole = get_loss("repo")(chosen, rejected, gamma=0.5, reduction="active")
    shares = [get_loss("repo")(chosen[share], rejected[share], gamma=0.5)
              for share in ([0, 2], [1, 3])]
    assert [out.n_active for out in shares] == [2, 0]
    total = 0.0
    for out in shares:
        loss = scale_to_active(out.loss, 4, sum(o.n_active for o in shares))
        (loss * 2 / 4).backward()
        total += loss.item() * 2
    assert total == pytest.approx(whole.loss.item() * 4)
    assert chosen.grad.tolist() == pytest.approx([-0.5, 0.0, -0.5, 0.0])
    # Each share counting only its own active pairs (2 and 0) would give half the loss.
    local = sum(get_loss("repo")(chosen[share], rejected[share], gamma=0.5,
                                 reduction="active").loss.item() * len(share)
                for share in ([0, 2], [1, 3]))
    assert local == pytest.approx(0.9) and whole.loss.item() * 4 == pytest.approx(1.8)


def test_the_active_reduction_is_repo_only():
    assert get_loss("repo").reductions == ("all", "active")
    for name in ("simpo", "repo++", "dpo", "ipo"):
        assert get_loss(name).reductions == ("all",)
    with pytest.raises(ValueError, match="loss 'simpo': reduction must be one of all, got "
                                         "'active'"):
        get_loss("simpo")(*two_pairs(), gamma=0.5, reduction="active")
    with pytest.raises(ValueError, match="loss 'repo': reduction must be one of all, active"):
        get_loss("repo")(*two_pairs(), gamma=0.5, reduction="sum")


# ---- RePO is SimPO's β → ∞ limit: SimPO/β → ReLU(γ − M) ----

def test_simpo_over_beta_converges_to_repo():
    gamma = 0.5
    chosen, rejected = logps(-1.0, -0.5, -1.2, -0.85), logps(-1.3, -1.4, -1.0, -1.4)
    # M = [0.3, 0.9, −0.2, 0.55]; ReLU(γ − M) = [0.2, 0, 0.7, 0], mean 0.225.
    repo = get_loss("repo")(chosen, rejected, gamma=gamma).loss.item()
    assert repo == pytest.approx(0.225)
    errors = []
    for beta in [1.0, 10.0, 100.0, 1000.0]:
        simpo = get_loss("simpo")(chosen, rejected, gamma=gamma, beta=beta).loss.item()
        errors.append(abs(simpo / beta - repo))
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)
    # Per pair the gap is softplus(−β|γ − M|)/β ≤ log(2)/β.
    assert errors[-1] < 1e-3


def test_simpo_over_beta_gradient_converges_to_repo():
    gamma = 0.5
    n = 4
    # M = [0.3, 0.9, −0.2, 0.55]: active, filtered, active, filtered.
    repo_chosen = [-1 / n, 0.0, -1 / n, 0.0]
    gaps = []
    for beta in [1.0, 10.0, 100.0, 1000.0]:
        chosen = logps(-1.0, -0.5, -1.2, -0.85, grad=True)
        rejected = logps(-1.3, -1.4, -1.0, -1.4, grad=True)
        out = get_loss("simpo")(chosen, rejected, gamma=gamma, beta=beta)
        (out.loss / beta).backward()
        # The rejected side is the mirror image: +1/n for active pairs, 0 for filtered ones.
        assert rejected.grad.tolist() == pytest.approx([-g for g in chosen.grad.tolist()])
        gaps.append(max(abs(g - r) for g, r in zip(chosen.grad.tolist(), repo_chosen)))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-6
    assert chosen.grad.tolist() == pytest.approx(repo_chosen, abs=1e-6)


# ---- output shape and detachment ----

@pytest.mark.parametrize("name", ALL_LOSSES)
def test_output_shapes_and_detachment(name):
    chosen, rejected = logps(-1.0, -0.5, -2.0, grad=True), logps(-1.3, -1.4, -1.0, grad=True)
    out = call(name, chosen, rejected, gamma=0.5)
    assert out.loss.shape == () and out.loss.requires_grad
    assert out.margins.shape == (3,) and not out.margins.requires_grad
    assert out.active.shape == (3,) and out.active.dtype == torch.bool
    assert not out.active.requires_grad
    assert math.isfinite(out.loss.item())
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = torch.tensor(0.0)


def test_simpo_stable_for_large_beta_times_margin():
    out = get_loss("simpo")(logps(-100.0, 0.0), logps(0.0, -100.0), gamma=0.5, beta=1000.0)
    # −log σ(−100500) ≈ 100500 (log(sigmoid) would give inf); −log σ(99500) ≈ 0.
    assert out.loss.item() == pytest.approx(100500 / 2)


# ---- registry and input errors ----

def test_available_losses_and_flags():
    assert available_losses() == ALL_LOSSES
    assert [n for n in ALL_LOSSES if needs_reference(n)] == ["dpo"]
    assert [n for n in ALL_LOSSES if get_loss(n).default_beta is not None] == \
        ["dpo", "ipo", "repo++", "simpo"]
    assert [n for n in ALL_LOSSES if get_loss(n).needs_reference] == ["dpo"]


def test_each_loss_declares_the_normalisation_it_is_defined_on():
    # RePO/SimPO/RePO++ on per-token means s(y|x); DPO and IPO on summed log-probs.
    assert [n for n in ALL_LOSSES if get_loss(n).length_normalised] == ["repo", "repo++", "simpo"]


def test_ipo_optimum_is_a_summed_log_ratio_of_one_over_two_beta():
    # β = 0.1: the loss is least, with zero gradient, where the margin is 1/(2β) = 5 nats in the
    # units it is given; the registry says those are summed log-probs, not per-token means.
    assert not get_loss("ipo").length_normalised
    for margin, expect_zero in ((5.0, True), (4.0, False), (0.5, False)):
        chosen = logps(-10.0 + margin, grad=True)
        out = get_loss("ipo")(chosen, logps(-10.0), gamma=0.0, beta=0.1)
        out.loss.backward()
        assert (out.loss.item() == pytest.approx(0.0)) is expect_zero
        assert (abs(chosen.grad.item()) < 1e-12) is expect_zero


def test_unknown_loss_names_the_choices():
    expected = r"unknown loss 'rep0'; choose from: dpo, ipo, repo, repo\+\+, simpo"
    with pytest.raises(ValueError, match=expected):
        get_loss("rep0")


def test_register_refuses_duplicate_name(monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))
    with pytest.raises(ValueError, match="'repo' is already registered"):
        register_loss("repo")(lambda *args, **kwargs: None)


def test_registered_loss_is_found(monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))

    @register_loss("hinge", default_beta=1.0)
    def hinge(chosen, rejected, *, gamma, beta, reference):
        margins = chosen - rejected
        loss = torch.relu(gamma - beta * margins).mean()
        return losses.LossOutput(loss, margins.detach(), (margins < gamma).detach())

    assert "hinge" in available_losses() and get_loss("hinge").default_beta is not None
    assert get_loss("hinge").length_normalised and not get_loss("hinge").needs_reference
    # M = [0.3, 0.9], β = 1, γ = 0.5: (0.2 + 0) / 2 = 0.1.
    assert get_loss("hinge")(*two_pairs(), gamma=0.5).loss.item() == pytest.approx(0.1)


def test_dpo_needs_reference():
    with pytest.raises(ValueError, match="'dpo' needs ref_chosen_logps and ref_rejected_logps"):
        get_loss("dpo")(*two_pairs(), gamma=0.5)
    chosen, rejected = two_pairs()
    with pytest.raises(ValueError, match="pass both"):
        get_loss("dpo")(chosen, rejected, gamma=0.5, ref_chosen_logps=chosen)


def test_reference_free_losses_refuse_reference():
    chosen, rejected = two_pairs()
    with pytest.raises(ValueError, match="'repo' is reference-free"):
        get_loss("repo")(
            chosen, rejected, gamma=0.5, ref_chosen_logps=chosen, ref_rejected_logps=rejected
        )


def test_repo_refuses_beta():
    with pytest.raises(ValueError, match="'repo' takes no beta"):
        get_loss("repo")(*two_pairs(), gamma=0.5, beta=2.0)


def test_non_positive_beta_is_an_error():
    with pytest.raises(ValueError, match="beta must be > 0, got 0.0"):
        get_loss("simpo")(*two_pairs(), gamma=0.5, beta=0.0)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_empty_batch_is_an_error(name):
    empty = logps()
    with pytest.raises(ValueError, match="empty batch"):
        call(name, empty, empty, gamma=0.5)


def test_mismatched_shapes_are_an_error():
    with pytest.raises(ValueError, match=r"same shape, got \(2,\) and \(3,\)"):
        get_loss("repo")(logps(1.0, 2.0), logps(1.0, 2.0, 3.0), gamma=0.5)


def test_per_pair_gamma_filters_each_pair_against_its_own_cutoff():
    chosen = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    rejected = torch.tensor([-0.3, -0.3, -0.3])
    out = get_loss("repo")(chosen, rejected, gamma=[0.2, 0.5, 0.3])
    # margins 0.3: filtered by 0.2, active under 0.5 (0.2), filtered at exactly 0.3 → 0.2/3
    assert out.loss.item() == pytest.approx(0.2 / 3)
    assert out.active.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="per-pair gamma has shape"):
        get_loss("repo")(chosen, rejected, gamma=[0.1, 0.2])
