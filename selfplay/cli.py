"""`selfplay` command line: parses, calls the library, prints. No logic of its own."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EPILOG = """\b
Examples:
  selfplay validate recipes/tiny.yaml
  selfplay fields gamma
  selfplay run recipes/tiny.yaml --output-dir runs/tiny
  selfplay run recipes/tiny.yaml --output-dir runs/tiny --resume loop.iterations=20
  selfplay status runs/tiny
  selfplay report runs/tiny
  selfplay eval builtin:smollm2-135m-instruct runs/quickstart --prompts FILE.jsonl
  selfplay rewarders
"""


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _stop(error, run_dir: Path | None = None) -> None:
    """Ends the command on a `UserError` (or Ctrl-C) from `selfplay.errors.user_errors`, in one
    line; `run_dir`: a run directory that `--resume` continues, if there is one."""
    from selfplay.errors import Interrupted

    if isinstance(error, Interrupted):  # nothing went wrong: no "error:"
        click.echo(error.one_line(run_dir), err=True)
        sys.exit(error.exit_code)
    _fail(error.one_line(run_dir), error.exit_code)


def _load_recipe(path: str, overrides: tuple[str, ...]):
    from selfplay.recipe import RecipeError, load

    try:
        return load(path, list(overrides))
    except RecipeError as error:
        for problem in error.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="selfplay")
def main() -> None:
    """Online self-play preference alignment with RePO.

    Each iteration samples completions with vLLM, scores them with a rewarder, pairs the best
    against the worst, updates the policy with the RePO loss under DeepSpeed, pushes the new
    weights into the rollout engine in memory and writes a checkpoint.
    """


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--output-dir", "-o", type=click.Path(file_okay=False),
              help="Run directory (default: runs/<recipe name>).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --output-dir from its newest complete checkpoint.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run in --output-dir first.")
@click.option("--no-progress", is_flag=True, help="No progress bars (summary lines only).")
@click.option("--verbose", "-v", is_flag=True,
              help="Show dependencies' warnings and log lines too (or set SELFPLAY_LOG=debug).")
def run(recipe, overrides, output_dir, resume, overwrite, no_progress, verbose):
    """Run the self-play loop described by RECIPE.

    OVERRIDES are KEY=VALUE pairs applied on top of the recipe, e.g. train.lr=1e-5 loop.iterations=4.
    """
    if resume and overwrite:
        _fail("--resume and --overwrite exclude each other", 2)
    loaded = _load_recipe(recipe, overrides)
    run_dir = Path(output_dir or Path("runs") / Path(recipe).stem)
    from selfplay.runtime import configure_environment, configure_logging
    configure_environment()
    configure_logging(verbose)
    from selfplay.errors import user_errors
    from selfplay.loop import run as run_loop

    with user_errors(run_dir) as failed:
        run_loop(loaded, run_dir, resume=resume, overwrite=overwrite,
                 progress=not no_progress, echo=click.echo)
    if failed:
        _stop(failed[0], run_dir if (run_dir / "recipe.yaml").exists() else None)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="The pairs file to write (JSONL).")
@click.option("--prompts", "count", required=True, type=click.IntRange(min=1),
              help="How many prompts to sample (in the order an online run draws them).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True,
              help="Show dependencies' warnings and log lines too (or set SELFPLAY_LOG=debug).")
def sample(recipe, overrides, out, count, overwrite, no_progress, verbose):
    """Sample preference pairs once from RECIPE's model, for offline training.

    The RePO paper's offline recipe: the starting model answers each prompt `rollout.n` times,
    the recipe's reward scores the answers and `pairs.strategy` pairs them. Each pair becomes a
    row (the prompt row's fields, chosen, rejected and their rewards) that a recipe with
    `mode: offline` and `data.prompts: OUT` trains on.

    \b
      selfplay sample recipes/quickstart.yaml --prompts 128 -o pairs.jsonl
      selfplay run recipes/quickstart.yaml mode=offline data.prompts=$PWD/pairs.jsonl
    """
    loaded = _load_recipe(recipe, overrides)
    from selfplay.runtime import configure_environment, configure_logging
    configure_environment()
    configure_logging(verbose)
    from selfplay.errors import user_errors
    from selfplay.sample import sample_pairs

    with user_errors() as failed:
        done = sample_pairs(loaded, Path(out), count, overwrite=overwrite,
                            progress=not no_progress, echo=click.echo)
        click.echo(f"{done['pairs']} pairs from {done['prompts']} prompts in "
                   f"{done['seconds']:.1f} s (sampling and scoring): {out}")
    if failed:
        _stop(failed[0])


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(recipe, overrides):
    """Check RECIPE (with OVERRIDES) without loading a model; exit 2 naming each bad field.

    Besides the fields: the prompt files exist and parse, with their columns; the model path is
    a built-in or a model directory; the rewarder's module imports and has its class.
    """
    from selfplay.checks import check_inputs

    problems = check_inputs(_load_recipe(recipe, overrides))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)
    click.echo(f"{recipe}: ok")


@main.command()
@click.argument("section", required=False)
def fields(section):
    """List the recipe's fields with their defaults and help (optionally one SECTION)."""
    from selfplay.recipe import field_help

    rows = [r for r in field_help() if section is None or r[0].split(".")[0] == section]
    if not rows:
        _fail(f"no recipe section {section!r}", 2)
    for name, description, default, required in rows:
        click.echo(f"{name:28s} {'(required)' if required else repr(default):14s} {description}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the last metrics record as JSON.")
def status(run_dir, as_json):
    """Where a run stands: iterations done, newest checkpoint, last metrics."""
    from selfplay import checkpoint
    from selfplay.metrics import MetricsLog, record_cells

    run_path = Path(run_dir)
    if not (run_path / "recipe.yaml").exists():
        _fail(f"{run_dir} holds no run (no recipe.yaml)")
    records = MetricsLog(run_path / "metrics.jsonl").read()
    latest = checkpoint.latest(run_path / "checkpoints")
    if as_json:
        click.echo(json.dumps(records[-1] if records else {}))
        return
    from selfplay.recipe import load
    planned = load(run_path / "recipe.yaml").loop.iterations
    click.echo(f"run:         {run_path}")
    click.echo(f"iterations:  {len(records)}/{planned} logged")
    click.echo(f"checkpoint:  {latest.name if latest else 'none'}")
    click.echo(f"final model: {'yes' if (run_path / 'final').exists() else 'not yet'}")
    if records:
        cells = record_cells(records[-1])
        reward = "offline" if cells["reward"] == "-" else f"reward {cells['reward']}"
        click.echo(f"last:        iteration {records[-1]['iteration']}: {reward}, "
                   f"γ {cells['γ']}, pairs {cells['pairs']}")


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--rows", type=click.IntRange(min=2), default=20, show_default=True,
              help="Most table rows; longer runs show every k-th iteration.")
def report(run_dir, rows):
    """Plot a run's metrics into RUN_DIR/report/ and print a table of its iterations."""
    from selfplay.report import ReportError, format_table, summary_line, write_report

    try:
        result = write_report(run_dir)
    except ReportError as error:
        _fail(str(error))
    click.echo(format_table(result.records, max_rows=rows))
    click.echo(summary_line(result.records))
    for path in result.plots:
        click.echo(f"wrote {path}")
    for name, why in result.skipped.items():
        click.echo(f"skipped {name}: {why}")


@main.command("eval")
@click.argument("models", nargs=-1, required=True)
@click.option("--prompts", required=True,
              help="Prompt file (.jsonl …) with the rewarder's fields, or a named set: ifbench.")
@click.option("--reward", default="ifeval", show_default=True, help="Rewarder short name or pkg.mod:Class.")
@click.option("--reward-kwargs", default="{}", help="The rewarder's kwargs as JSON.")
@click.option("--samples", default=1, show_default=True, help="Answers per prompt.")
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--max-model-len", default=4096, show_default=True)
@click.option("--limit", type=int, help="Only the first N prompts.")
@click.option("--engine", type=click.Choice(["vllm", "hf"]), default="vllm", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-prompt scores as JSON.")
@click.option("--verbose", "-v", is_flag=True,
              help="Show dependencies' warnings and log lines too (or set SELFPLAY_LOG=debug).")
def eval_(models, prompts, reward, reward_kwargs, samples, temperature, max_new_tokens,
          max_model_len, limit, engine, seed, out, verbose):
    """Score MODELS on a prompt set with a rewarder; two or more are compared pairwise.

    A model is a Hugging Face directory, a run directory (its final/ model) or builtin:NAME.
    The first model is the baseline: every other one gets a paired difference over the same
    prompts with a 95% interval.

    \b
      selfplay eval builtin:smollm2-135m-instruct runs/quickstart \\
          --prompts recipes/data/ifeval-heldout.jsonl --max-new-tokens 128
      selfplay eval runs/quickstart --prompts ifbench --reward ifbench
    """
    try:
        kwargs = json.loads(reward_kwargs)
    except json.JSONDecodeError as error:
        _fail(f"--reward-kwargs: not JSON: {error}", 2)
    from selfplay.runtime import configure_environment, configure_logging
    configure_environment()
    configure_logging(verbose)
    from selfplay.errors import user_errors
    from selfplay.evaluate import evaluate, format_report, save_report

    report = None
    with user_errors() as failed:
        report = evaluate(list(models), prompts, reward=reward, reward_kwargs=kwargs,
                          samples=samples, temperature=temperature,
                          max_new_tokens=max_new_tokens, max_model_len=max_model_len,
                          limit=limit, engine=engine, seed=seed, echo=click.echo)
    if failed:
        _stop(failed[0])
    click.echo(format_report(report))
    if out:
        save_report(report, out)
        click.echo(f"per-prompt scores: {out}")


@main.command()
def rewarders():
    """List the built-in and installed plug-in rewarders."""
    from rewarders.base import RewardError, available_rewarders, rewarder_class

    for name, (_, source) in sorted(available_rewarders().items()):
        try:
            doc = (rewarder_class(name).__doc__ or "").strip()
        except RewardError as error:  # one broken plug-in must not hide the others
            doc = f"(cannot load: {error})"
        click.echo(f"{name:16s} {source:24s} {doc.splitlines()[0] if doc else ''}")


if __name__ == "__main__":
    main()
