"""`selfplay sample`: pairs sampled once from a recipe's model, written for offline training."""
import json

import pytest
from conftest import TINY_RECIPE, run_cli

from rewarders.letters import LettersRewarder
from selfplay.data import PromptStream, load_prompt_table
from selfplay.recipe import load

HF = "rollout.engine=hf"  # the fallback engine: the same pairs path, less start-up


@pytest.mark.slow
def test_sampled_pairs_are_the_online_runs_prompts_scored_and_train_offline(tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = run_cli("sample", TINY_RECIPE, "--prompts", 12, "-o", out, "--no-progress", HF,
                     "loop.seed=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(f"(sampling and scoring): {out}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(rows) <= 12
    # Whether each answer stopped by itself: offline training gives only those an EOS.
    assert all(type(row[f"{side}_ended"]) is bool
               for row in rows for side in ("chosen", "rejected"))
    # The prompts an online run with the same seed draws first, in that order.
    recipe = load(TINY_RECIPE, ["loop.seed=3"])
    stream = PromptStream(load_prompt_table(recipe.data.prompts, "prompt"), "prompt", seed=3)
    drawn = [row["prompt"] for row in stream.next_batch(12)]
    assert [row["prompt"] for row in rows] == [p for p in drawn if p in
                                               {row["prompt"] for row in rows}]
    # Best against worst, with the rewards the recipe's rewarder gives them.
    rewarder = LettersRewarder()
    for row in rows:
        chosen, rejected = rewarder.score([row["prompt"]] * 2, [row["chosen"], row["rejected"]],
                                          [row, row])
        assert (chosen, rejected) == pytest.approx((row["chosen_reward"], row["rejected_reward"]))
        assert chosen > rejected
    trained = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", "--no-progress", HF,
                      "mode=offline", f"data.prompts={out}", "loop.iterations=1", "eval.prompts=null")
    assert trained.returncode == 0, trained.stderr


def test_sample_never_overwrites_and_refuses_an_offline_recipe(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text("keep me\n")
    result = run_cli("sample", TINY_RECIPE, "--prompts", 4, "-o", out, HF)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out} already exists; use --overwrite to replace it")
    assert out.read_text() == "keep me\n"
    offline = run_cli("sample", TINY_RECIPE, "--prompts", 4, "-o", tmp_path / "new.jsonl", HF,
                      "mode=offline")
    assert offline.returncode == 1
    assert offline.stderr.strip().splitlines()[-1].startswith(
        "error: selfplay sample: the recipe is mode: offline")
    too_long = run_cli("sample", TINY_RECIPE, "--prompts", 4, "-o", tmp_path / "new.jsonl", HF,
                       "rollout.max_model_len=20")
    assert too_long.returncode == 1 and "Traceback" not in too_long.stderr
    assert "rollout.max_model_len" in too_long.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "new.jsonl").exists()
