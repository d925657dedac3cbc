"""Weight sync under Ray: Ray's object store vs a gloo broadcast, in the same run shape.

Each recipe runs twice under a private Ray with 1 trainer rank and 1 engine, once per
`distributed.weight_sync`; the sync time is `time_sync_s` from metrics.jsonl (rank 0's gather,
the transfer and the engine's reload), median over the iterations. Then, with the last recipe's
model, the sync alone, repeated `--syncs` times in one placement per path (no training between:
the same bytes move), median: tighter than a few iterations' worth.

  python -m bench.weight_sync                                  # tiny and quickstart, 3 iterations
  python -m bench.weight_sync --recipes recipes/tiny.yaml --iterations 4 --syncs 10
Writes bench/results/weight-sync.json.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from pathlib import Path

from bench.common import REPO, RESULTS, versions
from bench.iteration import run_once

PATHS = ("object_store", "gloo")


def time_syncs(recipe_path: str, path: str, count: int) -> list[float]:
    """`count` syncs from a fresh trainer rank to one engine actor, each timed."""
    import tempfile

    from selfplay.distributed.ray_placement import RayPlacement
    from selfplay.models import resolve_model_path
    from selfplay.recipe import load

    recipe = load(recipe_path, ["distributed.backend=ray", f"distributed.weight_sync={path}"])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(resolve_model_path(recipe.model.path, Path(tmp), seed=0))
        placement = RayPlacement(recipe, need_engine=True, run_dir=Path(tmp))
        try:
            engine = placement.rollout(model_dir, recipe.rollout, dtype=recipe.model.dtype,
                                       seed=0)
            trainer = placement.trainer(model_dir, recipe.train, loss_name=recipe.loss.name,
                                        beta=recipe.loss.beta, seed=0, iterations=1,
                                        pairs_per_iteration=8, pad_id=0)
            seconds = []
            for _ in range(count):
                started = time.perf_counter()
                engine.update_weights(trainer.named_weights())
                seconds.append(time.perf_counter() - started)
        finally:
            placement.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+",
                        default=[str(REPO / "recipes" / "tiny.yaml"),
                                 str(REPO / "recipes" / "quickstart.yaml")])
    parser.add_argument("--iterations", type=int, default=3, help="0: only the syncs alone")
    parser.add_argument("--syncs", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS / "weight-sync.json"))
    args = parser.parse_args()
    # Held-out evaluation is off: it is not part of the loop being measured.
    shape = [f"loop.iterations={args.iterations}", "eval.prompts=null",
             "distributed.backend=ray"]
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "overrides": shape,
              "versions": {**versions(), "ray": importlib.metadata.version("ray")},
              "recipes": {}}
    for recipe in args.recipes if args.iterations else []:  # 0: the syncs alone
        results = report["recipes"][Path(recipe).stem] = {}
        for path in PATHS:
            records = run_once(recipe, [*shape, f"distributed.weight_sync={path}"], "vllm")
            syncs = [r["time_sync_s"] for r in records]
            results[path] = {"time_sync_s": syncs, "median_sync_s": statistics.median(syncs),
                             "seconds_per_iteration": statistics.median(
                                 r["time_total_s"] for r in records)}
            print(f"[{Path(recipe).stem}] {path}: sync median {results[path]['median_sync_s']:.3f}"
                  f" s ({', '.join(f'{s:.3f}' for s in syncs)})", flush=True)
        results["gloo_over_object_store"] = (results["gloo"]["median_sync_s"]
                                             / results["object_store"]["median_sync_s"])
    if args.syncs:
        syncs = report["syncs_alone"] = {"recipe": Path(args.recipes[-1]).stem}
        for path in PATHS:
            seconds = time_syncs(args.recipes[-1], path, args.syncs)
            syncs[path] = {"seconds": seconds, "median_s": statistics.median(seconds)}
            print(f"[{syncs['recipe']}, sync alone] {path}: median {syncs[path]['median_s']:.3f}"
                  f" s ({', '.join(f'{s:.3f}' for s in seconds)})", flush=True)
        syncs["gloo_over_object_store"] = syncs["gloo"]["median_s"] / syncs[
            "object_store"]["median_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
