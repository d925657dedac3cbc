"""`selfplay sample`: preference pairs sampled once from a recipe's model, written as a prompt file
that `mode: offline` trains on: the RePO paper's offline recipe (sample from the starting policy,
score, keep best against worst), with the recipe's own engine, reward and pairing."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from selfplay.data import load_prompt_table, to_prompt_rows, PromptStream
from selfplay.errors import UserError
from selfplay.pairs import ended, ended_field
from selfplay.recipe import Recipe
from selfplay.scoring import play_round
from selfplay.seeding import sampling_seed


class SampleError(UserError, ValueError):
    """A request `selfplay sample` cannot carry out, found before any sampling."""
    resumable = False


def sample_pairs(recipe: Recipe, out: Path, prompts: int, *, overwrite: bool = False,
                 progress: bool = True, echo=print) -> dict:
    """Samples `prompts` prompts of the recipe's data (in the order an online run with the same
    seed and one sampling round per iteration draws them, `data.prompts_per_iteration` at a
    time), scores and pairs their answers, and writes one row per pair to `out` (prompt, chosen,
    rejected and their rewards). Always in this process: the recipe's `distributed` section and
    `pairs.per_iteration` do not apply. Returns the counts and the seconds of sampling and
    scoring (engine start-up excluded)."""
    from transformers import AutoTokenizer

    from selfplay.data import check_rows_fit
    from selfplay.distributed.local import LocalPlacement
    from selfplay.models import resolve_model_path
    from selfplay.runtime import choose_accelerator

    if recipe.mode != "online":
        raise SampleError("selfplay sample: the recipe is mode: offline; sampling needs an online "
                       "recipe (its model, rollout, reward and pairs sections)")
    if out.exists() and not overwrite:
        raise SampleError(f"{out} already exists; use --overwrite to replace it")
    choose_accelerator()
    scratch = tempfile.TemporaryDirectory()  # where builtin:tiny is built (from loop.seed)
    placement, engine = LocalPlacement(), None
    try:
        model_dir = resolve_model_path(recipe.model.path, Path(scratch.name),
                                       seed=recipe.loop.seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = recipe.data
        table = load_prompt_table(data.prompts, data.prompt_field)
        check_rows_fit(to_prompt_rows(list(table), data.prompt_field, tokenizer,
                                      data.chat_template), tokenizer, recipe.rollout, data.prompts)
        stream = PromptStream(table, data.prompt_field, seed=recipe.loop.seed,
                              shuffle=data.shuffle)
        engine = placement.rollout(model_dir, recipe.rollout, dtype=recipe.model.dtype,
                                   seed=recipe.loop.seed)
        rewarder = placement.rewarder(recipe.reward)
        rewarder.bind_policy(engine)
        sampling = recipe.rollout.sampling()
        # The seconds of sampling and scoring, as a run's time_elapsed_s counts (no start-up).
        lines, done, batch, started = [], 0, 0, time.perf_counter()
        while done < prompts:
            batch += 1
            count = min(data.prompts_per_iteration, prompts - done)
            raw = stream.next_batch(count)
            rows = to_prompt_rows(raw, data.prompt_field, tokenizer, data.chat_template)
            played = play_round(engine, rewarder, recipe, rows, sampling,
                                sampling_seed(recipe.loop.seed, batch, 0), progress)
            for pair in played.pairs:
                row = dict(raw[pair.prompt_index])
                row.update({data.chosen_field: pair.chosen.text,
                            data.rejected_field: pair.rejected.text,
                            "chosen_reward": pair.chosen_reward,
                            "rejected_reward": pair.rejected_reward,
                            # An answer cut at max_new_tokens must not learn to stop there.
                            ended_field(data.chosen_field): ended(pair.chosen, tokenizer),
                            ended_field(data.rejected_field): ended(pair.rejected, tokenizer)})
                lines.append(json.dumps(row))
            done += count
            echo(f"sampled {done}/{prompts} prompts: {len(lines)} pairs")
        seconds = time.perf_counter() - started
    finally:
        try:
            if engine is not None:
                engine.close()
        finally:
            placement.close()
            scratch.cleanup()
    if not lines:
        raise SampleError(f"no pairs: the answers to all {prompts} prompts tied in reward "
                          f"(pairs.min_reward_gap {recipe.pairs.min_reward_gap:g}); sample more "
                          "prompts or raise rollout.n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.rename(out)
    return {"prompts": prompts, "pairs": len(lines), "seconds": seconds}
