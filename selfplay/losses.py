"""Preference losses: one pure function per loss, looked up by name.

Every loss is called as::

    get_loss(name)(chosen_logps, rejected_logps, *, gamma, beta=None,
                   ref_chosen_logps=None, ref_rejected_logps=None,
                   reduction="all") -> LossOutput

``chosen_logps`` / ``rejected_logps`` are 1-D tensors, one sequence log-likelihood per pair. Each
registered loss declares which it is defined on (``LossSpec.length_normalised``) and the caller
supplies that: RePO, SimPO and RePO++ take length-normalised scores ``s(y|x)`` (mean log-prob per
completion token); DPO and IPO take summed log-probs (IPO's target ``1/(2β)`` is a
summed log-ratio: fed per-token means with β = 0.1 it would pull margins toward 5 nats per token).

- ``repo``:   ``mean ReLU(γ − M)`` with ``M = chosen − rejected``; no β, no reference. With
  ``reduction="active"``: ``sum ReLU(γ − M) / max(#{M < γ}, 1)``, the mean over the active pairs
  only (which pairs train stays the filter's choice; the step no longer shrinks as pairs pass γ).
- ``simpo``:  ``mean −log σ(β(M − γ))``; default β 2.0.
- ``repo++``: RePO's filter on SimPO: pairs with ``M < γ`` give ``−log σ(β(M − γ))``, the others 0,
  averaged over all pairs; default β 2.0.
- ``dpo``:    ``mean −log σ(β h)`` with ``h = (chosen − ref_chosen) − (rejected − ref_rejected)``;
  needs the frozen reference's log-probs; ignores γ; default β 0.1.
- ``ipo``:    ``mean (h − 1/(2β))²`` with ``h`` as for DPO when reference log-probs are given, else
  the reference-free ``h = M``; ignores γ; default β 0.1.

``margins`` is ``M`` (or ``h`` for DPO/IPO) and ``active`` marks the pairs that get a gradient from
the γ filter (``M < γ``); DPO and IPO filter nothing, so their ``active`` is all True.

With several trainer ranks each holds a share of a micro-batch; an ``active`` reduction must
divide by the whole micro-batch's active count, which no share knows. The trainer then calls the
loss with ``reduction="all"`` and applies ``scale_to_active`` with the counts summed over the
shares (each share's own count is ``LossOutput.n_active``: what the loss measured).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "LossOutput",
    "LossSpec",
    "available_losses",
    "get_loss",
    "needs_reference",
    "register_loss",
    "scale_to_active",
]


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar, mean over pairs
    margins: torch.Tensor  # per pair, detached
    active: torch.Tensor  # per pair bool, detached

    @property
    def n_active(self) -> int:
        """How many pairs the γ filter let through (got a gradient)."""
        return int(self.active.sum())


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function plus what the caller must supply.

    Calling a spec fills in the default β, checks the inputs and calls the loss function.
    """

    name: str
    fn: Callable[..., LossOutput]
    default_beta: float | None  # None: the loss has no β
    reference: str  # "none", "optional" or "required"
    length_normalised: bool  # True: mean log-prob per completion token; False: summed log-probs
    reductions: tuple[str, ...] = ("all",)  # "all": mean over all pairs; "active": over M < γ

    @property
    def needs_reference(self) -> bool:
        """True when the caller must supply a frozen reference model's log-probs."""
        return self.reference == "required"

    def resolve_beta(self, beta: float | None) -> float | None:
        """The β this loss runs with: `beta`, or its default when None (None: it has no β)."""
        if self.default_beta is None:
            if beta is not None:
                raise ValueError(f"loss {self.name!r} takes no beta, got beta={beta}")
            return None
        beta = self.default_beta if beta is None else float(beta)
        if not beta > 0:
            raise ValueError(f"loss {self.name!r}: beta must be > 0, got {beta}")
        return beta

    def __call__(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        *,
        gamma: float | torch.Tensor,
        beta: float | None = None,
        ref_chosen_logps: torch.Tensor | None = None,
        ref_rejected_logps: torch.Tensor | None = None,
        reduction: str = "all",
    ) -> LossOutput:
        _check_pairs(self.name, chosen_logps, rejected_logps)
        if reduction not in self.reductions:
            raise ValueError(f"loss {self.name!r}: reduction must be one of "
                             f"{', '.join(self.reductions)}, got {reduction!r}")
        beta = self.resolve_beta(beta)
        reference = _check_reference(self, chosen_logps, ref_chosen_logps, ref_rejected_logps)
        out = self.fn(chosen_logps, rejected_logps, gamma=_gamma(gamma, chosen_logps), beta=beta,
                      reference=reference)
        if reduction == "active":
            out = replace(out, loss=scale_to_active(out.loss, len(chosen_logps), out.n_active))
        return out


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, default_beta: float | None = None, reference: str = "none",
                  length_normalised: bool = True, reductions: tuple[str, ...] = ("all",)):
    """Decorator adding ``fn(chosen, rejected, *, gamma, beta, reference)`` under ``name``.

    ``default_beta`` is None for a loss without β. The decorator's ``reference`` says whether the
    loss takes reference log-probs ("none", "optional", "required"); ``fn`` then receives them as
    ``reference``: None or the pair ``(ref_chosen_logps, ref_rejected_logps)``, already checked.
    ``length_normalised`` says which log-likelihoods the loss is defined on: per-token means
    (True) or sums over the completion (False); the trainer supplies those. ``reductions``: the
    averages it allows; "active" only for a loss whose filtered pairs contribute exactly 0.
    """
    if reference not in ("none", "optional", "required"):
        raise ValueError(f"reference must be 'none', 'optional' or 'required', got {reference!r}")

    def decorator(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = LossSpec(name, fn, default_beta, reference, bool(length_normalised),
                                 tuple(reductions))
        return fn

    return decorator


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str) -> LossSpec:
    """The loss registered as ``name``, callable with the signature in the module docstring."""
    try:
        return _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; choose from: {', '.join(available_losses())}"
        ) from None


def needs_reference(name: str) -> bool:
    """True when the loss cannot run without a frozen reference model's log-probs."""
    return get_loss(name).needs_reference


def scale_to_active(loss: torch.Tensor, pairs: int, active: int) -> torch.Tensor:
    """A mean over `pairs` pairs turned into the mean over its `active` ones (the ``active``
    reduction): filtered pairs add exactly 0, so mean·pairs is the active pairs' sum."""
    return loss * (pairs / max(active, 1))


def _gamma(gamma, chosen: torch.Tensor) -> float | torch.Tensor:
    """One γ for all pairs (a float) or one per pair (a detached tensor shaped like the pairs)."""
    if isinstance(gamma, (int, float)):
        return float(gamma)
    per_pair = torch.as_tensor(gamma, dtype=chosen.dtype, device=chosen.device).detach()
    if per_pair.ndim == 0:
        return float(per_pair)
    if per_pair.shape != chosen.shape:
        raise ValueError(f"per-pair gamma has shape {tuple(per_pair.shape)}, pairs have "
                         f"{tuple(chosen.shape)}")
    return per_pair


def _check_pairs(name: str, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"loss {name!r}: chosen and rejected logps must be 1-D with the same shape, "
            f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    if chosen.numel() == 0:
        raise ValueError(f"loss {name!r}: got an empty batch of pairs")


def _check_reference(
    spec: LossSpec,
    chosen: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    given = (ref_chosen is not None, ref_rejected is not None)
    if given == (False, False):
        if spec.reference == "required":
            raise ValueError(
                f"loss {spec.name!r} needs ref_chosen_logps and ref_rejected_logps "
                "from a frozen reference model"
            )
        return None
    if spec.reference == "none":
        raise ValueError(f"loss {spec.name!r} is reference-free; do not pass reference logps")
    if given != (True, True):
        raise ValueError(f"loss {spec.name!r}: pass both ref_chosen_logps and ref_rejected_logps")
    if ref_chosen.shape != chosen.shape or ref_rejected.shape != chosen.shape:
        raise ValueError(
            f"loss {spec.name!r}: reference logps must have the policy logps' shape "
            f"{tuple(chosen.shape)}, got {tuple(ref_chosen.shape)} and {tuple(ref_rejected.shape)}"
        )
    return ref_chosen, ref_rejected


def _reference_margins(chosen, rejected, reference) -> torch.Tensor:
    """``(c − ref_c) − (r − ref_r)``, or ``c − r`` without a reference."""
    if reference is None:
        return chosen - rejected
    ref_chosen, ref_rejected = reference
    return (chosen - ref_chosen) - (rejected - ref_rejected)


@register_loss("repo", length_normalised=True, reductions=("all", "active"))
def repo_loss(chosen, rejected, *, gamma, beta, reference) -> LossOutput:
    """RePO: ``mean ReLU(γ − M)``; pairs with ``M ≥ γ`` get exactly zero gradient."""
    margins = chosen - rejected
    loss = F.relu(gamma - margins).mean()
    return LossOutput(loss, margins.detach(), (margins < gamma).detach())


@register_loss("simpo", default_beta=2.0, length_normalised=True)
def simpo_loss(chosen, rejected, *, gamma, beta, reference) -> LossOutput:
    """SimPO: ``mean −log σ(β(M − γ))``; ``active`` reports RePO's notion ``M < γ``."""
    margins = chosen - rejected
    # logsigmoid rather than log(sigmoid(.)): finite for large β|M − γ|.
    loss = -F.logsigmoid(beta * (margins - gamma)).mean()
    return LossOutput(loss, margins.detach(), (margins < gamma).detach())


@register_loss("repo++", default_beta=2.0, length_normalised=True)
def repo_plus_plus_loss(chosen, rejected, *, gamma, beta, reference) -> LossOutput:
    """RePO++: SimPO's term for pairs with ``M < γ``, zero for the rest, mean over all pairs."""
    margins = chosen - rejected
    active = (margins < gamma).detach()
    per_pair = -F.logsigmoid(beta * (margins - gamma))
    # where() rather than a product: filtered pairs get an exact zero, never 0 * inf.
    loss = torch.where(active, per_pair, torch.zeros_like(per_pair)).mean()
    return LossOutput(loss, margins.detach(), active)


@register_loss("dpo", default_beta=0.1, reference="required", length_normalised=False)
def dpo_loss(chosen, rejected, *, gamma, beta, reference) -> LossOutput:
    """DPO: ``mean −log σ(β h)``, ``h`` the reference-adjusted margin; γ is ignored."""
    margins = _reference_margins(chosen, rejected, reference)
    loss = -F.logsigmoid(beta * margins).mean()
    return LossOutput(loss, margins.detach(), torch.ones_like(margins, dtype=torch.bool))


@register_loss("ipo", default_beta=0.1, reference="optional", length_normalised=False)
def ipo_loss(chosen, rejected, *, gamma, beta, reference) -> LossOutput:
    """IPO: ``mean (h − 1/(2β))²``; ``h = M`` without a reference; γ is ignored."""
    margins = _reference_margins(chosen, rejected, reference)
    loss = (margins - 1.0 / (2.0 * beta)).pow(2).mean()
    return LossOutput(loss, margins.detach(), torch.ones_like(margins, dtype=torch.bool))
