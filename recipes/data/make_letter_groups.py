"""Writes the "letter groups" prompt sets used by recipes/groups.yaml (the γ study's toy task).

The letters a–x form three groups of eight (a–h, i–p, q–x). Each prompt shows three distinct
letters of one group; the `letter_groups` rewarder scores 2·s − 1, s being the share of the
completion's characters in that group. Each group has C(8,3) = 56 letter sets, 168 in all; the
split is per group (32 train, 12 tune, 12 held-out), so every split is balanced over the groups
and no tune or held-out letter set is ever trained on. The tune split is for choosing baseline
settings in the γ study; the held-out split only ever measures. A policy that ignores its
prompt scores at most −1/3.
Re-run: python recipes/data/make_letter_groups.py  (seeded: the files come out identical).
"""
import itertools
import json
import random
from pathlib import Path

GROUPS = ("abcdefgh", "ijklmnop", "qrstuvwx")
TRAIN, TUNE, HELDOUT = 32, 12, 12  # letter sets per group


def row(letters: tuple[str, ...], group: str) -> dict:
    return {"prompt": f"group {' '.join(letters)}:", "group": group}


def make_splits(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "tune": [], "heldout": []}
    for group in GROUPS:
        sets = list(itertools.combinations(group, 3))
        rng.shuffle(sets)
        bounds = {"train": (0, TRAIN), "tune": (TRAIN, TRAIN + TUNE),
                  "heldout": (TRAIN + TUNE, TRAIN + TUNE + HELDOUT)}
        for name, (lo, hi) in bounds.items():
            splits[name] += [row(s, group) for s in sets[lo:hi]]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


if __name__ == "__main__":
    here = Path(__file__).parent
    for split, rows in make_splits().items():
        name = f"groups-{split}.jsonl"
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} prompts to {here / name}")
