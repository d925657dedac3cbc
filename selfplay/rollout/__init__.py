"""Rollout engines: `build_engine` picks one by name; `RolloutEngine` is what callers may use.

The engines are imported only when built, so importing this package loads neither vLLM nor
transformers.
"""
from __future__ import annotations

from selfplay.rollout.base import RolloutEngine

def build_engine(kind: str, model_dir: str, *, dtype: str, seed: int, max_model_len: int,
                 kv_cache_gb: float, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, weight_transfer: bool = False) -> RolloutEngine:
    """An engine of `kind` ("vllm" or "hf") serving the model in `model_dir`; `dtype` "auto" is
    decided here, on the machine the engine runs on. The GPU knobs reach vLLM only on a GPU."""
    from selfplay.runtime import rollout_dtype

    dtype, _ = rollout_dtype(dtype)
    if kind == "vllm":
        from selfplay.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                          kv_cache_gb=kv_cache_gb, gpu_memory_utilization=gpu_memory_utilization,
                          tensor_parallel_size=tensor_parallel_size,
                          weight_transfer=weight_transfer)
    if kind == "hf":
        from selfplay.rollout.hf_engine import HFEngine
        return HFEngine(model_dir, dtype=dtype, max_model_len=max_model_len)
    raise ValueError(f"rollout.engine: unknown engine {kind!r} (vllm or hf)")


__all__ = ["RolloutEngine", "build_engine"]
