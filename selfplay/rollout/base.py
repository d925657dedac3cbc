"""The rollout engine interface: sample completions, take new weights in memory, score sequences.

Everything a caller may use is declared here (the loop, the evaluator and the judge rewarder
see engines only through it), so an engine can move to another process behind the same API.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterable

from selfplay.types import Rollout, SamplingConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class RolloutEngine(ABC):
    """Engines never see the trainer: the loop hands them weights as (name, tensor) pairs.

    Every engine sets these two in its constructor; callers (e.g. the judge rewarder) read them.
    """

    tokenizer: "PreTrainedTokenizerBase"  # the served model's, chat template included
    max_model_len: int  # most tokens, prompt plus completion, that one sequence may hold

    @abstractmethod
    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int,
                 progress: bool = False) -> list[Rollout]:
        """Samples `sampling.n` completions per prompt; the same seed and weights give the same
        completions. A completion's token ids end with EOS when the model stopped by itself."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, "torch.Tensor"]]) -> None:
        """Loads new policy weights in place (no restart, no disk); later calls use them all."""

    @abstractmethod
    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-probability of each completion token under the engine's current weights."""

    def close(self) -> None:
        """Frees the engine's memory; the engine is unusable afterwards."""
