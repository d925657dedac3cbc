"""γ-PO (Sun et al., ACL 2025): per-pair target margins for SimPO, ported from the authors' trainer.

The authors' repository (sunjie279/gammaPO, ``scripts/simpo_trainer.py``, loss type
``gm-simpo``, method ``get_gamma_dq``) computes, for each forward micro-batch of B pairs with
reward gaps ``g_i = β·M_i`` (M: the length-normalised margin, detached)::

    N = min(len(queue), 256 − B) gaps sampled from a queue of past gaps, then the B current ones
    p = uniform over the N gaps
    20 times:  γ = γ0·N·p                                   (γ0 = gamma_beta_ratio · β)
               grad = τ(1 + log(N(p + 1e-10))) + γ0 / (1 + exp(g − γ))
               p ∝ p · exp(−min(0.5/τ, 1) · grad)
    the last B entries of γ (γ of the 20th step, before its update of p) are the batch's targets;
    the batch's gaps join the queue (2048 newest kept; it starts with 8 standard-normal draws)

and the loss is ``−log σ(g_i − γ_i)``: SimPO with a per-pair γ. Here `GammaPOTargets` returns
``γ_i / β`` (margin units), which the ``simpo`` loss takes as its per-pair γ, so the recipe pairs
``gamma.controller: gammapo`` with ``loss.name: simpo`` and the loss's β.

Where this port differs, and why: the arithmetic is float64 (the authors' runs in the model's
dtype); the queue's random draws come from a seeded numpy Generator saved in the checkpoint (the
authors' from the global ``random`` / ``np.random``), so a resumed run continues exactly; the
batch is the whole micro-batch over all ranks (the authors' each GPU's own share, with a queue per
GPU); and a micro-batch of more than 256 pairs samples nothing from the queue (the authors' code
raises there).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from selfplay.control import FixedGamma, _finite
from selfplay.schema import Section

QUEUE_SIZE = 2048  # past reward gaps kept (the authors' reward_gap_queue_size)
OPT_SIZE = 256  # gaps the targets are optimised over: the batch plus samples from the queue
INITIAL_ENTRIES = 8  # standard-normal gaps the queue starts with (the authors' randn(8))
STEPS = 20  # exponentiated-gradient steps
EPS = 1e-10


class GammaPOConfig(Section):
    controller: Literal["gammapo"] = "gammapo"
    value: float = Field(0.5, ge=0, description="Mean target margin γ0 in margin units (the "
                         "authors' gamma_beta_ratio: 0.15–0.5 in their configs). Needs "
                         "loss.name: simpo, whose loss.beta is γ-PO's β (the authors: 10).")
    tau: float = Field(10.0, gt=0, description="KL temperature τ (larger: targets closer to "
                       "uniform; the authors: 3–20, mostly 10).")


def gammapo_targets(gaps: np.ndarray, gamma0: float, tau: float) -> np.ndarray:
    """The authors' loop: per-gap targets γ (reward units) for reward ``gaps``, mean ``gamma0``.

    As in their code the γ returned is the one computed at the start of the last step, from the
    ``p`` before that step's update.
    """
    size = len(gaps)
    rate = min(0.5 / tau, 1.0)
    p = np.full(size, 1.0 / size)
    for _ in range(STEPS):
        gammas = gamma0 * size * p
        kl_grad = tau * (1.0 + np.log(size * (p + EPS)))
        with np.errstate(over="ignore"):  # exp(large gap) = inf gives the exact limit, 0
            grad = kl_grad + (gamma0 * size) / (1.0 + np.exp(gaps - gammas)) / size
        weighted = p * np.exp(-rate * grad)
        p = weighted / weighted.sum()
    return gammas


class GammaPO(FixedGamma):
    """The `gammapo` controller: γ is the mean target γ0 (`value`), the same every iteration.
    The per-pair targets around it are the trainer's (`GammaPOTargets`), because they change
    with every micro-batch of the update."""

    name = "gammapo"


class GammaPOTargets:
    """γ-PO's per-pair targets (module docstring), owned by the trainer: `__call__` once per
    micro-batch with its margins and the iteration's γ (the mean target γ0, margin units).

    ``beta`` is the SimPO loss's β (the gaps are β·M); ``seed`` seeds the queue's initial draws
    and its sampling. The queue and the generator are state: the trainer saves them with its
    checkpoint, so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, *, beta: float, tau: float, seed: int) -> None:
        self.beta = _finite("beta", beta)
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        self.tau = _finite("tau", tau)
        self._rng = np.random.default_rng(seed)
        self._queue: deque[float] = deque(self._rng.standard_normal(INITIAL_ENTRIES).tolist(),
                                          maxlen=QUEUE_SIZE)

    @property
    def queue(self) -> list[float]:
        """The past reward gaps (β·M), oldest first."""
        return list(self._queue)

    def __call__(self, margins: Sequence[float], gamma: float) -> list[float]:
        """The targets (margin units) of a micro-batch's pairs, whose mean over the pool is
        ``gamma``; the batch's gaps then join the queue."""
        gaps = self.beta * np.asarray(margins, dtype=np.float64)
        size = len(gaps)
        if size == 0:
            return []
        sample_num = max(0, min(len(self._queue), OPT_SIZE - size))
        queue = list(self._queue)
        picked = self._rng.choice(len(queue), size=sample_num, replace=False)
        # Sampled past gaps first, the current batch last (its targets are the last B).
        pool = np.concatenate([np.asarray([queue[i] for i in picked], dtype=np.float64), gaps])
        targets = gammapo_targets(pool, self.beta * _finite("gamma", gamma), self.tau)[-size:]
        self._queue.extend(gaps.tolist())
        return (targets / self.beta).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"queue": list(self._queue), "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        queue = [_finite("gammapo state: queue entry", gap) for gap in state["queue"]]
        self._queue = deque(queue, maxlen=QUEUE_SIZE)
        self._rng.bit_generator.state = dict(state["rng"])


def build_pair_targets(config: Section, loss_beta: float, seed: int) -> GammaPOTargets | None:
    """The trainer's per-pair targets for a `gamma` section: γ-PO's, or None (one γ for all)."""
    if not isinstance(config, GammaPOConfig):
        return None
    return GammaPOTargets(beta=loss_beta, tau=config.tau, seed=seed)
