"""γ cutoff controllers: the margin γ that RePO's filter uses, one value per iteration.

The loop reads ``controller.value`` before each iteration (including the first) and calls
``controller.update(observation)`` once after it. ``observation`` holds at least ``iteration``
(1-based, the one just finished) and ``iterations`` (the number planned), and may hold margin
statistics (``margin_p10``, ``margin_p50``, ``margin_p90``, ``active_fraction``,
``active_fraction_end``). A controller's state goes into every checkpoint through ``state_dict()``
(JSON-serialisable) so that a resumed run continues the same γ trajectory. Its configuration comes
from the recipe, not from the state.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

__all__ = ["CONTROLLERS", "AdaptiveGamma", "FixedGamma", "GammaController", "GammaPOMargins",
           "ScheduledGamma", "build_controller"]


class GammaController(ABC):
    """Interface every γ controller implements."""

    name: ClassVar[str]  # the key in CONTROLLERS, also stored in the state

    @property
    @abstractmethod
    def value(self) -> float:
        """γ for the iteration about to run."""

    @abstractmethod
    def update(self, observation: Mapping[str, Any]) -> None:
        """Take in what the iteration that just finished observed."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` of a same-config controller restores it."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def describe(self) -> dict[str, Any]:
        """What the metrics log records about this controller each iteration."""
        return {"gamma": self.value}

    def pair_gammas(self, margins: Sequence[float]) -> list[float] | float:
        """γ for each pair of a micro-batch, given their current margins (detached).

        Most controllers use one γ per iteration; per-pair controllers override this.
        """
        return self.value

    def _check_state(self, state: Mapping[str, Any]) -> None:
        # Loading another controller's state would silently restart or skew the γ trajectory.
        if state.get("controller") != self.name:
            raise ValueError(
                f"gamma controller {self.name!r} cannot load the state of "
                f"controller {state.get('controller')!r}"
            )


def _finished_iteration(observation: Mapping[str, Any]) -> int:
    iteration = observation.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 1:
        raise ValueError(f"observation['iteration'] must be an int >= 1, got {iteration!r}")
    return iteration


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class FixedGamma(GammaController):
    """The same γ every iteration (the paper's offline setting; it recommends 0.4–0.6)."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        self._value = _finite("value", value)

    @property
    def value(self) -> float:
        return self._value

    def update(self, observation: Mapping[str, Any]) -> None:
        _finished_iteration(observation)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)


# Progress p(t) in [0, 1] for t in [0, 1]: γ = (1 − p(t)) · start + p(t) · end.
_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "cosine": lambda t: (1.0 - math.cos(math.pi * t)) / 2.0,
}


class ScheduledGamma(GammaController):
    """γ moves from ``start`` at iteration 1 to ``end`` at iteration ``iterations``, then stays.

    The paper found a large→small schedule (e.g. ``start=1.0, end=0.2``) better than a fixed γ.
    ``shape`` is ``"linear"`` or ``"cosine"`` (slow at both ends). With ``iterations=1`` γ is
    ``start`` for the single iteration and ``end`` after it.
    """

    name = "schedule"

    def __init__(self, start: float, end: float, iterations: int, shape: str = "linear") -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        if shape not in _SHAPES:
            raise ValueError(f"shape must be one of {', '.join(sorted(_SHAPES))}, got {shape!r}")
        self.start = _finite("start", start)
        self.end = _finite("end", end)
        self.iterations = iterations
        self.shape = shape
        self._iteration = 1  # the iteration about to run

    def gamma_at(self, iteration: int) -> float:
        """γ for 1-based ``iteration``."""
        if self.iterations == 1:
            t = 0.0 if iteration <= 1 else 1.0
        else:
            t = min(max((iteration - 1) / (self.iterations - 1), 0.0), 1.0)
        progress = _SHAPES[self.shape](t)
        # A weighted sum rather than start + (end − start)·p: both endpoints come out exact.
        return self.start * (1.0 - progress) + self.end * progress

    @property
    def value(self) -> float:
        return self.gamma_at(self._iteration)

    def update(self, observation: Mapping[str, Any]) -> None:
        # Taken from the observation, not counted, so the schedule follows the loop's iteration.
        self._iteration = _finished_iteration(observation) + 1

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name, "iteration": self._iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        iteration = state.get("iteration")
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 1:
            raise ValueError(f"schedule state: iteration must be an int >= 1, got {iteration!r}")
        self._iteration = iteration


class AdaptiveGamma(GammaController):
    """Sets γ from the observed margins to hold the share of pairs still active at the end of each
    update near a target that falls over the run (docs/adaptive-gamma.md).

    After iteration t: if the end-of-update active fraction is more than ``band`` away from its
    target, γ moves toward ``quantile(margins_end, target_{t+1}) + drift`` (the cutoff that
    would have hit next iteration's target on the margins just seen, shifted by the trend of
    fresh margins), by an exponential moving average with weight ``smoothing``, never below
    the median fresh margin plus drift (so at least half of the new pairs get a gradient) and
    within ``[gamma_min, gamma_max]``.
    """

    name = "adaptive"

    def __init__(self, iterations: int, target_start: float = 0.8, target_end: float = 0.7,
                 band: float = 0.05, smoothing: float = 0.4, initial: float = 0.5,
                 gamma_min: float = 0.05, gamma_max: float = 2.0) -> None:
        for label, value in (("target_start", target_start), ("target_end", target_end)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{label} must be in (0, 1), got {value}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= gamma_min <= initial <= gamma_max:
            raise ValueError("need 0 <= gamma_min <= initial <= gamma_max")
        self.targets = ScheduledGamma(target_start, target_end, iterations, "linear")
        self.band, self.smoothing = _finite("band", band), smoothing
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self._gamma = _finite("initial", initial)
        self._iteration = 1
        self._last_proposal: float | None = None
        self._last_median: float | None = None  # median fresh margin of the last iteration
        self._drift = 0.0  # smoothed change of that median per iteration

    @property
    def value(self) -> float:
        return self._gamma

    @property
    def target(self) -> float:
        """Target share of pairs still active after the update of the iteration about to run."""
        return self.targets.gamma_at(self._iteration)

    def update(self, observation: Mapping[str, Any]) -> None:
        finished = _finished_iteration(observation)
        target_now = self.targets.gamma_at(finished)
        self._iteration = finished + 1
        margins_end = observation.get("margins_end") or []
        margins_start = observation.get("margins") or []
        active_end = observation.get("active_fraction_end")
        self._last_proposal = None
        if not margins_end or active_end is None:
            return  # nothing was trained: nothing to learn from
        median = float(np.median(margins_start)) if margins_start else None
        if median is not None and self._last_median is not None:
            # Fresh pairs arrive with margins that shift as the policy learns; the next batch is
            # expected to sit where this one did plus that trend.
            self._drift = ((1.0 - self.smoothing) * self._drift
                           + self.smoothing * (median - self._last_median))
        self._last_median = median if median is not None else self._last_median
        if abs(active_end - target_now) <= self.band:
            return  # in the band: γ stays, the noise is not chased
        proposal = float(np.quantile(margins_end, self.target)) + self._drift
        if median is not None:
            proposal = max(proposal, median + self._drift)
        self._last_proposal = proposal
        # The current γ is carried along the same trend, so a steady drift causes no lag.
        moved = (1.0 - self.smoothing) * (self._gamma + self._drift) + self.smoothing * proposal
        self._gamma = min(self.gamma_max, max(self.gamma_min, moved))

    def describe(self) -> dict[str, Any]:
        return {"gamma": self.value, "gamma_target_active_end": self.target,
                "gamma_proposal": self._last_proposal}

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name, "gamma": self._gamma, "iteration": self._iteration,
                "last_proposal": self._last_proposal, "last_median": self._last_median,
                "drift": self._drift}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self._gamma = _finite("gamma", state["gamma"])
        self._iteration = int(state["iteration"])
        self._last_proposal = state.get("last_proposal")
        self._last_median = state.get("last_median")
        self._drift = float(state.get("drift", 0.0))


class GammaPOMargins(FixedGamma):
    """The γ-PO baseline (Sun et al., ACL 2025): a per-pair target margin from each batch.

    γ_i = γ0·B·p_i, where p is a distribution over the B pairs of a micro-batch that minimises
    mean(−log σ(β·M_i − β·γ_i)) + τ·KL(p ‖ uniform), found by 20 steps of exponentiated gradient
    as in the authors' code: confident pairs (large margin) get larger targets, ambiguous ones
    smaller, and the mean target stays γ0. Here M_i is the pair's length-normalised margin.
    """

    name = "gammapo"

    def __init__(self, value: float = 0.5, tau: float = 10.0, beta: float = 10.0,
                 steps: int = 20) -> None:
        super().__init__(value)  # the mean target γ0, fixed over the run
        self.gamma0 = self.value
        self.tau, self.beta, self.steps = tau, beta, steps

    def pair_gammas(self, margins: Sequence[float]) -> list[float]:
        gaps = self.beta * np.asarray(margins, dtype=np.float64)
        size = len(gaps)
        p = np.full(size, 1.0 / size)
        rate = min(0.5 / self.tau, 1.0)
        for _ in range(self.steps):
            gammas = self.beta * self.gamma0 * size * p
            grad = (self.tau * (1.0 + np.log(size * p + 1e-12))
                    + self.beta * self.gamma0 / (1.0 + np.exp(gaps - gammas)))
            p = p * np.exp(-rate * grad)
            p /= p.sum()
        return (self.gamma0 * size * p).tolist()


CONTROLLERS: dict[str, type[GammaController]] = {
    "fixed": FixedGamma,
    "schedule": ScheduledGamma,
    "adaptive": AdaptiveGamma,
    "gammapo": GammaPOMargins,
}


def build_controller(name: str, **kwargs: Any) -> GammaController:
    """The controller registered as ``name``, built from the recipe's ``gamma`` fields."""
    if name not in CONTROLLERS:
        raise ValueError(
            f"unknown gamma controller {name!r}; choose from: {', '.join(sorted(CONTROLLERS))}"
        )
    cls = CONTROLLERS[name]
    fields = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"gamma controller {name!r}: unknown field {unknown[0]!r}; fields: {', '.join(fields)}"
        )
    missing = [f for f, p in fields.items() if p.default is p.empty and f not in kwargs]
    if missing:
        raise ValueError(f"gamma controller {name!r}: missing field {missing[0]!r}")
    return cls(**kwargs)
