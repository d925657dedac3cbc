"""`combine`: a weighted sum of other rewarders, e.g. a verifier plus `length_penalty`."""
from __future__ import annotations

import math
from collections import Counter

from rewarders.base import Rewarder, load_rewarder, score_checked

PART_KEYS = {"name", "kwargs", "weight"}


class CombinedRewarder(Rewarder):
    """Weighted sum of other rewarders' scores, each part named when it fails.

    kwargs: `rewarders`: a list of parts `{name: ..., kwargs: {...}, weight: 1.0}`; `name` is
    anything `reward.name` accepts (a built-in, an installed plug-in, package.module:ClassName),
    `kwargs` (default {}) builds it and `weight` (default 1.0) scales its scores. Each part is
    checked like a top-level rewarder (count, finite numbers). A policy handed to
    `bind_policy` reaches every part that takes one (e.g. `judge`).
    """

    def __init__(self, rewarders: list[dict]):
        if not rewarders:
            raise ValueError("rewarders: give at least one part {name, kwargs, weight}")
        names = []
        self.parts = []  # (label, rewarder, weight)
        for index, part in enumerate(rewarders):
            if not isinstance(part, dict) or "name" not in part:
                raise ValueError(f"rewarders[{index}]: expected {{name, kwargs, weight}}, "
                                 f"got {part!r}")
            unknown = set(part) - PART_KEYS
            if unknown:
                raise ValueError(f"rewarders[{index}]: unknown keys {sorted(unknown)}; "
                                 f"allowed: {sorted(PART_KEYS)}")
            weight = float(part.get("weight", 1.0))
            if not math.isfinite(weight):
                raise ValueError(f"rewarders[{index}].weight: {weight} is not finite")
            names.append(part["name"])
            self.parts.append((part["name"], load_rewarder(part["name"], part.get("kwargs")),
                               weight))
        # Two parts with one name (two http servers) need telling apart in an error.
        repeated = {name for name, count in Counter(names).items() if count > 1}
        self._last_means: dict[str, float] = {}
        self.parts = [(f"{label}#{index}" if label in repeated else label, rewarder, weight)
                      for index, (label, rewarder, weight) in enumerate(self.parts)]

    def bind_policy(self, engine) -> None:
        for _, rewarder, _ in self.parts:
            rewarder.bind_policy(engine)

    def metrics(self) -> dict[str, float]:
        """Each part's mean (unweighted) score in the last call, plus the parts' own metrics."""
        out = dict(self._last_means)
        for label, rewarder, _ in self.parts:
            out.update({f"{label}_{key}": value for key, value in rewarder.metrics().items()})
        return out

    def score(self, prompts, completions, metadata):
        totals = [0.0] * len(completions)
        self._last_means = {}
        for label, rewarder, weight in self.parts:
            scores = score_checked(rewarder, label, prompts, completions, metadata)
            totals = [total + weight * value for total, value in zip(totals, scores)]
            self._last_means[f"{label}_mean"] = sum(scores) / len(scores) if scores else 0.0
        return totals
