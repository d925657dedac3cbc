"""The γ study on the letter-groups toy task, as pre-registered in docs/gamma-study.md.

`tune` runs every baseline setting on the tuning seeds and tuning prompts (and adaptive once,
for reference); `test` runs adaptive and each family's best tuning setting on the fresh test
seeds and held-out prompts. Each run writes one JSON file under experiments/results/gamma_study/
(final held-out reward, per-iteration train reward and γ, machine, versions, commit); runs whose
file exists are skipped, so an interrupted study resumes. Tables: experiments/gamma_tables.py.

  python -m experiments.gamma_study tune
  python -m experiments.gamma_study test
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, child_env, commit, versions

RECIPE = REPO / "recipes" / "groups.yaml"
RESULTS = REPO / "experiments" / "results" / "gamma_study"
COMMON = ["rollout.engine=hf", "logging.save_rollouts=false", "loop.checkpoint_every=15",
          "loop.keep_checkpoints=1"]
SPLITS = {"tune": {"seeds": [100, 101], "eval": "data/groups-tune.jsonl"},
          "test": {"seeds": list(range(200, 210)), "eval": "data/groups-heldout.jsonl"}}

# Each family's settings, in the tie-breaking order of the protocol.
FAMILIES: dict[str, dict[str, list[str]]] = {
    "fixed": {f"fixed-{g}": ["gamma.controller=fixed", f"gamma.value={g}"]
              for g in ("0.3", "0.6", "0.9", "1.2")},
    "fixed-active": {f"fixed-active-{g}": ["gamma.controller=fixed", f"gamma.value={g}",
                                           "loss.reduction=active"]
                     for g in ("0.3", "0.6", "0.9", "1.2")},
    "schedule": {f"schedule-{a}-{b}": ["gamma.controller=schedule", f"gamma.start={a}",
                                       f"gamma.end={b}"]
                 for a, b in (("1.0", "0.2"), ("1.5", "0.5"), ("1.2", "0.6"), ("1.5", "1.0"))},
    "gammapo": {f"gammapo-{g}": ["loss.name=simpo", "loss.beta=10", "gamma.controller=gammapo",
                                 f"gamma.value={g}", "gamma.tau=10"]
                for g in ("0.2", "0.5", "0.8", "1.1")},
}
ADAPTIVE = {"adaptive": ["gamma.controller=adaptive"]}


def result_path(split: str, setting: str, seed: int) -> Path:
    return RESULTS / split / setting / f"seed-{seed}.json"


def toy_run(seed: int, eval_prompts: str, overrides: list[str]) -> list[dict]:
    """One run of the letter-groups recipe in a temporary directory: its metrics records."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "selfplay.cli", "run", str(RECIPE), "-o", str(run_dir),
                   "--no-progress", f"loop.seed={seed}", f"eval.prompts={eval_prompts}",
                   *COMMON, *overrides]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=child_env())
        if done.returncode != 0:
            raise SystemExit(f"{overrides} seed {seed} failed:\n{done.stderr[-3000:]}")
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_one(split: str, setting: str, overrides: list[str], seed: int) -> dict:
    path = result_path(split, setting, seed)
    if path.exists():
        return json.loads(path.read_text())
    records = toy_run(seed, SPLITS[split]["eval"], overrides)
    result = {"split": split, "setting": setting, "seed": seed, "overrides": overrides,
              "final_heldout_reward": records[-1]["eval_reward_mean"],
              "train_reward": [r["reward_mean"] for r in records],
              "gamma": [r["gamma"] for r in records],
              "active_fraction": [r.get("active_fraction") for r in records],
              "recipe": str(RECIPE.relative_to(REPO)), "common": COMMON,
              "eval_prompts": SPLITS[split]["eval"], "commit": commit(), "versions": versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{split} {setting} seed {seed}: held-out {result['final_heldout_reward']:+.3f}",
          flush=True)
    return result


def tuned_settings() -> dict[str, str]:
    """Each family's setting with the highest mean tuning score (ties: the first listed)."""
    chosen = {}
    for family, settings in FAMILIES.items():
        means = {}
        for setting in settings:
            scores = [json.loads(result_path("tune", setting, seed).read_text())
                      ["final_heldout_reward"] for seed in SPLITS["tune"]["seeds"]]
            means[setting] = statistics.fmean(scores)
        best = max(means.values())
        chosen[family] = next(s for s in settings if means[s] == best)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", choices=["tune", "test"])
    args = parser.parse_args()
    if args.split == "tune":
        for seed in SPLITS["tune"]["seeds"]:
            for setting, overrides in {**ADAPTIVE, **{s: o for f in FAMILIES.values()
                                                      for s, o in f.items()}}.items():
                run_one("tune", setting, overrides, seed)
        print("tuned:", tuned_settings())
        return
    chosen = tuned_settings()
    (RESULTS / "tuned.json").write_text(json.dumps(chosen, indent=1) + "\n")
    arms = {**ADAPTIVE, **{s: FAMILIES[f][s] for f, s in chosen.items()}}
    for seed in SPLITS["test"]["seeds"]:
        for setting, overrides in arms.items():
            run_one("test", setting, overrides, seed)


if __name__ == "__main__":
    main()
