"""The learning-rate schedule of a whole run: warm-up, then constant, linear or cosine decay."""
from __future__ import annotations

import math

from selfplay.recipe import TrainConfig


def total_optimizer_steps(config: TrainConfig, iterations: int, pairs_per_iteration: int) -> int:
    """Optimizer steps of a whole run: each iteration's pairs in windows of
    micro_batch_size × grad_accum, `epochs_per_iteration` times (the schedule's length)."""
    windows = -(-pairs_per_iteration // (config.micro_batch_size * config.grad_accum))
    return iterations * config.epochs_per_iteration * windows


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The factor on `train.lr` at optimizer step `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
