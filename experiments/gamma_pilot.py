"""The γ pilot (docs/gamma-pilot.md): does the best fixed γ differ between variants of the
letter-groups task whose margin scales differ, and is each variant learnable?

Each variant changes one thing of recipes/groups.yaml; each is run with a geometric grid of fixed
γ and with the adaptive controller at its defaults, on the pilot's own seeds and the tune
prompts (the held-out prompts stay for the study). One JSON per run under
experiments/results/gamma_pilot/ (final score, per-iteration reward, γ and fresh-margin
quantiles, wall time, machine, versions, commit); runs whose file exists are skipped, so an
interrupted pilot resumes. Seeds go in the outer loop, so a cut-short pilot is complete for
its first seeds.

  python -m experiments.gamma_pilot run [--seeds 300 301 302]
  python -m experiments.gamma_pilot table     # docs/gamma-pilot-results.md from the JSON
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.common import REPO, commit, versions
from experiments.gamma_study import COMMON, RECIPE, toy_run

RESULTS = REPO / "experiments" / "results" / "gamma_pilot"
TABLE = REPO / "docs" / "gamma-pilot-results.md"
SEEDS = [300, 301, 302]  # the extension adds 303-307
EVAL_PROMPTS = "data/groups-tune.jsonl"
ITERATIONS = ["loop.iterations=30", "loop.checkpoint_every=30"]
BLIND = -1 / 3  # the best a policy that ignores its prompt can score
# Answer length sets the margins' scale: a length-normalised margin averages over the tokens,
# so its spread shrinks about as 1/√length.
VARIANTS = {"short": ["rollout.max_new_tokens=6"], "medium": ["rollout.max_new_tokens=16"],
            "long": ["rollout.max_new_tokens=40"]}
ARMS = {**{f"fixed-{g}": ["gamma.controller=fixed", f"gamma.value={g}"]
           for g in ("0.125", "0.25", "0.5", "1.0", "2.0", "4.0")},
        "adaptive": ["gamma.controller=adaptive"],
        # The extension (docs/gamma-pilot.md): a share that sits where the best fixed γ did.
        "adaptive-q0.95": ["gamma.controller=adaptive", "gamma.active_start=0.95",
                           "gamma.active_end=0.95", "gamma.gamma_max=8.0"]}


def result_path(variant: str, arm: str, seed: int) -> Path:
    return RESULTS / variant / arm / f"seed-{seed}.json"


def run_one(variant: str, arm: str, seed: int) -> dict:
    path = result_path(variant, arm, seed)
    if path.exists():
        return json.loads(path.read_text())
    overrides = [*ITERATIONS, *VARIANTS[variant], *ARMS[arm]]
    started = time.perf_counter()
    records = toy_run(seed, EVAL_PROMPTS, overrides)
    result = {"variant": variant, "arm": arm, "seed": seed, "overrides": overrides,
              "final_score": records[-1]["eval_reward_mean"],
              "wall_s": time.perf_counter() - started,
              **{key: [r.get(key) for r in records]
                 for key in ("reward_mean", "gamma", "gamma_estimate", "gamma_stderr",
                             "active_fraction", "margin_p10", "margin_p50", "margin_p90",
                             "n_pairs")},
              "recipe": str(RECIPE.relative_to(REPO)), "common": COMMON,
              "eval_prompts": EVAL_PROMPTS, "commit": commit(), "versions": versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{variant} {arm} seed {seed}: {result['final_score']:+.3f} "
          f"({result['wall_s']:.0f} s)", flush=True)
    return result


def load() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*/*/seed-*.json"))]


def table(results: list[dict]) -> str:
    """Per variant and arm: mean final score, its seed-to-seed sd, seeds above the prompt-blind
    level, and the fresh margins' typical spread (p90 − p10, median over iterations)."""
    lines = ["| variant | arm | seeds | mean score | sd | above blind | margin p90−p10 | γ end |",
             "|---|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        for arm in ARMS:
            runs = [r for r in results if r["variant"] == variant and r["arm"] == arm]
            if not runs:
                continue
            scores = [r["final_score"] for r in runs]
            spreads = [hi - lo for r in runs for lo, hi in zip(r["margin_p10"], r["margin_p90"])
                       if lo is not None and hi is not None]
            spread = statistics.median(spreads) if spreads else float("nan")
            sd = statistics.stdev(scores) if len(scores) > 1 else float("nan")
            lines.append(f"| {variant} | {arm} | {len(runs)} | {statistics.fmean(scores):+.3f} "
                         f"| {sd:.3f} | {sum(s > BLIND for s in scores)}/{len(scores)} "
                         f"| {spread:.2f} | {statistics.fmean(r['gamma'][-1] for r in runs):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    args = parser.parse_args()
    if args.action == "run":
        for seed in args.seeds:
            for variant in VARIANTS:
                for arm in ARMS:
                    run_one(variant, arm, seed)
    text = table(load())
    TABLE.write_text("# The γ pilot's results\n\nGenerated by `python -m experiments.gamma_pilot "
                     "table` from experiments/results/gamma_pilot/ (plan: gamma-pilot.md). Score:"
                     " final mean reward on the tune prompts; the prompt-blind level is −1/3.\n\n"
                     + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
