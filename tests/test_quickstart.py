"""The quickstart recipe runs end to end with the real model, reward and engine (sizes cut down)."""
import json

import pytest

from conftest import REPO, run_cli

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def test_quickstart_recipe_validates():
    result = run_cli("validate", QUICKSTART)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{QUICKSTART}: ok"


@pytest.mark.slow
def test_quickstart_runs_one_small_iteration_with_smollm2_and_the_verifier(tmp_path):
    # Converts SmolLM2 into the cache on first use (~1 minute), then one small iteration.
    run = tmp_path / "run"
    result = run_cli("run", QUICKSTART, "--output-dir", run, "--no-progress",
                     "loop.iterations=1", "data.prompts_per_iteration=4", "rollout.n=2",
                     "rollout.max_new_tokens=24", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["n_prompts"] == 4
    rollouts = [json.loads(line) for line in (run / "rollouts" / "iter-0001.jsonl").open()]
    assert len(rollouts) == 4 and all(len(row["rewards"]) == 2 for row in rollouts)
    # Each reward is IFEval's checkers' verdict on that answer (recomputed here from the
    # prompt's row), and the logged mean is theirs.
    from rewarders.base import load_rewarder

    source = REPO / "recipes" / "data" / "ifeval-train.jsonl"
    rows = {row["prompt"]: row for row in map(json.loads, source.open())}
    checker = load_rewarder("ifeval")
    for rollout in rollouts:
        metadata = {k: v for k, v in rows[rollout["prompt"]].items() if k != "prompt"}
        assert checker.score([rollout["prompt"]] * 2, rollout["completions"],
                             [metadata] * 2) == rollout["rewards"]
    rewards = [reward for rollout in rollouts for reward in rollout["rewards"]]
    assert record["reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert (run / "final" / "config.json").exists()
