"""Turns the errors a user can fix into one line each; anything else keeps its traceback."""
from __future__ import annotations

import contextlib


def user_error_types() -> tuple[type[BaseException], ...]:
    from rewarders.base import RewardError
    from selfplay.checkpoint import CheckpointError
    from selfplay.data import DataError
    from selfplay.evaluate import EvalError
    from selfplay.loop import RunError
    from selfplay.models import ModelError
    from selfplay.recipe import RecipeError
    return (RunError, RecipeError, DataError, RewardError, CheckpointError, EvalError, ModelError)


@contextlib.contextmanager
def user_errors():
    """Yields a list that receives the one-line message of a user-fixable error, if one occurs."""
    failed: list[str] = []
    try:
        yield failed
    except user_error_types() as error:
        failed.append(" ".join(str(error).split("\n")))
    except KeyboardInterrupt:
        failed.append("interrupted")
