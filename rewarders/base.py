"""The reward plug-in interface and how a recipe's `reward.name` becomes a rewarder."""
from __future__ import annotations

import importlib
import math
import threading
from importlib.metadata import entry_points
from typing import Any

from selfplay.errors import UserError


class Rewarder:
    """The reward interface, built with the recipe's `reward.kwargs`. Only `score` is required;
    the rest have no-op defaults. The built-ins subclass it; a plug-in may, or may define only
    `score` (`load_rewarder` then wraps it in `PluginRewarder`, so callers see every method)."""

    def score(self, prompts: list[str], completions: list[str],
              metadata: list[dict]) -> list[float]:
        """One finite score per completion; `metadata` is each prompt row's other fields."""
        raise NotImplementedError

    def bind_policy(self, engine) -> None:
        """Self-rewarding: the run's rollout engine (current weights), for a rewarder that
        samples from the policy (e.g. `judge`). Called once, before the first iteration."""

    def metrics(self) -> dict[str, float]:
        """Numbers about the last `score` call; logged as `reward_<key>`."""
        return {}

    def unavailable(self, metadata: dict) -> str | None:
        """Why a prompt row cannot be scored here (e.g. a checker's data is missing), or None;
        evaluation skips such rows and counts the reasons."""
        return None


class PluginRewarder(Rewarder):
    """A plug-in that does not subclass `Rewarder`, seen through the whole interface: what it
    defines is called, what it lacks is the default."""

    def __init__(self, plugin: Any):
        self.plugin = plugin

    def score(self, prompts, completions, metadata) -> list[float]:
        return self.plugin.score(prompts, completions, metadata)

    def bind_policy(self, engine) -> None:
        self._optional("bind_policy", None, engine)

    def metrics(self) -> dict[str, float]:
        return dict(self._optional("metrics", {}) or {})

    def unavailable(self, metadata: dict) -> str | None:
        return self._optional("unavailable", None, metadata)

    def _optional(self, name: str, default, *args):
        method = getattr(self.plugin, name, None)
        return method(*args) if callable(method) else default


class RewardError(UserError, RuntimeError):
    """A rewarder failed; the message names it and the first bad item."""


class RewardTimeout(RewardError):
    """A scoring call took longer than `reward.timeout_s`."""


# Short name -> "module:Class"; imported lazily so listing rewarders stays instant.
BUILTINS: dict[str, str] = {
    "combine": "rewarders.combine:CombinedRewarder",
    "http": "rewarders.http:HTTPRewarder",
    "ifbench": "rewarders.ifeval:IFBenchRewarder",
    "ifeval": "rewarders.ifeval:IFEvalRewarder",
    "judge": "rewarders.judge:JudgeRewarder",
    "length_penalty": "rewarders.length:LengthPenaltyRewarder",
    "letter_groups": "rewarders.letters:LetterGroupsRewarder",
    "letters": "rewarders.letters:LettersRewarder",
    "reward_model": "rewarders.reward_model:RewardModelRewarder",
}

# Installed packages register rewarders here, e.g. in their pyproject.toml:
#   [project.entry-points."selfplay.rewarders"]
#   my_verifier = "my_pkg.rewards:MyVerifier"
ENTRY_POINT_GROUP = "selfplay.rewarders"


def available_rewarders() -> dict[str, tuple[str, str]]:
    """Short name -> ("module:Class", source), source "built-in" or "plug-in: <distribution>".

    A plug-in never shadows a built-in, and of two plug-ins with one name the first
    distribution on sys.path wins, as `rewarder_class` resolves them.
    """
    found = {name: (target, "built-in") for name, target in BUILTINS.items()}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist.name if entry.dist is not None else "unknown distribution"
        found.setdefault(entry.name, (entry.value, f"plug-in: {dist}"))
    return found


def rewarder_class(name: str) -> type:
    """The class behind a built-in's or an installed plug-in's short name, or behind a
    `package.module:ClassName` path."""
    known = available_rewarders()
    target = known[name][0] if name in known else name
    if ":" not in target:
        plugins = sorted(n for n, (_, source) in known.items() if source != "built-in")
        raise RewardError(f"reward.name: unknown rewarder {name!r}; built-ins: "
                          f"{', '.join(sorted(BUILTINS))}; installed plug-ins: "
                          f"{', '.join(plugins) or 'none'}; or give package.module:ClassName")
    module_name, class_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        raise RewardError(f"reward.name: cannot import {target!r}: no module named {missing!r}; "
                          "install the package that provides it, or check the spelling of "
                          "package.module:ClassName") from None
    except Exception as error:  # a plug-in's module can fail to import in any way
        detail = str(error).splitlines()[0] if str(error) else ""
        raise RewardError(f"reward.name: cannot import {target!r}: importing {module_name!r} "
                          f"raised {type(error).__name__}: {detail}") from None
    if not hasattr(module, class_name):
        classes = sorted(n for n, v in vars(module).items()
                         if isinstance(v, type) and v.__module__ == module.__name__)
        raise RewardError(f"reward.name: cannot import {target!r}: module {module_name!r} has "
                          f"no {class_name!r} (its classes: {', '.join(classes) or 'none'}); "
                          "fix the name after the colon") from None
    return getattr(module, class_name)


def load_rewarder(name: str, kwargs: dict[str, Any] | None = None) -> Rewarder:
    cls = rewarder_class(name)
    try:
        rewarder = cls(**(kwargs or {}))
    except Exception as error:  # a plug-in's constructor can fail in any way
        raise RewardError(f"reward {name!r}: constructor failed with reward.kwargs="
                          f"{kwargs}: {type(error).__name__}: {error}") from None
    if not callable(getattr(rewarder, "score", None)):
        raise RewardError(f"reward {name!r}: {cls.__qualname__} has no "
                          "score(prompts, completions, metadata)")
    return rewarder if isinstance(rewarder, Rewarder) else PluginRewarder(rewarder)


def call_with_timeout(function, timeout_s: float | None, name: str):
    """Runs `function()`; past `timeout_s` seconds a RewardError is raised instead of waiting.

    A hung plug-in cannot be killed from Python, so it is left running in a daemon thread (the
    process exits anyway once the error is reported) rather than blocking the run forever.
    """
    if timeout_s is None:
        return function()
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"rewarder-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeout(f"rewarder {name!r} did not return within reward.timeout_s="
                          f"{timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def score_checked(rewarder: Rewarder, name: str, prompts: list[str], completions: list[str],
                  metadata: list[dict], timeout_s: float | None = None) -> list[float]:
    """Calls the rewarder and turns any failure into a RewardError naming it and the bad item."""
    try:
        scores = call_with_timeout(lambda: rewarder.score(prompts, completions, metadata),
                                   timeout_s, name)
    except RewardTimeout:
        raise
    except RewardError as error:  # a part of a composite rewarder failed; it is named inside
        raise RewardError(f"rewarder {name!r} → {error}") from error
    except Exception as error:
        raise RewardError(f"rewarder {name!r} raised {type(error).__name__}: {error}") from error
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError) as error:
        raise RewardError(f"rewarder {name!r} returned non-numeric scores: {error}") from None
    if len(scores) != len(completions):
        raise RewardError(f"rewarder {name!r} returned {len(scores)} scores for "
                          f"{len(completions)} completions")
    for index, value in enumerate(scores):
        if not math.isfinite(value):
            raise RewardError(f"rewarder {name!r} returned {value} for item {index} "
                              f"(completion {completions[index][:60]!r})")
    return scores


def rewarder_metrics(rewarder: Rewarder, name: str) -> dict[str, float]:
    """The optional `metrics()` of a rewarder (numbers about its last call), as `reward_<key>`.

    e.g. `judge` reports how many replies it could not parse, `ifeval` the share of answers
    that followed every instruction; they land in metrics.jsonl and the logging sinks.
    """
    try:
        values = rewarder.metrics() or {}
        return {f"reward_{key}": float(value) for key, value in values.items()}
    except Exception as error:
        raise RewardError(f"rewarder {name!r}: metrics() failed: {type(error).__name__}: "
                          f"{error}") from error
