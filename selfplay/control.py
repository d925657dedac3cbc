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
from typing import Any, Callable, ClassVar, Mapping

__all__ = ["CONTROLLERS", "FixedGamma", "GammaController", "ScheduledGamma", "build_controller"]


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


CONTROLLERS: dict[str, type[GammaController]] = {
    "fixed": FixedGamma,
    "schedule": ScheduledGamma,
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
