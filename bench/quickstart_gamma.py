"""Adaptive γ against fixed γ on the real quickstart (SmolLM2-135M-Instruct, IFEval prompts).

For every seed, trains `recipes/quickstart.yaml` twice (the adaptive cutoff as shipped, and
`gamma.controller=fixed gamma.value=0.5`), then scores the base model and both trained models on
the held-out prompts in one `selfplay eval` (greedy, same prompts), and writes the paired
differences, per seed and pooled over seeds, to bench/results/quickstart/gamma.json.
Runs and evaluations already present in --runs-dir are reused, so an interrupted study resumes.
About 30 minutes per seed on 2 CPU cores.

  python bench/quickstart_gamma.py --seeds 0 1 --runs-dir runs/quickstart-gamma
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.train_step import versions  # noqa: E402
from selfplay.evaluate import ModelScore, interval, paired  # noqa: E402

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


def summarise(reports: dict[int, dict]) -> dict:
    per_seed, pooled = {}, {arm: [] for arm in ["base", *ARMS]}
    for seed, report in reports.items():
        models = dict(zip(["base", *ARMS], map(scores, report["models"])))
        per_seed[seed] = {
            "mean": {name: interval(m.prompt_scores)[0] for name, m in models.items()},
            "vs_base": {arm: paired(models["base"], models[arm]) for arm in ARMS},
            "adaptive_vs_fixed": paired(models["fixed-0.5"], models["adaptive"])}
        for name, m in models.items():
            pooled[name].append(m)
    # Pooled: each prompt's score averaged over seeds (the same prompts in every seed).
    mean_over_seeds = {name: ModelScore(name, [statistics.fmean(v) for v in zip(
        *(m.prompt_scores for m in ms))], [statistics.fmean(v) for v in zip(
            *(m.prompt_all for m in ms))]) for name, ms in pooled.items()}
    return {"per_seed": per_seed, "pooled": {
        "vs_base": {arm: paired(mean_over_seeds["base"], mean_over_seeds[arm]) for arm in ARMS},
        "adaptive_vs_fixed": paired(mean_over_seeds["fixed-0.5"], mean_over_seeds["adaptive"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "quickstart-gamma")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "quickstart" / "gamma.json")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    reports = {seed: run_seed(seed, args.runs_dir) for seed in args.seeds}
    result = {"date": time.strftime("%Y-%m-%d"), "versions": versions(),
              "recipe": str(RECIPE.relative_to(REPO)), "arms": ARMS, "eval": EVAL_ARGS[2:],
              **summarise(reports)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for seed, row in result["per_seed"].items():
        d = row["adaptive_vs_fixed"]
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["mean"].items())
              + f" | adaptive − fixed {d['reward_diff']:+.3f} ± {d['reward_diff_ci95']:.3f}")
    d = result["pooled"]["adaptive_vs_fixed"]
    print(f"pooled: adaptive − fixed {d['reward_diff']:+.3f} ± {d['reward_diff_ci95']:.3f} "
          f"(t {d['t']:.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
