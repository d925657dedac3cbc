"""Where the parts of a run live: in this process (`local`) or as Ray actors (`ray`).

The loop asks a placement for a rewarder, a rollout engine and a trainer and talks to what it
gets through the same interfaces either way: under Ray they are groups of actors (trainer ranks,
rollout engines, reward workers) behind the Trainer's, RolloutEngine's and rewarder's methods.
Only the `ray_*` modules of this package import Ray.
"""
from __future__ import annotations

from pathlib import Path

from selfplay.distributed.local import LocalPlacement


def build_placement(recipe, *, need_engine: bool, run_dir: Path):
    """The placement the recipe's `distributed` section asks for; `need_engine`: whether the run
    samples at all (offline runs without evaluation do not)."""
    if recipe.distributed.backend == "ray":
        from selfplay.distributed.ray_placement import RayPlacement

        return RayPlacement(recipe, need_engine=need_engine, run_dir=run_dir)
    return LocalPlacement()
