"""Recomputes docs/gamma-study-results.md from the per-seed JSON of the γ study.

Reads experiments/results/gamma_study/{tune,test}/<setting>/seed-<n>.json
(experiments/gamma_study.py) and experiments/results/quickstart/gamma-seed<n>.json
(experiments/quickstart_gamma.py) and applies the analysis fixed in docs/gamma-study.md: seeds as
the unit, paired differences adaptive − arm, two-sided t intervals and p-values (selfplay.stats),
Holm correction over the toy task's four comparisons.

  python -m experiments.gamma_tables
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from selfplay.stats import holm, paired

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "experiments" / "results" / "gamma_study"
QUICKSTART = REPO / "experiments" / "results" / "quickstart"
OUT = REPO / "docs" / "gamma-study-results.md"


def steps(gammas: list[float]) -> list[float]:
    """|Δγ| from each iteration to the next."""
    return [abs(b - a) for a, b in zip(gammas, gammas[1:])]


def median_step(gammas: list[float]) -> float:
    return statistics.median(steps(gammas))


def verdict(result: dict, p: float) -> str:
    if p < 0.05:
        return "better" if result["mean"] > 0 else "worse"
    return "no difference detected"


def load(split: str) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted((STUDY / split).glob("*/seed-*.json")):
        row = json.loads(path.read_text())
        runs.setdefault(row["setting"], {})[row["seed"]] = row
    return runs


def fmt(x: float) -> str:
    return f"{x:+.3f}"


def toy_section() -> list[str]:
    lines = ["## Toy task: letter groups", ""]
    tune = load("tune")
    if tune:
        lines += ["### Tuning split (seeds 100, 101; tune prompts)", "",
                  "| setting | mean final reward | per seed |", "|---|---|---|"]
        for setting, by_seed in sorted(tune.items(), key=lambda kv: -statistics.fmean(
                r["final_heldout_reward"] for r in kv[1].values())):
            scores = [by_seed[s]["final_heldout_reward"] for s in sorted(by_seed)]
            lines.append(f"| {setting} | {fmt(statistics.fmean(scores))} | "
                         + ", ".join(fmt(s) for s in scores) + " |")
        lines.append("")
    test = load("test")
    if "adaptive" not in test:
        return lines + ["Test split: not run yet.", ""]
    tuned = json.loads((STUDY / "tuned.json").read_text())
    seeds = sorted(test["adaptive"])
    lines += [f"### Test split (seeds {seeds[0]}–{seeds[-1]}; held-out prompts)", "",
              "Tuned settings: " + ", ".join(f"{f} → `{s}`" for f, s in tuned.items()), "",
              "| arm | mean final held-out reward | sd over seeds |", "|---|---|---|"]
    for setting in ["adaptive", *tuned.values()]:
        scores = [test[setting][s]["final_heldout_reward"] for s in seeds if s in test[setting]]
        lines.append(f"| {setting} | {fmt(statistics.fmean(scores))} | "
                     f"{statistics.stdev(scores):.3f} |")
    results, p_values = {}, {}
    for family, setting in tuned.items():
        common = [s for s in seeds if s in test.get(setting, {})]
        results[family] = paired([test["adaptive"][s]["final_heldout_reward"]
                                  - test[setting][s]["final_heldout_reward"] for s in common])
        p_values[family] = results[family]["p"]
    adjusted = holm(p_values)
    lines += ["", "Paired by seed, adaptive − arm (95% t interval; Holm over the four):", "",
              "| vs | seeds | difference | 95% CI | p | Holm p | verdict |",
              "|---|---|---|---|---|---|---|"]
    for family, r in results.items():
        lines.append(f"| {tuned[family]} | {r['n']} | {fmt(r['mean'])} | "
                     f"[{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}] | {r['p']:.3f} | "
                     f"{adjusted[family]:.3f} | {verdict(r, adjusted[family])} |")
    pooled = [step for s in seeds for step in steps(test["adaptive"][s]["gamma"])]
    lines += ["", f"Adaptive γ, median |Δγ| per iteration over the test runs: "
              f"{statistics.median(pooled):.3f}.", ""]
    return lines


def quickstart_section() -> list[str]:
    rows = [json.loads(p.read_text()) for p in sorted(QUICKSTART.glob("gamma-seed*.json"))]
    lines = ["## Quickstart (SmolLM2-135M-Instruct)", ""]
    if not rows:
        return lines + ["Not run yet.", ""]
    lines += ["| seed | base | adaptive | fixed-0.5 | adaptive − fixed | adaptive: median step of γ |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        m = row["mean"]
        lines.append(f"| {row['seed']} | {m['base']:.3f} | {m['adaptive']:.3f} | "
                     f"{m['fixed-0.5']:.3f} | {fmt(m['adaptive'] - m['fixed-0.5'])} | "
                     f"{row['adaptive_median_abs_dgamma']:.3f} |")
    if len(rows) > 1:
        r = paired([row["mean"]["adaptive"] - row["mean"]["fixed-0.5"] for row in rows])
        lines += ["", f"Seeds as the unit: adaptive − fixed-0.5 = {fmt(r['mean'])}, 95% CI "
                  f"[{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}], p = {r['p']:.3f} "
                  f"({verdict(r, r['p'])}; {r['n']} seeds)."]
        gains = paired([row["mean"]["adaptive"] - row["mean"]["base"] for row in rows])
        fixed = paired([row["mean"]["fixed-0.5"] - row["mean"]["base"] for row in rows])
        lines += [f"Adaptive − base model: {fmt(gains['mean'])}, 95% CI "
                  f"[{fmt(gains['ci95'][0])}, {fmt(gains['ci95'][1])}]; fixed-0.5 − base model: "
                  f"{fmt(fixed['mean'])}, 95% CI [{fmt(fixed['ci95'][0])}, "
                  f"{fmt(fixed['ci95'][1])}] (seeds as the unit).",
                  "", "The base model's score is the same in every seed: greedy answers.",
                  "Adaptive γ per iteration: " + "; ".join(
                      f"seed {row['seed']}: " + " → ".join(f"{g:.2f}" for g in row["adaptive_gamma"])
                      for row in rows) + "."]
    return lines + [""]


def main() -> None:
    lines = ["# γ study: results", "",
             "Generated by `python -m experiments.gamma_tables` from the per-seed JSON under "
             "`experiments/results/`; the protocol is `docs/gamma-study.md`. Do not edit by hand.",
             "",
             *toy_section(), *quickstart_section()]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
