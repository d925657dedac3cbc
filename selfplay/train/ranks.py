"""The data-parallel plumbing of the trainer: the process group, each rank's share of a
micro-batch, and putting the ranks' shares back together."""
from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Sequence

import torch


def init_process_group() -> None:
    """DeepSpeed needs a process group even for one rank: gloo on CPU, NCCL on CUDA.

    One rank (WORLD_SIZE unset or 1) sets its own defaults, on a free port. N ranks: whoever starts
    them sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Collectives time out
    after SELFPLAY_DIST_TIMEOUT_S seconds (300) so that a dead peer ends the run instead of hanging
    it. Leaves nothing behind in /dev/shm.
    """
    import deepspeed
    import torch.distributed as dist

    if os.environ.get("WORLD_SIZE", "1") == "1":
        for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0",
                           "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(key, value)
    else:
        missing = [key for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if key not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} needs {', '.join(missing)} "
                               "set by whoever starts the trainer ranks")
    # LOCAL_SIZE == WORLD_SIZE makes DeepSpeed's CPU comm op create a 69 MB /dev/shm buffer per
    # rank that it never removes; training all-reduces through the process group without it.
    os.environ.pop("LOCAL_SIZE", None)
    if dist.is_initialized():  # the rollout engine may have set up the group already
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:  # a free port, so parallel runs do not collide
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=int(os.environ.get("SELFPLAY_DIST_TIMEOUT_S", 300)))
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout, verbose=False)


def interleave(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Undoes `items[rank::world]`: part r holds positions r, r + world, ... of the whole."""
    whole: list[Any] = [None] * sum(len(part) for part in parts)
    for rank, part in enumerate(parts):
        whole[rank::len(parts)] = part
    return whole


def fill_gaps(mine: Sequence[Any], theirs: Sequence[Sequence[Any]]) -> list[Any]:
    """`mine` with each None replaced by the first other rank's value at that position: each rank
    fills the positions of its own pairs, and together they fill all."""
    out = list(mine)
    for part in theirs:
        out = [value if value is not None else other for value, other in zip(out, part)]
    return out


class Ranks:
    """This process's place among the data-parallel ranks (1 rank: no collectives at all)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def several(self) -> bool:
        return self.world_size > 1

    def own(self, ids: Sequence[int]) -> list[int]:
        """This rank's share of a micro-batch: every world_size-th pair, from its rank on."""
        return list(ids[self.rank::self.world_size])

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (small Python objects only)."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def check_in(self) -> None:
        """A small collective that fails at the process group's timeout (SELFPLAY_DIST_TIMEOUT_S)
        when a peer has gone silent: DeepSpeed's gradient reduction waits without that timeout,
        so without this a stalled rank would hold the others forever."""
        if self.several:
            self.all_gather(None)

    def barrier(self) -> None:
        if self.several:
            import torch.distributed as dist
            dist.barrier()
