"""The messages that pass between the parts of a run.

Plain picklable dataclasses of Python lists and numbers (no tensors), so that the rollout
engines, the rewarders and the trainer can live in other processes (Ray) and receive them as is.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# Greedy for both engines: vLLM treats a temperature below 1e-5 as greedy; transformers' sampler
# rejects 0, and at 1e-6 takes the argmax except on exact ties. The HF engine raises any lower
# temperature to this.
GREEDY_TEMPERATURE = 1e-6


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


@dataclass
class TrainStats:
    """What one policy update reports back (empty: an iteration without pairs)."""
    loss: float | None = None
    margins: list[float] = field(default_factory=list)  # per pair, as first seen in this update
    gammas: list[float] = field(default_factory=list)   # per pair, the γ its loss used then
    steps: int = 0                                      # optimizer steps taken
    tokens: int = 0                                     # tokens through forward + backward
