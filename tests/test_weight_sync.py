"""Weight sync: the gloo group (CPU, or one side on a GPU) and the pieces of the GPU path through
vLLM's NCCL weight-transfer engine. NCCL cannot run here (no GPU): the engine actors and the
transport are stand-ins, and what is checked is what selfplay hands vLLM. The real gloo transfer
between processes is in tests/test_distributed.py."""
import threading

import torch
import torch.distributed as dist

from selfplay.distributed import vllm_transfer
from selfplay.distributed.sizing import all_on_gpus
from selfplay.distributed.weight_sync import WeightGroup
from selfplay.recipe import DistributedConfig

F32, BF16 = torch.float32, torch.bfloat16
WEIGHTS = [("a", torch.arange(6.0).reshape(2, 3)), ("c", torch.tensor([1, 2, 3], dtype=BF16)),
           ("e", torch.tensor([9.0]))]


def test_over_gloo_the_engine_gets_every_tensor_in_order_with_its_dtype():
    spec = [(name, tuple(tensor.shape), tensor.dtype) for name, tensor in WEIGHTS]
    store = dist.HashStore()
    received = []

    def engine():
        group = WeightGroup(store, 1, 2, timeout_s=20, spec=spec)
        received.append(group.receive())
        received.append(group.receive())

    thread = threading.Thread(target=engine)
    thread.start()
    sender = WeightGroup(store, 0, 2, timeout_s=20)
    sender.send(iter(WEIGHTS))  # a generator, as a ZeRO-3 gather yields them
    sender.send((name, tensor + 1) for name, tensor in WEIGHTS)
    thread.join(timeout=60)
    first, second = received
    assert [name for name, _ in first] == ["a", "c", "e"]
    for (_, sent), (_, got), (_, got_again) in zip(WEIGHTS, first, second):
        assert got.dtype == sent.dtype and torch.equal(got, sent)
        assert torch.equal(got_again, sent + 1)


class FakeTrainer:
    def weight_spec(self):
        return [(name, tuple(t.shape), t.dtype) for name, t in WEIGHTS]

    def named_weights(self):
        yield from WEIGHTS


def test_the_gpu_path_sends_the_weights_in_the_engines_dtype_as_declared():
    source = vllm_transfer.TrainerWeights(FakeTrainer(), BF16, torch.device("cpu"))
    meta = source.metadata()
    sent = list(source)
    assert [(m.name, m.dtype, m.shape) for m in meta] == [
        ("a", BF16, (2, 3)), ("c", BF16, (3,)), ("e", BF16, (1,))]
    assert [(name, t.dtype, tuple(t.shape)) for name, t in sent] == [
        (m.name, m.dtype, m.shape) for m in meta]  # vLLM checks that they agree
    assert torch.equal(sent[0][1], WEIGHTS[0][1].to(BF16))


class FakeEngine:
    """An engine actor: `transfer.remote(method, *args)` records the call."""

    def __init__(self, calls):
        outer = self

        class Method:
            @staticmethod
            def remote(method, *args):
                calls.append((outer, method, args))
                return None
        self.transfer = Method


def test_each_engines_workers_get_their_own_ranks_and_every_call_reaches_every_engine(
        monkeypatch):
    calls = []
    monkeypatch.setattr(vllm_transfer, "wait_all", lambda futures, role: futures)
    engines = [FakeEngine(calls), FakeEngine(calls), FakeEngine(calls)]
    client = vllm_transfer.EngineClient(engines, world_sizes=[2, 1, 2])  # tensor parallel 2, 1, 2
    from vllm.distributed.weight_transfer.nccl_common import (NCCLWeightTransferInitInfo,
                                                             worker_init_payload)
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo
    client.init_weight_transfer_engine(worker_init_payload(NCCLWeightTransferInitInfo(
        master_address="10.0.0.1", master_port=5, rank_offset=1, world_size=6)))
    assert [args[0]["init_info"]["rank_offset"] for _, _, args in calls] == [1, 3, 4]
    for _, _, args in calls:  # what each engine's LLM.init_weight_transfer_engine receives
        assert NCCLWeightTransferInitInfo(**args[0]["init_info"]).world_size == 6
    calls.clear()
    client.start_weight_update()
    client.update_weights({"names": ["a"], "dtype_names": ["bfloat16"], "shapes": [[2, 3]]})
    client.finish_weight_update()
    assert [method for _, method, _ in calls] == (["start_weight_update"] * 3
                                                  + ["update_weights"] * 3
                                                  + ["finish_weight_update"] * 3)
    assert calls[3][2] == ({"update_info": {"names": ["a"], "dtype_names": ["bfloat16"],
                                            "shapes": [[2, 3]]}},)
    assert NCCLWeightTransferUpdateInfo(**calls[3][2][0]["update_info"]).names == ["a"]


def test_vllms_transfer_is_used_only_when_trainer_ranks_and_engines_all_have_gpus():
    from selfplay.rollout.vllm_engine import llm_args
    assert all_on_gpus(DistributedConfig(backend="ray", gpus_per_trainer=1, gpus_per_engine=1))
    assert not all_on_gpus(DistributedConfig(backend="ray", gpus_per_trainer=0,
                                             gpus_per_engine=1))
    assert not all_on_gpus(DistributedConfig(backend="ray"))
    common = dict(dtype="bfloat16", seed=0, max_model_len=64, kv_cache_gb=1.0,
                  gpu_memory_utilization=0.9, tensor_parallel_size=1, weight_transfer=True)
    assert llm_args("m", cuda=True, **common)["weight_transfer_config"] == {"backend": "nccl"}
    assert "weight_transfer_config" not in llm_args("m", cuda=False, **common)
