"""Errors a user can fix. The CLI prints them as one line; anything else keeps its traceback.

Every module raises its own subclass of `UserError`, so this module imports none of them and the
CLI never parses an error's text: whether a run directory can be resumed after the error is the
error's own `resumable` flag.
"""
from __future__ import annotations

import contextlib


class UserError(Exception):
    """A problem with the user's input or environment, printed as one line.

    `resumable`: the run directory is intact and `--resume` continues it once the problem is
    fixed (true for failures during a run; false for problems found before a run starts, such
    as a bad recipe or an existing output directory).
    """

    resumable: bool = True

    def __init__(self, message: str, *, resumable: bool | None = None):
        super().__init__(message)
        if resumable is not None:
            self.resumable = resumable

    def one_line(self) -> str:
        return " ".join(str(self).split())


@contextlib.contextmanager
def user_errors():
    """Yields a list that receives the `UserError` raised inside, if one is; Ctrl-C becomes one
    too (resumable: the newest checkpoint is intact)."""
    failed: list[UserError] = []
    try:
        yield failed
    except UserError as error:
        failed.append(error)
    except KeyboardInterrupt:
        failed.append(UserError("interrupted"))
