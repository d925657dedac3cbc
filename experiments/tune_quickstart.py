"""Choosing the quickstart's knobs on the tune split (recipes/data/ifeval-tune.jsonl) only.

For every seed, trains `recipes/quickstart.yaml` once per arm (overrides of the shipped recipe),
then scores the base model and every arm's final model on the tune prompts in one `selfplay eval`
(greedy, same prompts: paired differences), and writes one JSON per seed to
experiments/results/tune/seed<n>.json: each arm's gain over the base model with its t interval,
its training minutes (`time_elapsed_s` of the last iteration) and gain per minute, the machine
and versions. The held-out set is never read here. Runs and evaluations already in --runs-dir
are reused, so an interrupted pilot resumes.

  python -m experiments.tune_quickstart --seeds 101 --arms shipped dynamic levels
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, commit, versions
from selfplay.evaluate import ModelScore
from selfplay.stats import paired

RECIPE = REPO / "recipes" / "quickstart.yaml"
BASE = "builtin:smollm2-135m-instruct"
TUNE = REPO / "recipes" / "data" / "ifeval-tune.jsonl"
ARMS = {
    "shipped": [],
    # Dynamic sampling: rounds of 16 prompts until 16 pairs (ties teach nothing).
    "dynamic": ["pairs.per_iteration=16"],
    # Every two reward levels of a prompt make a pair, 16 pairs an iteration.
    "levels": ["pairs.strategy=all_levels", "pairs.per_iteration=16"],
}
EVAL_ARGS = ["--prompts", str(TUNE), "--max-new-tokens", "128", "--max-model-len", "512"]


def selfplay(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "selfplay.cli", *args], check=True, cwd=REPO)


def train(seed: int, arm: str, runs: Path) -> Path:
    run_dir = runs / f"seed{seed}-{arm}"
    if not (run_dir / "final" / "config.json").exists():
        resume = ["--resume"] if (run_dir / "recipe.yaml").exists() else []
        selfplay("run", str(RECIPE), "-o", str(run_dir), *resume, "--no-progress",
                 f"loop.seed={seed}", *ARMS[arm])
    return run_dir


def last_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def seed_result(seed: int, arms: list[str], runs: Path) -> dict:
    run_dirs = {arm: train(seed, arm, runs) for arm in arms}
    report_path = runs / f"eval-tune-seed{seed}-{'-'.join(arms)}.json"
    if not report_path.exists():
        selfplay("eval", BASE, *map(str, run_dirs.values()), *EVAL_ARGS,
                 "--out", str(report_path))
    report = json.loads(report_path.read_text())
    scores = [ModelScore(m["model"], m["prompt_scores"], m["prompt_all"])
              for m in report["models"]]
    base, trained = scores[0], dict(zip(arms, scores[1:]))
    out = {}
    for arm, score in trained.items():
        gain = paired([b - a for a, b in zip(base.prompt_scores, score.prompt_scores)])
        minutes = last_record(run_dirs[arm])["time_elapsed_s"] / 60
        out[arm] = {"gain": gain, "train_minutes": minutes,
                    "gain_per_minute": gain["mean"] / minutes,
                    "base_mean": sum(base.prompt_scores) / len(base.prompt_scores),
                    "overrides": ARMS[arm]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "tune-quickstart")
    parser.add_argument("--out-dir", type=Path, default=REPO / "experiments" / "results" / "tune")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = {"seed": seed, "arms": seed_result(seed, args.arms, args.runs_dir),
                  "date": time.strftime("%Y-%m-%d"), "commit": commit(), "versions": versions(),
                  "recipe": str(RECIPE.relative_to(REPO)), "eval": EVAL_ARGS}
        path = args.out_dir / f"seed{seed}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        for arm, row in result["arms"].items():
            low, high = row["gain"]["ci95"]
            print(f"seed {seed} {arm}: gain {row['gain']['mean']:+.3f} [{low:+.3f}, {high:+.3f}] "
                  f"in {row['train_minutes']:.1f} min")


if __name__ == "__main__":
    main()
