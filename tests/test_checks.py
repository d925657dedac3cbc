"""`validate`'s checks: every problem with the recipe's inputs, found without loading a model."""
import pytest

from conftest import TINY_RECIPE
from selfplay.checks import check_inputs
from selfplay.recipe import load


def test_the_tiny_recipe_has_no_problems():
    assert check_inputs(load(TINY_RECIPE)) == []


def test_every_problem_is_one_line_naming_its_field(tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"prompt": 3}\n')
    recipe = load(TINY_RECIPE, [f"data.prompts={tmp_path / 'none.jsonl'}",
                                f"eval.prompts={tmp_path / 'eval.jsonl'}",
                                f"model.path={tmp_path}", "reward.name=no_such_pkg:Scorer"])
    problems = check_inputs(recipe)
    assert [p.split(":")[0] for p in problems] == [
        "data.prompts", "eval.prompts", "model.path", "reward.name"], problems
    assert "file not found" in problems[0] and "'prompt' is 3" in problems[1]
    assert all("\n" not in p for p in problems)


def test_offline_mode_needs_the_pair_columns(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    recipe = load(TINY_RECIPE, ["mode=offline", f"data.prompts={tmp_path / 'pairs.jsonl'}"])
    [problem] = check_inputs(recipe)
    assert problem.startswith("data.rejected_field: column 'rejected' not in")
    assert check_inputs(load(TINY_RECIPE, [f"data.prompts={tmp_path / 'pairs.jsonl'}"])) == []


def test_the_rewarder_is_imported_but_never_built(tmp_path, monkeypatch):
    (tmp_path / "costly_rewards.py").write_text(
        "class Scorer:\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('built during validate')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = load(TINY_RECIPE, ["reward.name=costly_rewards:Scorer"])
    assert check_inputs(recipe) == []
    with pytest.raises(Exception, match="built during validate"):
        __import__("costly_rewards").Scorer()


def test_a_builtin_model_is_not_built(tmp_path, monkeypatch):
    import selfplay.tiny_model

    monkeypatch.setattr(selfplay.tiny_model, "build_tiny_model",
                        lambda *a, **k: pytest.fail("validate built the model"))
    monkeypatch.chdir(tmp_path)
    assert check_inputs(load(TINY_RECIPE)) == []
