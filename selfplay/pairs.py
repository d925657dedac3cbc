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


def offline_pairs(raw_rows: list[dict], tokenizer, data) -> tuple[list[Pair], PairStats]:
    """Pairs straight from a preference dataset's rows (the paper's offline setting); `data` is
    the recipe's data section (which columns hold the prompt, chosen and rejected text)."""
    from selfplay.data import format_prompt

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pairs = []
    for index, row in enumerate(raw_rows):
        prompt = format_prompt(tokenizer, row[data.prompt_field], data.chat_template)
        chosen, rejected = (
            Completion(row[column], tokenizer(row[column], add_special_tokens=False)["input_ids"]
                       + eos)
            for column in (data.chosen_field, data.rejected_field))
        pairs.append(Pair(index, tokenizer(prompt)["input_ids"], chosen, rejected, 1.0, 0.0))
    return pairs, PairStats(len(raw_rows), len(pairs), 0)
