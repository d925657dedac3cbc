"""Weight sync: trainer rank 0 broadcasts the policy's tensors to every rollout engine through a
process group of their own (rank 0 of the group is trainer rank 0, engine j is rank j + 1).

The group is a bare process group on a `PrefixStore`, never `init_process_group`: trainer rank 0
already has DeepSpeed's default group and each engine vLLM's, and neither may change. Where the
process has CUDA it is NCCL, with the tensors on the GPU, else gloo on the CPU; rank 0 writes its
choice to the store and each engine checks it agrees (a mismatch would otherwise hang).
The tensors' names, shapes and dtypes go to the engines once, through Ray, when the group opens;
each sync then sends only the tensors, in that order: over gloo one broadcast each, over NCCL one
broadcast per bucket (consecutive tensors of one dtype, flattened into one buffer).
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from selfplay.errors import UserError

PREFIX = "selfplay-weights"
BACKEND_KEY = "selfplay-weights-backend"  # outside PREFIX: the group's own keys never clash
# Few enough broadcasts that NCCL's per-call latency vanishes, small enough to stage on the GPU.
BUCKET_BYTES = 128 << 20

Spec = list[tuple[str, tuple[int, ...], torch.dtype]]


class WeightSyncError(UserError, RuntimeError):
    """A peer of the weight group vanished or stalled; the run directory is intact."""


def host_store(host: str, timeout_s: float) -> dist.TCPStore:
    """Trainer rank 0's store, on a port the OS picks (no race for a probed free port)."""
    return dist.TCPStore(host, 0, None, True, timedelta(seconds=timeout_s),
                         wait_for_workers=False)


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def grouped(items: Iterable, size_and_dtype, max_bytes: int) -> Iterator[list]:
    """Consecutive items, as they come, in groups of one dtype and at most `max_bytes` (an item
    larger than that alone in its group); `size_and_dtype(item)` gives (bytes, dtype)."""
    group: list = []
    size, dtype = 0, None
    for item in items:
        nbytes, item_dtype = size_and_dtype(item)
        if group and (item_dtype != dtype or size + nbytes > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size, dtype = size + nbytes, item_dtype
    if group:
        yield group


def buckets(spec: Spec, max_bytes: int) -> list[list[int]]:
    """Indices into `spec`, in order, grouped so that each group holds one dtype and at most
    `max_bytes` (a tensor larger than that alone in its group)."""
    def size_and_dtype(index: int) -> tuple[int, torch.dtype]:
        _, shape, dtype = spec[index]
        return numel(shape) * dtype.itemsize, dtype
    return list(grouped(range(len(spec)), size_and_dtype, max_bytes))


def nccl_device() -> torch.device:
    """The GPU this process's NCCL traffic uses (the one vLLM or DeepSpeed set current)."""
    return torch.device("cuda", torch.cuda.current_device())


def nccl_group(store: dist.Store, rank: int, size: int, timeout_s: float) -> dist.ProcessGroup:
    group_class = getattr(dist, "ProcessGroupNCCL", None)
    if group_class is None:  # a CPU build of torch that still sees a GPU
        raise WeightSyncError("CUDA is available but this torch has no NCCL "
                              "(torch.distributed.ProcessGroupNCCL): install a CUDA build of torch")
    options = group_class.Options()
    options._timeout = timedelta(seconds=timeout_s)  # the constructor takes no timeout of its own
    return group_class(store, rank, size, options)


class WeightGroup:
    """One member of the group. Opening it is collective: every member must open at once."""

    def __init__(self, store: dist.Store, rank: int, size: int, timeout_s: float,
                 spec: Spec | None = None, bucket_bytes: int = BUCKET_BYTES):
        self.store = store  # rank 0's TCPStore serves the others for as long as the group lives
        self.rank = rank
        self.backend = "nccl" if torch.cuda.is_available() else "gloo"
        self._agree_on_backend()
        prefixed = dist.PrefixStore(PREFIX, store)
        if self.backend == "nccl":
            self.group = nccl_group(prefixed, rank, size, timeout_s)
            self.device = nccl_device()
        else:
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(prefixed, rank, size, timedelta(seconds=timeout_s))
        self.spec = spec  # the engines' side: what rank 0 sends
        self.bucket_bytes = bucket_bytes
        self._buffers: list[tuple[str, torch.Tensor]] | None = None
        self._flat: list[torch.Tensor] | None = None  # NCCL engines: one buffer per bucket

    @classmethod
    def join(cls, host: str, port: int, rank: int, size: int, timeout_s: float,
             spec: Spec) -> "WeightGroup":
        store = dist.TCPStore(host, port, None, False, timedelta(seconds=timeout_s))
        return cls(store, rank, size, timeout_s, spec)

    def _agree_on_backend(self) -> None:
        if self.rank == 0:
            self.store.set(BACKEND_KEY, self.backend)
            return
        chosen = self.store.get(BACKEND_KEY).decode()  # waits for rank 0, up to the timeout
        if chosen != self.backend:
            raise WeightSyncError(f"the trainer's weight sync uses {chosen} but this engine's "
                                  f"process would use {self.backend} (CUDA available: "
                                  f"{torch.cuda.is_available()}): give both sides GPUs or neither")

    def _broadcast(self, tensors: Iterable[torch.Tensor], wait_each: bool = False) -> None:
        """Posts every broadcast at once, then waits for them all (both backends keep their
        order); or, with `wait_each`, waits on each before the next is posted."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        try:
            # Each tensor stays referenced until its broadcast is done.
            works = []
            for tensor in tensors:
                works.append((self.group.broadcast([tensor], options), tensor))
                if wait_each:
                    works.pop()[0].wait()
            for work, _ in works:
                work.wait()
        except RuntimeError as error:  # gloo's "Connection reset by peer", or a timeout
            text = re.sub(r"^\[[^\]]*\] ", "", " ".join(str(error).split())).split(". ")[0]
            raise WeightSyncError(f"the weight sync over {self.backend} failed ({text})"
                                  ) from None

    def _flattened_buckets(self, tensors: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Rank 0 over NCCL: the tensors, as they come, grouped as the engines' `buckets(spec)`
        groups them (same rule, same order) and each group flattened into one buffer on the GPU
        (a ZeRO-3 gather yields one tensor at a time, and every rank steps with it)."""
        def size_and_dtype(tensor: torch.Tensor) -> tuple[int, torch.dtype]:
            return tensor.numel() * tensor.element_size(), tensor.dtype
        for group in grouped(tensors, size_and_dtype, self.bucket_bytes):
            yield torch.cat([tensor.reshape(-1).to(self.device) for tensor in group])

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Rank 0: broadcasts each tensor (gloo) or each bucket (NCCL) as it comes."""
        tensors = (tensor.detach().contiguous() for _, tensor in named_tensors)
        if self.backend == "gloo":
            self._broadcast(tensors)
        else:  # waiting on NCCL only orders the stream: each bucket's buffer is freed in turn
            self._broadcast(self._flattened_buckets(tensors), wait_each=True)

    def receive(self) -> list[tuple[str, torch.Tensor]]:
        """An engine: the tensors rank 0 sends, in the spec's order, into buffers kept between
        syncs (the engines copy them into their parameters). Over NCCL each buffer is a view of
        its bucket's flat buffer, so one broadcast fills them all."""
        if self._buffers is None:
            self._allocate()
        self._broadcast(self._flat if self.backend == "nccl"
                        else (buffer for _, buffer in self._buffers))
        return self._buffers

    def _allocate(self) -> None:
        if self.backend == "gloo":
            self._buffers = [(name, torch.empty(shape, dtype=dtype))
                             for name, shape, dtype in self.spec]
            return
        self._buffers, self._flat = [], []
        for bucket in buckets(self.spec, self.bucket_bytes):
            sizes = [numel(self.spec[i][1]) for i in bucket]
            flat = torch.empty(sum(sizes), dtype=self.spec[bucket[0]][2], device=self.device)
            for index, part in zip(bucket, flat.split(sizes)):
                name, shape, _ = self.spec[index]
                self._buffers.append((name, part.view(shape)))
            self._flat.append(flat)
