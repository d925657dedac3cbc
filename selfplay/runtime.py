"""Process environment for a run: the one home of the environment defaults.

`configure_environment` and `configure_logging` must run before torch, vLLM or DeepSpeed load
(they read these variables once, at import). Values the user already set always win.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

# Dependencies whose warnings and info lines a normal run hides (`--verbose` shows them).
NOISY_LIBRARIES = ("vllm", "torch", "deepspeed", "DeepSpeed", "transformers", "datasets", "ray",
                   "huggingface_hub", "triton")
# Read once by each library at import; the level names are each library's own.
QUIET_ENVIRONMENT = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' loading/saving bars, not the run's own
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # C++ warnings such as vLLM's NUMA binding notice
    "RAY_DEDUP_LOGS": "1",
}


def configure_environment() -> None:
    """Offline hubs, all cores for torch, a cached DeepSpeed op build. The accelerator is not
    chosen here: that needs torch, which must not load before these variables are set."""
    defaults = {
        "OMP_NUM_THREADS": str(os.cpu_count() or 1),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "selfplay" / "torch_extensions"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def vllm_cpu_environment(kv_cache_gb: float | None = None) -> None:
    """vLLM in this process (the trainer shares it), on all cores. selfplay's engine passes the
    KV cache's size as an argument (fractions of a GiB too); a caller that builds its own `LLM`
    may size it here instead, in whole GiB (VLLM_CPU_KVCACHE_SPACE: when set, it wins)."""
    cores = os.cpu_count() or 1
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        **({"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gb)))}
           if kv_cache_gb is not None else {}),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "HF_HUB_OFFLINE": "1",
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


def cpu_bf16_flags() -> list[str]:
    """The CPU features that make bf16 matmuls fast (AVX512-BF16, AMX) that this CPU has; empty
    without them (AVX2 alone runs bf16 matmuls ~100x slower than fp32) or off Linux."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def rollout_dtype(requested: str) -> tuple[str, str]:
    """The rollout engine's dtype for `model.dtype` and why. "auto" is bfloat16 where the
    hardware runs it fast (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else float32:
    sampling in bf16 is ~1.8x faster on such a CPU and is what TRL does; training keeps its
    own precision (`train.precision`)."""
    if requested != "auto":
        return requested, "set in the recipe"
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "auto: the GPU supports bf16"
        return "float32", "auto: the GPU lacks bf16"
    flags = cpu_bf16_flags()
    if flags:
        return "bfloat16", f"auto: the CPU has {', '.join(flags)}"
    return "float32", "auto: the CPU has neither AVX512-BF16 nor AMX"


def train_precision(requested: str) -> tuple[str, str]:
    """The trainer's precision for `train.precision` and why: "auto" is bf16 where the hardware
    runs bf16 matmuls fast (as `rollout_dtype` decides), else fp32."""
    if requested != "auto":
        return requested, "set in the recipe"
    dtype, reason = rollout_dtype("auto")
    return ("bf16" if dtype == "bfloat16" else "fp32"), reason


def is_verbose() -> bool:
    """Whether dependencies may talk: `--verbose` or SELFPLAY_LOG=debug (inherited by workers)."""
    return os.environ.get("SELFPLAY_LOG", "").lower() == "debug"


def configure_logging(verbose: bool = False) -> None:
    """Unless `verbose` (or SELFPLAY_LOG=debug), hides dependencies' warnings, info lines and
    progress bars, so a run shows its own progress and summary lines. Errors always show: only
    warnings and records below ERROR are dropped. Verbose leaves every library as it is."""
    if verbose or is_verbose():
        os.environ["SELFPLAY_LOG"] = "debug"
        return
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    libraries = "|".join(NOISY_LIBRARIES)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({libraries})(\.|$)")
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallows what a dependency print()s (e.g. DeepSpeed's "op built successfully"), unless
    verbose. Only for calls that report problems by raising, never by printing."""
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
