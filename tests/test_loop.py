"""The loop hands every recipe field to the part that uses it (no model is trained here)."""
import pytest
from conftest import TINY_RECIPE

from selfplay import loop as loop_module
from selfplay.distributed.local import LocalPlacement
from selfplay.recipe import load


class _Captured(Exception):
    pass


class _Engine:
    def close(self):
        pass


def test_the_trainer_receives_the_losss_reduction_beta_and_name(tmp_path, monkeypatch):
    # A recipe field that the trainer never sees is accepted and silently ignored: this once
    # happened to loss.reduction.
    captured = {}

    def trainer(self, model_dir, config, **options):
        captured.update(options)
        raise _Captured

    monkeypatch.setattr(LocalPlacement, "trainer", trainer)
    monkeypatch.setattr(LocalPlacement, "rollout", lambda self, *args, **kwargs: _Engine())
    recipe = load(TINY_RECIPE, ["loss.reduction=active", "gamma.value=0.3",
                                "rollout.engine=hf"])
    try:
        loop_module.Loop(recipe, tmp_path / "run", progress=False)
    except _Captured:
        pass
    assert captured["reduction"] == "active"
    assert captured["loss_name"] == "repo" and captured["beta"] is None


class _ScoringTrainer:
    """Trains nothing; counts the end-of-update scoring passes the loop asks for."""
    lr = 1e-3

    def __init__(self):
        self.end_passes = 0

    def train(self, pairs, gamma, iteration, progress=False):
        from selfplay.types import TrainStats
        return TrainStats(loss=0.1, margins=[0.2] * len(pairs), gammas=[0.5] * len(pairs),
                          steps=1, tokens=10)

    def margins(self, pairs):
        self.end_passes += 1
        return [0.3] * len(pairs)


@pytest.mark.parametrize("overrides, scored", [
    (["gamma.controller=fixed"], False),
    (["gamma.controller=schedule"], False),
    (["gamma.controller=adaptive"], False),  # it reads the fresh margins only
    (["gamma.controller=fixed", "logging.end_margins=always"], True),
])
def test_the_end_of_update_pass_runs_only_when_something_reads_it(overrides, scored):
    from selfplay.control import build_controller
    from selfplay.metrics import iteration_record
    from selfplay.pairs import PairStats

    recipe = load(TINY_RECIPE, overrides)
    loop = object.__new__(loop_module.Loop)  # only what _train touches
    loop.recipe, loop.progress, loop.trainer = recipe, False, _ScoringTrainer()
    loop.controller = build_controller(recipe.gamma, recipe.loop.iterations)
    update = loop._train(1, ["pair"] * 4)
    assert loop.trainer.end_passes == int(scored)
    assert update.margins_end == ([0.3] * 4 if scored else [])
    stats = PairStats(n_prompts=4, n_pairs=4, n_dropped=0)
    record = iteration_record(1, {}, {}, stats, update, 0.0, {})
    assert record["active_fraction_end"] == (1.0 if scored else None)  # 0.3 < γ 0.5
    assert record["margin_end_p50"] == (0.3 if scored else None)


@pytest.mark.slow
def test_dynamic_sampling_samples_more_rounds_until_the_iteration_has_its_pairs(tmp_path):
    """4 prompts a round, 6 pairs wanted: a second round of 4 prompts (its own seed), exactly 6
    pairs trained, the prompt cursor 8 further; all_levels gives several pairs per prompt."""
    import json

    from conftest import run_cli

    run = tmp_path / "run"
    result = run_cli("run", TINY_RECIPE, "-o", run, "--no-progress", "rollout.engine=hf",
                     "loop.iterations=2", "data.prompts_per_iteration=4", "pairs.per_iteration=6",
                     "train.micro_batch_size=3", "eval.prompts=null")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [(r["sample_rounds"], r["n_prompts"], r["n_pairs"]) for r in records] == [(2, 8, 6)] * 2
    rollouts = [json.loads(line) for line in (run / "rollouts" / "iter-0001.jsonl").open()]
    assert len(rollouts) == 8 and sum(row["pairs"] for row in rollouts) == 6
    state = json.loads(next((run / "checkpoints").glob("iter-0002/state.json")).read_text())
    assert state["data"]["cursor"] == 16

    levels = tmp_path / "levels"
    result = run_cli("run", TINY_RECIPE, "-o", levels, "--no-progress", "rollout.engine=hf",
                     "loop.iterations=1", "data.prompts_per_iteration=4",
                     "pairs.strategy=all_levels", "eval.prompts=null")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((levels / "metrics.jsonl").read_text())
    assert record["n_prompts"] == 4 and 4 < record["n_pairs"] <= 4 * 6  # n = 4: up to 6 each
