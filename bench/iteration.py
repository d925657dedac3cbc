"""Runs a recipe for a few iterations and reports where an iteration's time and memory go.

Per phase (generate, reward, train, sync, checkpoint): seconds and share of the iteration;
generation and training tokens/s; weight-sync time; RSS and peak RSS per iteration (memory
should stay flat). By default it runs the same recipe with the vLLM engine and with the HF
`generate` fallback, each in its own process, side by side. `--backend ray` instead runs the vLLM
engine locally and under a private Ray with 1 and 2 trainer ranks (ZeRO-2), and reports the Ray
path's overhead as a ratio of iteration times (the actors' memory is `actors_rss_mb`).

  python -m bench.iteration                                  # recipes/tiny.yaml, 8 iterations
  python -m bench.iteration recipes/tiny.yaml loop.iterations=10 --engines vllm
  python -m bench.iteration --backend ray                    # local vs Ray, 1 and 2 ranks
Writes bench/results/iteration.json (iteration-ray.json with --backend ray).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, RESULTS, child_env, versions

PHASES = ("generate", "reward", "train", "sync", "checkpoint")


# name → overrides: the configurations `--backend ray` compares.
RAY_SHAPES = {
    "local": [],
    "ray-1-rank": ["distributed.backend=ray"],
    "ray-2-ranks": ["distributed.backend=ray", "distributed.trainer_ranks=2",
                    "train.zero_stage=2"],
}


def run_once(recipe: str, overrides: list[str], engine: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "selfplay.cli", "run", recipe, "-o", str(run_dir),
                   "--no-progress", f"rollout.engine={engine}", *overrides]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                env=child_env())
        if result.returncode != 0:
            raise SystemExit(f"{engine} {' '.join(overrides)} run failed:\n"
                             f"{result.stderr[-3000:]}")
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
        "actors_rss_mb_per_iteration": [round(r["actors_rss_mb"]) for r in records
                                        if r.get("actors_rss_mb") is not None] or None,
    }


def print_summary(name: str, summary: dict) -> None:
    shares = ", ".join(f"{p} {summary['phase_share'][p]:.0%}" for p in PHASES)
    print(f"[{name}] {summary['seconds_per_iteration']:.2f} s/iteration ({shares})")
    print(f"[{name}] generation {summary['gen_tokens_per_s']:.0f} tok/s, training "
          f"{summary['train_tokens_per_s']:.0f} tok/s, weight sync "
          f"{summary['sync_seconds'] * 1000:.0f} ms")
    print(f"[{name}] RSS per iteration (MB): {summary['rss_mb_per_iteration']}; peak "
          f"{summary['peak_rss_mb_per_iteration']}; actors "
          f"{summary['actors_rss_mb_per_iteration']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "tiny.yaml"))
    parser.add_argument("overrides", nargs="*", default=[])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="ray: the vLLM engine locally vs under Ray with 1 and 2 ranks")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or str(RESULTS / ("iteration-ray.json" if args.backend == "ray"
                                          else "iteration.json"))
    # Held-out evaluation is off: it is not part of the loop being measured.
    overrides = [f"loop.iterations={args.iterations}", "eval.prompts=null", *args.overrides]
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "recipe": args.recipe,
              "overrides": overrides, "versions": versions(), "engines": {}}
    if args.backend == "ray":
        report["shapes"] = {}
        for name, shape in RAY_SHAPES.items():
            summary = summarise(run_once(args.recipe, [*overrides, *shape], "vllm"))
            report["shapes"][name] = summary
            print_summary(name, summary)
        local = report["shapes"]["local"]["seconds_per_iteration"]
        report["time_over_local"] = {name: shape["seconds_per_iteration"] / local
                                     for name, shape in report["shapes"].items()}
        print("iteration time over the local run's: " + ", ".join(
            f"{name} {ratio:.2f}x" for name, ratio in report["time_over_local"].items()))
    for engine in (args.engines.split(",") if args.backend == "local" else []):
        summary = summarise(run_once(args.recipe, overrides, engine))
        report["engines"][engine] = summary
        print_summary(engine, summary)
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
