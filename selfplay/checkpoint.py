"""Atomic checkpoints and finding the newest complete one.

A checkpoint is written into a temporary directory, closed with a manifest of its files and
sizes, renamed into place, and only then named in `latest`. A directory whose manifest is
missing or does not match its files (a kill or a full disk mid-write) is skipped with a warning.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Callable

from selfplay.errors import FREE_SPACE, UserError, disk_full_message

MANIFEST = "COMPLETE.json"


class CheckpointError(UserError, RuntimeError):
    pass


def _name(iteration: int) -> str:
    return f"iter-{iteration:04d}"


def _manifest(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(root: Path, iteration: int, write: Callable[[Path], None], state: dict,
         keep: int) -> Path:
    """`write(directory)` fills the checkpoint; `state` (JSON) is stored beside it.

    When writing fails, the partial directory is removed (it never looks complete, and it holds
    the space a full disk needs back) and the newest complete checkpoint stays `latest`. A full
    disk, whichever writer noticed it (an OSError's ENOSPC, or torch.save's "unexpected pos" /
    "PytorchStreamWriter failed" with the file system nearly full), becomes a one-line
    `CheckpointError` that `--resume` continues after; other OSErrors too; anything else keeps
    its traceback."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(iteration)
    tmp = root / f".tmp-{_name(iteration)}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        _write_atomic(tmp / MANIFEST, json.dumps(_manifest(tmp)))
        if final.exists():  # re-running an iteration after a resume from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / "latest", _name(iteration) + "\n")
    except Exception as error:
        # Free space is measured before the partial files are removed: they hold what ran out.
        full = disk_full_message(error, f"checkpoint {final}", root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise CheckpointError(full, fix=FREE_SPACE) from error
        if not isinstance(error, OSError):
            raise
        raise CheckpointError(f"writing checkpoint {final} failed ({error})") from error
    _prune(root, keep)
    return final


def is_complete(directory: Path) -> bool:
    try:
        expected = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return expected == _manifest(directory)


def _candidates(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("iter-*") if p.is_dir()), reverse=True)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones are skipped with a warning."""
    for directory in _candidates(root):
        if is_complete(directory):
            return directory
        warnings.warn(f"checkpoint {directory} is incomplete (interrupted while writing); "
                      "skipping it", stacklevel=2)
    return None


def load_state(directory: Path) -> dict:
    return json.loads((directory / "state.json").read_text())


def save_rng(directory: Path) -> None:
    """The global RNG states (Python, NumPy, torch) into `directory/rng.pt`."""
    import numpy as np
    import torch

    torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()}, directory / "rng.pt")


def load_rng(directory: Path) -> None:
    """Restores what `save_rng` wrote. Call it after the rollout engine exists: starting vLLM
    re-seeds the global RNGs."""
    import numpy as np
    import torch

    states = torch.load(directory / "rng.pt", weights_only=False)
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def _prune(root: Path, keep: int) -> None:
    complete = [d for d in _candidates(root) if is_complete(d)]
    for directory in complete[keep:]:
        shutil.rmtree(directory, ignore_errors=True)
