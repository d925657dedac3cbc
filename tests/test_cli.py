"""The command line as a user meets it: bad input gets one line; runs learn, stop and resume."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_RECIPE, run_cli

SHORT = ["loop.iterations=3", "data.prompts_per_iteration=16"]


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, text, code=None):
    assert result.returncode == (code if code is not None else result.returncode) != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert any(text in line for line in error_lines(result)), result.stderr[-3000:]


def test_help_explains_commands():
    result = run_cli("--help")
    for command in ("run", "validate", "status", "rewarders", "fields"):
        assert command in result.stdout
    assert "--resume" in run_cli("run", "--help").stdout
    assert "SELFPLAY_LOG=debug" in run_cli("eval", "--help").stdout


def test_fields_lists_every_recipe_field_with_default_and_help():
    gamma = run_cli("fields", "gamma").stdout.splitlines()
    target = next(line for line in gamma if line.startswith("gamma.active_start"))
    assert "0.8" in target and "active" in target
    assert all(line.startswith("gamma.") for line in gamma)
    assert "model.path" in run_cli("fields").stdout
    assert run_cli("fields", "nope").returncode == 2


def test_validate_accepts_tiny_and_names_bad_fields(tmp_path):
    assert run_cli("validate", TINY_RECIPE).returncode == 0
    result = run_cli("validate", TINY_RECIPE, "train.lr=-1", "train.bogus=1")
    assert result.returncode == 2
    assert any(line.startswith("error: train.lr: ") for line in error_lines(result))
    assert "error: train.bogus: unknown key" in error_lines(result)
    assert_one_line_error(run_cli("validate", tmp_path / "missing.yaml"),
                          "recipe file not found", 2)
    (tmp_path / "bad.yaml").write_text("model: [\n")
    assert_one_line_error(run_cli("validate", tmp_path / "bad.yaml"), "not valid YAML", 2)
    assert_one_line_error(run_cli("validate", TINY_RECIPE, "data.prompts=/nope.jsonl"),
                          "data.prompts: file not found", 2)


@pytest.mark.parametrize("overrides, message", [
    (["model.path=/no/such/model"], "model.path: no Hugging Face model directory"),
    (["data.prompts=/no/such.jsonl"], "data.prompts: file not found"),
    (["data.prompt_field=question"], "data.prompt_field: column 'question' not in"),
    (["reward.name=nope"], "unknown rewarder 'nope'"),
])
def test_run_bad_input_is_one_line(tmp_path, overrides, message):
    result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", "rollout.engine=hf", *overrides)
    assert_one_line_error(result, message, 1)


def write_prompt_file(tmp_path, content: bytes):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    return path


LONG_PROMPT = "echo the letters " + "a b c d " * 40  # > 128 tokens: the tiny model reads characters

# A new user's bad inputs (issue 10, section 5): each ends in one line naming the file, row or
# field, and what to do.
BAD_PROMPT_FILES = {
    "corrupt_line": (b'{"prompt": "abc"}\n{"prompt": "abd"\n',
                     "line 2 of {path} is not valid JSON"),
    "empty_file": (b"", "{path} is empty"),
    "not_utf8": (b'{"prompt": "caf\xe9"}\n', "{path} is not UTF-8 text (line 1"),
    "numbers": (b'{"prompt": 1}\n{"prompt": 2}\n', "line 1 of {path}: 'prompt' is 1"),
    # Needs loop.py to call data.check_prompt_lengths before any generation (issue 10 §5):
    # until it does, the engine's own error names no row.
    "prompt_too_long": (("".join(json.dumps({"prompt": p, "letters": "abcd"}) + "\n"
                                 for p in ("abcd", LONG_PROMPT, "abcd"))).encode(),
                        "{path}: row 2 is "),
}


@pytest.mark.parametrize("case", BAD_PROMPT_FILES)
def test_run_with_a_bad_prompt_file_is_one_line_naming_it(tmp_path, case):
    content, message = BAD_PROMPT_FILES[case]
    path = write_prompt_file(tmp_path, content)
    result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", "rollout.engine=hf",
                     f"data.prompts={path}", "eval.prompts=null", "loop.iterations=1",
                     "data.prompts_per_iteration=3", "--no-progress")
    assert_one_line_error(result, message.format(path=path), 1)
    if case == "prompt_too_long":
        assert "rollout.max_model_len" in result.stderr


@pytest.mark.parametrize("name, message", [
    ("no_such_package.rewards:Scorer",
     "cannot import 'no_such_package.rewards:Scorer': no module named 'no_such_package'"),
    ("rewarders.letters:NoSuchClass", "cannot import 'rewarders.letters:NoSuchClass': module "
     "'rewarders.letters' has no 'NoSuchClass' (its classes: LetterGroupsRewarder, LettersRewarder)"),
])
def test_run_with_a_rewarder_that_does_not_exist_is_one_line(tmp_path, name, message):
    result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", "rollout.engine=hf",
                     f"reward.name={name}")
    assert_one_line_error(result, f"reward.name: {message}", 1)


def test_validate_reads_the_prompt_files_and_imports_the_rewarder(tmp_path):
    empty = write_prompt_file(tmp_path, b"")
    result = run_cli("validate", TINY_RECIPE, f"eval.prompts={empty}", "mode=offline",
                     "reward.name=rewarders.letters:Nope", "model.path=builtin:nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line.split(":")[1].strip() for line in error_lines(result)] == [
        "data.chosen_field", "eval.prompts", "model.path", "reward.name"], result.stderr


def test_verbose_reaches_the_logging_setup_of_run_and_eval(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from selfplay import evaluate, loop, runtime
    from selfplay.cli import main

    calls = []
    monkeypatch.setattr(runtime, "configure_logging", lambda verbose=False: calls.append(verbose))
    monkeypatch.setattr(loop, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
    monkeypatch.setattr(evaluate, "format_report", lambda report: "report")
    for verbose in ([], ["--verbose"]):
        for command in (["run", str(TINY_RECIPE), "-o", str(tmp_path / "run")],
                        ["eval", "builtin:tiny", "--prompts", "p.jsonl"]):
            result = CliRunner().invoke(main, command + verbose)
            assert result.exit_code == 0, result.output
    assert calls == [False, False, True, True]


def test_verbose_never_hides_the_error(tmp_path):
    for verbose, env in ((["--verbose"], None), ([], {"SELFPLAY_LOG": "debug"})):
        result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", "rollout.engine=hf",
                         "--overwrite", "reward.name=nope", *verbose, env=env)
        assert_one_line_error(result, "unknown rewarder 'nope'", 1)


def test_existing_output_dir_is_never_overwritten_and_resume_needs_a_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    assert_one_line_error(run_cli("run", TINY_RECIPE, "-o", run_dir), "already exists")
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert_one_line_error(run_cli("run", TINY_RECIPE, "-o", tmp_path / "empty", "--resume"),
                          "holds no run")


@pytest.mark.slow
def test_tiny_recipe_learns_the_task(tmp_path):
    """The whole loop with vLLM and DeepSpeed: the mean reward must clearly rise."""
    run_dir = tmp_path / "run"
    # end_margins=always: a fixed γ skips the end-of-update pass, but every key must be filled.
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--no-progress",
                     "logging.end_margins=always")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in records]
    assert len(records) == 8
    assert sum(rewards[-2:]) / 2 > 2 * sum(rewards[:2]) / 2, rewards
    for key in ("gamma", "active_fraction", "active_fraction_end", "margin_p10", "margin_p50",
                "margin_p90", "reward_std", "n_prompts", "n_pairs", "loss", "time_generate_s",
                "time_reward_s", "time_train_s", "time_sync_s", "time_checkpoint_s",
                "time_total_s", "gen_tokens_per_s", "train_tokens_per_s", "peak_rss_mb"):
        assert records[-1][key] is not None, key
    assert len(list((run_dir / "rollouts").glob("iter-*.jsonl"))) == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter-*")) == [
        "iter-0007", "iter-0008"]
    assert "iter 8/8 | reward" in result.stdout
    # final/ loads with transformers and with vLLM.
    check = subprocess.run([sys.executable, "-c", (
        "import sys; from transformers import AutoModelForCausalLM; "
        "AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
        "from vllm import LLM, SamplingParams; "
        "out = LLM(model=sys.argv[1], max_model_len=64, enforce_eager=True)"
        ".generate(['echo a b c d:'], SamplingParams(max_tokens=4)); print('OK', len(out))"),
        str(run_dir / "final")], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
             "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert "OK 1" in check.stdout, check.stderr[-3000:]
    status = run_cli("status", run_dir)
    assert "8/8 logged" in status.stdout and "iter-0008" in status.stdout


def final_weights(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_bit_identical_weights(tmp_path):
    overrides = ["loop.iterations=5", "data.prompts_per_iteration=16", "--no-progress"]
    straight = tmp_path / "straight"
    assert run_cli("run", TINY_RECIPE, "-o", straight, *overrides).returncode == 0

    killed = tmp_path / "killed"
    env = {**__import__("os").environ,
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "run", TINY_RECIPE, "-o",
                                killed, *overrides], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside iteration 3
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists()

    resumed = run_cli("run", TINY_RECIPE, "-o", killed, "--resume", *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    lines = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4, 5]

    again = run_cli("run", TINY_RECIPE, "-o", killed, "--resume", *overrides)
    assert again.returncode == 0 and "already complete" in again.stdout
    extended = run_cli("run", TINY_RECIPE, "-o", killed, "--resume", *overrides[1:],
                       "loop.iterations=6")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "iter 6/6" in extended.stdout and "iter 5/6" not in extended.stdout


@pytest.mark.slow
def test_a_time_budget_ends_the_run_checkpointed_and_resume_extends_it(tmp_path):
    # A budget of 6 ms: the first iteration always reaches it.
    run_dir, overrides = tmp_path / "run", ["--no-progress", "rollout.engine=hf"]
    first = run_cli("run", TINY_RECIPE, "-o", run_dir, *overrides, "loop.iterations=5",
                    "loop.checkpoint_every=4", "loop.max_minutes=0.0001")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "time budget reached: loop.max_minutes=0.0001 after 1 of 5 iterations" in first.stdout
    from selfplay.loop import completed_iterations
    assert completed_iterations(run_dir) == 1 and (run_dir / "final" / "config.json").exists()
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["eval_reward_mean"] is not None  # evaluated as last

    again = run_cli("run", TINY_RECIPE, "-o", run_dir, "--resume", *overrides,
                    "loop.iterations=5", "loop.checkpoint_every=4", "loop.max_minutes=0.0001")
    assert again.returncode == 0 and "already complete (1 iterations" in again.stdout
    assert "raise loop.max_minutes to extend it" in again.stdout

    extended = run_cli("run", TINY_RECIPE, "-o", run_dir, "--resume", *overrides,
                       "loop.iterations=3", "loop.checkpoint_every=4", "loop.max_minutes=1000")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "iter 3/3" in extended.stdout and "iter 1/3" not in extended.stdout
    assert completed_iterations(run_dir) == 3


@pytest.mark.slow
@pytest.mark.parametrize("mode, message", [
    ("raise", "rewarder 'flaky_rewards:FlakyRewarder' raised ConnectionError"),
    ("nan", "returned nan for item 0"),
    ("count", "returned 127 scores for 128 completions"),
    ("hang", "did not return within reward.timeout_s=3 s"),
])
def test_failing_rewarder_stops_run_and_resume_retries_the_iteration(tmp_path, mode, message):
    run_dir = tmp_path / "run"
    overrides = ["rollout.engine=hf", "loop.iterations=3", "reward.name=flaky_rewards:FlakyRewarder",
                 f"reward.kwargs={{counter_file: {tmp_path / 'calls'}, bad_call: 2, mode: {mode}}}",
                 "reward.timeout_s=3"]
    failed = run_cli("run", TINY_RECIPE, "-o", run_dir, "--no-progress", *overrides)
    assert_one_line_error(failed, message, 1)
    assert "iter 1/3" in failed.stdout and "iter 2/3" not in failed.stdout
    if mode != "raise":
        return
    resumed = run_cli("run", TINY_RECIPE, "-o", run_dir, "--resume", "--no-progress", *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "iter 2/3" in resumed.stdout
    assert (run_dir / "final" / "config.json").exists()


def test_resume_refuses_a_changed_experiment(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(TINY_RECIPE.read_text().replace(
        "data/letters", str(REPO / "recipes" / "data" / "letters")))
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--resume", "train.lr=0.5")
    assert_one_line_error(result, "the recipe differs from the run's in train.lr")


@pytest.mark.slow
def test_offline_mode_trains_on_a_preference_dataset_and_filters_more_as_it_learns(tmp_path):
    """The paper's setting: fixed pairs, fixed γ; the filtered share grows as margins grow."""
    import random

    rng = random.Random(0)
    rows = []
    for line in (REPO / "recipes" / "data" / "letters-train.jsonl").read_text().splitlines()[:48]:
        row = json.loads(line)
        others = [c for c in "klmnopqrstuvwxyz"]
        rows.append({"prompt": row["prompt"],
                     "chosen": "".join(rng.choice(row["letters"]) for _ in range(8)),
                     "rejected": "".join(rng.choice(others) for _ in range(8))})
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--no-progress", "mode=offline",
                     f"data.prompts={data}", "data.prompts_per_iteration=16", "eval.prompts=null",
                     "loop.iterations=9", "train.lr=1e-3", "train.epochs_per_iteration=1",
                     "gamma.value=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "offline" in result.stdout
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    filtered = [r["filtered_fraction"] for r in records]
    assert filtered[0] < 0.2 and sum(filtered[-3:]) / 3 > filtered[0] + 0.3, filtered
    assert (run_dir / "final" / "config.json").exists()
    assert not (run_dir / "rollouts").exists()
    assert "9/9 logged" in run_cli("status", run_dir).stdout


@pytest.mark.slow
def test_adaptive_gamma_trajectory_survives_a_resume(tmp_path):
    def overrides(bad_call):
        # band_z 0: γ moves from the third iteration on, so the resumed window must be right.
        return ["gamma.controller=adaptive", "gamma.band_z=0", "data.prompts_per_iteration=16",
                "--no-progress",
                "rollout.engine=hf", "loop.iterations=5", "reward.name=flaky_rewards:FlakyRewarder",
                f"reward.kwargs={{counter_file: {tmp_path / str(bad_call)}, bad_call: {bad_call}}}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("run", TINY_RECIPE, "-o", straight, *overrides(99)).returncode == 0
    # The rewarder fails in iteration 3 (its 3rd call): the run stops after 2 checkpoints.
    assert run_cli("run", TINY_RECIPE, "-o", split, *overrides(3)).returncode == 1
    resumed = run_cli("run", TINY_RECIPE, "-o", split, "--resume", *overrides(3))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def trajectory(run_dir):
        records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        return [(r["gamma"], r["gamma_estimate"], r["gamma_next"]) for r in records]

    assert trajectory(straight) == trajectory(split)
    assert len({gamma for gamma, _, _ in trajectory(straight)}) > 1  # γ actually moved


@pytest.mark.slow
def test_self_rewarding_judge_scores_with_the_policy_engine(tmp_path):
    # `judge` without a model of its own can only score through the engine the loop binds to
    # it; unbound, its first call fails ("no model to judge with").
    run_dir = tmp_path / "run"
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--no-progress", "rollout.engine=hf",
                     "loop.iterations=1", "data.prompts_per_iteration=8", "reward.name=judge",
                     "reward.kwargs={template: 'rate {completion} 1-9:', max_new_tokens: 3, "
                     "min_score: 0, max_score: 9}")
    assert result.returncode == 0, result.stderr[-3000:]
    rollouts = [json.loads(line) for line in (run_dir / "rollouts" / "iter-0001.jsonl").open()]
    scores = [score for row in rollouts for score in row["rewards"]]
    assert len(scores) == 32 and all(0.0 <= s <= 1.0 for s in scores)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["reward_judge_unparsed"] <= 32  # the judge's own metric reaches the log


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_every_registered_loss_runs_online(tmp_path, loss):
    """DPO keeps a frozen reference; IPO's margins are summed log-ratios (its declared units)."""
    run_dir = tmp_path / "run"
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--no-progress", f"loss.name={loss}",
                     "rollout.engine=hf", "loop.iterations=2", "eval.prompts=null",
                     "data.prompts_per_iteration=8")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(r["loss"] is not None and r["n_pairs"] > 0 for r in records)
    if loss == "dpo":  # policy == reference before the first step: every margin is 0
        assert records[0]["margin_p10"] == records[0]["margin_p90"] == 0.0


def run_in_process(monkeypatch, tmp_path, raises, *, started=True):
    """`selfplay run` in this process with a stand-in loop that raises `raises` (after creating
    the run directory when `started`): the CLI's side of a stop, without a model."""
    import types

    from click.testing import CliRunner

    from selfplay import cli

    def stand_in(recipe, run_dir, **kwargs):
        if started:
            run_dir.mkdir(parents=True)
            (run_dir / "recipe.yaml").write_text("stand-in\n")
        raise raises

    loop = types.ModuleType("selfplay.loop")
    loop.run = stand_in
    monkeypatch.setitem(sys.modules, "selfplay.loop", loop)
    return CliRunner().invoke(cli.main, ["run", str(TINY_RECIPE), "-o", str(tmp_path / "run"),
                                         "--no-progress"])


@pytest.mark.parametrize("started", [True, False])
def test_ctrl_c_is_one_line_without_error_and_exits_130(tmp_path, monkeypatch, started):
    result = run_in_process(monkeypatch, tmp_path, KeyboardInterrupt(), started=started)
    assert result.exit_code == 130
    expected = (f"interrupted; the run directory {tmp_path / 'run'} is intact: run again with "
                "--resume to continue" if started else "interrupted")
    assert result.stderr.splitlines() == [expected]


def test_disk_full_outside_a_checkpoint_is_one_resumable_line(tmp_path, monkeypatch):
    import errno

    metrics = tmp_path / "run" / "metrics.jsonl"
    result = run_in_process(monkeypatch, tmp_path,
                            OSError(errno.ENOSPC, "No space left on device", str(metrics)))
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: disk full while writing {metrics} (") and " free on /" in line
    assert line.endswith(f"[{tmp_path / 'run'} is intact: free some space, then run again with "
                         "--resume]")


def test_other_errors_in_a_run_keep_their_traceback(tmp_path, monkeypatch):
    error = RuntimeError("a bug")
    result = run_in_process(monkeypatch, tmp_path, error)
    assert result.exception is error and result.exit_code == 1
