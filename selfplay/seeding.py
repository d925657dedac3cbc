"""Every seed of a run is derived from (loop.seed, iteration, …) here, in one place, so that a
resumed run draws exactly what an uninterrupted one would."""
from __future__ import annotations


def iteration_seed(seed: int, iteration: int) -> int:
    """Seed of an iteration's sampling."""
    return seed * 1_000_003 + iteration


def sampling_seed(seed: int, iteration: int, round_: int) -> int:
    """Seed of one sampling round of an iteration (dynamic sampling takes several); the first
    round's is the iteration's own."""
    base = iteration_seed(seed, iteration)
    return base if round_ == 0 else base * 1_013 + round_


def epoch_seed(seed: int, iteration: int, epoch: int) -> int:
    """Seed of the pair order in one epoch of an iteration's update."""
    return iteration_seed(seed, iteration) * 1_009 + epoch


def eval_seed(seed: int, iteration: int) -> int:
    """Seed of the held-out evaluation after an iteration (apart from the training samples)."""
    return iteration_seed(seed, iteration) + 500_009
