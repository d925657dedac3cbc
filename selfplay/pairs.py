"""Scores -> preference pairs: per prompt, the highest-reward completion against the lowest."""
from __future__ import annotations

from dataclasses import dataclass

from selfplay.types import Completion, Pair


@dataclass
class PairStats:
    n_prompts: int
    n_pairs: int
    n_dropped: int  # prompts whose samples tie or differ by no more than min_reward_gap


def best_worst_pairs(prompt_ids: list[list[int]], completions: list[list[Completion]],
                     rewards: list[list[float]], min_reward_gap: float = 0.0
                     ) -> tuple[list[Pair], PairStats]:
    pairs = []
    for index, (ids, samples, scores) in enumerate(zip(prompt_ids, completions, rewards)):
        # The first best and the first worst, so that ties are broken the same way every run.
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        if scores[best] - scores[worst] <= min_reward_gap:
            continue
        pairs.append(Pair(index, ids, samples[best], samples[worst], scores[best], scores[worst]))
    n = len(prompt_ids)
    return pairs, PairStats(n_prompts=n, n_pairs=len(pairs), n_dropped=n - len(pairs))
