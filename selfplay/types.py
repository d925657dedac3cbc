"""The messages that pass between the parts of a run.

Plain picklable dataclasses of Python lists and numbers (no tensors), so that the rollout
engines, the rewarders and the trainer can live in other processes (Ray) and receive them as is.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Completion:
    text: str
    token_ids: list[int]


@dataclass
class Rollout:
    """The `n` completions sampled for one prompt."""
    prompt_ids: list[int]
    completions: list[Completion]


@dataclass
class Pair:
    prompt_index: int
    prompt_ids: list[int]
    chosen: Completion
    rejected: Completion
    chosen_reward: float
    rejected_reward: float
