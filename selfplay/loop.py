"""The orchestrator. One iteration: generate → score → pair → train → sync → checkpoint → log.

Every source of randomness in an iteration is derived from (loop.seed, iteration), and the
checkpoint holds everything else that changes (weights, optimizer, scheduler, controller, data
cursor), so a run killed at any point and resumed ends with the same weights.
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rewarders.base import load_rewarder, score_checked
from selfplay import checkpoint, recipe as recipe_mod
from selfplay.control import GammaController, build_controller
from selfplay.data import PromptStream, load_prompt_table, to_prompt_rows
from selfplay.metrics import MetricsLog, peak_rss_mb, rss_mb
from selfplay.pairs import best_worst_pairs
from selfplay.recipe import RESUMABLE_CHANGES, Recipe


class RunError(RuntimeError):
    """A problem the user can fix; the CLI prints it as one line."""


@dataclass
class RunResult:
    run_dir: Path
    iterations_done: int
    final_dir: Path
    already_complete: bool = False


def build_controller_from(recipe: Recipe) -> GammaController:
    gamma = recipe.gamma
    if gamma.controller == "fixed":
        return build_controller("fixed", value=gamma.value)
    return build_controller("schedule", start=gamma.start, end=gamma.end,
                            iterations=recipe.loop.iterations, shape=gamma.shape)


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def _iteration_seed(seed: int, iteration: int) -> int:
    return seed * 1_000_003 + iteration


def prepare_run_dir(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Creates or checks the run directory; never replaces a run unless `overwrite`."""
    saved = run_dir / "recipe.yaml"
    if resume:
        if not saved.exists():
            raise RunError(f"--resume: {run_dir} holds no run (no recipe.yaml); start it without "
                           "--resume")
        previous = recipe_mod.load(saved)
        changed = [f for f in recipe_mod.diff(previous, recipe)
                   if not any(f == allowed or (allowed.endswith(".") and f.startswith(allowed))
                              for allowed in RESUMABLE_CHANGES)]
        if changed:
            raise RunError(f"--resume: the recipe differs from the run's in {', '.join(changed)}; "
                           f"only {', '.join(RESUMABLE_CHANGES)} may change on resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"output directory {run_dir} already exists; use --resume to continue "
                           "it, --overwrite to replace it, or choose another --output-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_mod.save(recipe, saved)


def resolve_model(recipe: Recipe, run_dir: Path) -> str:
    path = recipe.model.path
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name != "tiny":
            raise RunError(f"model.path: unknown built-in model {path!r} (builtin:tiny)")
        target = run_dir / "base_model"
        if not (target / "config.json").exists():
            from selfplay.tiny_model import build_tiny_model
            build_tiny_model(target, seed=recipe.loop.seed)
        return str(target)
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
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        model_dir = resolve_model(recipe, run_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        table = load_prompt_table(recipe.data.prompts, recipe.data.prompt_field)
        self.stream = PromptStream(table, recipe.data.prompt_field, seed=recipe.loop.seed,
                                   shuffle=recipe.data.shuffle)
        self.rewarder = load_rewarder(recipe.reward.name, recipe.reward.kwargs)
        self.controller = build_controller_from(recipe)
        self.sampling = SamplingConfig(n=recipe.rollout.n,
                                       max_new_tokens=recipe.rollout.max_new_tokens,
                                       temperature=recipe.rollout.temperature,
                                       top_p=recipe.rollout.top_p)
        self.engine = build_engine(recipe.rollout.engine, model_dir, dtype=recipe.model.dtype,
                                   seed=recipe.loop.seed, max_model_len=recipe.rollout.max_model_len,
                                   kv_cache_gb=recipe.rollout.kv_cache_gb)
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
    def step(self) -> dict:
        recipe, iteration = self.recipe, self.iteration + 1
        started = time.perf_counter()
        gamma = self.controller.value
        rows = to_prompt_rows(self.stream.next_batch(recipe.data.prompts_per_iteration),
                              recipe.data.prompt_field, self.tokenizer, recipe.data.chat_template)

        t0 = time.perf_counter()
        try:
            rollouts = self.engine.generate([r.text for r in rows], self.sampling,
                                            seed=_iteration_seed(recipe.loop.seed, iteration),
                                            progress=self.progress)
        except ValueError as error:  # e.g. a prompt longer than the engine accepts
            raise RunError(f"rollout: {str(error).splitlines()[0]} (see rollout.max_model_len)"
                           ) from error
        time_generate = time.perf_counter() - t0
        gen_tokens = sum(len(c.token_ids) for r in rollouts for c in r.completions)

        t0 = time.perf_counter()
        flat_prompts = [row.raw for row in rows for _ in range(self.sampling.n)]
        flat_meta = [row.metadata for row in rows for _ in range(self.sampling.n)]
        flat_texts = [c.text for r in rollouts for c in r.completions]
        flat_scores = score_checked(self.rewarder, recipe.reward.name, flat_prompts, flat_texts,
                                    flat_meta)
        rewards = [flat_scores[i * self.sampling.n:(i + 1) * self.sampling.n]
                   for i in range(len(rows))]
        time_reward = time.perf_counter() - t0

        pairs, pair_stats = best_worst_pairs([r.prompt_ids for r in rollouts],
                                             [r.completions for r in rollouts], rewards,
                                             recipe.pairs.min_reward_gap)
        if recipe.logging.save_rollouts:
            self._write_rollouts(iteration, rows, rollouts, rewards, pairs)

        t0 = time.perf_counter()
        margins, margins_end, loss, train_tokens, steps = [], [], None, 0, 0
        if pairs:
            stats = self.trainer.train(pairs, gamma, iteration, progress=self.progress)
            margins, loss, train_tokens, steps = stats.margins, stats.loss, stats.tokens, stats.steps
            margins_end = self.trainer.margins(pairs)
        time_train = time.perf_counter() - t0

        t0 = time.perf_counter()
        if pairs:
            self.engine.update_weights(self.trainer.named_weights())
        time_sync = time.perf_counter() - t0

        all_scores = flat_scores
        record = {
            "iteration": iteration,
            "gamma": gamma,
            "active_fraction": (sum(m < gamma for m in margins) / len(margins)) if margins else None,
            "active_fraction_end": (sum(m < gamma for m in margins_end) / len(margins_end))
            if margins_end else None,
            "margin_p10": _quantile(margins, 0.1),
            "margin_p50": _quantile(margins, 0.5),
            "margin_p90": _quantile(margins, 0.9),
            "margin_end_p50": _quantile(margins_end, 0.5),
            "reward_mean": statistics.fmean(all_scores),
            "reward_std": statistics.pstdev(all_scores),
            "chosen_reward_mean": statistics.fmean(p.chosen_reward for p in pairs) if pairs else None,
            "n_prompts": pair_stats.n_prompts,
            "n_pairs": pair_stats.n_pairs,
            "n_dropped": pair_stats.n_dropped,
            "loss": loss,
            "optimizer_steps": steps,
            "lr": self.trainer.engine.get_lr()[0],
            "completion_tokens_mean": gen_tokens / max(1, len(flat_texts)),
            "time_generate_s": time_generate,
            "time_reward_s": time_reward,
            "time_train_s": time_train,
            "time_sync_s": time_sync,
            "gen_tokens_per_s": gen_tokens / time_generate if time_generate > 0 else None,
            "train_tokens_per_s": train_tokens / time_train if train_tokens else None,
        }
        self.controller.update({**record, "iterations": recipe.loop.iterations})
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
        self.engine.close()


def format_summary(record: dict, total: int) -> str:
    def num(value, fmt=".2f"):
        return "-" if value is None else format(value, fmt)
    return (f"iter {record['iteration']}/{total} | reward {record['reward_mean']:.3f}"
            f"±{record['reward_std']:.3f} | pairs {record['n_pairs']}/{record['n_prompts']} | "
            f"γ {record['gamma']:.2f} active {num(record['active_fraction'])}→"
            f"{num(record['active_fraction_end'])} | loss {num(record['loss'], '.4f')} | "
            f"gen {record['time_generate_s']:.1f}s train {record['time_train_s']:.1f}s "
            f"sync {record['time_sync_s']:.2f}s ckpt {num(record['time_checkpoint_s'], '.1f')}s | "
            f"rss {record['rss_mb']:.0f}MB")


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
