"""The orchestrator. One iteration: generate → score → pair → train → sync → checkpoint → log.

Every source of randomness in an iteration is derived from (loop.seed, iteration) (seeding.py),
and the checkpoint holds everything else that changes (weights, optimizer, scheduler, controller,
data cursor, RNG states), so a run killed at any point and resumed ends with the same weights.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rewarders.base import rewarder_metrics
from selfplay import checkpoint, recipe as recipe_mod
from selfplay.control import MarginObservation, build_controller, build_pair_targets
from selfplay.data import PromptStream, load_prompt_table, to_prompt_rows
from selfplay.distributed import build_placement
from selfplay.errors import UserError
from selfplay.losses import get_loss
from selfplay.metrics import (MetricsLog, UpdateSummary, build_sinks, finish_record,
                              format_summary, iteration_record, reward_mean_std, rollout_summary)
from selfplay.pairs import PairStats, offline_pairs
from selfplay.recipe import RESUMABLE_CHANGES, Recipe
from selfplay.runtime import rollout_dtype, train_precision
from selfplay.scoring import play_round, score_rollouts
from selfplay.seeding import eval_seed, sampling_seed
from selfplay.types import Pair, SamplingConfig


class RunError(UserError, RuntimeError):
    """A problem the user can fix; the CLI prints it as one line."""


@dataclass
class RunResult:
    run_dir: Path
    iterations_done: int
    final_dir: Path
    already_complete: bool = False


def run(recipe: Recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, echo=print) -> RunResult:
    """Runs (or resumes) `recipe` in `run_dir` to `loop.iterations`, then exports `final/`."""
    prepare_run_dir(recipe, run_dir, resume=resume, overwrite=overwrite)
    total = recipe.loop.iterations
    if resume and (run_dir / "final").exists():
        done, elapsed_s = completed_state(run_dir)
        budget = recipe.loop.max_minutes
        if done >= total or (budget is not None and elapsed_s >= budget * 60):
            raise_what = ("loop.iterations" if done >= total else "loop.max_minutes")
            echo(f"{run_dir}: already complete ({done} iterations, {elapsed_s / 60:.1f} min); "
                 f"raise {raise_what} to extend it")
            return RunResult(run_dir, done, run_dir / "final", already_complete=True)
    loop = Loop(recipe, run_dir, progress=progress)
    try:
        if recipe.distributed.backend != "local":
            echo(f"placement: {loop.placement.describe()}")
        if loop.engine is not None:
            echo("rollout dtype: {} ({})".format(*rollout_dtype(recipe.model.dtype)))
        echo("train precision: {} ({})".format(*train_precision(recipe.train.precision)))
        if resume:
            if loop.restore():
                echo(f"resuming {run_dir} after iteration {loop.iteration}")
            else:
                echo(f"{run_dir} has no complete checkpoint yet; starting from iteration 1")
        while loop.iteration < total and not loop.stopped:
            echo(format_summary(loop.step(), total))
        if loop.iteration < total:
            echo(f"time budget reached: loop.max_minutes={recipe.loop.max_minutes:g} after "
                 f"{loop.iteration} of {total} iterations ({loop.elapsed_s / 60:.1f} min)")
        final = loop.export_final()
        echo(f"done: {loop.iteration} iterations; final model in {final}")
        return RunResult(run_dir, loop.iteration, final)
    finally:
        loop.close()


class Loop:
    """Holds the parts of one run; `step()` runs one iteration."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, progress: bool = True):
        self.recipe, self.run_dir, self.progress = recipe, run_dir, progress
        self.engine, self.metrics = None, None
        # Local: every part in this process; Ray: actor groups behind the same interfaces.
        self.placement = build_placement(recipe, run_dir=run_dir, need_engine=recipe.mode
                                         == "online" or bool(recipe.eval.prompts))
        try:
            self._build_parts()
        except BaseException:
            self.close()  # actors and a Ray this run started do not outlive a failed start
            raise

    def _build_parts(self) -> None:
        from transformers import AutoTokenizer

        from selfplay.models import resolve_model_path
        from selfplay.runtime import choose_accelerator
        from selfplay.tokens import pad_token_id

        choose_accelerator()  # before anything imports DeepSpeed (accelerate does, via models)
        recipe, run_dir, progress = self.recipe, self.run_dir, self.progress
        if not progress:
            import transformers
            transformers.utils.logging.disable_progress_bar()
        self.metrics = MetricsLog(run_dir / "metrics.jsonl",
                                  sinks=build_sinks(recipe.logging, run_dir, recipe.to_dict()))
        model_dir = resolve_model_path(recipe.model.path, run_dir, seed=recipe.loop.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = recipe.data
        table = load_prompt_table(data.prompts, data.prompt_field,
                                  columns=recipe.offline_columns())
        self.stream = PromptStream(table, data.prompt_field, seed=recipe.loop.seed,
                                   shuffle=data.shuffle)
        self.rewarder = self.placement.rewarder(recipe.reward) if recipe.reward else None
        self.eval_rows = None
        if recipe.eval.prompts:
            eval_table = load_prompt_table(recipe.eval.prompts, data.prompt_field,
                                           field="eval.prompts")
            self.eval_rows = to_prompt_rows(list(eval_table), data.prompt_field,
                                            self.tokenizer, data.chat_template)
        if recipe.mode == "online":
            self._check_prompt_lengths(table)
        self.controller = build_controller(recipe.gamma, recipe.loop.iterations)
        rollout = recipe.rollout
        self.sampling = rollout.sampling()
        if recipe.mode == "online" or self.eval_rows:  # offline runs without eval never sample
            self.engine = self.placement.rollout(model_dir, rollout, dtype=recipe.model.dtype,
                                                 seed=recipe.loop.seed)
            # Self-rewarding: a rewarder that wants the policy (e.g. `judge`) samples through
            # the same engine, so it always judges with the current weights.
            if self.rewarder is not None:
                self.rewarder.bind_policy(self.engine)
        beta = get_loss(recipe.loss.name).resolve_beta(recipe.loss.beta)
        self.trainer = self.placement.trainer(
            model_dir, recipe.train, loss_name=recipe.loss.name, beta=beta,
            reduction=recipe.loss.reduction,
            seed=recipe.loop.seed, iterations=recipe.loop.iterations,
            pairs_per_iteration=recipe.pairs_per_iteration(),
            pad_id=pad_token_id(self.tokenizer),
            # γ-PO's per-pair targets: the trainer's own, with the loss's β and the run's seed.
            pair_targets=build_pair_targets(recipe.gamma, beta, recipe.loop.seed))
        self.iteration = 0
        self.elapsed_s = 0.0  # seconds of the iterations done (resumed runs: from the checkpoint)
        # The time budget ended the run: decided once per iteration, before it is evaluated and
        # checkpointed, so the iteration that ends the run is always both.
        self.stopped = False

    def _check_prompt_lengths(self, table) -> None:
        """Refuses, before any work, a prompt that cannot fit the engine with its completion."""
        from selfplay.data import check_rows_fit

        data, rollout = self.recipe.data, self.recipe.rollout
        rows = to_prompt_rows(list(table), data.prompt_field, self.tokenizer, data.chat_template)
        for source, checked in ((data.prompts, rows), (self.recipe.eval.prompts, self.eval_rows)):
            if checked:
                check_rows_fit(checked, self.tokenizer, rollout, source)

    # --- one iteration ---------------------------------------------------------------------------
    def step(self) -> dict:
        """generate → score → pair → train → sync → (evaluate) → update γ → checkpoint → log."""
        iteration, started = self.iteration + 1, time.perf_counter()
        gamma_fields = self.controller.describe()  # the γ this iteration trains with
        raw_rows = self.stream.next_batch(self.recipe.data.prompts_per_iteration)
        pairs, pair_stats, collected = self._collect_pairs(iteration, raw_rows)
        update = self._train(iteration, pairs)
        time_sync = self._sync(pairs)
        # The last iteration, of `loop.iterations` or of the time budget: evaluated and saved.
        self.stopped = self.out_of_time(time.perf_counter() - started)
        last = iteration == self.recipe.loop.iterations or self.stopped
        evaluation = self._evaluate_if_due(iteration, last)
        record = iteration_record(iteration, gamma_fields, collected, pair_stats, update,
                                  time_sync, evaluation)
        self.controller.update(MarginObservation(iteration, self.recipe.loop.iterations,
                                                 update.stats.margins))
        record["gamma_next"] = self.controller.value
        actors_rss = self.placement.actors_rss_mb()
        if actors_rss is not None:  # before the checkpoint, whose copy of the record must match
            record["actors_rss_mb"] = actors_rss
        self.iteration = iteration
        record["time_checkpoint_s"] = self._checkpoint_if_due(record, started, last)
        finish_record(record, started, self.elapsed_s)
        self.elapsed_s = record["time_elapsed_s"]
        self.metrics.append(record)
        return record

    def _collect_pairs(self, iteration: int, raw_rows: list[dict]
                       ) -> tuple[list[Pair], PairStats, dict]:
        if self.recipe.mode == "offline":
            pairs, stats = offline_pairs(raw_rows, self.tokenizer, self.recipe.data)
            return pairs, stats, {"reward_mean": None, "reward_std": None,
                                  "time_generate_s": 0.0, "time_reward_s": 0.0}
        return self._self_play_pairs(iteration, self._prompt_rows(raw_rows))

    def _prompt_rows(self, raw_rows: list[dict]) -> list:
        data = self.recipe.data
        return to_prompt_rows(raw_rows, data.prompt_field, self.tokenizer, data.chat_template)

    def _self_play_pairs(self, iteration: int, rows: list) -> tuple[list[Pair], PairStats, dict]:
        """Samples, scores and pairs: the self-play half of an iteration. With
        `pairs.per_iteration` (dynamic sampling) further rounds of prompts are sampled until the
        iteration has that many pairs, at most `pairs.max_rounds` rounds."""
        recipe = self.recipe
        quota = recipe.pairs.per_iteration
        every_row, every_rollout, every_reward, pairs = [], [], [], []
        stats, time_generate, time_reward, rounds = PairStats(0, 0, 0), 0.0, 0.0, 0
        for round_ in range(recipe.pairs.max_rounds if quota else 1):
            if round_:
                rows = self._prompt_rows(self.stream.next_batch(recipe.data.prompts_per_iteration))
            played = play_round(self.engine, self.rewarder, recipe, rows, self.sampling,
                                sampling_seed(recipe.loop.seed, iteration, round_), self.progress)
            time_generate += played.generate_s
            time_reward += played.reward_s
            for pair in played.pairs:  # prompts numbered across the rounds
                pair.prompt_index += len(every_row)
            every_row += rows
            every_rollout += played.rollouts
            every_reward += played.rewards
            pairs += played.pairs
            stats += played.stats
            rounds += 1
            if quota is None or len(pairs) >= quota:
                break
        if quota is not None and len(pairs) > quota:
            pairs = pairs[:quota]  # every update the same size: the schedule's length holds
            stats.n_pairs = quota
        if recipe.logging.save_rollouts:
            self._write_rollouts(iteration, every_row, every_rollout, every_reward, pairs)
        return pairs, stats, {
            **rollout_summary(every_rollout, every_reward, pairs, time_generate, time_reward),
            "sample_rounds": rounds,
            **rewarder_metrics(self.rewarder, recipe.reward.name),
        }

    @property
    def _measure_end_margins(self) -> bool:
        """Whether to score the pairs again after the update: a no-grad pass costing about a
        fifth of the update, for the metrics only, so only when the recipe asks."""
        return self.recipe.logging.end_margins == "always"

    def _train(self, iteration: int, pairs: list[Pair]) -> UpdateSummary:
        """One update on the pairs; the margins before (and, when needed, after) it feed the γ
        controller."""
        started = time.perf_counter()
        if not pairs:
            return UpdateSummary(lr=self.trainer.lr)
        stats = self.trainer.train(pairs, self.controller.value, iteration,
                                   progress=self.progress)
        margins_end = self.trainer.margins(pairs) if self._measure_end_margins else []
        return UpdateSummary(stats=stats, margins_end=margins_end, lr=self.trainer.lr,
                             seconds=time.perf_counter() - started)

    def _sync(self, pairs: list[Pair]) -> float:
        """Hands the updated weights to the rollout engine in memory; returns the seconds taken."""
        started = time.perf_counter()
        if pairs and self.engine is not None:
            self.placement.sync_weights(self.trainer, self.engine)
        return time.perf_counter() - started

    def _evaluate_if_due(self, iteration: int, last: bool) -> dict:
        every = self.recipe.eval.every
        due = (every and iteration % every == 0) or last
        return self.evaluate(iteration) if self.eval_rows and due else {}

    def evaluate(self, iteration: int) -> dict:
        """Mean reward of samples on the held-out prompts under the current weights."""
        started = time.perf_counter()
        config = self.recipe.eval
        sampling = SamplingConfig(n=config.n, max_new_tokens=self.sampling.max_new_tokens,
                                  temperature=config.temperature, top_p=self.sampling.top_p)
        rollouts = self.engine.generate([r.text for r in self.eval_rows], sampling,
                                        seed=eval_seed(self.recipe.loop.seed, iteration))
        rewards = score_rollouts(self.rewarder, self.recipe.reward.name, self.eval_rows,
                                 rollouts, timeout_s=self.recipe.reward.timeout_s)
        mean, std = reward_mean_std(rewards)
        return {"eval_reward_mean": mean, "eval_reward_std": std,
                "eval_prompts": len(self.eval_rows),
                "time_eval_s": time.perf_counter() - started}

    # --- state -----------------------------------------------------------------------------------
    def out_of_time(self, running_s: float = 0.0) -> bool:
        """Whether the run's time, plus `running_s` of the iteration under way, has reached
        `loop.max_minutes`."""
        budget = self.recipe.loop.max_minutes
        return budget is not None and self.elapsed_s + running_s >= budget * 60

    def _checkpoint_if_due(self, record: dict, started: float, last: bool) -> float | None:
        """Saves a checkpoint every `loop.checkpoint_every` iterations and at the last one (the
        last of `loop.iterations` or of the time budget); returns the seconds it took (None when
        none was due)."""
        loop = self.recipe.loop
        if self.iteration % loop.checkpoint_every and not last:
            return None
        began = time.perf_counter()

        def write(directory: Path) -> None:
            self.trainer.save(str(directory / "trainer"))
            checkpoint.save_rng(directory)
            recipe_mod.save(self.recipe, directory / "recipe.yaml")

        # The record goes in too: a kill between the checkpoint and metrics.jsonl loses nothing.
        state = {"iteration": self.iteration, "controller": self.controller.state_dict(),
                 "data": self.stream.state_dict(),
                 "metrics": finish_record(dict(record), started, self.elapsed_s)}
        checkpoint.save(self.run_dir / "checkpoints", self.iteration, write, state,
                        keep=loop.keep_checkpoints)
        return time.perf_counter() - began

    def restore(self) -> bool:
        """Loads the newest complete checkpoint, if any; returns whether one was found."""
        found = checkpoint.latest(self.run_dir / "checkpoints")
        if found is None:
            self.metrics.rewind(0, None)
            return False
        state = checkpoint.load_state(found)
        self.trainer.load(str(found / "trainer"))
        self.controller.load_state_dict(state["controller"])
        self.stream.load_state_dict(state["data"])
        self.iteration = state["iteration"]
        checkpoint.load_rng(found)
        if self.engine is not None:
            self.placement.sync_weights(self.trainer, self.engine)
        self.metrics.rewind(self.iteration, state.get("metrics"))
        self.elapsed_s = float((state.get("metrics") or {}).get("time_elapsed_s", 0.0))
        self.stopped = self.out_of_time()  # killed after its last checkpoint, before final/
        return True

    def _write_rollouts(self, iteration, rows, rollouts, rewards, pairs) -> None:
        paired: dict[int, list[Pair]] = {}
        for pair in pairs:
            paired.setdefault(pair.prompt_index, []).append(pair)
        directory = self.run_dir / "rollouts"
        directory.mkdir(exist_ok=True)
        lines = []
        for index, (row, rollout, scores) in enumerate(zip(rows, rollouts, rewards)):
            made = paired.get(index, [])
            first = made[0] if made else None  # best vs worst, also under all_levels
            lines.append(json.dumps({
                "prompt": row.raw, "completions": [c.text for c in rollout.completions],
                "rewards": scores,
                "chosen": first.chosen.text if first else None,
                "rejected": first.rejected.text if first else None, "pairs": len(made)}))
        (directory / f"iter-{iteration:04d}.jsonl").write_text("\n".join(lines) + "\n")

    def export_final(self) -> Path:
        final = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        self.trainer.export(str(tmp), self.tokenizer)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def close(self) -> None:
        try:
            if self.engine is not None:
                self.engine.close()
            if self.metrics is not None:
                self.metrics.close()
        finally:
            self.placement.close()


def prepare_run_dir(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Creates or checks the run directory; never replaces a run unless `overwrite`."""
    saved = run_dir / "recipe.yaml"
    if resume:
        if not saved.exists():
            raise RunError(f"--resume: {run_dir} holds no run (no recipe.yaml); start it without "
                           "--resume", resumable=False)
        previous = recipe_mod.load(saved)
        changed = [f for f in recipe_mod.diff(previous, recipe)
                   if not any(f == allowed or (allowed.endswith(".") and f.startswith(allowed))
                              for allowed in RESUMABLE_CHANGES)]
        if changed:
            raise RunError(f"--resume: the recipe differs from the run's in {', '.join(changed)}; "
                           f"only {', '.join(RESUMABLE_CHANGES)} may change on resume",
                           resumable=False)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"output directory {run_dir} already exists; use --resume to continue "
                           "it, --overwrite to replace it, or choose another --output-dir",
                           resumable=False)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_mod.save(recipe, saved)


def completed_iterations(run_dir: Path) -> int:
    """Iterations covered by the newest complete checkpoint (0 when there is none)."""
    return completed_state(run_dir)[0]


def completed_state(run_dir: Path) -> tuple[int, float]:
    """The newest complete checkpoint's iteration and the run's seconds up to it (0, 0.0 when
    there is none)."""
    found = checkpoint.latest(run_dir / "checkpoints")
    if found is None:
        return 0, 0.0
    state = checkpoint.load_state(found)
    return state["iteration"], float((state.get("metrics") or {}).get("time_elapsed_s", 0.0))
