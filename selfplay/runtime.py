"""Process environment for a run; must be applied before torch, vLLM or DeepSpeed load."""
from __future__ import annotations

import os
from pathlib import Path


def configure_environment() -> None:
    """Offline hubs, all cores for torch, quiet vLLM, DeepSpeed on CPU with a cached op build.
    Values already set by the user win."""
    defaults = {
        "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",
        "DS_ACCELERATOR": "cpu",
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "selfplay" / "torch_extensions"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
