"""The Ray actors: thin wrappers around the same Trainer, rollout engine and rewarder that a local
run uses in-process. Each sets its process environment first (threads, vLLM's CPU settings, the
quiet console), because torch, vLLM and DeepSpeed read it once, when they load."""
from __future__ import annotations

import os
import socket
import warnings

import ray


def _prepare_process(env: dict[str, str]) -> None:
    os.environ.update(env)
    from selfplay.runtime import configure_environment, configure_logging

    configure_environment()
    configure_logging(verbose=False)


def local_gpu_index(ray_gpu_ids: list, visible: str | None) -> int:
    """This actor's GPU as torch numbers it (LOCAL_RANK). Ray sets CUDA_VISIBLE_DEVICES to the
    actor's own GPUs (then it is the first of them); told not to, every GPU of the node is
    visible and the index is the one Ray assigned. No GPU: 0."""
    if not ray_gpu_ids:
        return 0
    mine = str(ray_gpu_ids[0])
    listed = [entry.strip() for entry in visible.split(",")] if visible else []
    return listed.index(mine) if mine in listed else (0 if listed else int(mine))


class Actor:
    """What every actor shares: `call` runs a method of the part it holds (or reads an
    attribute), so the groups fan a Trainer's or an engine's calls out without one wrapper method
    per call; `pid` lets the placement find the actor's process."""

    part = None

    def call(self, name: str, *args):
        value = getattr(self.part, name)
        return value(*args) if callable(value) else value

    def pid(self) -> int:
        return os.getpid()

    def sees(self, marker: str, token: str, model_config: str) -> tuple[bool, bool, str]:
        """Whether this actor's node sees the driver's run directory (the marker it wrote, with
        its token) and the model; and the node's address, for the error."""
        try:
            run_dir = open(marker).read() == token
        except OSError:
            run_dir = False
        return run_dir, os.path.exists(model_config), ray.util.get_node_ip_address()


class TrainerRank(Actor):
    """One DeepSpeed rank. Every rank receives the same calls with the same arguments; the
    ranks split each micro-batch among themselves (selfplay.train.trainer)."""

    def __init__(self, env: dict[str, str]):
        _prepare_process(env)

    def address(self) -> tuple[str, int]:
        """This node's address and a free port: rank 0 publishes them for the process group."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def build(self, dist_env: dict[str, str], model_dir: str, config, options: dict) -> None:
        os.environ.update(dist_env)
        os.environ["LOCAL_RANK"] = str(local_gpu_index(ray.get_gpu_ids(),
                                                       os.environ.get("CUDA_VISIBLE_DEVICES")))
        from selfplay.train.trainer import Trainer

        self.part = Trainer(model_dir, config, **options)

    def publish_weights(self):
        """Rank 0 puts the policy's weights (numpy arrays) into the object store and returns
        [ref] (wrapped, so the driver passes the reference on without fetching the weights);
        the other ranks take part in the gather (ZeRO-3) and return None."""
        state = self.part.state_dict_numpy()
        return None if state is None else [ray.put(state)]

    def host_weight_group(self, timeout_s: float):
        """Rank 0: starts the weight group's store; returns its address and what each sync
        sends (names, shapes, dtypes), for the engines."""
        from selfplay.distributed.weight_sync import host_store

        host = ray.util.get_node_ip_address()
        self._weight_store = host_store(host, timeout_s)
        return host, self._weight_store.port, self.part.weight_spec()

    def open_weight_group(self, size: int, timeout_s: float) -> None:
        from selfplay.distributed.weight_sync import WeightGroup

        self.weight_group = WeightGroup(self._weight_store, 0, size, timeout_s)

    def open_vllm_transfer(self, engines: list, world_sizes: list[int], dtype: str) -> None:
        """GPUs: vLLM's trainer-side transfer engine (rank 0 opens the group with the engines,
        the other ranks only take part in each sync's gather)."""
        from selfplay.distributed.vllm_transfer import open_trainer_side

        self.transfer = open_trainer_side(self.part, engines, world_sizes, dtype,
                                          self.part.rank, ray.util.get_node_ip_address())

    def send_vllm_weights(self) -> None:
        self.transfer.send_weights()

    def send_weights(self) -> None:
        """Rank 0 broadcasts the weights to the engines; every rank iterates them, as the
        ZeRO-3 gather needs."""
        weights = self.part.named_weights()
        if self.part.rank == 0:
            self.weight_group.send(weights)
        else:
            for _ in weights:
                pass


class EngineWorker(Actor):
    """One rollout engine (vLLM's in-process `uni` executor inside the actor: vLLM's own Ray
    executor refuses the CPU platform)."""

    def __init__(self, env: dict[str, str], kind: str, model_dir: str, options: dict):
        _prepare_process(env)
        from selfplay.rollout import build_engine

        self.part = build_engine(kind, model_dir, **options)

    def generate(self, prompts, sampling, seed: int):
        return self.part.generate(prompts, sampling, seed, progress=False)

    def join_weight_group(self, host: str, port: int, rank: int, size: int, timeout_s: float,
                          spec) -> None:
        from selfplay.distributed.weight_sync import WeightGroup

        self.weight_group = WeightGroup.join(host, port, rank, size, timeout_s, spec)

    def transfer_spec(self) -> tuple[int, str]:
        """The engine's worker count and dtype, for the trainer's side of vLLM's transfer."""
        return self.part.world_size, self.part.dtype

    def transfer(self, method: str, *args):
        """One call of vLLM's weight-transfer protocol (init, start, update, finish) on the
        engine, from trainer rank 0's client (selfplay.distributed.vllm_transfer)."""
        return getattr(self.part.llm, method)(*args)

    def receive_weights(self) -> None:
        self.part.update_weights(self.weight_group.receive())

    def update_weights(self, wrapped_ref) -> None:
        import torch

        state = ray.get(wrapped_ref[0])  # zero-copy numpy views of the object store
        with warnings.catch_warnings():  # read-only arrays: reload copies them into parameters
            warnings.simplefilter("ignore", UserWarning)
            tensors = [(name, torch.from_numpy(array)) for name, array in state.items()]
        self.part.update_weights(tensors)


class RewardWorker(Actor):
    def __init__(self, env: dict[str, str], name: str, kwargs: dict):
        _prepare_process(env)
        from rewarders.base import load_rewarder

        self.part = load_rewarder(name, kwargs)
