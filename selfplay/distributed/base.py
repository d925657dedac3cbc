"""What the loop may call on a placement and on the trainer it gets: the local versions (one
process) and the Ray versions (actor groups) both satisfy these, and nothing else is used."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from selfplay.types import Pair, TrainStats


@runtime_checkable
class Trainer(Protocol):
    """The policy, its optimizer and schedule: `selfplay.train.trainer.Trainer`, or
    `RayTrainerGroup` over N rank actors."""

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""

    def train(self, pairs: list[Pair], gamma: float, iteration: int,
              progress: bool = False) -> TrainStats:
        """One update on the iteration's pairs with the iteration's γ."""

    def margins(self, pairs: list[Pair]) -> list[float]:
        """Current margins of the pairs, without updating anything."""

    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...

    def export(self, out_dir: str, tokenizer: Any) -> None:
        """A Hugging Face model directory of the current weights."""


@runtime_checkable
class Placement(Protocol):
    """Where the parts of a run live: `LocalPlacement` or `RayPlacement`."""

    def rewarder(self, config: Any) -> Any:
        """The recipe's rewarder (a `rewarders.base.Rewarder`)."""

    def rollout(self, model_dir: str, config: Any, *, dtype: str, seed: int) -> Any:
        """The rollout engine (a `selfplay.rollout.base.RolloutEngine`)."""

    def trainer(self, model_dir: str, config: Any, **options: Any) -> Trainer: ...

    def sync_weights(self, trainer: Trainer, engine: Any) -> None:
        """The trainer's current weights into the engine, in memory."""

    def actors_rss_mb(self) -> float | None:
        """Resident memory of the run's other processes (None: there are none here)."""

    def describe(self) -> str: ...

    def close(self) -> None: ...
