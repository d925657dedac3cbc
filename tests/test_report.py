"""The run report: plots that open, a table with the run's numbers, one-line errors."""
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from selfplay.cli import main
from selfplay.report import (ReportError, format_table, load_records, summary_line,
                             write_report)

from conftest import run_cli

ALL_PLOTS = ["overview.png", "reward.png", "quality.png", "gamma.png", "margins.png", "time.png",
             "throughput.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def online_record(iteration: int) -> dict:
    """A record as the loop writes it; phases sum to 4 s of the 5 s total (1 s other)."""
    return {
        "iteration": iteration, "gamma": 0.4, "active_fraction": 0.8,
        "active_fraction_end": 0.3, "filtered_fraction": 0.2,
        "margin_p10": -0.1 * iteration, "margin_p50": 0.1 * iteration,
        "margin_p90": 0.3 * iteration, "reward_mean": 0.1 + 0.05 * iteration,
        "reward_std": 0.05, "n_prompts": 32, "n_pairs": 30, "loss": 0.25,
        "time_generate_s": 1.0, "time_reward_s": 0.5, "time_train_s": 2.0, "time_sync_s": 0.25,
        "time_checkpoint_s": 0.25, "time_total_s": 5.0, "time_elapsed_s": 5.0 * iteration,
        "gen_tokens_per_s": 4000.0,
        "train_tokens_per_s": 1500.0, "peak_rss_mb": 1800.0, "controller": "fixed"}


def write_metrics(run_dir, records) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 600 and height >= 300, (path, width, height)
    assert len(data) > 10_000, path
    from matplotlib.image import imread
    assert np.asarray(imread(path)).std() > 0.01, f"{path} is blank"


def test_online_run_writes_every_plot(tmp_path):
    records = [online_record(i) for i in (1, 2, 3)]
    # An adaptive run: the estimate is null until it has enough iterations.
    records[0].update(gamma_estimate=None, gamma_stderr=None)
    for record in records[1:]:
        record.update(gamma_estimate=0.5, gamma_stderr=0.05)
    write_metrics(tmp_path, records)
    result = write_report(tmp_path)
    assert [p.name for p in result.plots] == ALL_PLOTS and result.skipped == {}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(ALL_PLOTS)
    for path in result.plots:
        assert_png(path)


def test_table_rows_hold_the_records_values(tmp_path):
    records = [online_record(i) for i in (1, 2)]
    records[1]["eval_reward_mean"] = 0.7
    lines = format_table(records).splitlines()
    assert lines[0].split() == ["iter", "reward", "γ", "active", "pairs", "loss", "time",
                                "held-out"]
    assert lines[1].split() == ["1", "0.150±0.050", "0.400", "0.80→0.30", "30/32", "0.2500",
                                "5.0", "s", "-"]
    assert lines[2].split()[1] == "0.200±0.050" and lines[2].split()[-1] == "0.700"


def test_summary_gives_reward_start_to_end_and_the_time_split(tmp_path):
    summary = summary_line([online_record(i) for i in (1, 2, 3, 4)])
    assert "4 iterations (1–4)" in summary
    assert "reward 0.150 → 0.300" in summary
    assert "total 20.0 s (5.0 s/iter)" in summary
    assert ("generate 20%, reward 10%, train 40%, sync 5%, checkpoint 5%, other 20%"
            in summary)


def test_long_run_table_fits_a_terminal():
    records = [online_record(i) for i in range(1, 101)]
    lines = format_table(records, max_rows=20).splitlines()
    shown = [int(line.split()[0]) for line in lines[1:-1]]
    assert len(lines) <= 22 and shown[0] == 1 and shown[-1] == 100
    assert shown[:3] == [1, 7, 13]  # every 6th: 99 steps over 19 gaps
    assert lines[-1] == "(18 of 100 iterations shown: every 6, and the last)"


def test_offline_run_skips_the_reward_plot_and_says_so(tmp_path):
    records = [{**online_record(i), "reward_mean": None, "reward_std": None,
                "gen_tokens_per_s": None, "time_generate_s": 0.0} for i in (1, 2)]
    write_metrics(tmp_path, records)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "reward.png").write_bytes(PNG_MAGIC)  # from an earlier report
    result = write_report(tmp_path)
    assert "reward.png" in result.skipped and not (tmp_path / "report" / "reward.png").exists()
    assert [p.name for p in result.plots] == [n for n in ALL_PLOTS
                                              if n not in ("reward.png", "quality.png")]
    for path in result.plots:
        assert_png(path)
    assert format_table(records).splitlines()[1].split()[1] == "-"
    assert "offline" in summary_line(records) and "reward 0." not in summary_line(records)


def test_offline_run_with_evaluation_plots_the_held_out_reward(tmp_path):
    records = [{**online_record(i), "reward_mean": None, "reward_std": None} for i in (1, 2)]
    records[1].update(eval_reward_mean=0.6, eval_reward_std=0.1)
    write_metrics(tmp_path, records)
    result = write_report(tmp_path)
    assert "reward.png" not in result.skipped
    assert_png(tmp_path / "report" / "reward.png")
    assert "held-out reward 0.600" in summary_line(records)


def test_single_iteration(tmp_path):
    write_metrics(tmp_path, [online_record(1)])
    result = write_report(tmp_path)
    assert [p.name for p in result.plots] == ALL_PLOTS
    for path in result.plots:
        assert_png(path)
    assert len(format_table(result.records).splitlines()) == 2
    assert summary_line(result.records).startswith("1 iteration (1–1) | reward 0.150 |")


def test_older_run_with_missing_keys(tmp_path):
    records = [{"iteration": i, "gamma": 0.5, "active_fraction": 0.9, "reward_mean": 0.1 * i,
                "n_pairs": 8, "n_prompts": 8, "loss": 0.3} for i in (1, 2, 3)]
    write_metrics(tmp_path, records)
    result = write_report(tmp_path)
    assert [p.name for p in result.plots] == ["overview.png", "reward.png", "gamma.png"]
    assert set(result.skipped) == {"quality.png", "margins.png", "time.png", "throughput.png"}
    assert format_table(records).splitlines()[1].split() == [
        "1", "0.100", "0.500", "0.90→-", "8/8", "0.3000", "-"]
    assert summary_line(records) == "3 iterations (1–3) | reward 0.100 → 0.300"


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
    write_metrics(tmp_path, [online_record(1), online_record(2)])
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 3, "gam')
    assert [r["iteration"] for r in load_records(tmp_path)] == [1, 2]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such run directory"),
    (lambda d: d.mkdir(), "no metrics.jsonl"),
    (lambda d: write_metrics(d, []), "empty"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("not json\n[1, 2]\n")), "corrupt"),
])
def test_unusable_run_directory_is_a_report_error(tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    with pytest.raises(ReportError, match=message):
        write_report(run_dir)
    assert not (run_dir / "report").exists()


def test_cli_report_prints_the_table_and_the_paths(tmp_path):
    write_metrics(tmp_path / "run", [online_record(i) for i in (1, 2, 3)])
    result = run_cli("report", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["iter", "reward", "γ"]
    assert lines[3].split()[:2] == ["3", "0.250±0.050"]
    assert lines[4].startswith("3 iterations (1–3) | reward 0.150 → 0.250")
    assert lines[5:] == [f"wrote {tmp_path / 'run' / 'report' / name}" for name in ALL_PLOTS]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such run directory"),
    (lambda d: d.write_text("x"), "not a directory"),
    (lambda d: d.mkdir(), "no metrics.jsonl"),
    (lambda d: write_metrics(d, []), "empty"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("{oops\n")), "corrupt"),
])
def test_cli_report_errors_are_one_line(tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_quality_plot_puts_held_out_scores_on_the_runs_minutes(tmp_path):
    records = [online_record(i) for i in (1, 2, 3, 4)]
    for record in records[1::2]:  # eval.every: 2
        record.update(eval_reward_mean=0.2 * record["iteration"], eval_reward_std=0.1)
    write_metrics(tmp_path, records)
    result = write_report(tmp_path)
    assert_png(tmp_path / "report" / "quality.png")
    from matplotlib.figure import Figure
    from selfplay.report import _plot_quality

    ax = Figure().subplots()
    assert _plot_quality(ax, records)
    held_out = [line for line in ax.get_lines() if line.get_color() == "tab:red"][0]
    # Iterations 2 and 4 end at 10 s and 20 s of the run: 1/6 and 1/3 of a minute.
    assert list(held_out.get_xdata()) == pytest.approx([10 / 60, 20 / 60])
    assert list(held_out.get_ydata()) == pytest.approx([0.4, 0.8])
    assert "quality.png" not in result.skipped
