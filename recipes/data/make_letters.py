"""Writes the synthetic "echo letters" prompt sets used by recipes/tiny.yaml.

Each prompt shows 4 distinct letters from a–j; the `letters` rewarder scores a completion by the
share of its characters that are among them. A random model scores ~0.06; a model that learns
to write only a–j letters reaches ~0.4, and one that copies the prompt's letters reaches 1.0.
Re-run: python recipes/data/make_letters.py  (seeded: the files come out identical).
"""
import json
import random
from pathlib import Path

ALPHABET = "abcdefghij"


def make_prompts(count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < count:
        letters = "".join(sorted(rng.sample(ALPHABET, 4)))
        if letters in seen:
            continue
        seen.add(letters)
        rows.append({"prompt": f"echo {' '.join(letters)}:", "letters": letters})
    return rows


if __name__ == "__main__":
    here = Path(__file__).parent
    train = make_prompts(150, seed=0)
    # Held-out prompts use letter sets never seen in training (210 sets exist in all).
    heldout = make_prompts(60, seed=1, exclude={row["letters"] for row in train})
    for name, rows in (("letters-train.jsonl", train), ("letters-heldout.jsonl", heldout)):
        (here / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {len(rows)} prompts to {here / name}")
