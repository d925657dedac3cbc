"""The lean quickstart (bf16 sampling, smaller KV cache and micro-batch) against the fp32
quickstart, seeds as the unit (protocol: docs/lean-quickstart-check.md).

The fp32 arm is the γ study's adaptive arm (experiments/results/quickstart/gamma-seed<n>.json,
and its runs in --fp32-runs for the reproducibility check and the memory figures). For every seed
this trains `recipes/quickstart.yaml` as it is now, then evaluates all lean runs in one
`selfplay eval` together with seed 11's fp32 run, whose per-prompt scores must reproduce the
stored ones. Runs already present in --runs-dir are reused. About 8 minutes per seed on 2 CPU
cores. Writes experiments/results/quickstart/lean-vs-fp32.json.

  python -m experiments.lean_quickstart --fp32-runs /tmp/qs-gamma-runs --runs-dir runs/lean
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.common import REPO, commit, versions
from experiments.quickstart_gamma import EVAL_ARGS, RECIPE, selfplay
from selfplay.stats import paired

RESULTS = REPO / "experiments" / "results" / "quickstart"
MARGIN = -0.03  # "not worse" only when the interval's lower bound is above this


def train(seed: int, runs: Path) -> Path:
    run_dir = runs / f"seed{seed}-lean"
    if not (run_dir / "final" / "config.json").exists():
        selfplay("run", str(RECIPE), "-o", str(run_dir), "--overwrite", "--no-progress",
                 f"loop.seed={seed}")
    return run_dir


def iteration_figures(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"peak_rss_gb": max(r["peak_rss_mb"] for r in records) / 1024,
            "time_train_s_median": statistics.median(r["time_train_s"] for r in records),
            "time_generate_s_median": statistics.median(r["time_generate_s"] for r in records),
            "time_iteration_s_median": statistics.median(r["time_total_s"] for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "lean-quickstart")
    parser.add_argument("--fp32-runs", type=Path, default=REPO / "runs" / "quickstart-gamma",
                        help="the γ study's runs (experiments.quickstart_gamma --runs-dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lean-vs-fp32.json")
    args = parser.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    lean = {seed: train(seed, args.runs_dir) for seed in args.seeds}
    check_seed = args.seeds[0]
    fp32_check = args.fp32_runs / f"seed{check_seed}-adaptive"
    report_path = args.runs_dir / "eval.json"
    if not report_path.exists():
        selfplay("eval", str(fp32_check), *(str(lean[s]) for s in args.seeds), *EVAL_ARGS,
                 "--out", str(report_path))
    models = json.loads(report_path.read_text())["models"]
    stored = json.loads((args.fp32_runs / f"eval-seed{check_seed}.json").read_text())["models"]
    # The stored eval's order: base, adaptive, fixed (experiments/quickstart_gamma.py).
    reproduced = models[0]["prompt_scores"] == stored[1]["prompt_scores"]

    per_seed = []
    for seed, model in zip(args.seeds, models[1:]):
        fp32 = json.loads((RESULTS / f"gamma-seed{seed}.json").read_text())["mean"]
        lean_mean = statistics.fmean(model["prompt_scores"])
        per_seed.append({"seed": seed, "fp32": fp32["adaptive"], "lean": lean_mean,
                         "base": fp32["base"], "lean_minus_fp32": lean_mean - fp32["adaptive"],
                         "lean_run": iteration_figures(lean[seed]),
                         "fp32_run": iteration_figures(args.fp32_runs / f"seed{seed}-adaptive")})
    difference = paired([row["lean_minus_fp32"] for row in per_seed])  # t interval over seeds
    mean, (low, high) = difference["mean"], difference["ci95"]
    verdict = ("void: the fp32 run's evaluation did not reproduce" if not reproduced else
               "not worse" if low > MARGIN else "not shown")
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "versions": versions(),
              "protocol": "docs/lean-quickstart-check.md", "eval": EVAL_ARGS[2:],
              "fp32_eval_reproduced": reproduced, "per_seed": per_seed,
              "lean_minus_fp32": {**difference, "margin": MARGIN, "verdict": verdict}}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in per_seed:
        print(f"seed {row['seed']}: fp32 {row['fp32']:.3f}, lean {row['lean']:.3f} "
              f"(base {row['base']:.3f}); peak RSS {row['fp32_run']['peak_rss_gb']:.1f} → "
              f"{row['lean_run']['peak_rss_gb']:.1f} GB")
    print(f"lean − fp32 = {mean:+.3f} [{low:+.3f}, {high:+.3f}]: {verdict}; wrote {args.out}")


if __name__ == "__main__":
    main()
