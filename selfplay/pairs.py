"""Scores -> preference pairs: per prompt, the highest-reward completion against the lowest
(`best_worst`), or one pair for every two distinct reward levels (`all_levels`)."""
from __future__ import annotations

from dataclasses import dataclass

from selfplay.types import Completion, Pair


@dataclass
class PairStats:
    n_prompts: int
    n_pairs: int
    n_dropped: int  # prompts whose samples tie or differ by no more than min_reward_gap

    def __add__(self, other: "PairStats") -> "PairStats":
        return PairStats(self.n_prompts + other.n_prompts, self.n_pairs + other.n_pairs,
                         self.n_dropped + other.n_dropped)


def level_pairs(prompt_ids: list[list[int]], completions: list[list[Completion]],
                rewards: list[list[float]], min_reward_gap: float = 0.0
                ) -> tuple[list[Pair], PairStats]:
    """Per prompt, one pair for every two distinct reward levels whose gap exceeds
    `min_reward_gap`: the first completion at the higher level against the first at the lower,
    highest levels first (n completions give up to n(n-1)/2 pairs)."""
    pairs, dropped = [], 0
    for index, (ids, samples, scores) in enumerate(zip(prompt_ids, completions, rewards)):
        first_at: dict[float, int] = {}
        for position, score in enumerate(scores):
            first_at.setdefault(score, position)
        levels = sorted(first_at, reverse=True)
        made = [Pair(index, ids, samples[first_at[high]], samples[first_at[low]], high, low)
                for rank, high in enumerate(levels) for low in levels[rank + 1:]
                if high - low > min_reward_gap]
        pairs += made
        dropped += not made
    return pairs, PairStats(len(prompt_ids), len(pairs), dropped)


def self_play_pairs(strategy: str, prompt_ids: list[list[int]],
                    completions: list[list[Completion]], rewards: list[list[float]],
                    min_reward_gap: float = 0.0) -> tuple[list[Pair], PairStats]:
    """The pairs of `pairs.strategy`."""
    make = {"best_worst": best_worst_pairs, "all_levels": level_pairs}[strategy]
    return make(prompt_ids, completions, rewards, min_reward_gap)


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


def ended_field(column: str) -> str:
    """The optional column saying whether `column`'s answer ended by itself (True) or was cut at
    the length limit (False); `selfplay sample` writes it."""
    return f"{column}_ended"


def ended(completion: Completion, tokenizer) -> bool:
    """Whether a sampled completion stopped at EOS rather than at max_new_tokens."""
    ids = completion.token_ids
    return bool(ids) and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id


def offline_pairs(raw_rows: list[dict], tokenizer, data) -> tuple[list[Pair], PairStats]:
    """Pairs straight from a preference dataset's rows (the paper's offline setting); `data` is
    the recipe's data section (which columns hold the prompt, chosen and rejected text). Each
    answer gets an EOS unless its `ended_field` column says it was cut at the length limit."""
    from selfplay.data import format_prompt

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def completion(row: dict, column: str) -> Completion:
        ids = tokenizer(row[column], add_special_tokens=False)["input_ids"]
        return Completion(row[column], ids + (eos if row.get(ended_field(column), True) else []))

    pairs = []
    for index, row in enumerate(raw_rows):
        prompt = format_prompt(tokenizer, row[data.prompt_field], data.chat_template)
        chosen, rejected = (completion(row, column)
                            for column in (data.chosen_field, data.rejected_field))
        pairs.append(Pair(index, tokenizer(prompt)["input_ids"], chosen, rejected, 1.0, 0.0))
    return pairs, PairStats(len(raw_rows), len(pairs), 0)
