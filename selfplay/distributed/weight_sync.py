"""Weight sync over gloo: trainer rank 0 broadcasts the policy's tensors to every rollout engine
through a process group of their own (rank 0 of the group is trainer rank 0, engine j is rank
j + 1). Used wherever vLLM's NCCL weight-transfer engine cannot be (selfplay.distributed.
vllm_transfer, for trainer ranks and engines that all have GPUs): on CPU, or when only one side
has a GPU (the tensors then travel through host memory).

The group is a bare `ProcessGroupGloo` on a `PrefixStore`, never `init_process_group`: trainer
rank 0 already has DeepSpeed's default group and each engine vLLM's, and neither may change. The
tensors' names, shapes and dtypes go to the engines once, through Ray, when the group opens; each
sync then sends only the tensors, one broadcast each, in that order, into buffers allocated for
that sync: during a sync each engine holds a whole-model copy (and a GPU trainer one in host
memory, all broadcasts being posted before any is waited on); between syncs, nothing.
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist

from selfplay.errors import UserError

PREFIX = "selfplay-weights"

Spec = list[tuple[str, tuple[int, ...], torch.dtype]]


class WeightSyncError(UserError, RuntimeError):
    """A peer of the weight group vanished or stalled; the run directory is intact."""


def host_store(host: str, timeout_s: float) -> dist.TCPStore:
    """Trainer rank 0's store, on a port the OS picks (no race for a probed free port)."""
    return dist.TCPStore(host, 0, None, True, timedelta(seconds=timeout_s),
                         wait_for_workers=False)


class WeightGroup:
    """One member of the group. Opening it is collective: every member must open at once."""

    def __init__(self, store: dist.Store, rank: int, size: int, timeout_s: float,
                 spec: Spec | None = None):
        self.store = store  # rank 0's TCPStore serves the others for as long as the group lives
        self.rank = rank
        self.group = dist.ProcessGroupGloo(dist.PrefixStore(PREFIX, store), rank, size,
                                           timedelta(seconds=timeout_s))
        self.spec = spec  # the engines' side: what rank 0 sends

    @classmethod
    def join(cls, host: str, port: int, rank: int, size: int, timeout_s: float,
             spec: Spec) -> "WeightGroup":
        store = dist.TCPStore(host, port, None, False, timedelta(seconds=timeout_s))
        return cls(store, rank, size, timeout_s, spec)

    def _broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Posts every broadcast at once, then waits for them all (gloo keeps their order)."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        try:
            # Each tensor stays referenced until its broadcast is done.
            works = [(self.group.broadcast([tensor], options), tensor) for tensor in tensors]
            for work, _ in works:
                work.wait()
        except RuntimeError as error:  # gloo's "Connection reset by peer", or a timeout
            text = re.sub(r"^\[[^\]]*\] ", "", " ".join(str(error).split())).split(". ")[0]
            raise WeightSyncError(f"the weight sync over gloo failed ({text})") from None

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Rank 0: broadcasts each tensor as it comes (from a GPU through host memory)."""
        self._broadcast(tensor.detach().to("cpu").contiguous() for _, tensor in named_tensors)

    def receive(self) -> list[tuple[str, torch.Tensor]]:
        """An engine: the tensors rank 0 sends, in the spec's order (the engine copies them into
        its parameters; the buffers go when the caller drops them)."""
        buffers = [(name, torch.empty(shape, dtype=dtype)) for name, shape, dtype in self.spec]
        self._broadcast(buffer for _, buffer in buffers)
        return buffers
