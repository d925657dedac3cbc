"""Rollouts → rewards: each prompt's completions scored by the rewarder, grouped per prompt."""
from __future__ import annotations

from rewarders.base import score_checked
from selfplay.types import Rollout


def score_rollouts(rewarder, name: str, rows: list, rollouts: list[Rollout], *,
                   timeout_s: float | None = None) -> list[list[float]]:
    """One list of scores per prompt, in its completions' order. `rows` are the prompts'
    `PromptRow`s (the raw text and metadata the rewarder sees), one per rollout."""
    prompts, completions, metadata, sizes = [], [], [], []
    for row, rollout in zip(rows, rollouts, strict=True):
        for completion in rollout.completions:
            prompts.append(row.raw)
            completions.append(completion.text)
            metadata.append(row.metadata)
        sizes.append(len(rollout.completions))
    scores = score_checked(rewarder, name, prompts, completions, metadata, timeout_s=timeout_s)
    grouped, start = [], 0
    for size in sizes:
        grouped.append(scores[start:start + size])
        start += size
    return grouped
