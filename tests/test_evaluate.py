import json
import math

import pytest

from conftest import REPO, run_cli
from selfplay.data import DataError
from selfplay.evaluate import (ModelScore, evaluate, format_report, interval, paired,
                               summarise)
from selfplay.models import ModelError, resolve_model_path
from selfplay.tiny_model import build_tiny_model

LETTERS = REPO / "recipes" / "data" / "letters-heldout.jsonl"
SMALL = ["--prompts", LETTERS, "--reward", "letters", "--limit", 8, "--max-new-tokens", 8,
         "--max-model-len", 128, "--engine", "hf"]


T975_DF2, T975_DF3 = 4.302653, 3.182446  # Student's t, 97.5th percentile, 2 and 3 df


def test_interval_is_the_mean_and_a_t_95_percent_half_width():
    mean, half = interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(T975_DF3 * math.sqrt(5 / 3) / 2, rel=1e-6)
    mean, half = interval([0.5])
    assert mean == 0.5 and math.isnan(half)
    assert interval([0.3, 0.3, 0.3]) == (pytest.approx(0.3), 0.0)


def test_paired_difference_over_the_same_prompts():
    base = ModelScore("base", prompt_scores=[0.0, 0.5, 1.0, 0.5], prompt_all=[0.0, 0.0, 1.0, 0.0])
    other = ModelScore("new", prompt_scores=[1.0, 0.5, 0.5, 1.0], prompt_all=[1.0, 0.0, 0.0, 1.0])
    result = paired(base, other)
    # diffs 1, 0, -0.5, 0.5: mean 0.25, sd sqrt(1.25 / 3), standard error sd / 2
    standard_error = math.sqrt(1.25 / 3) / 2
    assert result["reward_diff"] == pytest.approx(0.25)
    assert result["reward_diff_ci95"] == pytest.approx(T975_DF3 * standard_error, rel=1e-6)
    assert result["t"] == pytest.approx(0.25 / standard_error)
    assert (result["better"], result["worse"]) == (2, 1)
    # all-followed diffs 1, 0, -1, 1
    assert result["all_followed_diff"] == pytest.approx(0.25)
    assert result["all_followed_diff_ci95"] == pytest.approx(
        T975_DF3 * math.sqrt(2.75 / 3) / 2, rel=1e-6)
    backwards = paired(other, base)
    assert backwards["reward_diff"] == pytest.approx(-0.25)
    assert (backwards["better"], backwards["worse"]) == (1, 2)


def test_paired_with_itself_is_exactly_zero():
    score = ModelScore("m", prompt_scores=[0.1, 0.7, 0.4], prompt_all=[0.0, 1.0, 0.0])
    result = paired(score, score)
    assert (result["reward_diff"], result["reward_diff_ci95"]) == (0.0, 0.0)
    assert math.isnan(result["t"])
    assert (result["better"], result["worse"]) == (0, 0)


def test_summarise_reports_mean_interval_share_and_speed():
    score = ModelScore("m", prompt_scores=[0.2, 0.4, 0.6], prompt_all=[0.0, 1.0, 1.0],
                       generated_tokens=300, seconds=1.5)
    summary = summarise(score)
    assert summary["reward_mean"] == pytest.approx(0.4)
    assert summary["reward_ci95"] == pytest.approx(T975_DF2 * 0.2 / math.sqrt(3), rel=1e-6)
    assert summary["all_followed"] == pytest.approx(2 / 3)
    assert summary["prompts"] == 3
    assert summary["tokens_per_s"] == 200.0
    assert summarise(ModelScore("m", [1.0], [1.0]))["tokens_per_s"] is None


def test_format_report_shows_each_model_and_each_paired_difference():
    base = ModelScore("base", [0.0, 0.5, 1.0, 0.5], [0.0, 0.0, 1.0, 0.0])
    other = ModelScore("runs/new", [1.0, 0.5, 0.5, 1.0], [1.0, 0.0, 0.0, 1.0])
    models = []
    for score in (base, other):
        score.summary = summarise(score)
        models.append({"model": score.model, "summary": score.summary})
    report = {"prompts": "heldout.jsonl", "keys": ["a", "b", "c", "d"], "samples": 2,
              "temperature": 0.7, "reward": "ifeval", "models": models,
              "paired": [dict(model="runs/new", **paired(base, other))]}
    lines = format_report(report).splitlines()
    assert lines[0] == ("heldout.jsonl: 4 prompts × 2 sample(s), temperature 0.7, "
                        "reward ifeval")
    # ± is the t interval's half-width: 3.18 standard errors with 4 prompts.
    assert lines[1] == "  base: reward 0.500 ± 0.650 | all instructions followed 25.0% ± 79.6%"
    assert lines[2].startswith("  runs/new: reward 0.750 ± 0.459")
    assert lines[3] == ("  runs/new − base: reward +0.250 ± 1.027 (95%, paired, t 0.77; "
                        "better on 2, worse on 1 prompts) | all followed +25.0% ± 152.3%")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return build_tiny_model(root / "m0", seed=0), build_tiny_model(root / "m1", seed=1)


def test_two_models_are_sampled_on_the_same_prompts_and_paired(two_models, tmp_path):
    m0, m1 = map(str, two_models)
    report = evaluate([m0, m1, m0], str(LETTERS), reward="letters", samples=2,
                      temperature=1.0, max_new_tokens=8, max_model_len=128, limit=8,
                      engine="hf", scratch=tmp_path, echo=lambda line: None)
    assert (report["reward"], report["samples"], report["skipped"]) == ("letters", 2, {})
    assert len(report["keys"]) == 8
    assert [m["model"] for m in report["models"]] == [m0, m1, m0]
    first, second, again = report["models"]
    for model in report["models"]:
        assert len(model["prompt_scores"]) == len(model["prompt_all"]) == 8
        assert all(0.0 <= s <= 1.0 for s in model["prompt_scores"])
        assert 0 < model["generated_tokens"] <= 8 * 2 * 8
        assert model["summary"]["reward_mean"] == pytest.approx(
            sum(model["prompt_scores"]) / 8)
    # Same weights, same seed: the same samples, so the paired difference is exactly zero.
    assert again["prompt_scores"] == first["prompt_scores"]
    versus_second, versus_itself = report["paired"]
    assert versus_itself["model"] == m0
    assert (versus_itself["reward_diff"], versus_itself["better"], versus_itself["worse"]) == (
        0.0, 0, 0)
    # Different random weights answer differently.
    assert second["prompt_scores"] != first["prompt_scores"]
    assert versus_second["reward_diff"] == pytest.approx(
        second["summary"]["reward_mean"] - first["summary"]["reward_mean"])
    json.dumps(report)  # what --out writes


def test_prompts_that_do_not_fit_the_context_are_refused(two_models, tmp_path):
    with pytest.raises(DataError, match=r"row 1 is 14 tokens; with --max-new-tokens 8 it does "
                                        r"not fit --max-model-len 16 .*\(8 rows do not fit\)"):
        evaluate([str(two_models[0])], str(LETTERS), reward="letters", max_new_tokens=8,
                 max_model_len=16, limit=8, engine="hf", scratch=tmp_path)


def test_a_run_directory_stands_for_its_final_model(two_models, tmp_path):
    run_dir = tmp_path / "run"
    build_tiny_model(run_dir / "final", seed=1)
    assert resolve_model_path(str(run_dir), tmp_path) == str(run_dir / "final")
    assert resolve_model_path(str(two_models[0]), tmp_path) == str(two_models[0])
    with pytest.raises(ModelError, match="no Hugging Face model directory at .* or a finished "
                                         "run directory with final/"):
        resolve_model_path(str(tmp_path), tmp_path)


def test_cli_compares_a_model_with_a_run_and_writes_json(two_models, tmp_path):
    run_dir = tmp_path / "run"
    build_tiny_model(run_dir / "final", seed=1)
    out = tmp_path / "not" / "yet" / "scores.json"  # the folders are made, not a crash at the end
    result = run_cli("eval", two_models[0], run_dir, *SMALL, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("letters-heldout.jsonl: 8 prompts × 1 sample(s), temperature 0.0, "
                             "reward letters")
    assert lines[1].startswith(f"  {two_models[0]}: reward ")
    assert lines[3].startswith(f"  {run_dir} − {two_models[0]}: reward ")
    assert lines[-1] == f"per-prompt scores: {out}"
    saved = json.loads(out.read_text())
    assert [m["model"] for m in saved["models"]] == [str(two_models[0]), str(run_dir)]
    assert len(saved["models"][1]["prompt_scores"]) == 8
    assert saved["paired"][0]["model"] == str(run_dir)


@pytest.mark.parametrize("change, message, code", [
    ({"--prompts": "missing.jsonl"}, "--prompts: file not found: missing.jsonl", 1),
    ({"model": "not-a-model"}, "model: no Hugging Face model directory at not-a-model "
                               "(expected a config.json there, or a finished run directory", 1),
    ({"--reward-kwargs": "{nope"}, "--reward-kwargs: not JSON", 2),
    ({"--reward": "nope"}, "reward.name: unknown rewarder 'nope'", 1),
])
def test_cli_bad_input_is_one_line(two_models, tmp_path, change, message, code):
    args = dict(zip(SMALL[::2], SMALL[1::2]))
    args.update({k: v for k, v in change.items() if k != "model"})
    model = change.get("model", two_models[0])
    flat = [item for pair in args.items() for item in pair]
    result = run_cli("eval", model, *flat, cwd=tmp_path)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        result.stderr
