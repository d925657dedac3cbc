"""The Ray placement: trainer ranks, rollout engines and reward workers as actors.

The driver (the `selfplay run` process) keeps the loop, the data, the γ controller and the
checkpoint bookkeeping; it calls the actor groups step by step, as OpenRLHF and verl do, which a
run-to-completion Ray Train worker would not allow. Weights go from trainer rank 0 to every engine
in memory, as `distributed.weight_sync` says: through Ray's object store (the driver only passes
the reference on), or broadcast over a group of their own: gloo (selfplay.distributed.weight_sync),
or, when trainer ranks and vLLM engines all have GPUs, vLLM's NCCL weight-transfer engine
(selfplay.distributed.vllm_transfer).
The placement moves them (`sync_weights`): the trainer and rollout groups never see each other.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import psutil
import ray

from selfplay.distributed.ray_actors import EngineWorker, RewardWorker, TrainerRank
from selfplay.distributed.ray_group import (ActorGroup, DistributedError, name_a_dead_actor,
                                            short_error, wait_all)
from selfplay.distributed.sizing import (Role, all_on_gpus, bundle, missing_resource,
                                         plan_roles, split_evenly, unplaceable)
from selfplay.distributed.weight_sync import WeightSyncError
from selfplay.rollout.base import RolloutEngine


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


class RayPlacement:
    def __init__(self, recipe, *, need_engine: bool, run_dir: Path):
        self.config = recipe.distributed
        self.started_ray = False
        self.actors: list = []
        self.pids: list[int] = []  # the actors' processes, for their memory
        self.trainer_group: RayTrainerGroup | None = None
        self.rollout_group: RayRolloutGroup | None = None
        self.broadcasts = False  # True once the gloo weight group joins rank 0 to the engines
        self.placement_group = None  # every actor's resources, reserved at once
        # Trainer ranks and engines all on GPUs: the weights go over vLLM's own NCCL engine.
        self.vllm_transfer = (self.config.weight_sync == "gloo" and all_on_gpus(self.config)
                              and recipe.rollout.engine == "vllm")
        # The processes of the Ray this run starts, so that a later start in the same run
        # directory stops what a `kill -9` of this driver left behind (Ray's agents can outlive
        # their raylet).
        self.process_file = run_dir / ".ray-processes.json"
        self.run_dir = run_dir
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
                                       f"{config.address} ({short_error(error)})",
                                       resumable=False) from None
        roles = list(self.roles.values())
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        problem = (missing_resource(ray.cluster_resources(), roles)
                   or unplaceable(nodes, roles))
        if problem:
            self.close()
            raise DistributedError(problem, resumable=False)
        self._reserve(roles)

    def _reserve(self, roles: list[Role]) -> None:
        """Reserves every actor's CPUs and GPUs at once, in one placement group, or stops within
        `distributed.timeout_s` naming what could not be placed (a busy cluster): actors are
        never left waiting for resources that do not come."""
        from ray.exceptions import GetTimeoutError
        from ray.util.placement_group import placement_group

        self.bundles: dict[str, list[int]] = {}  # role name → its free bundle indices
        bundles = []
        for role in roles:
            self.bundles[role.name] = list(range(len(bundles), len(bundles) + role.count))
            bundles += [bundle(role)] * role.count
        self.placement_group = placement_group(bundles, strategy="PACK")
        try:
            ray.get(self.placement_group.ready(), timeout=self.config.timeout_s)
        except GetTimeoutError:
            asks = ", ".join(f"{role.count} {role.name}{'s' if role.count > 1 else ''} × "
                             f"{bundle(role)}" for role in roles)
            self.close()
            raise DistributedError(
                f"Ray could not place the run's actors ({asks}) within distributed.timeout_s = "
                f"{self.config.timeout_s:g} s: the cluster's free resources are "
                "short (other jobs hold them?); free them, or ask for less",
                resumable=False) from None

    def _spawn(self, cls, role: Role, *args):
        """One actor of `role`, with its threads and resources; tracked so `close` kills it."""
        env = {"OMP_NUM_THREADS": str(role.threads), "SELFPLAY_LOG": os.environ.get(
            "SELFPLAY_LOG", ""), "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", "")}
        env = {k: v for k, v in env.items() if v}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group,
            placement_group_bundle_index=self.bundles[role.name].pop(0))
        actor = ray.remote(cls).options(
            num_cpus=role.cpus, num_gpus=role.gpus, scheduling_strategy=strategy,
            runtime_env={"env_vars": env}).remote(env, *args)
        self.actors.append(actor)
        return actor

    def _check_shared(self, group: ActorGroup, model_dir: str) -> None:
        """Every actor must see the run directory (trainer ranks write their checkpoint shards
        there) and the model: across machines both must be on a file system they share."""
        marker = (self.run_dir / ".shared-check").resolve()
        token = uuid.uuid4().hex
        marker.write_text(token)
        try:
            seen = group.run("sees", str(marker), token,
                             str((Path(model_dir) / "config.json").resolve()))
        finally:
            marker.unlink(missing_ok=True)
        for index, (run_dir, model, node) in enumerate(seen):
            missing = [f"the run directory {self.run_dir.resolve()}"] if not run_dir else []
            missing += [f"the model {Path(model_dir).resolve()}"] if not model else []
            if missing:
                raise DistributedError(
                    f"{group.role} {index} (node {node}) cannot see {' or '.join(missing)}: "
                    "with Ray on several machines, put them on a file system every node mounts "
                    "at the same path (NFS, a cluster file system)", resumable=False)

    def _track(self, group: ActorGroup) -> ActorGroup:
        """`group`, once each of its actors is up (its pid recorded, for `actors_rss_mb`)."""
        self.pids += group.run("pid")
        return group

    # --- the parts ---------------------------------------------------------------------------
    def rewarder(self, config):
        role = self.roles.get("reward worker")
        if role is None:  # scored in the driver
            from rewarders.base import load_rewarder

            return load_rewarder(config.name, config.kwargs)
        workers = [self._spawn(RewardWorker, role, config.name, config.kwargs)
                   for _ in range(role.count)]
        return RayRewardGroup(self._track(ActorGroup(workers, role.name)))

    def rollout(self, model_dir: str, config, *, dtype: str, seed: int):
        role = self.roles["rollout engine"]
        options = dict(dtype=dtype, seed=seed, max_model_len=config.max_model_len,
                       kv_cache_gb=config.kv_cache_gb,
                       gpu_memory_utilization=config.gpu_memory_utilization or 0.9,
                       tensor_parallel_size=config.tensor_parallel_size,
                       weight_transfer=self.vllm_transfer and config.engine == "vllm")
        engines = [self._spawn(EngineWorker, role, config.engine, model_dir, options)
                   for _ in range(role.count)]
        self.rollout_group = RayRolloutGroup(self._track(ActorGroup(engines, role.name)),
                                             model_dir, config.max_model_len)
        self._open_weight_group()
        return self.rollout_group

    def trainer(self, model_dir: str, config, **options):
        role = self.roles["trainer rank"]
        ranks = ActorGroup([self._spawn(TrainerRank, role) for _ in range(role.count)],
                           role.name)
        self._check_shared(ranks, model_dir)
        host, port = ranks.run("address", first_only=True)[0]
        builds = []
        for rank, actor in enumerate(ranks.actors):
            # LOCAL_RANK: the rank's own GPU, which the actor reads from Ray (ray_actors).
            dist_env = {"RANK": str(rank), "WORLD_SIZE": str(role.count), "LOCAL_RANK": "0",
                        "MASTER_ADDR": host, "MASTER_PORT": str(port),
                        "SELFPLAY_DIST_TIMEOUT_S": str(int(self.config.timeout_s))}
            builds.append(actor.build.remote(dist_env, model_dir, config, options))
        wait_all(builds, role.name)  # all at once: building the group is collective
        if self.started_ray:  # every process is up now: the agents, the actors' workers
            _record(self.process_file)
        self.trainer_group = RayTrainerGroup(self._track(ranks))
        self._open_weight_group()
        return self.trainer_group

    def _open_weight_group(self) -> None:
        """With `weight_sync: gloo`, once both groups exist: trainer rank 0 hosts the store and
        every engine joins (all at once: opening a gloo group is collective)."""
        trainer, rollout = self.trainer_group, self.rollout_group
        if self.config.weight_sync != "gloo" or trainer is None or rollout is None:
            return
        timeout, ranks, engines = self.config.timeout_s, trainer.group, rollout.group
        if self.vllm_transfer:  # GPUs on both sides: vLLM's NCCL engine, opened now
            sizes, dtypes = zip(*engines.run("transfer_spec"))
            self._vllm_transfer_call(ranks, engines, "open_vllm_transfer", engines.actors,
                                     list(sizes), dtypes[0])
            self.broadcasts = True
            return
        host, port, spec = ranks.run("host_weight_group", timeout, first_only=True)[0]
        size = 1 + len(engines)
        wait_all(ranks.futures("open_weight_group", size, timeout, first_only=True)
                 + [engine.join_weight_group.remote(host, port, j + 1, size, timeout, spec)
                    for j, engine in enumerate(engines.actors)],
                 [ranks.role] + [engines.role] * len(engines))
        self.broadcasts = True

    def sync_weights(self, trainer: "RayTrainerGroup", engine: "RayRolloutGroup") -> None:
        """The policy's weights from trainer rank 0 into every engine: over the weight group
        (every rank iterates the weights, rank 0 broadcasts, every engine receives, all at
        once), or through the object store (rank 0 puts them, the driver passes the reference)."""
        ranks, engines = trainer.group, engine.group
        if not self.broadcasts:
            wrapped_ref = ranks.run("publish_weights")[0]
            engines.run("update_weights", wrapped_ref)
            return
        if self.vllm_transfer:  # every rank takes part (the gather); rank 0 drives the engines
            self._vllm_transfer_call(ranks, engines, "send_vllm_weights")
            return
        sends, receives = ranks.futures("send_weights"), engines.futures("receive_weights")
        try:
            wait_all(sends + receives, [ranks.role] * len(sends) + [engines.role] * len(receives))
        except WeightSyncError as error:  # a peer vanished: name it if Ray knows it died
            name_a_dead_actor({actor: ranks.role for actor in ranks.actors}
                              | {actor: engines.role for actor in engines.actors})
            raise DistributedError(str(error)) from None

    @staticmethod
    def _vllm_transfer_call(ranks: ActorGroup, engines: ActorGroup, method: str, *args) -> None:
        """A call of vLLM's weight transfer on every rank, its failure in one line (naming a dead
        engine or rank when Ray knows of one). vLLM's NCCL calls have no timeout of their own."""
        try:
            ranks.run(method, *args)
        except DistributedError:
            raise
        except Exception as error:  # vLLM's or NCCL's own error, raised in rank 0
            name_a_dead_actor({actor: ranks.role for actor in ranks.actors}
                              | {actor: engines.role for actor in engines.actors})
            raise DistributedError(f"the weight transfer to the engines failed "
                                   f"({short_error(error)})") from None

    def actors_rss_mb(self) -> float | None:
        """Resident memory of this run's actors on this machine (a private Ray), in MB."""
        if not self.started_ray:
            return None
        total = 0
        for pid in self.pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:  # the actor has exited
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
        if self.placement_group is not None and ray.is_initialized():
            from ray.util.placement_group import remove_placement_group
            try:
                remove_placement_group(self.placement_group)  # a cluster gets them back
            except Exception:  # the cluster is gone already
                pass
        self.placement_group = None
        if ray.is_initialized():
            ray.shutdown()  # a private Ray stops; a cluster only loses this driver
        if self.started_ray:
            _stop_recorded(self.process_file)
            self.started_ray = False


class RayTrainerGroup:
    """The Trainer's interface over N rank actors; every call goes to every rank (each returns
    the same result: rank 0's is kept)."""

    def __init__(self, group: ActorGroup):
        self.group = group
        self._refresh_lr()

    def _refresh_lr(self) -> None:
        self._lr = self.group.call_first("lr")

    def train(self, pairs, gamma: float, iteration: int, progress: bool = False):
        stats = self.group.call("train", pairs, gamma, iteration)[0]
        self._refresh_lr()
        return stats

    def margins(self, pairs) -> list[float]:
        return self.group.call("margins", pairs)[0]

    @property
    def lr(self) -> float:
        return self._lr

    def save(self, directory: str) -> None:
        self.group.call("save", directory)

    def load(self, directory: str) -> None:
        self.group.call("load", directory)
        self._refresh_lr()

    def export(self, out_dir: str, tokenizer) -> None:
        self.group.call("export", out_dir, tokenizer)


class RayRolloutGroup(RolloutEngine):
    """The RolloutEngine interface over k engine actors; a call's prompts are split among them
    in contiguous chunks (engine j samples its chunk with seed + j, so one engine samples exactly
    what a local engine would)."""

    def __init__(self, group: ActorGroup, model_dir: str, max_model_len: int):
        from transformers import AutoTokenizer

        self.group = group
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.max_model_len = max_model_len

    def generate(self, prompts, sampling, seed: int, progress: bool = False):
        chunks = split_evenly(list(prompts), len(self.group))
        futures = [engine.generate.remote(chunk, sampling, seed + index)
                   for index, (engine, chunk) in enumerate(zip(self.group.actors, chunks))
                   if chunk]
        return [rollout for part in wait_all(futures, self.group.role) for rollout in part]

    def update_weights(self, named_tensors) -> None:
        """Weights held by the driver (e.g. a saved model's): put once, loaded by every engine.
        The trainer's weights go through the placement's `sync_weights` instead."""
        state = {name: tensor.detach().float().cpu().numpy() for name, tensor in named_tensors}
        self.group.run("update_weights", [ray.put(state)])

    def sequence_logprobs(self, prompt_ids, completion_ids) -> list[float]:
        return self.group.call_first("sequence_logprobs", prompt_ids, completion_ids)

    def close(self) -> None:
        pass  # the placement kills the actors


class RayRewardGroup:
    """A rewarder over k worker actors; the completions are split among them in order."""

    def __init__(self, group: ActorGroup):
        self.group = group

    def score(self, prompts, completions, metadata) -> list[float]:
        items = list(zip(prompts, completions, metadata))
        futures = [worker.call.remote("score", *map(list, zip(*chunk)))
                   for worker, chunk in zip(self.group.actors,
                                            split_evenly(items, len(self.group)))
                   if chunk]
        return [score for part in wait_all(futures, self.group.role) for score in part]

    def bind_policy(self, engine) -> None:
        pass  # workers score with their own rewarders; a policy-bound one runs in the driver

    def unavailable(self, metadata) -> str | None:
        return None

    def metrics(self) -> dict[str, float]:
        reports = self.group.call("metrics")
        keys = {key for report in reports for key in report}
        return {key: sum(r[key] for r in reports if key in r) / sum(key in r for r in reports)
                for key in keys}
