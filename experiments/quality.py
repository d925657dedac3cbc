"""Quality per minute: online selfplay, the paper's offline recipe, a few large iterative rounds
and TRL's OnlineDPOTrainer, each given the same minutes of training on the same machine
(docs/quality-protocol.md, written before the test runs).

  python -m experiments.quality tune                  # the tune split: two settings per tool
  python -m experiments.quality test --seeds 41 42    # the four arms of these test seeds
  python -m experiments.quality_tables               # docs/quality-results.md from the JSON

Every run goes to runs/quality/PHASE/seedS/ARM and writes experiments/results/quality/PHASE/
seedS-ARM.json when it ends; each seed's evaluation (base model and every arm in one
`selfplay eval`, greedy, paired over prompts) writes eval-seedS.json there. Finished runs and
evaluations are reused and unfinished runs resumed, so an interrupted study goes on where it
stopped. TRL is a benchmark-only dependency (bench/common.py has its install line).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MODEL, REPO, child_env, commit, require_trl, versions
from selfplay.stats import holm, paired

RECIPE = REPO / "recipes" / "quickstart.yaml"
DATA = REPO / "recipes" / "data"
RESULTS = REPO / "experiments" / "results" / "quality"
RUNS = REPO / "runs" / "quality"
TABLE = REPO / "docs" / "quality-results.md"
MINUTES = 5.0
TUNE_SEED, TEST_SEEDS = 102, [41, 42, 43, 44, 45]
EVAL = {"tune": DATA / "ifeval-tune.jsonl", "test": DATA / "ifeval-heldout.jsonl"}
EVAL_ARGS = ["--max-new-tokens", "128", "--max-model-len", "512"]
# Enough iterations that the time budget, not the count, ends a run.
BUDGETED = ["loop.iterations=1000", f"loop.max_minutes={MINUTES:g}", "loop.checkpoint_every=4"]
# The tuning grid: two settings per tool (the protocol's equal budget).
SELFPLAY_GRID = {"online-lr3e-5": {"lr": 3e-5}, "online-lr1e-4": {"lr": 1e-4}}
TRL_GRID = {"trl-lr3e-6": {"lr": 3e-6, "beta": 0.1}, "trl-lr3e-5": {"lr": 3e-5, "beta": 0.1}}
TEST_ARMS = ["online", "offline", "iterative", "trl"]


def selfplay(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "selfplay.cli", *args], check=True, cwd=REPO,
                   env=child_env())


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_selfplay(run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """A selfplay run of the quickstart recipe under the time budget (resumed if unfinished)."""
    if not (run_dir / "final" / "config.json").exists():
        resume = ["--resume"] if (run_dir / "recipe.yaml").exists() else []
        selfplay("run", str(RECIPE), "-o", str(run_dir), *resume, "--no-progress",
                 f"loop.seed={seed}", *BUDGETED, *overrides)
    done = records(run_dir)
    return {"train_minutes": done[-1]["time_elapsed_s"] / 60, "iterations": len(done),
            "prompts_sampled": sum(r.get("n_prompts") or 0 for r in done),
            "pairs_trained": sum(r.get("n_pairs") or 0 for r in done),
            "overrides": overrides}


def run_offline(run_dir: Path, seed: int, lr: float, prompts: int) -> dict:
    """Pairs sampled once from the base model for `prompts` prompts (`selfplay sample`), then
    `mode: offline` training for the rest of the budget."""
    pairs, sampled = run_dir / "pairs.jsonl", run_dir / "sample.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not sampled.exists():
        printed = subprocess.run(
            [sys.executable, "-m", "selfplay.cli", "sample", str(RECIPE), "--prompts",
             str(prompts), "-o", str(pairs), "--overwrite", "--no-progress", f"loop.seed={seed}"],
            check=True, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True).stdout
        print(printed, end="")
        # Its last line: "N pairs from P prompts in S s (sampling and scoring): OUT".
        seconds = float(re.search(r" in ([0-9.]+) s", printed.splitlines()[-1]).group(1))
        sampled.write_text(json.dumps({"prompts": prompts, "seconds": seconds,
                                       "pairs": len(pairs.read_text().splitlines())}) + "\n")
    sample = json.loads(sampled.read_text())
    left = max(MINUTES - sample["seconds"] / 60, 1e-3)  # sampling may take it all: 1 iteration
    train_dir = run_dir / "train"
    overrides = ["mode=offline", f"data.prompts={pairs}", f"train.lr={lr}"]
    if not (train_dir / "final" / "config.json").exists():
        resume = ["--resume"] if (train_dir / "recipe.yaml").exists() else []
        selfplay("run", str(RECIPE), "-o", str(train_dir), *resume, "--no-progress",
                 f"loop.seed={seed}", *BUDGETED, f"loop.max_minutes={left:.4f}", *overrides)
    done = records(train_dir)
    return {"train_minutes": sample["seconds"] / 60 + done[-1]["time_elapsed_s"] / 60,
            "sample_minutes": sample["seconds"] / 60, "iterations": len(done),
            "sampling_took_the_budget": sample["seconds"] / 60 >= MINUTES,
            "prompts_sampled": prompts, "pairs_sampled": sample["pairs"],
            "pairs_trained": sum(r.get("n_pairs") or 0 for r in done), "overrides": overrides}


def run_trl(run_dir: Path, seed: int, lr: float, beta: float) -> dict:
    require_trl()
    if not (run_dir / "trl.json").exists():
        subprocess.run([sys.executable, "-m", "experiments.quality_trl", "--seed", str(seed),
                        "--lr", str(lr), "--beta", str(beta), "--minutes", str(MINUTES),
                        "--out", str(run_dir)], check=True, cwd=REPO, env=child_env())
    return json.loads((run_dir / "trl.json").read_text())


def run_arm(phase: str, seed: int, arm: str, tuned: dict) -> dict:
    """Trains one arm (or reuses its finished run) and writes its JSON."""
    out = RESULTS / phase / f"seed{seed}-{arm}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = RUNS / phase / f"seed{seed}" / arm
    lr = tuned.get("online", {}).get("lr")
    if arm in SELFPLAY_GRID:
        result = run_selfplay(run_dir, seed, [f"train.lr={SELFPLAY_GRID[arm]['lr']}"])
    elif arm in TRL_GRID:
        result = run_trl(run_dir, seed, **TRL_GRID[arm])
    elif arm == "online":
        result = run_selfplay(run_dir, seed, [f"train.lr={lr}"])
    elif arm == "iterative":
        result = run_selfplay(run_dir, seed, [f"train.lr={lr}", "data.prompts_per_iteration=48"])
    elif arm == "offline":
        online = run_arm(phase, seed, "online", tuned)
        result = run_offline(run_dir, seed, lr, online["prompts_sampled"])
    elif arm == "trl":
        result = run_trl(run_dir, seed, **tuned["trl"])
    else:
        raise SystemExit(f"unknown arm {arm}")
    result = {"phase": phase, "seed": seed, "arm": arm, "run_dir": str(run_dir.relative_to(REPO)),
              "budget_minutes": MINUTES, **result, "date": time.strftime("%Y-%m-%d"),
              "commit": commit(), "versions": versions()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def evaluate(phase: str, seed: int, arms: list[str]) -> dict:
    """The base model and the arms' final models on the phase's prompts, in one call."""
    out = RESULTS / phase / f"eval-seed{seed}.json"
    if not out.exists():
        dirs = [str(RUNS / phase / f"seed{seed}" / arm / ("train" if arm == "offline" else ""))
                for arm in arms]
        selfplay("eval", MODEL, *dirs, "--prompts", str(EVAL[phase]), *EVAL_ARGS,
                 "--out", str(out))
        report = json.loads(out.read_text())
        report["arms"] = arms
        out.write_text(json.dumps(report) + "\n")
    return json.loads(out.read_text())


def gains(report: dict) -> dict[str, dict]:
    """Each arm's per-prompt gain over the base model (the first model of the evaluation)."""
    base, *trained = report["models"]
    return {arm: [b - a for a, b in zip(base["prompt_scores"], model["prompt_scores"])]
            for arm, model in zip(report["arms"], trained)}


def tune() -> None:
    arms = [*SELFPLAY_GRID, *TRL_GRID]
    for arm in arms:
        run_arm("tune", TUNE_SEED, arm, {})
    by_arm = {arm: paired(g) for arm, g in gains(evaluate("tune", TUNE_SEED, arms)).items()}
    for arm, gain in by_arm.items():
        print(f"tune {arm}: gain {gain['mean']:+.3f} [{gain['ci95'][0]:+.3f}, "
              f"{gain['ci95'][1]:+.3f}]")
    best = {tool: max(grid, key=lambda arm: by_arm[arm]["mean"])
            for tool, grid in (("online", SELFPLAY_GRID), ("trl", TRL_GRID))}
    tuned = {"seed": TUNE_SEED, "chosen": best, "gains": by_arm,
             "online": SELFPLAY_GRID[best["online"]], "trl": TRL_GRID[best["trl"]]}
    (RESULTS / "tuned.json").write_text(json.dumps(tuned, indent=1) + "\n")
    print(f"chosen: {best}")


def test(seeds: list[int]) -> None:
    tuned = json.loads((RESULTS / "tuned.json").read_text())
    for seed in seeds:
        for arm in TEST_ARMS:
            run_arm("test", seed, arm, tuned)
        evaluate("test", seed, TEST_ARMS)
        print(f"seed {seed} done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["tune", "test"])
    parser.add_argument("--seeds", type=int, nargs="+", default=TEST_SEEDS)
    args = parser.parse_args()
    if args.phase == "tune":
        tune()
    else:
        test(args.seeds)


if __name__ == "__main__":
    main()
