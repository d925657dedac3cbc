"""The orchestrator. One iteration: generate → score → pair → train → sync → checkpoint → log.

Every source of randomness in an iteration is derived from (loop.seed, iteration), and the
checkpoint holds everything else that changes (weights, optimizer, scheduler, controller, data
cursor), so a run killed at any point and resumed ends with the same weights.
"""
from __future__ import annotations

from selfplay.errors import UserError

import json
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewarders.base import load_rewarder, rewarder_metrics, score_checked
from selfplay import checkpoint, recipe as recipe_mod
from selfplay.control import GammaController, build_controller
from selfplay.data import PromptStream, format_prompt, load_prompt_table, to_prompt_rows
from selfplay.metrics import MetricsLog, build_sinks, peak_rss_mb, rss_mb
from selfplay.pairs import Completion, Pair, PairStats, best_worst_pairs
from selfplay.recipe import RESUMABLE_CHANGES, Recipe
from selfplay.seeding import eval_seed, iteration_seed


class RunError(UserError, RuntimeError):
    """A problem the user can fix; the CLI prints it as one line."""


@dataclass
class RunResult:
    run_dir: Path
    iterations_done: int
    final_dir: Path
    already_complete: bool = False


def build_controller_from(recipe: Recipe) -> GammaController:
    gamma, iterations = recipe.gamma, recipe.loop.iterations
    fields = {
        "fixed": dict(value=gamma.value),
        "schedule": dict(start=gamma.start, end=gamma.end, iterations=iterations,
                         shape=gamma.shape),
        "adaptive": dict(iterations=iterations, target_start=gamma.target_start,
                         target_end=gamma.target_end, band=gamma.band, smoothing=gamma.smoothing,
                         initial=gamma.initial, gamma_min=gamma.gamma_min,
                         gamma_max=gamma.gamma_max),
        "gammapo": dict(value=gamma.value, tau=gamma.tau, beta=gamma.gammapo_beta),
    }[gamma.controller]
    return build_controller(gamma.controller, **fields)


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def _share_below(margins: list[float], gammas: list[float]) -> float | None:
    """Share of pairs whose margin is below their γ (the active fraction)."""
    if not margins:
        return None
    return sum(m < g for m, g in zip(margins, gammas)) / len(margins)


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


def resolve_model(recipe: Recipe, run_dir: Path) -> str:
    path = recipe.model.path
    if path.startswith("builtin:"):
        from selfplay.models import ModelError, resolve_builtin
        try:
            return str(resolve_builtin(path.split(":", 1)[1], run_dir, seed=recipe.loop.seed))
        except ModelError as error:
            raise RunError(str(error)) from None
    if not (Path(path) / "config.json").exists():
        raise RunError(f"model.path: no Hugging Face model directory at {path} "
                       "(expected a config.json there)")
    return path


class Loop:
    """Holds the parts of one run; `run()` drives the iterations."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, progress: bool = True):
        from transformers import AutoTokenizer

        from selfplay.rollout.base import SamplingConfig, build_engine
        from selfplay.train.trainer import Trainer

        self.recipe, self.run_dir, self.progress = recipe, run_dir, progress
        if not progress:
            import transformers
            transformers.utils.logging.disable_progress_bar()
        self.metrics = MetricsLog(run_dir / "metrics.jsonl",
                                  sinks=build_sinks(recipe.logging, run_dir, recipe.to_dict()))
        model_dir = resolve_model(recipe, run_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        table = load_prompt_table(recipe.data.prompts, recipe.data.prompt_field)
        self.stream = PromptStream(table, recipe.data.prompt_field, seed=recipe.loop.seed,
                                   shuffle=recipe.data.shuffle)
        table_fields = [recipe.data.chosen_field, recipe.data.rejected_field]
        if recipe.mode == "offline":
            missing = [f for f in table_fields if f not in table.column_names]
            if missing:
                raise RunError(f"data: offline mode needs column {missing[0]!r} in "
                               f"{recipe.data.prompts} (columns: {', '.join(table.column_names)})")
        self.rewarder = (load_rewarder(recipe.reward.name, recipe.reward.kwargs)
                         if recipe.reward else None)
        self.eval_rows = None
        if recipe.eval.prompts:
            eval_table = load_prompt_table(recipe.eval.prompts, recipe.data.prompt_field)
            self.eval_rows = to_prompt_rows(list(eval_table), recipe.data.prompt_field,
                                            self.tokenizer, recipe.data.chat_template)
        self.controller = build_controller_from(recipe)
        self.sampling = SamplingConfig(n=recipe.rollout.n,
                                       max_new_tokens=recipe.rollout.max_new_tokens,
                                       temperature=recipe.rollout.temperature,
                                       top_p=recipe.rollout.top_p)
        self.engine = None  # offline runs without evaluation never sample
        if recipe.mode == "online" or self.eval_rows:
            self.engine = build_engine(recipe.rollout.engine, model_dir, dtype=recipe.model.dtype,
                                       seed=recipe.loop.seed,
                                       max_model_len=recipe.rollout.max_model_len,
                                       kv_cache_gb=recipe.rollout.kv_cache_gb)
            # Self-rewarding: a rewarder that wants the policy (e.g. `judge`) samples through
            # the same engine, so it always judges with the current weights.
            if callable(getattr(self.rewarder, "bind_policy", None)):
                self.rewarder.bind_policy(self.engine)
        windows = -(-recipe.data.prompts_per_iteration
                    // (recipe.train.micro_batch_size * recipe.train.grad_accum))
        total_steps = recipe.loop.iterations * recipe.train.epochs_per_iteration * windows
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        self.trainer = Trainer(model_dir, recipe.train, loss_name=recipe.loss.name,
                               beta=recipe.loss.beta, seed=recipe.loop.seed,
                               total_steps=total_steps, pad_id=pad_id)
        self.iteration = 0

    # --- state ---------------------------------------------------------------------------------
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
        rng = torch.load(found / "rng.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if self.engine is not None:
            self.engine.update_weights(self.trainer.named_weights())
        self.metrics.rewind(self.iteration, state.get("metrics"))
        return True

    def _save(self, record: dict) -> float:
        started = time.perf_counter()

        def write(directory: Path) -> None:
            self.trainer.save(str(directory / "trainer"))
            torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}, directory / "rng.pt")
            recipe_mod.save(self.recipe, directory / "recipe.yaml")

        state = {"iteration": self.iteration, "controller": self.controller.state_dict(),
                 "data": self.stream.state_dict(), "metrics": record}
        checkpoint.save(self.run_dir / "checkpoints", self.iteration, write, state,
                        keep=self.recipe.loop.keep_checkpoints)
        return time.perf_counter() - started

    # --- one iteration ---------------------------------------------------------------------------
    def _online_pairs(self, iteration: int, rows: list) -> tuple[list, PairStats, dict]:
        """Samples, scores and pairs: the self-play half of an iteration."""
        recipe, n = self.recipe, self.sampling.n
        t0 = time.perf_counter()
        try:
            rollouts = self.engine.generate([r.text for r in rows], self.sampling,
                                            seed=iteration_seed(recipe.loop.seed, iteration),
                                            progress=self.progress)
        except ValueError as error:  # e.g. a prompt longer than the engine accepts
            raise RunError(f"rollout: {str(error).splitlines()[0]} (see rollout.max_model_len)"
                           ) from error
        time_generate = time.perf_counter() - t0
        gen_tokens = sum(len(c.token_ids) for r in rollouts for c in r.completions)

        t0 = time.perf_counter()
        texts = [c.text for r in rollouts for c in r.completions]
        scores = score_checked(self.rewarder, recipe.reward.name,
                               [row.raw for row in rows for _ in range(n)], texts,
                               [row.metadata for row in rows for _ in range(n)],
                               timeout_s=recipe.reward.timeout_s)
        rewards = [scores[i * n:(i + 1) * n] for i in range(len(rows))]
        time_reward = time.perf_counter() - t0

        pairs, pair_stats = best_worst_pairs([r.prompt_ids for r in rollouts],
                                             [r.completions for r in rollouts], rewards,
                                             recipe.pairs.min_reward_gap)
        if recipe.logging.save_rollouts:
            self._write_rollouts(iteration, rows, rollouts, rewards, pairs)
        return pairs, pair_stats, {
            "reward_mean": statistics.fmean(scores),
            "reward_std": statistics.pstdev(scores),
            "chosen_reward_mean": statistics.fmean(p.chosen_reward for p in pairs) if pairs else None,
            "completion_tokens_mean": gen_tokens / max(1, len(texts)),
            "time_generate_s": time_generate,
            "time_reward_s": time_reward,
            "gen_tokens_per_s": gen_tokens / time_generate if time_generate > 0 else None,
            **rewarder_metrics(self.rewarder, recipe.reward.name),
        }

    def _offline_pairs(self, raw_rows: list[dict]) -> tuple[list, PairStats, dict]:
        """Pairs straight from a preference dataset (the paper's offline setting)."""
        data = self.recipe.data
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        pairs = []
        for index, row in enumerate(raw_rows):
            prompt = format_prompt(self.tokenizer, row[data.prompt_field], data.chat_template)
            sides = [(row[f], self.tokenizer(row[f], add_special_tokens=False)["input_ids"] + eos)
                     for f in (data.chosen_field, data.rejected_field)]
            pairs.append(Pair(index, self.tokenizer(prompt)["input_ids"],
                              Completion(*sides[0]), Completion(*sides[1]), 1.0, 0.0))
        return pairs, PairStats(len(raw_rows), len(pairs), 0), {
            "reward_mean": None, "reward_std": None, "time_generate_s": 0.0,
            "time_reward_s": 0.0}

    def step(self) -> dict:
        recipe, iteration = self.recipe, self.iteration + 1
        started = time.perf_counter()
        gamma = self.controller.value
        raw_rows = self.stream.next_batch(recipe.data.prompts_per_iteration)
        if recipe.mode == "offline":
            pairs, pair_stats, collected = self._offline_pairs(raw_rows)
        else:
            rows = to_prompt_rows(raw_rows, recipe.data.prompt_field, self.tokenizer,
                                  recipe.data.chat_template)
            pairs, pair_stats, collected = self._online_pairs(iteration, rows)

        t0 = time.perf_counter()
        margins, margins_end, gammas, loss, train_tokens, steps = [], [], [], None, 0, 0
        if pairs:
            stats = self.trainer.train(pairs, self.controller.pair_gammas, iteration,
                                       progress=self.progress)
            margins, gammas, loss = stats.margins, stats.gammas, stats.loss
            train_tokens, steps = stats.tokens, stats.steps
            margins_end = self.trainer.margins(pairs)
        time_train = time.perf_counter() - t0

        t0 = time.perf_counter()
        if pairs and self.engine is not None:
            self.engine.update_weights(self.trainer.named_weights())
        time_sync = time.perf_counter() - t0

        evaluation = {}
        every = recipe.eval.every
        if self.eval_rows and ((every and iteration % every == 0) or
                               iteration == recipe.loop.iterations):
            evaluation = self.evaluate(iteration)
        active = _share_below(margins, gammas)
        record = {
            "iteration": iteration,
            **self.controller.describe(),
            "gamma": gamma,
            "active_fraction": active,
            "active_fraction_end": _share_below(margins_end, gammas),
            "filtered_fraction": None if active is None else 1 - active,
            "margin_p10": _quantile(margins, 0.1),
            "margin_p50": _quantile(margins, 0.5),
            "margin_p90": _quantile(margins, 0.9),
            "margin_end_p50": _quantile(margins_end, 0.5),
            **collected,
            "n_prompts": pair_stats.n_prompts,
            "n_pairs": pair_stats.n_pairs,
            "n_dropped": pair_stats.n_dropped,
            "loss": loss,
            "optimizer_steps": steps,
            "lr": self.trainer.engine.get_lr()[0],
            "time_train_s": time_train,
            "time_sync_s": time_sync,
            "train_tokens_per_s": train_tokens / time_train if train_tokens else None,
            **evaluation,
        }
        self.controller.update({**record, "iterations": recipe.loop.iterations,
                                "margins": margins, "margins_end": margins_end})
        record["gamma_next"] = self.controller.value
        self.iteration = iteration
        record["time_checkpoint_s"] = None
        if iteration % recipe.loop.checkpoint_every == 0 or iteration == recipe.loop.iterations:
            record["time_checkpoint_s"] = self._save(
                {**record, "time_total_s": time.perf_counter() - started,
                 "peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb()})
        record["time_total_s"] = time.perf_counter() - started
        record["peak_rss_mb"] = peak_rss_mb()
        record["rss_mb"] = rss_mb()
        self.metrics.append(record)
        return record

    def evaluate(self, iteration: int) -> dict:
        """Mean reward of samples on the held-out prompts under the current weights."""
        from selfplay.rollout.base import SamplingConfig

        started = time.perf_counter()
        n = self.recipe.eval.n
        sampling = SamplingConfig(n=n, max_new_tokens=self.sampling.max_new_tokens,
                                  temperature=self.recipe.eval.temperature,
                                  top_p=self.sampling.top_p)
        rollouts = self.engine.generate([r.text for r in self.eval_rows], sampling,
                                        seed=eval_seed(self.recipe.loop.seed, iteration))
        scores = score_checked(self.rewarder, self.recipe.reward.name,
                               [r.raw for r in self.eval_rows for _ in range(n)],
                               [c.text for r in rollouts for c in r.completions],
                               [r.metadata for r in self.eval_rows for _ in range(n)],
                               timeout_s=self.recipe.reward.timeout_s)
        return {"eval_reward_mean": statistics.fmean(scores),
                "eval_reward_std": statistics.pstdev(scores),
                "eval_prompts": len(self.eval_rows),
                "time_eval_s": time.perf_counter() - started}

    def _write_rollouts(self, iteration, rows, rollouts, rewards, pairs) -> None:
        paired = {p.prompt_index: p for p in pairs}
        directory = self.run_dir / "rollouts"
        directory.mkdir(exist_ok=True)
        lines = []
        for index, (row, rollout, scores) in enumerate(zip(rows, rollouts, rewards)):
            pair = paired.get(index)
            lines.append(json.dumps({
                "prompt": row.raw, "completions": [c.text for c in rollout.completions],
                "rewards": scores,
                "chosen": pair.chosen.text if pair else None,
                "rejected": pair.rejected.text if pair else None}))
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
        if self.engine is not None:
            self.engine.close()
        self.metrics.close()


def format_summary(record: dict, total: int) -> str:
    def num(value, fmt=".2f"):
        return "-" if value is None else format(value, fmt)
    reward = ("offline" if record["reward_mean"] is None else
              f"reward {record['reward_mean']:.3f}±{record['reward_std']:.3f}")
    return (f"iter {record['iteration']}/{total} | {reward} | pairs {record['n_pairs']}/{record['n_prompts']} | "
            f"γ {record['gamma']:.2f} active {num(record['active_fraction'])}→"
            f"{num(record['active_fraction_end'])} | loss {num(record['loss'], '.4f')} | "
            f"gen {record['time_generate_s']:.1f}s train {record['time_train_s']:.1f}s "
            f"sync {record['time_sync_s']:.2f}s ckpt {num(record['time_checkpoint_s'], '.1f')}s | "
            f"rss {record['rss_mb']:.0f}MB"
            + (f" | held-out reward {record['eval_reward_mean']:.3f}"
               if record.get("eval_reward_mean") is not None else ""))


def completed_iterations(run_dir: Path) -> int:
    """Iterations covered by the newest complete checkpoint (0 when there is none)."""
    found = checkpoint.latest(run_dir / "checkpoints")
    return checkpoint.load_state(found)["iteration"] if found else 0


def run(recipe: Recipe, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, echo=print) -> RunResult:
    prepare_run_dir(recipe, run_dir, resume=resume, overwrite=overwrite)
    total = recipe.loop.iterations
    if resume and completed_iterations(run_dir) >= total and (run_dir / "final").exists():
        echo(f"{run_dir}: already complete ({total} iterations); raise loop.iterations to "
             "extend it")
        return RunResult(run_dir, total, run_dir / "final", already_complete=True)
    loop = Loop(recipe, run_dir, progress=progress)
    try:
        if resume:
            if loop.restore():
                echo(f"resuming {run_dir} after iteration {loop.iteration}")
            else:
                echo(f"{run_dir} has no complete checkpoint yet; starting from iteration 1")
        for _ in range(loop.iteration, total):
            echo(format_summary(loop.step(), total))
        final = loop.export_final()
        echo(f"done: {total} iterations; final model in {final}")
        return RunResult(run_dir, total, final)
    finally:
        loop.close()
