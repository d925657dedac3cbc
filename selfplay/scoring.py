"""Rollouts → rewards: each prompt's completions scored by the rewarder, grouped per prompt."""
from __future__ import annotations

import time
from dataclasses import dataclass

from rewarders.base import score_checked
from selfplay.pairs import PairStats, self_play_pairs
from selfplay.types import Pair, Rollout


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


@dataclass
class Round:
    """One round of self-play: the prompts' rollouts, their rewards, the pairs made of them."""
    rollouts: list[Rollout]
    rewards: list[list[float]]
    pairs: list[Pair]
    stats: PairStats
    generate_s: float
    reward_s: float


def play_round(engine, rewarder, recipe, rows: list, sampling, seed: int,
               progress: bool = False) -> Round:
    """Samples `rows` (PromptRows) with `engine`, scores and pairs the answers as `recipe`'s
    reward and pairs sections say: the round an online iteration and `selfplay sample` share."""
    started = time.perf_counter()
    rollouts = engine.generate([r.text for r in rows], sampling, seed=seed, progress=progress)
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    rewards = score_rollouts(rewarder, recipe.reward.name, rows, rollouts,
                             timeout_s=recipe.reward.timeout_s)
    reward_s = time.perf_counter() - started
    pairs, stats = self_play_pairs(recipe.pairs.strategy, [r.prompt_ids for r in rollouts],
                                   [r.completions for r in rollouts], rewards,
                                   recipe.pairs.min_reward_gap)
    return Round(rollouts, rewards, pairs, stats, generate_s, reward_s)
