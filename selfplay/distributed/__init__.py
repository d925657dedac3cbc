"""Where the parts of a run live: in this process (`local`) or as Ray actors (`ray`).

The loop asks a placement for a rewarder, a rollout engine and a trainer and talks to what it
gets through the same interfaces either way (`base.Placement`, `base.Trainer`): under Ray they
are groups of actors (trainer ranks, rollout engines, reward workers) behind the Trainer's,
RolloutEngine's and rewarder's methods. The placement also moves the weights from trainer to
engine (`sync_weights`), so neither sees the other. Only the `ray_*` modules import Ray.
"""
from __future__ import annotations

from pathlib import Path

from selfplay.distributed.base import Placement, Trainer
from selfplay.distributed.local import LocalPlacement

__all__ = ["LocalPlacement", "Placement", "Trainer", "build_placement"]


def build_placement(recipe, *, need_engine: bool, run_dir: Path) -> Placement:
    """The placement the recipe's `distributed` section asks for; `need_engine`: whether the run
    samples at all (offline runs without evaluation do not)."""
    if recipe.distributed.backend == "ray":
        from selfplay.distributed.ray_placement import RayPlacement

        return RayPlacement(recipe, need_engine=need_engine, run_dir=run_dir)
    return LocalPlacement()
