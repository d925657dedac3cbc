"""Errors a user can fix. The CLI prints them as one line; anything else keeps its traceback.

Every module raises its own subclass of `UserError`, so this module imports none of them and the
CLI never parses an error's text: whether a run directory can be resumed after the error is the
error's own `resumable` flag, and what to do before resuming is its `fix`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or environment, printed as one line.

    `resumable`: the run directory is intact and `--resume` continues it once the problem is
    fixed (true for failures during a run; false for problems found before a run starts, such
    as a bad recipe or an existing output directory). `fix`: what to do before `--resume`.
    `exit_code`: the CLI's exit status.
    """

    resumable: bool = True
    fix: str = "fix this"
    exit_code: int = 1

    def __init__(self, message: str, *, resumable: bool | None = None, fix: str | None = None):
        super().__init__(message)
        if resumable is not None:
            self.resumable = resumable
        if fix is not None:
            self.fix = fix

    def one_line(self, run_dir: Path | str | None = None) -> str:
        """The message on one line; given the `run_dir` that `--resume` continues (only when
        there is one), followed by what to do."""
        text = " ".join(str(self).split())
        if run_dir is None or not self.resumable:
            return text
        return f"{text} [{run_dir} is intact: {self.fix}, then run again with --resume]"


class Interrupted(UserError):
    """Ctrl-C: nothing to fix; the newest complete checkpoint is intact."""

    exit_code = 130  # 128 + SIGINT, as a shell reports a process that SIGINT ended

    def __init__(self):
        super().__init__("interrupted")

    def one_line(self, run_dir: Path | str | None = None) -> str:
        if run_dir is None or not self.resumable:
            return "interrupted"
        return (f"interrupted; the run directory {run_dir} is intact: run again with --resume "
                "to continue")


# --- a full disk -------------------------------------------------------------------------------
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# What torch.save's zip writer raises when a write fails: it never names the errno, so these
# count as a full disk only when the file system is nearly full too.
TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed", "file write failed",
                      "iostream error", "No space left on device", "Disk quota exceeded")
# "Nearly full": when a write fails for want of space, the partial files still hold what was
# written, so free space is close to zero (a few blocks, or what another process freed since);
# 1 GiB leaves room for that while a write failing for another reason (an I/O error, a network
# file system) on a disk with space to spare keeps its traceback.
LOW_SPACE = 1 << 30


def _chain(error: BaseException):
    """`error`, then what caused it or was being handled when it was raised, transitively; also
    Ray's `cause` of a task error."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            pending.append(cause)


def free_space(path: Path | str) -> tuple[int, Path] | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent), and that
    file system's mount point; None when they cannot be read."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return free, mount


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            break
        count /= 1024
    else:
        unit = "TiB"
    return f"{count:.1f} {unit}" if unit != "bytes" and count < 10 else f"{count:.0f} {unit}"


def disk_full_message(error: BaseException, what: str, path: Path | str) -> str | None:
    """The line `disk full while writing WHAT (N MiB free on MOUNT)` when `error` (or anything in
    its chain) says that the disk holding `path` is full, else None. An OSError's errno says so by
    itself; a message of torch's (or safetensors') writer says so when the file system has less
    than LOW_SPACE free. Call it before removing partial files: they hold the space that ran out.
    """
    chain = list(_chain(error))
    space = free_space(path)
    by_errno = next((e for e in chain if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS),
                    None)
    if by_errno is None and not (space is not None and space[0] < LOW_SPACE and any(
            pattern in str(e) for e in chain for pattern in TORCH_WRITE_FAILED)):
        return None
    left = (f"{format_bytes(space[0])} free on {space[1]}" if space is not None
            else by_errno.strerror or "no space left")
    return f"disk full while writing {what} ({left})"


FREE_SPACE = "free some space"


@contextlib.contextmanager
def user_errors(directory: Path | str | None = None):
    """Yields a list that receives the `UserError` raised inside, if one is. Ctrl-C becomes an
    `Interrupted` (resumable: the newest checkpoint is intact), and an error saying that the disk
    holding `directory` (or the file an OSError names) is full becomes a resumable one too."""
    failed: list[UserError] = []
    try:
        yield failed
    except UserError as error:
        failed.append(error)
    except KeyboardInterrupt:
        failed.append(Interrupted())
    except Exception as error:
        named = next((e.filename for e in _chain(error)
                      if isinstance(e, OSError) and isinstance(e.filename, (str, Path))), None)
        where = named or directory
        message = where is not None and disk_full_message(
            error, str(where) if named else f"in {where}", where)
        if not message:
            raise
        failed.append(UserError(message, fix=FREE_SPACE))
