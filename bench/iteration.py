"""Runs a recipe for a few iterations and reports where an iteration's time and memory go.

Per phase (generate, reward, train, sync, checkpoint): seconds and share of the iteration;
generation and training tokens/s; weight-sync time; RSS and peak RSS per iteration (memory
should stay flat). By default it runs the same recipe with the vLLM engine and with the HF
`generate` fallback, each in its own process, side by side.

  python bench/iteration.py                                  # recipes/tiny.yaml, 8 iterations
  python bench/iteration.py recipes/tiny.yaml loop.iterations=10 --engines vllm
Writes bench/results/iteration.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PHASES = ("generate", "reward", "train", "sync", "checkpoint")


def run_once(recipe: str, overrides: list[str], engine: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "selfplay.cli", "run", recipe, "-o", str(run_dir),
                   "--no-progress", f"rollout.engine={engine}", *overrides]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        if result.returncode != 0:
            raise SystemExit(f"{engine} run failed:\n{result.stderr[-3000:]}")
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summarise(records: list[dict]) -> dict:
    steady = records[1:] or records  # the first iteration pays one-off compilation costs
    phase_s = {p: statistics.fmean(r[f"time_{p}_s"] or 0.0 for r in steady) for p in PHASES}
    total = statistics.fmean(r["time_total_s"] for r in steady)
    return {
        "iterations": len(records),
        "seconds_per_iteration": total,
        "phase_seconds": phase_s,
        "phase_share": {p: s / total for p, s in phase_s.items()},
        "gen_tokens_per_s": statistics.fmean(r["gen_tokens_per_s"] for r in steady),
        "train_tokens_per_s": statistics.fmean(r["train_tokens_per_s"] or 0 for r in steady),
        "sync_seconds": phase_s["sync"],
        "rss_mb_per_iteration": [round(r["rss_mb"]) for r in records],
        "peak_rss_mb_per_iteration": [round(r["peak_rss_mb"]) for r in records],
        "reward_mean_per_iteration": [round(r["reward_mean"], 4) for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "tiny.yaml"))
    parser.add_argument("overrides", nargs="*", default=[])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "iteration.json"))
    args = parser.parse_args()
    # Held-out evaluation is off: it is not part of the loop being measured.
    overrides = [f"loop.iterations={args.iterations}", "eval.prompts=null", *args.overrides]
    from bench.train_step import versions

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "recipe": args.recipe,
              "overrides": overrides, "versions": versions(), "engines": {}}
    for engine in args.engines.split(","):
        summary = summarise(run_once(args.recipe, overrides, engine))
        report["engines"][engine] = summary
        shares = ", ".join(f"{p} {summary['phase_share'][p]:.0%}" for p in PHASES)
        print(f"[{engine}] {summary['seconds_per_iteration']:.2f} s/iteration ({shares})")
        print(f"[{engine}] generation {summary['gen_tokens_per_s']:.0f} tok/s, training "
              f"{summary['train_tokens_per_s']:.0f} tok/s, weight sync "
              f"{summary['sync_seconds'] * 1000:.0f} ms")
        print(f"[{engine}] RSS per iteration (MB): {summary['rss_mb_per_iteration']}; peak "
              f"{summary['peak_rss_mb_per_iteration']}")
    engines = report["engines"]
    if "vllm" in engines and "hf" in engines:
        ratio = engines["hf"]["seconds_per_iteration"] / engines["vllm"]["seconds_per_iteration"]
        report["hf_over_vllm_time"] = ratio
        print(f"an iteration with the HF engine takes {ratio:.2f}x the vLLM engine's time")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
