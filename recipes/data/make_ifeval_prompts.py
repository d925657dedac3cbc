"""Synthesises instruction-following prompts with verifiable constraints (IFEval's registry).

Run from the repository root (it imports `rewarders`). Each prompt is a short base task ("Write a short poem about the ocean.") followed by 1–3
compatible instructions drawn from IFEval's 25 instruction classes, with random arguments from
the classes' own `build_description()`. A row stores the constraints the way IFEval ships them
(`instruction_id_list`, `kwargs`), which is what the `ifeval` rewarder checks. None of IFBench's
test prompts is used. Re-run with another seed to make more; the seed decides everything:

    python recipes/data/make_ifeval_prompts.py --seed 1 --count 512 --out ifeval-train.jsonl
    python recipes/data/make_ifeval_prompts.py --seed 1000 --count 200 \
        --exclude ifeval-train.jsonl --out ifeval-heldout.jsonl
    python recipes/data/make_ifeval_prompts.py --seed 2000 --count 100 \
        --exclude ifeval-train.jsonl --exclude ifeval-heldout.jsonl --out ifeval-tune.jsonl

The tune set is for choosing a recipe's knobs; the held-out set only measures the result.

Instructions whose drawn arguments cannot be met in a short answer (more than 60 words, 6
sentences, 3 paragraphs, 3 sections or 5 bullets) are re-drawn, and the answer language
instruction is left out: the quickstart's answers are at most ~160 tokens from a 135M model.

`--exclude` keeps out every row whose constraint set (instruction ids with their arguments, see
`constraint_set`) is that of a row in the given file, not only its exact prompts: the reward only
checks the constraints, so a held-out row with a training row's constraints under another base
task would measure recall of those constraints rather than generalisation.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

TASKS = [
    "Write a short poem about {topic}.",
    "Describe {topic} to a ten-year-old.",
    "Write a short product description for a gadget related to {topic}.",
    "Explain why {topic} matters.",
    "Write a brief diary entry about a day spent thinking about {topic}.",
    "Give some advice to someone who wants to learn about {topic}.",
    "Write a short story that involves {topic}.",
    "Write a short email to a friend about {topic}.",
    "Summarize what most people know about {topic}.",
    "Write a tweet about {topic}.",
    "Write a limerick about {topic}.",
    "Write a short speech for a school assembly about {topic}.",
    "Describe a place that reminds you of {topic}.",
    "Write a riddle whose answer is related to {topic}.",
    "Write a short dialogue between two friends about {topic}.",
    "Write a haiku about {topic}.",
    "List a few facts about {topic}.",
    "Write a short advertisement for a class about {topic}.",
    "Give an opinion on {topic}.",
    "Write a short news headline and lead about {topic}.",
]
TOPICS = [
    "the ocean", "coffee", "a rainy afternoon", "bicycles", "the moon", "gardening",
    "public libraries", "a lost cat", "winter mornings", "volcanoes", "friendship", "chess",
    "a city at night", "honeybees", "learning to cook", "old photographs", "trains",
    "a mountain hike", "the internet", "recycling", "a birthday party", "penguins", "music",
    "a first job", "the desert", "time travel", "a small bakery", "robots", "the seasons",
    "a football match", "forests", "a museum visit", "the history of maps", "sleep",
    "a snowstorm", "space exploration", "kindness", "a village market", "electric cars",
    "homework", "lighthouses", "a family dinner", "dinosaurs", "the color blue", "a road trip",
    "clouds", "a new neighbor", "the smell of bread", "owls", "a broken umbrella",
]
# Cannot be met (or not by a 135M model) within a short answer.
EXCLUDED = {"language:response_language"}
# Argument limits that keep an instruction satisfiable in ~160 tokens.
LIMITS = {"num_words": 60, "num_sentences": 6, "num_paragraphs": 3, "num_sections": 3,
          "num_bullets": 5}


def fits_short_answer(args: dict | None) -> bool:
    if not args:
        return True
    for key, limit in LIMITS.items():
        value = args.get(key)
        if value is not None and value > limit and args.get("relation") != "less than":
            return False
    return True


def draw_instruction(instruction_id: str, cls, task: str):
    """(description, kwargs) for one instruction, re-drawn until it fits and round-trips."""
    for _ in range(100):
        checker = cls(instruction_id)
        if instruction_id == "combination:repeat_prompt":
            description = checker.build_description(prompt_to_repeat=task)
        else:
            description = checker.build_description()
        args = checker.get_instruction_args()
        if not fits_short_answer(args):
            continue
        # Some classes draw arguments that do not rebuild the same description (e.g. a
        # paragraph number larger than the paragraph count): those rows could not be checked.
        rebuilt = cls(instruction_id)
        if rebuilt.build_description(**(args or {})) != description:
            continue
        return description, args or {}
    raise RuntimeError(f"cannot draw arguments for {instruction_id}")


def constraint_set(instruction_ids, kwargs) -> tuple:
    """What the reward checks for a row, order-free: sorted (id, canonical JSON of its non-null
    arguments) pairs. Two rows with equal sets are scored by the same checks."""
    return tuple(sorted(
        (instruction_id, json.dumps({key: value for key, value in (args or {}).items()
                                     if value is not None}, sort_keys=True))
        for instruction_id, args in zip(instruction_ids, kwargs, strict=True)))


def make_rows(seed: int, count: int, min_instructions: int = 1, max_instructions: int = 3,
              exclude: list[dict] = ()):
    """`count` rows; a draw whose prompt or constraint set is that of a row in `exclude` (e.g.
    the training set) is drawn again."""
    from rewarders.nltk_data import ensure_nltk_data

    ensure_nltk_data()
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, INSTRUCTION_DICT

    # The instruction classes draw their arguments from the global `random`.
    random.seed(seed)
    ids = [i for i in INSTRUCTION_DICT if i not in EXCLUDED]
    rows: list[dict] = []
    seen = {row["prompt"] for row in exclude}
    excluded_sets = {constraint_set(row["instruction_id_list"], row["kwargs"]) for row in exclude}
    while len(rows) < count:
        task = random.choice(TASKS).format(topic=random.choice(TOPICS))
        wanted = random.randint(min_instructions, max_instructions)
        chosen: list[str] = []
        for instruction_id in random.sample(ids, len(ids)):
            if len(chosen) == wanted:
                break
            if any(instruction_id in INSTRUCTION_CONFLICTS.get(other, ()) or
                   other in INSTRUCTION_CONFLICTS.get(instruction_id, ()) for other in chosen):
                continue
            chosen.append(instruction_id)
        parts, kwargs = [task], []
        for instruction_id in chosen:
            description, args = draw_instruction(instruction_id, INSTRUCTION_DICT[instruction_id],
                                                 task)
            parts.append(description)
            kwargs.append(args)
        prompt = " ".join(parts)
        if prompt in seen or constraint_set(chosen, kwargs) in excluded_sets:
            continue
        seen.add(prompt)
        rows.append({"key": f"s{seed}-{len(rows)}", "prompt": prompt,
                     "instruction_id_list": chosen, "kwargs": kwargs})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--min-instructions", type=int, default=1)
    parser.add_argument("--max-instructions", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="A prompt file (e.g. the train set) whose prompts and constraint "
                             "sets must not reappear.")
    args = parser.parse_args(argv)
    exclude = [json.loads(line) for path in args.exclude for line in path.open()]
    rows = make_rows(args.seed, args.count, args.min_instructions, args.max_instructions, exclude)
    with args.out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} prompts to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
