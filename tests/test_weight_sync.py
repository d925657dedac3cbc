"""The weight group's bucketing and its choice of backend. NCCL cannot run here (no GPU, a CPU
build of torch): a fake `ProcessGroupNCCL` carries each broadcast from the sender to the
receiver within one process. The real gloo transfer between two processes is in
tests/test_distributed.py."""
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from selfplay.distributed import weight_sync
from selfplay.distributed.weight_sync import WeightGroup, WeightSyncError, buckets

F32, BF16 = torch.float32, torch.bfloat16


def test_buckets_keep_the_order_and_a_size_limit_and_a_large_tensor_goes_alone():
    spec = [("a", (4,), F32), ("b", (32,), F32), ("c", (4,), F32), ("d", (2, 2), F32),
            ("e", (8,), F32)]  # 16, 128, 16, 16, 32 bytes
    assert buckets(spec, 64) == [[0], [1], [2, 3, 4]]  # 16 + 128 > 64; 16 + 16 + 32 = 64 fits
    assert buckets(spec, 1000) == [[0, 1, 2, 3, 4]]
    assert buckets(spec, 1) == [[0], [1], [2], [3], [4]]
    assert buckets([], 64) == []


def test_buckets_split_where_the_dtype_changes():
    spec = [("a", (2,), F32), ("b", (2,), BF16), ("c", (3,), BF16), ("d", (1,), F32)]
    assert buckets(spec, 1000) == [[0], [1, 2], [3]]


class FakeWork:
    def wait(self):
        return True


class FakeNCCL:
    """Records its construction; rank 0's broadcasts go onto a shared wire, a receiver's take
    them off in order."""
    wire: list[torch.Tensor] = []

    class Options:
        _timeout = None

    def __init__(self, store, rank, size, options):
        self.store, self.rank, self.size, self.options = store, rank, size, options

    def broadcast(self, tensors, options):
        assert options.rootRank == 0 and len(tensors) == 1
        if self.rank == 0:
            self.wire.append(tensors[0].clone())
        else:
            tensors[0].copy_(self.wire.pop(0))
        return FakeWork()


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dist, "ProcessGroupNCCL", FakeNCCL, raising=False)
    monkeypatch.setattr(FakeNCCL, "wire", [])


def test_with_cuda_the_group_is_nccl_on_the_current_gpu_with_the_timeout(fake_cuda):
    group = WeightGroup(dist.HashStore(), 0, 3, timeout_s=7)
    assert group.backend == "nccl" and isinstance(group.group, FakeNCCL)
    assert (group.group.rank, group.group.size) == (0, 3)
    assert isinstance(group.group.store, dist.PrefixStore)
    assert group.group.options._timeout == timedelta(seconds=7)
    assert group.device == torch.device("cuda", 0)


def test_over_nccl_each_bucket_is_one_broadcast_and_the_engine_gets_the_values(fake_cuda,
                                                                                monkeypatch):
    monkeypatch.setattr(weight_sync, "nccl_device", lambda: torch.device("cpu"))  # no GPU here
    weights = [("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.tensor([1.5, -2, 0, 3])),
               ("c", torch.tensor([1, 2, 3], dtype=BF16)),
               ("d", torch.arange(10, dtype=BF16).reshape(5, 2)), ("e", torch.tensor([9.0]))]
    spec = [(name, tuple(tensor.shape), tensor.dtype) for name, tensor in weights]
    store = dist.HashStore()
    sender = WeightGroup(store, 0, 2, timeout_s=5, bucket_bytes=32)
    engine = WeightGroup(store, 1, 2, timeout_s=5, spec=spec, bucket_bytes=32)
    sender.send(iter(weights))  # a generator, as a ZeRO-3 gather yields them
    # 24 | 16 | 6 + 20 (bf16) | 4 bytes: four broadcasts, each one flat buffer of one dtype
    assert [(flat.dtype, flat.numel()) for flat in FakeNCCL.wire] == [
        (F32, 6), (F32, 4), (BF16, 13), (F32, 1)]
    received = engine.receive()
    assert FakeNCCL.wire == []
    assert [name for name, _ in received] == ["a", "b", "c", "d", "e"]
    for (_, sent), (_, got) in zip(weights, received):
        assert got.dtype == sent.dtype and torch.equal(got, sent)

    sender.send((name, tensor + 1) for name, tensor in weights)  # a second sync, same buffers
    again = engine.receive()
    assert [tensor.data_ptr() for _, tensor in again] == [
        tensor.data_ptr() for _, tensor in received]
    assert all(torch.equal(got, sent + 1) for (_, sent), (_, got) in zip(weights, again))


def test_without_cuda_the_group_is_gloo_on_the_cpu():
    group = WeightGroup(dist.HashStore(), 0, 1, timeout_s=5)
    assert group.backend == "gloo" and isinstance(group.group, dist.ProcessGroupGloo)
    assert group.device == torch.device("cpu")
    group.send([("a", torch.ones(2))])  # a group of one: the broadcast completes at once


def test_an_engine_that_would_pick_another_backend_than_the_trainer_is_a_clear_error(
        monkeypatch):
    store = dist.HashStore()
    WeightGroup(store, 0, 1, timeout_s=5)  # the trainer: no CUDA, gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(WeightSyncError, match="trainer's weight sync uses gloo but this "
                                              "engine's process would use nccl"):
        WeightGroup(store, 1, 2, timeout_s=5, spec=[])


def test_cuda_without_nccl_in_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delattr(dist, "ProcessGroupNCCL", raising=False)
    with pytest.raises(WeightSyncError, match="this torch has no NCCL"):
        WeightGroup(dist.HashStore(), 0, 2, timeout_s=5)
