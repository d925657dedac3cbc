"""The run report: plots of metrics.jsonl in RUN_DIR/report/, a terminal table and a summary line.

Keys missing from a record (older runs) or null (offline runs sample nothing, so no reward) are
skipped; a plot with nothing to draw is not written.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from selfplay.errors import UserError
from selfplay.metrics import MetricsLog, record_cells

# (key, label) of the phases in `time_total_s`; what they leave over is "other".
PHASES = (("time_generate_s", "generate"), ("time_reward_s", "reward"), ("time_train_s", "train"),
          ("time_sync_s", "sync"), ("time_checkpoint_s", "checkpoint"), ("time_eval_s", "eval"))
PHASE_COLORS = {"generate": "tab:blue", "reward": "tab:orange", "train": "tab:green",
                "sync": "tab:red", "checkpoint": "tab:purple", "eval": "tab:brown",
                "other": "tab:gray"}


class ReportError(UserError, ValueError):
    """A run directory without usable metrics; the CLI prints it as one line."""


@dataclass
class ReportResult:
    report_dir: Path
    records: list[dict]
    plots: list[Path] = field(default_factory=list)  # overview.png first
    skipped: dict[str, str] = field(default_factory=dict)  # plot file name -> why not written


def load_records(run_dir: Path | str) -> list[dict]:
    """metrics.jsonl's records, one per iteration in order; a line cut short by a kill is skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: " + ("not a directory" if run_dir.exists()
                                            else "no such run directory"))
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl (the run has not finished an iteration)")
    by_iteration = {r["iteration"]: r for r in MetricsLog(path).read()
                    if isinstance(r, dict) and isinstance(r.get("iteration"), int)}
    if not by_iteration:
        state = "empty" if not path.read_text().strip() else "corrupt (no readable record)"
        raise ReportError(f"{path}: {state}")
    return [by_iteration[i] for i in sorted(by_iteration)]


# --- numbers --------------------------------------------------------------------------------------
def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _series(records: list[dict], key: str) -> list[float]:
    """Values of `key` per record, NaN where missing (matplotlib leaves a gap)."""
    values = [_number(r, key) for r in records]
    return [math.nan if v is None else v for v in values]


def _has(records: list[dict], key: str) -> bool:
    return any(_number(r, key) is not None for r in records)


def _filtered_fraction(record: dict) -> float | None:
    filtered = _number(record, "filtered_fraction")
    active = _number(record, "active_fraction")
    if filtered is None and active is not None:
        filtered = 1 - active
    return filtered


def _phase_times(record: dict) -> dict[str, float]:
    """Seconds per phase of one iteration, "other" being the rest of `time_total_s`."""
    times = {label: _number(record, key) or 0.0 for key, label in PHASES}
    total = _number(record, "time_total_s")
    times["other"] = max(0.0, total - sum(times.values())) if total is not None else 0.0
    return times


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


# --- text -----------------------------------------------------------------------------------------
def _rows_shown(n: int, max_rows: int) -> list[int]:
    """All rows, or every k-th one (the first and the last always) when they would not fit."""
    if n <= max_rows:
        return list(range(n))
    step = math.ceil((n - 1) / (max_rows - 1))
    shown = list(range(0, n, step))
    if shown[-1] != n - 1:
        shown.append(n - 1)
    return shown


def format_table(records: list[dict], max_rows: int = 20) -> str:
    """One line per iteration (every k-th for long runs) that fits a terminal."""
    with_eval = _has(records, "eval_reward_mean")
    header = ["iter", "reward", "γ", "active", "pairs", "loss", "time"]
    header += ["held-out"] if with_eval else []
    shown = _rows_shown(len(records), max(max_rows, 2))
    lines = []
    for index in shown:
        record = records[index]
        cells = record_cells(record)
        total = _number(record, "time_total_s")
        row = [str(record["iteration"]), cells["reward"], cells["γ"], cells["active"],
               cells["pairs"], cells["loss"], "-" if total is None else _duration(total)]
        row += [cells["held-out"]] if with_eval else []
        lines.append(row)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]

    def render(row):
        return "  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip()

    text = [render(header)] + [render(row) for row in lines]
    if len(shown) < len(records):
        text.append(f"({len(shown)} of {len(records)} iterations shown: every "
                    f"{shown[1] - shown[0]}, and the last)")
    return "\n".join(text)


def summary_line(records: list[dict]) -> str:
    """Iterations, reward from the first to the last iteration, total time and its split."""
    first, last = records[0], records[-1]
    parts = [f"{len(records)} iteration{'s' if len(records) != 1 else ''} "
             f"({first['iteration']}–{last['iteration']})"]
    for key, name in (("reward_mean", "reward"), ("eval_reward_mean", "held-out reward")):
        values = [v for v in (_number(r, key) for r in records) if v is not None]
        if len(values) == 1:
            parts.append(f"{name} {values[0]:.3f}")
        elif values:
            parts.append(f"{name} {values[0]:.3f} → {values[-1]:.3f}")
    if not _has(records, "reward_mean"):
        parts.append("offline (no sampled reward)")
    totals = [_number(r, "time_total_s") for r in records]
    if any(t is not None for t in totals):
        total = sum(t for t in totals if t is not None)
        phase_sums: dict[str, float] = {}
        for record in records:
            for label, seconds in _phase_times(record).items():
                phase_sums[label] = phase_sums.get(label, 0.0) + seconds
        split = ", ".join(f"{label} {100 * seconds / total:.0f}%"
                          for label, seconds in phase_sums.items() if seconds > 0) if total else ""
        parts.append(f"total {_duration(total)} ({_duration(total / len(records))}/iter)"
                     + (f": {split}" if split else ""))
    return " | ".join(parts)


# --- plots ----------------------------------------------------------------------------------------
def _style(records: list[dict]) -> dict:
    # Markers keep a single iteration (or one between gaps) visible; long runs go without.
    return {"marker": "o", "markersize": 4} if len(records) <= 40 else {}


def _plot_held_out(ax, records: list[dict], x_of) -> bool:
    """The held-out reward (mean ± std over its samples) where evaluated, at x = `x_of(record)`."""
    points = [(x_of(r), _number(r, "eval_reward_mean"), _number(r, "eval_reward_std") or 0.0)
              for r in records if _number(r, "eval_reward_mean") is not None]
    if not points:
        return False
    x, y, err = zip(*points)
    ax.errorbar(x, y, yerr=err, color="tab:red", marker="s", markersize=5, capsize=3,
                linestyle="--", label="held-out reward (mean ± std)")
    return True


def _plot_reward(ax, records: list[dict]) -> bool:
    iterations = [r["iteration"] for r in records]
    drew = False
    if _has(records, "reward_mean"):
        mean, std = _series(records, "reward_mean"), _series(records, "reward_std")
        ax.plot(iterations, mean, color="tab:blue", label="train reward (mean)", **_style(records))
        if _has(records, "reward_std"):
            ax.fill_between(iterations, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color="tab:blue", alpha=0.2,
                            label="± std over samples")
        drew = True
    drew = _plot_held_out(ax, records, lambda r: r["iteration"]) or drew
    ax.set_title("Reward per iteration")
    ax.set_ylabel("reward (rewarder's units)")
    return drew


def _plot_quality(ax, records: list[dict]) -> bool:
    """Reward against the run's minutes (`time_elapsed_s`): what the compute bought. The
    held-out points (`eval.every`) are the ones to compare runs by."""
    timed = [r for r in records if _number(r, "time_elapsed_s") is not None]
    drew = False
    if _has(timed, "reward_mean"):
        points = [(_number(r, "time_elapsed_s") / 60, _number(r, "reward_mean")) for r in timed
                  if _number(r, "reward_mean") is not None]
        ax.plot(*zip(*points), color="tab:blue", label="train reward (mean)", **_style(timed))
        drew = True
    drew = _plot_held_out(ax, timed, lambda r: _number(r, "time_elapsed_s") / 60) or drew
    ax.set_title("Reward against minutes of the run")
    ax.set_ylabel("reward (rewarder's units)")
    return drew


def _plot_gamma(ax, records: list[dict]) -> bool:
    if not _has(records, "gamma"):
        return False
    iterations = [r["iteration"] for r in records]
    ax.plot(iterations, _series(records, "gamma"), color="black", label="γ", **_style(records))
    ax.set_ylabel("γ (nats/token)")
    # From 0: a fixed γ is a flat line, not noise blown up to fill the axis.
    ax.set_ylim(0, 1.15 * max(max(v for v in _series(records, "gamma") if v == v), 1e-3))
    estimated = [r for r in records if _number(r, "gamma_estimate") is not None
                 and _number(r, "gamma_stderr") is not None]
    if estimated:  # the adaptive controller's estimate, drawn at the iteration it was made for
        x = [r["iteration"] + 1 for r in estimated]
        mid = [r["gamma_estimate"] for r in estimated]
        half = [2 * r["gamma_stderr"] for r in estimated]
        ax.fill_between(x, [m - h for m, h in zip(mid, half)], [m + h for m, h in zip(mid, half)],
                        color="gray", alpha=0.25, label="estimate ± 2 s.e.")
    ax.set_title("γ and the share of pairs it lets through")
    share = ax.twinx()
    for key, label, color, line in (("active_fraction", "active (start of update)", "tab:green",
                                     "-"),
                                    ("active_fraction_end", "active (end of update)", "tab:olive",
                                     ":")):
        if _has(records, key):
            share.plot(iterations, _series(records, key), color=color, linestyle=line,
                       label=label, **_style(records))
    filtered = [_filtered_fraction(r) for r in records]
    if any(f is not None for f in filtered):
        share.plot(iterations, [math.nan if f is None else f for f in filtered], color="tab:red",
                   linestyle="--", label="filtered (1 − active)", **_style(records))
    share.set_ylim(-0.02, 1.02)
    share.set_ylabel("share of pairs")
    lines = ax.get_legend_handles_labels()
    more = share.get_legend_handles_labels()
    # On the twin axes: drawn last, so its lines do not cross the legend.
    share.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best", framealpha=0.9)
    return True


def _plot_margins(ax, records: list[dict]) -> bool:
    keys = ("margin_p10", "margin_p50", "margin_p90")
    if not any(_has(records, key) for key in keys):
        return False
    iterations = [r["iteration"] for r in records]
    p10, p50, p90 = (_series(records, key) for key in keys)
    ax.fill_between(iterations, p10, p90, color="tab:blue", alpha=0.2, label="p10–p90")
    ax.plot(iterations, p10, color="tab:blue", linewidth=0.8, alpha=0.7)
    ax.plot(iterations, p90, color="tab:blue", linewidth=0.8, alpha=0.7)
    ax.plot(iterations, p50, color="tab:blue", linewidth=2, label="median", **_style(records))
    if _has(records, "gamma"):
        ax.plot(iterations, _series(records, "gamma"), color="black", linestyle="--",
                label="γ", **_style(records))
    ax.axhline(0, color="gray", linewidth=0.6)
    ax.set_title("Margin M = s(chosen) − s(rejected) at the start of the update")
    ax.set_ylabel("margin (nats/token)")
    return True


def _plot_time(ax, records: list[dict]) -> bool:
    if not any(_has(records, key) for key, _ in PHASES) and not _has(records, "time_total_s"):
        return False
    iterations = [r["iteration"] for r in records]
    times = [_phase_times(r) for r in records]
    bottom = [0.0] * len(records)
    width = 0.8 if len(records) < 2 else 0.8 * min(
        b - a for a, b in zip(iterations, iterations[1:]))
    for label in [label for _, label in PHASES] + ["other"]:
        heights = [t[label] for t in times]
        if not any(heights):
            continue
        ax.bar(iterations, heights, width=width, bottom=bottom, color=PHASE_COLORS[label],
               label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title("Time per iteration, by phase")
    ax.set_ylabel("seconds")
    ax.set_ylim(0, 1.3 * max(max(bottom), 1e-3))  # headroom for the legend
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    return True


def _plot_throughput(ax, records: list[dict]) -> bool:
    series = [(key, label, color) for key, label, color in
              (("gen_tokens_per_s", "generation (completion tokens)", "tab:blue"),
               ("train_tokens_per_s", "training (pair tokens)", "tab:green"))
              if _has(records, key)]
    if not series:
        return False
    iterations = [r["iteration"] for r in records]
    values = []
    for key, label, color in series:
        ax.plot(iterations, _series(records, key), color=color, label=label, **_style(records))
        values += [v for v in _series(records, key) if v > 0]
    if values and max(values) / min(values) > 20:  # keep the slower one readable
        ax.set_yscale("log")
    ax.set_title("Throughput")
    ax.set_ylabel("tokens / s")
    return True


PLOTS = (("reward.png", _plot_reward, "no reward values (offline run without evaluation)"),
         ("quality.png", _plot_quality, "no rewards with run times (time_elapsed_s)"),
         ("gamma.png", _plot_gamma, "no γ values"),
         ("margins.png", _plot_margins, "no margin quantiles"),
         ("time.png", _plot_time, "no timings"),
         ("throughput.png", _plot_throughput, "no tokens/s values"))


def _finish_axes(ax, name: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if name == "quality.png":
        ax.set_xlabel("minutes (the iterations' wall-clock, start-up excluded)")
    else:
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if name not in ("gamma.png", "time.png") and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def write_report(run_dir: Path | str) -> ReportResult:
    """Writes RUN_DIR/report/overview.png and one PNG per plot that has data."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    run_dir = Path(run_dir)
    records = load_records(run_dir)
    result = ReportResult(run_dir / "report", records)
    result.report_dir.mkdir(exist_ok=True)

    overview = Figure(figsize=(24, 9.5))
    panels = overview.subplots(2, 4).flatten()
    for (name, draw, why_not), panel in zip(PLOTS, panels):
        if draw(panel, records):
            _finish_axes(panel, name)
        else:
            panel.set_axis_off()
            panel.text(0.5, 0.5, f"{name[:-4]}: {why_not}", ha="center", va="center",
                       transform=panel.transAxes, color="gray")
    for unused in panels[len(PLOTS):-1]:
        unused.set_axis_off()
    panels[-1].set_axis_off()
    panels[-1].set_title("Summary")
    panels[-1].text(0.0, 0.95, _wrap(summary_line(records).replace(" | ", "\n"), 55),
                    va="top", family="monospace", fontsize=10, transform=panels[-1].transAxes)
    overview.suptitle(f"selfplay run report: {run_dir.resolve().name}", fontsize=14)
    overview.tight_layout()
    result.plots.append(result.report_dir / "overview.png")
    overview.savefig(result.plots[-1], dpi=90)

    for name, draw, why_not in PLOTS:
        path = result.report_dir / name
        figure = Figure(figsize=(8, 4.5))
        ax = figure.subplots()
        if draw(ax, records):
            _finish_axes(ax, name)
            figure.tight_layout()
            figure.savefig(path, dpi=110)
            result.plots.append(path)
        else:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would mislead
            result.skipped[name] = why_not
    return result


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ")
                     for line in text.splitlines())
