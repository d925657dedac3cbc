"""Weight sync on GPUs through vLLM's own NCCL weight-transfer engine.

When trainer ranks and rollout engines are Ray actors on GPUs, trainer rank 0 and every engine
worker form one NCCL group when the run starts (vLLM's `NCCLTrainerWeightTransferEngine` on the
trainer, the engines built with `weight_transfer_config={"backend": "nccl"}`). Each sync, rank 0
broadcasts the weights in packed buckets, already cast to the engines' dtype, and the engines
load them layer by layer: no whole-model receive buffers are kept between syncs. Every rank
iterates the weights, which the ZeRO-3 gather needs. On CPU, where vLLM's transfer engines need
CUDA, selfplay.distributed.weight_sync broadcasts over gloo instead.

Imported only where a GPU run syncs (trainer rank actors and the tests); engines reach vLLM
through selfplay.rollout.vllm_engine.
"""
from __future__ import annotations

import socket
from typing import Iterator

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from selfplay.distributed.ray_group import wait_all

ENGINE_ROLE = "rollout engine"


class TrainerWeights(WeightSource):
    """The trainer's weights under their Hugging Face names, cast to the engines' dtype on this
    rank's GPU (a bf16 engine receives half the bytes of an fp32 trainer's weights)."""

    def __init__(self, trainer, dtype: torch.dtype, device: torch.device, sender: bool = True):
        self.trainer, self.dtype, self.device, self.sender = trainer, dtype, device, sender

    def metadata(self) -> list[ParamMeta]:
        # Shapes without gathering anything (ZeRO-3 keeps a shard's full shape).
        return [ParamMeta(name, self.dtype, shape)
                for name, shape, _ in self.trainer.weight_spec()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.trainer.named_weights():
            # The other ranks only take part in the gather: nothing of theirs is sent.
            yield name, tensor.to(self.device, self.dtype) if self.sender else tensor


class EngineClient:
    """vLLM's weight-sync client over selfplay's engine actors (`EngineWorker.transfer`): every
    call goes to every engine and returns once all have answered; at start each engine's
    workers get their own ranks in the one group, after the trainer's rank 0."""

    def __init__(self, engines: list, world_sizes: list[int]):
        self.engines, self.world_sizes = engines, world_sizes

    def _all(self, futures: list) -> None:
        wait_all(futures, ENGINE_ROLE)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offsets = [1 + sum(self.world_sizes[:j]) for j in range(len(self.engines))]
        self._all([engine.transfer.remote("init_weight_transfer_engine",
                                          {"init_info": {**init_info, "rank_offset": offset}})
                   for engine, offset in zip(self.engines, offsets)])

    def start_weight_update(self) -> None:
        self._all([engine.transfer.remote("start_weight_update") for engine in self.engines])

    def update_weights(self, update_info) -> None:
        self._all([engine.transfer.remote("update_weights", {"update_info": update_info})
                   for engine in self.engines])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all([engine.transfer.remote("finish_weight_update", weight_version)
                   for engine in self.engines])


def open_trainer_side(trainer, engines: list, world_sizes: list[int], dtype: str, rank: int,
                      host: str):
    """vLLM's trainer engine on this rank; on rank 0 this opens the group with every engine
    (collective with them: the client starts their side while rank 0 opens its own)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    device = torch.device("cuda", torch.cuda.current_device())
    info = NCCLTrainerInitInfo(master_address=host, master_port=port,
                               world_size=1 + sum(world_sizes), rank=rank, packed=True)
    return WeightTransferTrainerFactory.trainer_init(
        info, client=EngineClient(engines, world_sizes),
        source=TrainerWeights(trainer, getattr(torch, dtype), device, sender=rank == 0))
