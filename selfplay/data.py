"""Prompts: loaded with `datasets`, chat-formatted, and served in a seeded order with a cursor.

The cursor (prompts consumed so far) is part of the checkpoint, so a resumed run continues with
exactly the prompts an uninterrupted run would have seen.
"""
from __future__ import annotations

from selfplay.errors import UserError

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(UserError, ValueError):
    """The prompt source cannot be used; the message names the file and the problem."""


@dataclass
class PromptRow:
    text: str          # what the engine sees (chat template applied)
    raw: str           # the prompt as written in the file
    metadata: dict     # the row's other columns, handed to the rewarder


def load_prompt_table(path: str, prompt_field: str):
    """Returns a `datasets.Dataset`; raises DataError naming what is wrong."""
    import datasets

    source = Path(path)
    if not source.exists():
        raise DataError(f"data.prompts: file not found: {path}")
    datasets.disable_progress_bars()
    try:
        if source.is_dir():
            table = datasets.load_from_disk(str(source))
            if isinstance(table, datasets.DatasetDict):
                split = "train" if "train" in table else next(iter(table))
                table = table[split]
        else:
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet",
                    ".csv": "csv"}.get(source.suffix)
            if kind is None:
                raise DataError(f"data.prompts: unsupported file type {source.suffix!r} "
                                "(use .jsonl, .json, .parquet, .csv or a saved datasets dir)")
            table = datasets.load_dataset(kind, data_files=str(source), split="train")
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"data.prompts: cannot read {path}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if prompt_field not in table.column_names:
        raise DataError(f"data.prompt_field: column {prompt_field!r} not in {path} "
                        f"(columns: {', '.join(table.column_names)})")
    if len(table) == 0:
        raise DataError(f"data.prompts: {path} has no rows")
    return table


def format_prompt(tokenizer, text: str, use_chat_template: bool) -> str:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             tokenize=False, add_generation_prompt=True)
    return text


class PromptStream:
    """Serves prompts in a seeded, per-epoch shuffled order; `cursor` counts prompts served."""

    def __init__(self, table, prompt_field: str, seed: int, shuffle: bool = True):
        self.table = table
        self.prompt_field = prompt_field
        self.seed = seed
        self.shuffle = shuffle
        self.cursor = 0
        self._cached_order: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached_order is None or self._cached_order[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.table))
                     if self.shuffle else np.arange(len(self.table)))
            self._cached_order = (epoch, order)
        return self._cached_order[1]

    def next_batch(self, count: int) -> list[dict]:
        rows = []
        size = len(self.table)
        for position in range(self.cursor, self.cursor + count):
            epoch, offset = divmod(position, size)
            rows.append(self.table[int(self._order(epoch)[offset])])
        self.cursor += count
        return rows

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


def to_prompt_rows(rows: list[dict], prompt_field: str, tokenizer,
                   use_chat_template: bool) -> list[PromptRow]:
    out = []
    for row in rows:
        raw = row[prompt_field]
        if not isinstance(raw, str) or not raw:
            raise DataError(f"data.prompt_field: a row's {prompt_field!r} is not a non-empty "
                            f"string: {raw!r}")
        metadata = {k: v for k, v in row.items() if k != prompt_field}
        out.append(PromptRow(format_prompt(tokenizer, raw, use_chat_template), raw, metadata))
    return out
