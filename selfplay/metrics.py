"""metrics.jsonl: one JSON object per iteration, kept consistent with the checkpoints."""
from __future__ import annotations

import json
import resource
from pathlib import Path

import psutil


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

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

    def rewind(self, iteration: int, last_record: dict | None) -> None:
        """Keeps records up to `iteration` (the checkpoint resumed from), restoring its own record
        from the checkpoint if the kill came before it was written."""
        records = [r for r in self.read() if r.get("iteration", 0) <= iteration]
        if last_record is not None and not any(r.get("iteration") == iteration for r in records):
            records.append(last_record)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))
