"""How many CPUs, GPUs and threads each actor of a Ray run gets, and whether a cluster has them.

Pure arithmetic (no Ray), so that it is tested without a cluster.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    name: str  # "trainer rank", "rollout engine", "reward worker": how errors name it
    count: int
    cpus: float  # reserved per actor
    gpus: float
    threads: int  # OMP/torch threads per actor


def plan_roles(config, *, cores: int, private: bool, need_engine: bool) -> list[Role]:
    """The actors a `distributed` section asks for. On a private Ray the machine's cores are
    shared among all actors (the phases of an iteration alternate, so each may use them all
    while it works); on a cluster each actor reserves `cpus_per_actor` (default 1)."""
    counts = {"trainer rank": config.trainer_ranks,
              "rollout engine": config.rollout_engines if need_engine else 0,
              "reward worker": config.reward_workers}
    actors = sum(counts.values())
    if config.cpus_per_actor is not None:
        cpus = config.cpus_per_actor
    else:
        # Rounded down: Ray keeps 4 decimals, and rounding up could exceed the machine.
        cpus = math.floor(cores / actors * 1e4) / 1e4 if private else 1.0
    roles = []
    for name, count in counts.items():
        if not count:
            continue
        if private:  # trainer ranks work at the same time; engines and rewarders take turns
            threads = max(1, cores // count) if name == "trainer rank" else max(1, cores)
        else:
            threads = max(1, int(cpus))
        gpus = {"trainer rank": config.gpus_per_trainer,
                "rollout engine": config.gpus_per_engine,
                "reward worker": config.gpus_per_reward_worker}[name]
        roles.append(Role(name, count, cpus, gpus, threads))
    return roles


def all_on_gpus(config) -> bool:
    """Whether every trainer rank and engine has a GPU of its own (then the weights go over
    vLLM's NCCL weight-transfer engine, else over gloo)."""
    return config.gpus_per_trainer >= 1 and config.gpus_per_engine >= 1


def missing_resource(available: dict[str, float], roles: list[Role]) -> str | None:
    """A one-line reason when the cluster cannot hold the roles at once, else None. (Ray itself
    would wait forever for an actor that asks for a GPU the cluster does not have.)"""
    for resource, per_role in (("GPU", lambda r: r.gpus), ("CPU", lambda r: r.cpus)):
        needed = sum(role.count * per_role(role) for role in roles)
        have = available.get(resource, 0.0)
        if needed > have + 1e-9:
            wanted = ", ".join(f"{role.count} {role.name}{'s' if role.count > 1 else ''} × "
                               f"{per_role(role):g}" for role in roles if per_role(role))
            return (f"the Ray cluster has {have:g} {resource}s but the run needs {needed:g} "
                    f"({wanted}); lower distributed.{_field(resource)} or use a larger cluster")
    return None


def bundle(role: Role) -> dict[str, float]:
    """The resources one actor of `role` reserves in the run's placement group (Ray refuses
    zero-sized entries)."""
    return {k: v for k, v in (("CPU", role.cpus), ("GPU", role.gpus)) if v}


def unplaceable(nodes: list[dict[str, float]], roles: list[Role]) -> str | None:
    """A one-line reason when some actor fits on no single node (an actor cannot span nodes, and
    Ray would wait for such a node forever), else None. `nodes`: each alive node's resources."""
    for role in roles:
        wanted = bundle(role)
        if any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in wanted.items()) for node in nodes):
            continue
        largest = {k: max((node.get(k, 0.0) for node in nodes), default=0.0) for k in wanted}
        asks = ", ".join(f"{v:g} {k}s" for k, v in wanted.items())
        has = ", ".join(f"{v:g} {k}s" for k, v in largest.items())
        fields = " or ".join(_field(k) for k in wanted)
        return (f"a {role.name} needs {asks} on one node, but no node of the Ray cluster has "
                f"that (at most {has}); lower distributed.{fields} or add larger nodes")
    return None


def _field(resource: str) -> str:
    return ("gpus_per_trainer/gpus_per_engine/gpus_per_reward_worker" if resource == "GPU"
            else "cpus_per_actor")


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` in `parts` contiguous chunks whose sizes differ by at most one (order kept)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks
