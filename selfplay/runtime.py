"""Process environment for a run: the one home of the environment defaults.

`configure_environment` must run before torch, vLLM or DeepSpeed load (they read these variables
once, at import). Values the user already set always win.
"""
from __future__ import annotations

import os
from pathlib import Path


def configure_environment() -> None:
    """Offline hubs, all cores for torch, a cached DeepSpeed op build. The accelerator is not
    chosen here: that needs torch, which must not load before these variables are set."""
    defaults = {
        "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "selfplay" / "torch_extensions"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def vllm_cpu_environment(kv_cache_gb: float) -> None:
    """vLLM in this process (the trainer shares it), a KV cache of `kv_cache_gb`, all cores."""
    cores = os.cpu_count() or 1
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gb))),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def choose_accelerator() -> str:
    """DeepSpeed's accelerator from the hardware ("cuda" when a GPU is visible, else "cpu"),
    unless the user set DS_ACCELERATOR. Call before importing deepspeed, which reads it once."""
    import torch

    chosen = os.environ.get("DS_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else "cpu")
    os.environ["DS_ACCELERATOR"] = chosen
    return chosen
