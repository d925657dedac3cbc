"""The Ray placement: trainer ranks, rollout engines and reward workers as actors.

The driver (the `selfplay run` process) keeps the loop, the data, the γ controller and the
checkpoint bookkeeping; it calls the actor groups step by step, as OpenRLHF and verl do, which a
run-to-completion Ray Train worker would not allow. Weights go from trainer rank 0 to every engine
in memory, as `distributed.weight_sync` says: through Ray's object store (the driver only passes
the reference on), or broadcast over a gloo group of their own (selfplay.distributed.weight_sync).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray

from selfplay.distributed.ray_actors import EngineWorker, RewardWorker, TrainerRank
from selfplay.distributed.sizing import Role, missing_resource, plan_roles, split_evenly
from selfplay.distributed.weight_sync import WeightSyncError
from selfplay.errors import UserError
from selfplay.rollout.base import RolloutEngine


class DistributedError(UserError, RuntimeError):
    """An actor died, or the cluster cannot hold the run; the message names the role."""


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def wait_all(futures: list, role: str | list[str]) -> list:
    """The results of `futures` (one per actor of `role`, or of `role[i]`), failing as soon as
    any one fails: a rank whose peer died would otherwise block in a collective until its
    timeout."""
    roles = dict(zip(futures, [role] * len(futures) if isinstance(role, str) else role))
    pending, done = list(futures), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            done[ready[0]] = ray.get(ready[0])
        except ray.exceptions.RayActorError as error:
            raise DistributedError(
                f"a {roles[ready[0]]} actor died ({_short(error)}); the run directory is intact: "
                "run again with --resume") from None
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the part's own error, e.g. a UserError or RewardError
            raise
    return [done[future] for future in futures]


def name_a_dead_actor(roles: dict, grace_s: float = 2.0) -> None:
    """Raises the one-line "a <role> actor died" error if one of `roles`' actors is dead (Ray
    tells within a fraction of a second); live actors may be busy, so it waits no longer."""
    probes = {actor.__ray_ready__.remote(): role for actor, role in roles.items()}
    ready, _ = ray.wait(list(probes), num_returns=len(probes), timeout=grace_s)
    for probe in ready:
        wait_all([probe], probes[probe])


def _record(path: Path) -> None:
    """Writes this process's descendants (the private Ray) with their start times."""
    processes = psutil.Process().children(recursive=True)
    path.write_text(json.dumps([{"pid": p.pid, "started": p.create_time()} for p in processes]))


def _stop_recorded(path: Path) -> None:
    """Kills the recorded processes that still run (same pid and start time), then forgets them."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for entry in recorded:
        try:
            process = psutil.Process(entry["pid"])
            if abs(process.create_time() - entry["started"]) < 1e-3:
                process.kill()
        except (psutil.Error, KeyError, TypeError):
            continue
    path.unlink(missing_ok=True)


@dataclass
class RemoteWeights:
    """The policy's weights, held in the object store by trainer rank 0."""
    wrapped_ref: list


@dataclass
class BroadcastWeights:
    """The policy's weights, still with the trainer ranks: rank 0 broadcasts them over the
    weight group when the engines receive, and the driver starts both sides at once."""
    ranks: list


class RayPlacement:
    def __init__(self, recipe, *, need_engine: bool, run_dir: Path):
        self.config = recipe.distributed
        self.started_ray = False
        self.actors: list = []
        self.groups: dict = {}  # "trainer", "rollout": the weight group joins them
        # The processes of the Ray this run starts, so that a later start in the same run
        # directory stops what a `kill -9` of this driver left behind (Ray's agents can outlive
        # their raylet).
        self.process_file = run_dir / ".ray-processes.json"
        self._connect(need_engine)

    # --- the cluster ---------------------------------------------------------------------------
    def _connect(self, need_engine: bool) -> None:
        config = self.config
        cores = os.cpu_count() or 1
        private = config.address is None
        self.roles = {role.name: role for role in plan_roles(config, cores=cores,
                                                             private=private,
                                                             need_engine=need_engine)}
        os.environ.setdefault("RAY_worker_niceness", "0")  # else actors run at nice 15
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from selfplay.runtime import is_verbose

        options = dict(include_dashboard=False, log_to_driver=is_verbose(),
                       configure_logging=is_verbose())
        if private:
            _stop_recorded(self.process_file)
            ray.init(num_cpus=cores, object_store_memory=int(config.object_store_gb * 2**30),
                     **options)
            self.started_ray = True
        else:
            try:
                ray.init(address=config.address, **options)
            except (ConnectionError, RuntimeError) as error:
                raise DistributedError(f"distributed.address: cannot join the Ray cluster at "
                                       f"{config.address} ({_short(error)})",
                                       resumable=False) from None
        problem = missing_resource(ray.cluster_resources(), list(self.roles.values()))
        if problem:
            self.close()
            raise DistributedError(problem, resumable=False)

    def _spawn(self, cls, role: Role, index: int, *args):
        """One actor of `role`, with its threads and resources; tracked so `close` kills it."""
        env = {"OMP_NUM_THREADS": str(role.threads), "SELFPLAY_LOG": os.environ.get(
            "SELFPLAY_LOG", ""), "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", "")}
        env = {k: v for k, v in env.items() if v}
        actor = ray.remote(cls).options(
            num_cpus=role.cpus, num_gpus=role.gpus,
            runtime_env={"env_vars": env}).remote(env, *args)
        self.actors.append(actor)
        return actor

    # --- the parts ---------------------------------------------------------------------------
    def rewarder(self, config):
        role = self.roles.get("reward worker")
        if role is None:  # scored in the driver
            from rewarders.base import load_rewarder

            return load_rewarder(config.name, config.kwargs)
        workers = [self._spawn(RewardWorker, role, i, config.name, config.kwargs)
                   for i in range(role.count)]
        return RayRewardGroup(workers)

    def rollout(self, model_dir: str, config, *, dtype: str, seed: int):
        role = self.roles["rollout engine"]
        options = dict(dtype=dtype, seed=seed, max_model_len=config.max_model_len,
                       kv_cache_gb=config.kv_cache_gb)
        engines = [self._spawn(EngineWorker, role, i, config.engine, model_dir, options)
                   for i in range(role.count)]
        self.groups["rollout"] = RayRolloutGroup(engines, model_dir, config.max_model_len)
        self._open_weight_group()
        return self.groups["rollout"]

    def trainer(self, model_dir: str, config, **options):
        role = self.roles["trainer rank"]
        ranks = [self._spawn(TrainerRank, role, rank) for rank in range(role.count)]
        host, port = wait_all([ranks[0].address.remote()], "trainer rank")[0]
        builds = []
        for rank, actor in enumerate(ranks):
            # Ray shows each actor only its own GPUs, so every rank's local device is 0.
            dist_env = {"RANK": str(rank), "WORLD_SIZE": str(role.count), "LOCAL_RANK": "0",
                        "MASTER_ADDR": host, "MASTER_PORT": str(port),
                        "SELFPLAY_DIST_TIMEOUT_S": str(int(self.config.timeout_s))}
            builds.append(actor.build.remote(dist_env, model_dir, config, options))
        wait_all(builds, "trainer rank")  # all at once: building the group is collective
        if self.started_ray:  # every process is up now: the agents, the actors' workers
            _record(self.process_file)
        self.groups["trainer"] = RayTrainerGroup(ranks)
        self._open_weight_group()
        return self.groups["trainer"]

    def _open_weight_group(self) -> None:
        """With `weight_sync: gloo`, once both groups exist: trainer rank 0 hosts the store and
        every engine joins (all at once: opening a gloo group is collective)."""
        trainers, rollout = self.groups.get("trainer"), self.groups.get("rollout")
        if self.config.weight_sync != "gloo" or trainers is None or rollout is None:
            return
        timeout, rank0, engines = self.config.timeout_s, trainers.ranks[0], rollout.engines
        host, port, spec = wait_all([rank0.host_weight_group.remote(timeout)], "trainer rank")[0]
        size = 1 + len(engines)
        wait_all([rank0.open_weight_group.remote(size, timeout)]
                 + [engine.join_weight_group.remote(host, port, j + 1, size, timeout, spec)
                    for j, engine in enumerate(engines)],
                 ["trainer rank"] + ["rollout engine"] * len(engines))
        trainers.broadcasts = True

    def actors_rss_mb(self) -> float | None:
        """Resident memory of this run's actors on this machine (a private Ray), in MB."""
        if not self.started_ray:
            return None
        total = 0
        for process in psutil.Process().children(recursive=True):
            try:
                title = " ".join(process.cmdline())  # Ray sets it to ray::ClassName[.method]
                if title.startswith(("ray::TrainerRank", "ray::EngineWorker",
                                     "ray::RewardWorker")):
                    total += process.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def describe(self) -> str:
        where = "a private Ray" if self.started_ray else f"Ray at {self.config.address}"
        parts = ", ".join(f"{role.count} {role.name}{'s' if role.count > 1 else ''}"
                          for role in self.roles.values())
        return f"{where}: {parts}"

    def close(self) -> None:
        """Stops every actor this run started, and the Ray it started (never a cluster's)."""
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead; nothing to stop
                pass
        self.actors = []
        if ray.is_initialized():
            ray.shutdown()  # a private Ray stops; a cluster only loses this driver
        if self.started_ray:
            _stop_recorded(self.process_file)
            self.started_ray = False


class RayTrainerGroup:
    """The Trainer's interface over N rank actors; every call goes to every rank."""

    def __init__(self, ranks: list):
        self.ranks = ranks
        self.broadcasts = False  # True once the weight group joins rank 0 to the engines
        self._refresh_lr()

    def _refresh_lr(self) -> None:
        self._lr = wait_all([self.ranks[0].lr.remote()], "trainer rank")[0]

    def _all(self, method: str, *args) -> list:
        return wait_all([getattr(rank, method).remote(*args) for rank in self.ranks],
                        "trainer rank")

    def train(self, pairs, gamma, iteration: int, progress: bool = False):
        # Every rank returns the same stats; rank 0 also the state of the controller behind
        # `gamma`, which the ranks updated on their copies (TrainerRank.train): it is loaded here.
        stats, controller_state = self._all("train", pairs, gamma, iteration)[0]
        if controller_state is not None:
            gamma.__self__.load_state_dict(controller_state)
        self._refresh_lr()
        return stats

    def margins(self, pairs) -> list[float]:
        return self._all("margins", pairs)[0]

    @property
    def lr(self) -> float:
        return self._lr

    def named_weights(self) -> RemoteWeights | BroadcastWeights:
        if self.broadcasts:  # nothing moves until the engines receive
            return BroadcastWeights(self.ranks)
        return RemoteWeights(self._all("publish_weights")[0])

    def save(self, directory: str) -> None:
        self._all("save", directory)

    def load(self, directory: str) -> None:
        self._all("load", directory)
        self._refresh_lr()

    def export(self, out_dir: str, tokenizer) -> None:
        self._all("export", out_dir, tokenizer)


class RayRolloutGroup(RolloutEngine):
    """The RolloutEngine interface over k engine actors; a call's prompts are split among them
    in contiguous chunks (engine j samples its chunk with seed + j, so one engine samples exactly
    what a local engine would)."""

    def __init__(self, engines: list, model_dir: str, max_model_len: int):
        from transformers import AutoTokenizer

        self.engines = engines
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_model_len = max_model_len
        wait_all([engine.__ray_ready__.remote() for engine in engines], "rollout engine")

    def generate(self, prompts, sampling, seed: int, progress: bool = False):
        chunks = split_evenly(list(prompts), len(self.engines))
        futures = [engine.generate.remote(chunk, sampling, seed + index)
                   for index, (engine, chunk) in enumerate(zip(self.engines, chunks)) if chunk]
        return [rollout for part in wait_all(futures, "rollout engine") for rollout in part]

    def update_weights(self, named_tensors) -> None:
        if isinstance(named_tensors, BroadcastWeights):
            return self._receive_broadcast(named_tensors.ranks)
        if not isinstance(named_tensors, RemoteWeights):  # e.g. a model's tensors: put them
            state = {name: tensor.detach().float().cpu().numpy()
                     for name, tensor in named_tensors}
            named_tensors = RemoteWeights([ray.put(state)])
        wait_all([engine.update_weights.remote(named_tensors.wrapped_ref)
                  for engine in self.engines], "rollout engine")

    def _receive_broadcast(self, ranks: list) -> None:
        sends = [rank.send_weights.remote() for rank in ranks]
        receives = [engine.receive_weights.remote() for engine in self.engines]
        try:
            wait_all(sends + receives, ["trainer rank"] * len(sends)
                     + ["rollout engine"] * len(receives))
        except WeightSyncError as error:  # a peer vanished: name it if Ray knows it died
            name_a_dead_actor({rank: "trainer rank" for rank in ranks}
                              | {engine: "rollout engine" for engine in self.engines})
            raise DistributedError(str(error)) from None

    def sequence_logprobs(self, prompt_ids, completion_ids) -> list[float]:
        return wait_all([self.engines[0].sequence_logprobs.remote(prompt_ids, completion_ids)],
                        "rollout engine")[0]

    def close(self) -> None:
        pass  # the placement kills the actors


class RayRewardGroup:
    """A rewarder over k worker actors; the completions are split among them in order."""

    def __init__(self, workers: list):
        self.workers = workers
        wait_all([worker.__ray_ready__.remote() for worker in workers], "reward worker")

    def score(self, prompts, completions, metadata) -> list[float]:
        items = list(zip(prompts, completions, metadata))
        futures = [worker.score.remote(*map(list, zip(*chunk)))
                   for worker, chunk in zip(self.workers, split_evenly(items, len(self.workers)))
                   if chunk]
        return [score for part in wait_all(futures, "reward worker") for score in part]

    def metrics(self) -> dict[str, float]:
        reports = wait_all([worker.metrics.remote() for worker in self.workers], "reward worker")
        keys = {key for report in reports for key in report}
        return {key: sum(r[key] for r in reports if key in r) / sum(key in r for r in reports)
                for key in keys}
