import importlib.util
import json
import sys
import types

import pytest

from selfplay.metrics import (MetricsLog, TensorBoardSink, WandbSink, build_sinks,
                              numeric_items)
from selfplay.recipe import RecipeError, load

from conftest import TINY_RECIPE


def test_rewind_drops_records_after_the_checkpoint_and_restores_its_own(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for i in (1, 2, 4):
        log.append({"iteration": i})
    with open(log.path, "a") as handle:
        handle.write('{"iteration": 5, "cut')  # killed mid-write
    log.rewind(3, {"iteration": 3, "from": "checkpoint"})
    assert [r["iteration"] for r in log.read()] == [1, 2, 3]
    assert log.read()[-1]["from"] == "checkpoint"
    assert all(json.loads(line) for line in log.path.read_text().splitlines())


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_numeric_items_keep_numbers_only():
    record = {"iteration": 3, "gamma": 0.5, "n_pairs": 7, "reward_mean": None,
              "controller": "fixed", "clipped": True}
    assert numeric_items(record) == {"gamma": 0.5, "n_pairs": 7.0}


def test_tensorboard_sink_logs_every_number_at_its_iteration(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", sinks=[TensorBoardSink(tmp_path / "tb")])
    for i in (1, 2, 3):
        log.append({"iteration": i, "gamma": 0.5 / i, "loss": 0.25 * i, "reward_mean": None,
                    "controller": "fixed"})
    log.close()
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert sorted(scalars) == ["gamma", "loss"]  # None and text are skipped
    assert [step for step, _ in scalars["gamma"]] == [1, 2, 3]
    assert [value for _, value in scalars["gamma"]] == pytest.approx([0.5, 0.25, 0.5 / 3])
    assert [value for _, value in scalars["loss"]] == pytest.approx([0.25, 0.5, 0.75])
    assert len(log.read()) == 3  # metrics.jsonl still gets every record


def test_tensorboard_after_resume_shows_the_resumed_values_once(tmp_path):
    first = TensorBoardSink(tmp_path / "tb")
    for i in (1, 2, 3):
        first.write({"iteration": i, "loss": float(i)})
    first.close()
    resumed = TensorBoardSink(tmp_path / "tb")  # resumed from the checkpoint after iteration 1
    for i in (2, 3, 4):
        resumed.write({"iteration": i, "loss": 10.0 * i})
    resumed.close()
    assert tensorboard_scalars(tmp_path / "tb")["loss"] == [(1, 1.0), (2, 20.0), (3, 30.0),
                                                            (4, 40.0)]


def test_wandb_sink_logs_numbers_with_the_iteration_as_step(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    sink = WandbSink(tmp_path / "run", project="p", mode="offline", config={"loop": {}})
    sink.write({"iteration": 4, "gamma": 0.3, "reward_mean": None})
    sink.write({"iteration": 5, "gamma": 0.2})
    sink.close()
    assert calls[0] == ("init", {"project": "p", "mode": "offline", "dir": str(tmp_path / "run"),
                                 "name": "run", "config": {"loop": {}}})
    assert calls[1:] == [("log", {"gamma": 0.3}, 4), ("log", {"gamma": 0.2}, 5), ("finish",)]


def test_build_sinks_follows_the_recipe(tmp_path):
    recipe = load(TINY_RECIPE, ["logging.tensorboard=true"])
    [sink] = build_sinks(recipe.logging, tmp_path)
    assert isinstance(sink, TensorBoardSink) and sink.log_dir == tmp_path / "tensorboard"
    assert build_sinks(load(TINY_RECIPE).logging, tmp_path) == []


def test_wandb_not_installed_is_a_recipe_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(RecipeError) as error:
        load(TINY_RECIPE, ["logging.wandb=true"])
    assert error.value.problems == ["logging.wandb: needs `pip install wandb`"]
