"""The quickstart after a change to its recipe's defaults, against the quality study's online
arm: the same test seeds, 5 minutes, held-out prompts, paired over prompts and then over seeds
(docs/quality-protocol.md, "Re-checks").

  python -m experiments.quality_recheck NAME --seeds 41 42 43

Runs the current quickstart as arm NAME (runs/quality/test/seedS/NAME), evaluates it beside the
base model (greedy, so the base model's scores repeat the study's own), and prints each seed's
gain and its difference from the study's online arm. Each seed writes
experiments/results/quality/recheck/seedS-NAME.json; finished seeds are reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.common import commit, versions
from experiments.quality import EVAL, EVAL_ARGS, MODEL, RESULTS, RUNS, gains, run_selfplay, selfplay
from selfplay.stats import paired


def recheck(name: str, seed: int, lr: float) -> dict:
    out = RESULTS / "recheck" / f"seed{seed}-{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = RUNS / "test" / f"seed{seed}" / name
    run = run_selfplay(run_dir, seed, [f"train.lr={lr}"])
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluation = out.with_name(f"eval-seed{seed}-{name}.json")
    if not evaluation.exists():
        selfplay("eval", MODEL, str(run_dir), "--prompts", str(EVAL["test"]), *EVAL_ARGS,
                 "--out", str(evaluation))
    report = {**json.loads(evaluation.read_text()), "arms": [name]}
    study = json.loads((RESULTS / "test" / f"eval-seed{seed}.json").read_text())
    base_repeats = report["models"][0]["prompt_scores"] == study["models"][0]["prompt_scores"]
    new, old = gains(report)[name], gains(study)["online"]
    result = {"seed": seed, "arm": name, "run": run, "gain": paired(new),
              "study_online_gain": paired(old),
              "minus_study_online": paired([a - b for a, b in zip(new, old)]),
              "base_scores_repeat": base_repeats, "date": time.strftime("%Y-%m-%d"),
              "commit": commit(), "versions": versions()}
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    args = parser.parse_args()
    lr = json.loads((RESULTS / "tuned.json").read_text())["online"]["lr"]
    results = [recheck(args.name, seed, lr) for seed in args.seeds]
    for r in results:
        print(f"seed {r['seed']}: {args.name} {r['gain']['mean']:+.3f}, study's online "
              f"{r['study_online_gain']['mean']:+.3f}, {r['run']['iterations']} iterations, "
              f"base scores repeat: {r['base_scores_repeat']}")
    if len(results) > 1:
        summary = paired([r["minus_study_online"]["mean"] for r in results])
        print(f"{args.name} − study's online over {len(results)} seeds: {summary['mean']:+.3f} "
              f"[{summary['ci95'][0]:+.3f}, {summary['ci95'][1]:+.3f}]; mean gain "
              f"{statistics.fmean(r['gain']['mean'] for r in results):+.3f}")


if __name__ == "__main__":
    main()
