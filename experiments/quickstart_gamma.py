"""Adaptive γ against fixed γ on the real quickstart (SmolLM2-135M-Instruct, IFEval prompts).

For every seed, trains `recipes/quickstart.yaml` twice (the adaptive cutoff as shipped, and
`gamma.controller=fixed gamma.value=0.5`), then scores the base model and both trained models on
the held-out prompts in one `selfplay eval` (greedy, same prompts), and writes the paired
result of each seed to experiments/results/quickstart/gamma-seed<n>.json (the protocol is
docs/gamma-study.md; experiments/gamma_tables.py turns the files into tables, seeds as the unit).
Runs and evaluations already present in --runs-dir are reused, so an interrupted study resumes.
About 20 minutes per seed on 2 CPU cores.

  python -m experiments.quickstart_gamma --seeds 11 12 13 --runs-dir runs/quickstart-gamma
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, commit, versions
from experiments.gamma_tables import median_step
from selfplay.evaluate import ModelScore, interval, paired

RECIPE = REPO / "recipes" / "quickstart.yaml"
BASE = "builtin:smollm2-135m-instruct"
ARMS = {"adaptive": [], "fixed-0.5": ["gamma.controller=fixed", "gamma.value=0.5"]}
EVAL_ARGS = ["--prompts", str(REPO / "recipes/data/ifeval-heldout.jsonl"),
             "--max-new-tokens", "128", "--max-model-len", "512"]


def selfplay(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "selfplay.cli", *args], check=True, cwd=REPO)


def run_seed(seed: int, runs: Path) -> dict:
    for arm, overrides in ARMS.items():
        run_dir = runs / f"seed{seed}-{arm}"
        if not (run_dir / "final" / "config.json").exists():
            selfplay("run", str(RECIPE), "-o", str(run_dir), "--overwrite", "--no-progress",
                     f"loop.seed={seed}", *overrides)
    report_path = runs / f"eval-seed{seed}.json"
    if not report_path.exists():
        selfplay("eval", BASE, *(str(runs / f"seed{seed}-{arm}") for arm in ARMS), *EVAL_ARGS,
                 "--out", str(report_path))
    return json.loads(report_path.read_text())


def scores(model: dict) -> ModelScore:
    return ModelScore(model["model"], model["prompt_scores"], model["prompt_all"])


def seed_result(seed: int, report: dict, runs: Path) -> dict:
    models = dict(zip(["base", *ARMS], map(scores, report["models"])))
    metrics = (runs / f"seed{seed}-adaptive" / "metrics.jsonl").read_text().splitlines()
    gammas = [json.loads(line)["gamma"] for line in metrics]
    return {"seed": seed, "mean": {name: interval(m.prompt_scores)[0] for name, m in models.items()},
            "vs_base": {arm: paired(models["base"], models[arm]) for arm in ARMS},
            "adaptive_vs_fixed_prompts": paired(models["fixed-0.5"], models["adaptive"]),
            "adaptive_gamma": gammas, "adaptive_median_abs_dgamma": median_step(gammas)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "quickstart-gamma")
    parser.add_argument("--out-dir", type=Path,
                        default=REPO / "experiments" / "results" / "quickstart")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    head = commit()
    for seed in args.seeds:
        result = {**seed_result(seed, run_seed(seed, args.runs_dir), args.runs_dir),
                  "date": time.strftime("%Y-%m-%d"), "commit": head, "versions": versions(),
                  "recipe": str(RECIPE.relative_to(REPO)), "arms": ARMS, "eval": EVAL_ARGS[2:]}
        path = args.out_dir / f"gamma-seed{seed}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        m = result["mean"]
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items())
              + f" | adaptive − fixed {m['adaptive'] - m['fixed-0.5']:+.3f}"
              + f" | median |Δγ| {result['adaptive_median_abs_dgamma']:.3f} | wrote {path}",
              flush=True)


if __name__ == "__main__":
    main()
