"""Prompts: loaded with `datasets`, chat-formatted, and served in a seeded order with a cursor.

The cursor (prompts consumed so far) is part of the checkpoint, so a resumed run continues with
exactly the prompts an uninterrupted run would have seen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfplay.errors import UserError


class DataError(UserError, ValueError):
    """The prompt source cannot be used; the message names the file and the problem."""


@dataclass
class PromptRow:
    text: str          # what the engine sees (chat template applied)
    raw: str           # the prompt as written in the file
    metadata: dict     # the row's other columns, handed to the rewarder


TEXT_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
TABLE_KINDS = {**TEXT_KINDS, ".parquet": "parquet"}


def load_prompt_table(path: str, prompt_field: str, *, field: str = "data.prompts",
                      columns: dict[str, str] | None = None):
    """Returns a `datasets.Dataset`; raises DataError naming the file, row and what to do.

    `field` names the recipe field (or option) the path came from, e.g. "eval.prompts";
    `columns` maps other required columns' recipe fields to their names, e.g. offline mode's
    {"data.chosen_field": "chosen", "data.rejected_field": "rejected"}.
    """
    import datasets

    source = Path(path)
    if not source.exists():
        raise DataError(f"{field}: file not found: {path}")
    kind = None
    if not source.is_dir():
        kind = TABLE_KINDS.get(source.suffix)
        if kind is None:
            raise DataError(f"{field}: unsupported file type {source.suffix!r} of {path} "
                            "(use .jsonl, .json, .parquet, .csv or a saved datasets dir)")
        if source.suffix in TEXT_KINDS:
            check_text_file(source, prompt_field, field)
    datasets.disable_progress_bars()
    try:
        if kind is None:
            table = datasets.load_from_disk(str(source))
            if isinstance(table, datasets.DatasetDict):
                split = "train" if "train" in table else next(iter(table))
                table = table[split]
        else:
            table = datasets.load_dataset(kind, data_files=str(source), split="train")
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise DataError(f"{field}: cannot read {path}: {type(error).__name__}: {first_line}"
                        ) from None
    if len(table) == 0:
        raise DataError(f"{field}: {path} has no rows: it needs one prompt per row "
                        f"in a {prompt_field!r} column")
    for recipe_field, column in {"data.prompt_field": prompt_field, **(columns or {})}.items():
        if column not in table.column_names:
            raise DataError(f"{recipe_field}: column {column!r} not in {path} "
                            f"(columns: {', '.join(table.column_names)}); set {recipe_field} "
                            "to the column that holds it")
    for index, value in enumerate(table[prompt_field]):
        if not isinstance(value, str) or not value:
            raise DataError(f"{field}: row {index + 1} of {path}: {prompt_field!r} is "
                            f"{value!r}, not a non-empty string: write every prompt as text")
    return table


def check_text_file(source: Path, prompt_field: str, field: str) -> None:
    """A text prompt file is UTF-8, not empty and, for JSON lines, one object per line; raises
    DataError naming the line. (`datasets` reports these as tracebacks or without the line.)"""
    data = source.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{field}: {source} is not UTF-8 text (line {line}, byte "
                        f"{error.start}): save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
                        ) from None
    if not text.strip():
        raise DataError(f"{field}: {source} is empty: it needs one prompt per row, "
                        f"e.g. a line {{\"{prompt_field}\": \"...\"}}")
    if source.suffix == ".json":
        try:
            json.loads(text)
            return  # one JSON document (a list of rows, or columns)
        except json.JSONDecodeError:
            pass  # JSON lines under a .json name; checked below
    elif source.suffix != ".jsonl":
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{field}: line {number} of {source} is not valid JSON "
                            f"({error.msg}, column {error.colno}): fix or delete that line"
                            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{field}: line {number} of {source} is not a JSON object: "
                            f"write each row as {{\"{prompt_field}\": \"...\"}}")
        value = row.get(prompt_field, "")
        if prompt_field in row and (not isinstance(value, str) or not value):
            raise DataError(f"{field}: line {number} of {source}: {prompt_field!r} is "
                            f"{value!r}, not a non-empty string: write every prompt as text")


def check_rows_fit(rows: list, tokenizer, rollout, source: str) -> None:
    """`check_prompt_lengths` for chat-formatted PromptRows and a recipe's rollout section."""
    check_prompt_lengths([len(tokenizer(r.text)["input_ids"]) for r in rows],
                         rollout.max_model_len, rollout.max_new_tokens, source)


def check_prompt_lengths(prompt_token_counts: list[int], max_model_len: int,
                         max_new_tokens: int, source: str,
                         names: tuple[str, str] = ("rollout.max_new_tokens=",
                                                   "rollout.max_model_len=")) -> None:
    """Refuses prompts that leave no room for a full completion, before any generation.

    `prompt_token_counts` are the chat-formatted prompts' token counts in the order of `source`'s
    rows; the DataError names the first that does not fit (1-based) and how many do not, and the
    two settings by `names` (the recipe's fields, or a command's options).
    """
    new_name, len_name = names
    limit = max_model_len - max_new_tokens
    too_long = [i for i, count in enumerate(prompt_token_counts) if count > limit]
    if not too_long:
        return
    first = too_long[0]
    count = prompt_token_counts[first]
    others = f" ({len(too_long)} rows do not fit)" if len(too_long) > 1 else ""
    raise DataError(f"{source}: row {first + 1} is {count} tokens; with {new_name}"
                    f"{max_new_tokens} it does not fit {len_name}{max_model_len} "
                    f"(room for {limit} prompt tokens){others}: shorten or remove it, or raise "
                    f"{len_name.rstrip('= ')} to at least {count + max_new_tokens}")


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
