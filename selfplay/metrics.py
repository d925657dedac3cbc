"""metrics.jsonl: one JSON object per iteration, kept consistent with the checkpoints.

Each record is also handed to the optional sinks (TensorBoard, W&B) the recipe's `logging` section
turns on; they log every numeric value with step = iteration.
"""
from __future__ import annotations

import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from selfplay.stats import active_fraction
from selfplay.types import TrainStats


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@dataclass
class UpdateSummary:
    """What one policy update did (empty when an iteration had no pairs): the trainer's report,
    and what the loop measured around it."""

    stats: TrainStats = field(default_factory=TrainStats)
    margins_end: list[float] = field(default_factory=list)  # per pair, after the update
    lr: float | None = None
    seconds: float = 0.0


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def reward_mean_std(rewards: list[list[float]]) -> tuple[float, float]:
    """Mean and population std of every completion's reward (per-prompt lists flattened)."""
    scores = [score for prompt_scores in rewards for score in prompt_scores]
    return statistics.fmean(scores), statistics.pstdev(scores)


def rollout_summary(rollouts, rewards: list[list[float]], pairs, time_generate: float,
                    time_reward: float) -> dict:
    """The sampling and scoring half of an iteration's record."""
    reward_mean, reward_std = reward_mean_std(rewards)
    completions = [c for r in rollouts for c in r.completions]
    gen_tokens = sum(len(c.token_ids) for c in completions)
    return {
        "reward_mean": reward_mean,
        "reward_std": reward_std,
        "chosen_reward_mean": statistics.fmean(p.chosen_reward for p in pairs) if pairs else None,
        "completion_tokens_mean": gen_tokens / max(1, len(completions)),
        "time_generate_s": time_generate,
        "time_reward_s": time_reward,
        "gen_tokens_per_s": gen_tokens / time_generate if time_generate > 0 else None,
    }


def iteration_record(iteration: int, gamma_fields: dict, collected: dict, pair_stats,
                     update: UpdateSummary, time_sync: float, evaluation: dict) -> dict:
    """One line of metrics.jsonl (docs/architecture.md names its keys), before checkpoint time and RSS."""
    stats = update.stats
    active = active_fraction(stats.margins, stats.gammas)
    return {
        "iteration": iteration,
        **gamma_fields,
        "active_fraction": active,
        # None when the end-of-update pass did not run (logging.end_margins).
        "active_fraction_end": (active_fraction(update.margins_end, stats.gammas)
                                if update.margins_end else None),
        "filtered_fraction": None if active is None else 1 - active,
        "margin_p10": _quantile(stats.margins, 0.1),
        "margin_p50": _quantile(stats.margins, 0.5),
        "margin_p90": _quantile(stats.margins, 0.9),
        "margin_end_p50": _quantile(update.margins_end, 0.5),
        **collected,
        "n_prompts": pair_stats.n_prompts,
        "n_pairs": pair_stats.n_pairs,
        "n_dropped": pair_stats.n_dropped,
        "loss": stats.loss,
        "optimizer_steps": stats.steps,
        "lr": update.lr,
        "time_train_s": update.seconds,
        "time_sync_s": time_sync,
        "train_tokens_per_s": stats.tokens / update.seconds if stats.tokens else None,
        **evaluation,
    }


def finish_record(record: dict, started: float, elapsed_before: float = 0.0) -> dict:
    """Adds the iteration's total time, the run's time so far (`time_elapsed_s`: the seconds of
    every iteration up to this one, the x axis of quality against minutes) and memory, measured
    now; returns the record."""
    record["time_total_s"] = time.perf_counter() - started
    record["time_elapsed_s"] = elapsed_before + record["time_total_s"]
    record["peak_rss_mb"] = peak_rss_mb()
    record["rss_mb"] = rss_mb()
    return record


def _shown(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def record_cells(record: dict) -> dict[str, str]:
    """How a metrics record's main values are shown: the one formatter behind the run's summary
    lines, `selfplay report`'s table and `selfplay status`."""
    reward, std = record.get("reward_mean"), record.get("reward_std")
    reward_text = _shown(reward, ".3f") + ("" if reward is None or std is None else f"±{std:.3f}")
    return {
        "reward": reward_text,
        "γ": _shown(record.get("gamma"), ".3f"),
        "active": f"{_shown(record.get('active_fraction'), '.2f')}→"
                  f"{_shown(record.get('active_fraction_end'), '.2f')}",
        "pairs": f"{record.get('n_pairs', '-')}/{record.get('n_prompts', '-')}",
        "loss": _shown(record.get("loss"), ".4f"),
        "held-out": _shown(record.get("eval_reward_mean"), ".3f"),
    }


def format_summary(record: dict, total: int) -> str:
    """The line a run prints after each iteration."""
    cells = record_cells(record)
    reward = "offline" if record.get("reward_mean") is None else f"reward {cells['reward']}"
    line = (f"iter {record['iteration']}/{total} | {reward} | "
            f"pairs {cells['pairs']} | γ {cells['γ']} active {cells['active']} | "
            f"loss {cells['loss']} | gen {record['time_generate_s']:.1f}s "
            f"train {record['time_train_s']:.1f}s sync {record['time_sync_s']:.2f}s "
            f"ckpt {_shown(record.get('time_checkpoint_s'), '.1f')}s | "
            f"rss {record['rss_mb']:.0f}MB")
    if record.get("eval_reward_mean") is not None:
        line += f" | held-out reward {cells['held-out']}"
    return line


def numeric_items(record: dict) -> dict[str, float]:
    """The record's numbers (not the iteration, booleans or None): what a sink can plot."""
    return {key: float(value) for key, value in record.items()
            if key != "iteration" and isinstance(value, (int, float))
            and not isinstance(value, bool)}


class TensorBoardSink:
    """Scalars in RUN_DIR/tensorboard; the writer opens on the first record."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._writer = None

    def write(self, record: dict) -> None:
        step = record["iteration"]
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run starts at its checkpoint: hide what the killed run logged after it.
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)
        for key, value in numeric_items(record).items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """A Weights & Biases run (files in RUN_DIR/wandb); it starts on the first record."""

    def __init__(self, run_dir: Path, project: str, mode: str, config: dict | None = None):
        self.run_dir, self.project, self.mode, self.config = run_dir, project, mode, config
        self._run = None

    def write(self, record: dict) -> None:
        if self._run is None:
            import wandb

            self._run = wandb.init(project=self.project, mode=self.mode, dir=str(self.run_dir),
                                   name=self.run_dir.name, config=self.config)
        self._run.log(numeric_items(record), step=record["iteration"])

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def build_sinks(logging_config, run_dir: Path, recipe_dict: dict | None = None) -> list:
    """The sinks a recipe's `logging` section turns on."""
    sinks: list = []
    if logging_config.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if logging_config.wandb:
        sinks.append(WandbSink(run_dir, logging_config.wandb_project, logging_config.wandb_mode,
                               recipe_dict))
    return sinks


class MetricsLog:
    def __init__(self, path: Path, sinks: list | None = None):
        self.path = path
        self.sinks = list(sinks or [])

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                continue
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def rewind(self, iteration: int, last_record: dict | None) -> None:
        """Keeps records up to `iteration` (the checkpoint resumed from), restoring its own record
        from the checkpoint if the kill came before it was written."""
        records = [r for r in self.read() if r.get("iteration", 0) <= iteration]
        if last_record is not None and not any(r.get("iteration") == iteration for r in records):
            records.append(last_record)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))
