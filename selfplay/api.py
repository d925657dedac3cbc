"""What rewarder plug-ins (built-in or the user's own) may use from selfplay.

A rewarder imports from here rather than from the framework's internals, so that those can move
(e.g. into other processes under Ray) without breaking plug-ins. Importing this module is light:
the rollout engines load only when `build_engine` is called.
"""
from __future__ import annotations

from selfplay.data import format_prompt
from selfplay.errors import UserError
from selfplay.models import cache_dir
from selfplay.rollout.base import RolloutEngine
from selfplay.types import Completion, Rollout, SamplingConfig

__all__ = ["Completion", "Rollout", "RolloutEngine", "SamplingConfig", "UserError",
           "build_engine", "cache_dir", "format_prompt"]


def build_engine(kind: str, model_dir: str, **options) -> RolloutEngine:
    """A rollout engine (`vllm` or `hf`) on `model_dir`; see `selfplay.rollout.build_engine`."""
    from selfplay.rollout import build_engine as build

    return build(kind, model_dir, **options)
