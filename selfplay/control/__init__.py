"""γ cutoff controllers: the margin γ that RePO's filter uses, one value per iteration.

Each controller is built from its own recipe model (`FixedConfig`, `ScheduleConfig`,
`AdaptiveConfig`, `GammaPOConfig`: the `gamma` section is their union, tagged by `controller`),
which holds its fields, defaults, ranges and help text in one place. The loop reads
``controller.value`` before each iteration (including the first) and calls
``controller.update(observation)`` once after it with a typed `MarginObservation`. A
controller's state goes into every checkpoint through ``state_dict()`` (JSON-serialisable) so
that a resumed run continues the same γ trajectory; its configuration comes from the recipe,
not from the state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field, model_validator

from selfplay.schema import Section
from selfplay.stats import active_fraction

__all__ = ["CONFIGS", "CONTROLLERS", "REGISTRY", "AdaptiveConfig", "AdaptiveGamma",
           "FixedConfig", "FixedGamma", "GammaController", "GammaPO", "GammaPOConfig",
           "GammaPOTargets", "MarginObservation", "ScheduleConfig", "ScheduledGamma",
           "build_controller", "build_pair_targets"]


# --- configuration: one model per controller ------------------------------------------------
class FixedConfig(Section):
    controller: Literal["fixed"] = "fixed"
    value: float = Field(0.5, ge=0, description="γ for every iteration (the paper: 0.4–0.6).")


class ScheduleConfig(Section):
    controller: Literal["schedule"] = "schedule"
    start: float = Field(1.0, ge=0, description="γ at the first iteration.")
    end: float = Field(0.2, ge=0, description="γ at the last iteration (and after).")
    shape: Literal["linear", "cosine"] = Field("linear", description="Curve from start to end.")


class AdaptiveConfig(Section):
    controller: Literal["adaptive"] = "adaptive"
    initial: float = Field(0.5, ge=0, description="γ of the first iteration.")
    target_start: float = Field(0.8, gt=0, lt=1, description="Share of pairs still active after "
                                "the first update (many pairs learn early).")
    target_end: float = Field(0.7, gt=0, lt=1, description="That share at the last iteration "
                              "(only the hard pairs late: the paper's curriculum).")
    window: int = Field(4, ge=1, description="Iterations whose margins are pooled into one "
                        "estimate (more: steadier γ, slower to follow).")
    band_z: float = Field(1.5, ge=0, description="γ stays while the pooled active share is "
                          "within this many standard errors of its target.")
    drift_z: float = Field(2.0, ge=0, description="The margins' trend is used only when it is "
                           "this many standard errors from zero.")
    smoothing: float = Field(0.5, gt=0, le=1, description="Share of the way γ moves toward a "
                             "new estimate.")
    gamma_min: float = Field(0.05, ge=0, description="Lower bound of γ.")
    gamma_max: float = Field(2.0, gt=0, description="Upper bound of γ.")

    @model_validator(mode="after")
    def _check_bounds(self) -> "AdaptiveConfig":
        if not self.gamma_min <= self.initial <= self.gamma_max:
            raise ValueError("gamma.initial: must lie within [gamma.gamma_min, gamma.gamma_max]")
        return self


@dataclass(frozen=True)
class MarginObservation:
    """What one iteration's update saw, handed to ``update()``."""

    iteration: int  # the iteration just finished, 1-based
    iterations: int  # the number planned
    margins_start: Sequence[float] = field(default=())  # per pair, when first seen in the update
    margins_end: Sequence[float] = field(default=())  # per pair, after the update

    def __post_init__(self) -> None:
        for name in ("iteration", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"observation.{name} must be an int >= 1, got {value!r}")


class GammaController(ABC):
    """Interface every γ controller implements."""

    name: ClassVar[str]  # the key in CONTROLLERS, also stored in the state
    # Whether update() reads `margins_end`: the loop skips that extra scoring pass otherwise.
    reads_end_margins: ClassVar[bool] = False

    @property
    @abstractmethod
    def value(self) -> float:
        """γ for the iteration about to run."""

    @abstractmethod
    def update(self, observation: MarginObservation) -> None:
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

    def _check_state(self, state: Mapping[str, Any]) -> None:
        # Loading another controller's state would silently restart or skew the γ trajectory.
        if state.get("controller") != self.name:
            raise ValueError(
                f"gamma controller {self.name!r} cannot load the state of "
                f"controller {state.get('controller')!r}"
            )


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class FixedGamma(GammaController):
    """The same γ every iteration (the paper's offline setting; it recommends 0.4–0.6)."""

    name = "fixed"

    def __init__(self, config: FixedConfig, iterations: int | None = None) -> None:
        self._value = _finite("value", config.value)

    @property
    def value(self) -> float:
        return self._value

    def update(self, observation: MarginObservation) -> None:
        pass

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

    def __init__(self, config: ScheduleConfig, iterations: int) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        self.start = _finite("start", config.start)
        self.end = _finite("end", config.end)
        self.iterations = iterations
        self.shape = config.shape
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

    def update(self, observation: MarginObservation) -> None:
        # Taken from the observation, not counted, so the schedule follows the loop's iteration.
        self._iteration = observation.iteration + 1

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name, "iteration": self._iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        iteration = state.get("iteration")
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 1:
            raise ValueError(f"schedule state: iteration must be an int >= 1, got {iteration!r}")
        self._iteration = iteration


class AdaptiveGamma(GammaController):
    """Sets γ from the observed margins so that the share of pairs still active at the end of
    each update stays near a target that falls over the run (docs/adaptive-gamma.md).

    One iteration brings only a handful of pairs, so no decision rests on one iteration: the
    end margins of the last ``window`` iterations are pooled (each pair counts once, so an
    iteration weighs by its pair count). After iteration t:

    1. Trend: the slope of the per-iteration median fresh margin over the window, by weighted
       least squares. It is used only when it is ``drift_z`` standard errors from zero (the
       error from each median's sampling noise); otherwise it is 0. Each pooled margin is
       carried forward by slope × its age, to where the next batch is expected.
    2. Dead zone: if the pooled share below the current γ is within ``band_z`` standard errors
       (√(a(1−a)/N) for target a and N pooled pairs) of the target, γ stays.
    3. Otherwise γ moves ``smoothing`` of the way to the pooled quantile at next iteration's
       target, but not below the pooled median fresh margin (half the new pairs get a
       gradient), and stays within ``[gamma_min, gamma_max]``.
    """

    name = "adaptive"
    reads_end_margins = True

    def __init__(self, config: AdaptiveConfig, iterations: int) -> None:
        self.targets = ScheduledGamma(
            ScheduleConfig(start=config.target_start, end=config.target_end), iterations)
        self.window, self.band_z, self.drift_z = config.window, config.band_z, config.drift_z
        self.smoothing = config.smoothing
        self.gamma_min, self.gamma_max = config.gamma_min, config.gamma_max
        self._gamma = _finite("initial", config.initial)
        self._iteration = 1
        # Per recent iteration: its number, fresh (start) margins and end margins.
        self._history: list[dict[str, Any]] = []
        self._last: dict[str, Any] = {}  # what the last update saw and decided, for the log

    @property
    def value(self) -> float:
        return self._gamma

    @property
    def target(self) -> float:
        """Target share of pairs still active after the update of the iteration about to run."""
        return self.targets.gamma_at(self._iteration)

    def update(self, observation: MarginObservation) -> None:
        finished = observation.iteration
        target_now = self.targets.gamma_at(finished)
        self._iteration = finished + 1
        self._last = {}
        if not observation.margins_end:
            return  # nothing was trained: nothing to learn from
        self._history.append({"iteration": finished,
                              "start": [float(m) for m in observation.margins_start],
                              "end": [float(m) for m in observation.margins_end]})
        self._history = self._history[-self.window:]
        slope = self._trend(finished)
        # Every pooled margin carried forward to the iteration about to run.
        def carried(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(h[key], dtype=float)
                                   + slope * (finished + 1 - h["iteration"])
                                   for h in self._history] or [np.empty(0)])

        ends, starts = carried("end"), carried("start")
        active = active_fraction(ends, [self._gamma] * len(ends))
        stderr = math.sqrt(target_now * (1.0 - target_now) / len(ends))
        self._last = {"pooled_pairs": len(ends), "active_end_pooled": active, "drift": slope}
        if abs(active - target_now) <= self.band_z * stderr:
            return  # within what sampling noise explains: γ stays
        proposal = float(np.quantile(ends, self.target))
        if len(starts):
            proposal = max(proposal, float(np.median(starts)))
        self._last["proposal"] = proposal
        moved = self._gamma + self.smoothing * (proposal - self._gamma)
        self._gamma = min(self.gamma_max, max(self.gamma_min, moved))

    def _trend(self, now: int) -> float:
        """Per-iteration slope of the median fresh margin, or 0 when noise explains it."""
        points = [(h["iteration"], np.median(h["start"]), len(h["start"]), np.asarray(h["start"]))
                  for h in self._history if len(h["start"]) >= 2]
        if len(points) < 3:
            return 0.0
        x = np.array([p[0] for p in points], dtype=float)
        y = np.array([p[1] for p in points], dtype=float)
        n = np.array([p[2] for p in points], dtype=float)
        # A median of n draws has variance ≈ (π/2)·σ²/n; σ from the spread within iterations.
        sigma2 = float(np.mean([np.var(p[3], ddof=1) for p in points]))
        weights = n / (math.pi / 2.0 * max(sigma2, 1e-12))
        x_mean = np.sum(weights * x) / np.sum(weights)
        spread = np.sum(weights * (x - x_mean) ** 2)
        slope = float(np.sum(weights * (x - x_mean) * y) / spread)
        stderr = math.sqrt(1.0 / spread)
        return slope if abs(slope) > self.drift_z * stderr else 0.0

    def describe(self) -> dict[str, Any]:
        return {"gamma": self.value, "gamma_target_active_end": self.target,
                "gamma_proposal": self._last.get("proposal"),
                "gamma_drift": self._last.get("drift"),
                "gamma_pooled_pairs": self._last.get("pooled_pairs"),
                "gamma_active_end_pooled": self._last.get("active_end_pooled")}

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name, "gamma": self._gamma, "iteration": self._iteration,
                "history": self._history, "last": self._last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self._gamma = _finite("gamma", state["gamma"])
        self._iteration = int(state["iteration"])
        self._history = [dict(h) for h in state.get("history", [])]
        self._last = dict(state.get("last", {}))


# γ-PO lives in its own module; imported here, after the base classes it builds on exist.
from selfplay.control.gammapo import (GammaPO, GammaPOConfig, GammaPOTargets,  # noqa: E402
                                      build_pair_targets)

# The one list of controllers: name → (its recipe model, its class). The recipe's `gamma` section
# is the union of the models, tagged by `controller`.
REGISTRY: dict[str, tuple[type[Section], type[GammaController]]] = {
    "fixed": (FixedConfig, FixedGamma),
    "schedule": (ScheduleConfig, ScheduledGamma),
    "adaptive": (AdaptiveConfig, AdaptiveGamma),
    "gammapo": (GammaPOConfig, GammaPO),
}
CONTROLLERS: dict[str, type[GammaController]] = {name: cls for name, (_, cls) in REGISTRY.items()}
CONFIGS: dict[str, type[Section]] = {name: config for name, (config, _) in REGISTRY.items()}


def build_controller(config: Section, iterations: int) -> GammaController:
    """The controller that ``config`` (one of the `gamma` section's models) describes."""
    return CONTROLLERS[config.controller](config, iterations=iterations)
