"""metrics.jsonl: one JSON object per iteration, kept consistent with the checkpoints.

Each record is also handed to the optional sinks (TensorBoard, W&B) the recipe's `logging` section
turns on; they log every numeric value with step = iteration.
"""
from __future__ import annotations

import json
import resource
from pathlib import Path

import psutil


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


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
