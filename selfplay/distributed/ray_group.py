"""Groups of Ray actors called together, failing fast with an error that names the role."""
from __future__ import annotations

import ray

from selfplay.errors import UserError


class DistributedError(UserError, RuntimeError):
    """An actor died, or the cluster cannot hold the run; the message names the role."""


def short_error(error: BaseException) -> str:
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
                f"a {roles[ready[0]]} actor died ({short_error(error)})") from None
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


class ActorGroup:
    """Actors of one role called together: a method on every member, results gathered in order,
    failing as soon as one fails with an error that names the role (`wait_all`)."""

    def __init__(self, actors: list, role: str):
        self.actors, self.role = actors, role

    def __len__(self) -> int:
        return len(self.actors)

    def futures(self, method: str, *args, first_only: bool = False) -> list:
        """The calls of `method` (an actor method) on every member, or the first, started."""
        members = self.actors[:1] if first_only else self.actors
        return [getattr(actor, method).remote(*args) for actor in members]

    def run(self, method: str, *args, first_only: bool = False) -> list:
        """`method` (an actor method) on every member (or the first), its results in order."""
        return wait_all(self.futures(method, *args, first_only=first_only), self.role)

    def call(self, name: str, *args) -> list:
        """`name` (a method or attribute of the part each member holds) on every member."""
        return self.run("call", name, *args)

    def call_first(self, name: str, *args):
        return self.run("call", name, *args, first_only=True)[0]
