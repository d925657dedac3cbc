import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

DATA = REPO / "recipes" / "data"
SCRIPT = DATA / "make_ifeval_prompts.py"
TRAIN = DATA / "ifeval-train.jsonl"
HELDOUT = DATA / "ifeval-heldout.jsonl"
TUNE = DATA / "ifeval-tune.jsonl"  # for choosing knobs; the held-out set only measures


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_ifeval_prompts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(generator):
    return generator.make_rows(seed=7, count=100)


@pytest.fixture(scope="module")
def registry():
    from rewarders.ifeval import load_registry
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS
    return load_registry("ifeval"), INSTRUCTION_CONFLICTS


def read_prompts(path):
    return [json.loads(line)["prompt"] for line in path.open()]


def read_constraint_sets(generator, path):
    return [generator.constraint_set(row["instruction_id_list"], row["kwargs"])
            for row in map(json.loads, path.open())]


def test_the_seed_decides_everything(generator, rows):
    assert generator.make_rows(seed=7, count=100) == rows
    other = generator.make_rows(seed=8, count=100)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]
    assert [r["key"] for r in rows] == [f"s7-{i}" for i in range(100)]
    assert len({r["prompt"] for r in rows}) == 100


def test_rows_hold_one_to_three_compatible_instructions(generator, rows, registry):
    _, conflicts = registry
    counts = {len(r["instruction_id_list"]) for r in rows}
    assert counts == {1, 2, 3}
    for row in rows:
        ids = row["instruction_id_list"]
        assert len(set(ids)) == len(ids) == len(row["kwargs"])
        for index, first in enumerate(ids):
            for second in ids[index + 1:]:
                assert second not in conflicts.get(first, ()), row
                assert first not in conflicts.get(second, ()), row
        assert not set(ids) & generator.EXCLUDED
        assert all(generator.fits_short_answer(kwargs) for kwargs in row["kwargs"]), row


def test_each_instructions_kwargs_rebuild_its_text_in_the_prompt(rows, registry):
    instructions, _ = registry
    for row in rows:
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            description = instructions[instruction_id](instruction_id).build_description(**kwargs)
            assert description in row["prompt"], (instruction_id, kwargs, row["prompt"])


def test_rows_are_checkable_by_the_ifeval_rewarder(rows):
    from rewarders.ifeval import IFEvalRewarder
    scores = IFEvalRewarder().score([r["prompt"] for r in rows], ["a short answer."] * len(rows),
                                    rows)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert 0.0 < sum(scores) < len(rows)


def test_short_answer_limits(generator):
    assert generator.fits_short_answer(None)
    assert generator.fits_short_answer({"num_words": 60, "relation": "at least"})
    assert not generator.fits_short_answer({"num_words": 61, "relation": "at least"})
    assert generator.fits_short_answer({"num_words": 300, "relation": "less than"})
    assert not generator.fits_short_answer({"num_bullets": 6})


def test_constraint_set_ignores_order_and_null_arguments_but_not_values(generator):
    one = generator.constraint_set(["punctuation:no_comma", "keywords:existence"],
                                   [{}, {"keywords": ["a", "b"]}])
    assert generator.constraint_set(["keywords:existence", "punctuation:no_comma"],
                                    [{"keywords": ["a", "b"], "unused": None}, None]) == one
    assert generator.constraint_set(["punctuation:no_comma", "keywords:existence"],
                                    [{}, {"keywords": ["a", "c"]}]) != one
    assert generator.constraint_set(["punctuation:no_comma"], [{}]) != one


def test_exclude_keeps_listed_constraint_sets_out(generator, tmp_path):
    # A small case: rows of seed 7 as the "train" file; seed 8 drawn with and without it.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in generator.make_rows(7, 60)))
    train_sets = set(read_constraint_sets(generator, train))
    unguarded = generator.make_rows(seed=8, count=60)
    unguarded_sets = {generator.constraint_set(r["instruction_id_list"], r["kwargs"])
                      for r in unguarded}
    assert train_sets & unguarded_sets  # without --exclude they do meet: not vacuous

    out = tmp_path / "heldout.jsonl"
    generator.main(["--seed", "8", "--count", "60", "--exclude", str(train), "--out", str(out)])
    guarded = read_constraint_sets(generator, out)
    assert len(guarded) == 60
    assert not train_sets & set(guarded)
    again = tmp_path / "again.jsonl"
    generator.main(["--seed", "8", "--count", "60", "--exclude", str(train), "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()


def test_exclude_keeps_listed_prompts_out(generator, tmp_path):
    train_prompts = set(read_prompts(TRAIN))
    # Drawn without the exclusion, seed 1000 repeats a training prompt: the check is not vacuous.
    unguarded = [r["prompt"] for r in generator.make_rows(seed=1000, count=200)]
    assert train_prompts & set(unguarded)

    out = tmp_path / "heldout.jsonl"
    generator.main(["--seed", "1000", "--count", "200", "--exclude", str(TRAIN),
                    "--out", str(out)])
    guarded = read_prompts(out)
    assert len(guarded) == 200
    assert not train_prompts & set(guarded)

    also = tmp_path / "first.jsonl"
    first = json.loads(out.open().readline())
    also.write_text(json.dumps(first) + "\n")
    again = tmp_path / "again.jsonl"
    generator.main(["--seed", "1000", "--count", "200", "--exclude", str(TRAIN),
                    "--exclude", str(also), "--out", str(again)])
    assert len(read_prompts(again)) == 200
    assert guarded[0] not in read_prompts(again)


def test_shipped_heldout_set_shares_no_prompt_with_train():
    train, heldout = read_prompts(TRAIN), read_prompts(HELDOUT)
    assert (len(train), len(heldout)) == (512, 200)
    assert not set(train) & set(heldout)


def test_shipped_heldout_set_shares_no_constraint_set_with_train(generator):
    train = set(read_constraint_sets(generator, TRAIN))
    shared = [s for s in read_constraint_sets(generator, HELDOUT) if s in train]
    assert not shared, f"{len(shared)} held-out rows share a constraint set with training"


def test_shipped_tune_set_shares_no_constraint_set_with_train_or_heldout(generator):
    others = set(read_constraint_sets(generator, TRAIN)) | set(
        read_constraint_sets(generator, HELDOUT))
    tune = read_constraint_sets(generator, TUNE)
    assert len(tune) == 100 and not [s for s in tune if s in others]


def test_shipped_files_are_what_the_documented_commands_make(tmp_path):
    # The script imports `rewarders`; put the checkout first on the path so the check does not
    # depend on how (or whether) the package is installed in the environment.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def make(*args):
        result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    make("--seed", 1, "--count", 512, "--out", tmp_path / "ifeval-train.jsonl")
    make("--seed", 1000, "--count", 200, "--exclude", tmp_path / "ifeval-train.jsonl",
         "--out", tmp_path / "ifeval-heldout.jsonl")
    make("--seed", 2000, "--count", 100, "--exclude", tmp_path / "ifeval-train.jsonl",
         "--exclude", tmp_path / "ifeval-heldout.jsonl", "--out", tmp_path / "ifeval-tune.jsonl")
    assert (tmp_path / "ifeval-train.jsonl").read_bytes() == TRAIN.read_bytes()
    assert (tmp_path / "ifeval-heldout.jsonl").read_bytes() == HELDOUT.read_bytes()
    assert (tmp_path / "ifeval-tune.jsonl").read_bytes() == TUNE.read_bytes()
