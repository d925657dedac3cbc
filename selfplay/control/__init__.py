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
    initial: float = Field(0.5, ge=0, description="γ until three iterations with pairs have "
                           "been seen.")
    active_start: float = Field(0.8, gt=0, lt=1, description="Share of fresh pairs that γ "
                                "leaves active (margin below γ) at the first iteration: γ is "
                                "this quantile of the recent fresh margins.")
    active_end: float = Field(0.8, gt=0, lt=1, description="That share at the last iteration "
                              "(lower it for the paper's large-to-small curriculum).")
    window: int = Field(6, ge=3, description="The last iterations with at least two pairs, whose "
                        "margins give the estimate and its noise (more: steadier γ, slower to "
                        "follow).")
    band_z: float = Field(2.0, ge=0, description="γ moves only when the estimate is this many "
                          "standard errors away from it (errors from the spread between "
                          "iterations).")
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

    def __post_init__(self) -> None:
        for name in ("iteration", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"observation.{name} must be an int >= 1, got {value!r}")


class GammaController(ABC):
    """Interface every γ controller implements."""

    name: ClassVar[str]  # the key in CONTROLLERS, also stored in the state

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
    """γ at a quantile of the recent fresh margins, moved only when the margins say so beyond
    their own noise (docs/adaptive-gamma.md).

    A quantile is scale-free: the margins' scale differs by model, answer length and learning
    rate, a share of pairs does not. Fresh margins (each pair's margin before its own update
    step) are measured before the update they feed, so γ reaches them only through the policy
    it helped train, not by pushing the very margins it is estimated from.

    After iteration t, with q the share of fresh pairs to leave active at iteration t+1:

    1. Each of the last ``window`` iterations with at least two pairs gives one number,
       s_i = the q-quantile of its fresh margins. The s_i vary from iteration to iteration by
       pair sampling, by the update the pairs of one iteration share, and by the policy's
       drift; their spread measures all of it (pair counts would measure only the first).
    2. The estimate is the mean of the s_i, with standard error sd(s)/√k.
    3. γ moves to the estimate, within ``[gamma_min, gamma_max]``, only when it is more than
       ``band_z`` standard errors away; otherwise it stays. Nothing makes a move one-way: the
       estimate falls as readily as it rises.

    A fitted trend was tried, to follow drift sooner: over six iterations its false alarms
    raised γ's standard deviation on stationary margins from about 0.10 to 0.14 (the tests'
    simulation, 40 seeds), while the plain mean lags a drift by only (window − 1)/2 iterations.
    """

    name = "adaptive"

    def __init__(self, config: AdaptiveConfig, iterations: int) -> None:
        self.targets = ScheduledGamma(
            ScheduleConfig(start=config.active_start, end=config.active_end), iterations)
        self.window, self.band_z = config.window, config.band_z
        self.gamma_min, self.gamma_max = config.gamma_min, config.gamma_max
        self._gamma = _finite("initial", config.initial)
        self._iteration = 1
        # Per recent iteration with pairs: its number and its fresh margins.
        self._history: list[dict[str, Any]] = []
        self._last: dict[str, Any] = {}  # what the last update estimated and decided, for the log

    @property
    def value(self) -> float:
        return self._gamma

    @property
    def target(self) -> float:
        """Share of fresh pairs γ should leave active in the iteration about to run."""
        return self.targets.gamma_at(self._iteration)

    def update(self, observation: MarginObservation) -> None:
        self._iteration = observation.iteration + 1
        self._last = {}
        margins = [float(m) for m in observation.margins_start if math.isfinite(m)]
        if len(margins) < 2:
            return  # too few pairs to say where a quantile lies
        self._history.append({"iteration": observation.iteration, "start": margins})
        self._history = self._history[-self.window:]
        if len(self._history) < 3:
            return  # fewer iterations cannot say how noisy their estimate is
        estimate, stderr = self.estimate(self.target)
        moved = abs(estimate - self._gamma) > self.band_z * stderr
        if moved:
            self._gamma = min(self.gamma_max, max(self.gamma_min, estimate))
        self._last = {"estimate": estimate, "stderr": stderr, "moved": moved}

    def estimate(self, share: float) -> tuple[float, float]:
        """The ``share``-quantile of fresh margins over the window's iterations and its
        standard error, from the spread of the per-iteration quantiles."""
        # Median-unbiased quantiles: with 8 pairs the default interpolation sits 0.14σ low at 0.8.
        per_iteration = np.array([np.quantile(h["start"], share, method="median_unbiased")
                                  for h in self._history])
        stderr = per_iteration.std(ddof=1) / math.sqrt(len(per_iteration))
        return float(per_iteration.mean()), float(stderr)

    def describe(self) -> dict[str, Any]:
        return {"gamma": self.value, "gamma_target_active": self.target,
                "gamma_estimate": self._last.get("estimate"),
                "gamma_stderr": self._last.get("stderr")}

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.name, "gamma": self._gamma, "iteration": self._iteration,
                "history": self._history, "last": self._last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self._gamma = _finite("gamma", state["gamma"])
        self._iteration = int(state["iteration"])
        # Only entries this rule can use (a state of the earlier rule also kept end margins).
        history = [{"iteration": int(h["iteration"]), "start": [float(m) for m in h["start"]]}
                   for h in state.get("history", []) if len(h.get("start", [])) >= 2]
        self._history = history[-self.window:]
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
