"""The rollout engine interface: sample completions, take new weights in memory, score sequences."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable

from selfplay.types import Rollout, SamplingConfig


class RolloutEngine(ABC):
    """Engines never see the trainer: the loop hands them weights as (name, tensor) pairs."""

    @abstractmethod
    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int,
                 progress: bool = False) -> list[Rollout]:
        """Samples `sampling.n` completions per prompt; the same seed and weights give the same
        completions. A completion's token ids end with EOS when the model stopped by itself."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, "torch.Tensor"]]) -> None:
        """Loads new policy weights in place (no restart, no disk)."""

    @abstractmethod
    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-probability of each completion token under the engine's current weights."""

    def close(self) -> None:
        pass


def build_engine(kind: str, model_dir: str, *, dtype: str, seed: int, max_model_len: int,
                 kv_cache_gb: float) -> RolloutEngine:
    if kind == "vllm":
        from selfplay.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                          kv_cache_gb=kv_cache_gb)
    if kind == "hf":
        from selfplay.rollout.hf_engine import HFEngine
        return HFEngine(model_dir, dtype=dtype, max_model_len=max_model_len)
    raise ValueError(f"rollout.engine: unknown engine {kind!r} (vllm or hf)")
