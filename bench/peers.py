"""selfplay beside the peer a user would otherwise pick (TRL 1.16), same machine, same run.

Offline step: TRL's `CPOTrainer(loss_type="simpo", cpo_alpha=0)` against
`selfplay run` in `mode: offline` with `loss.name: simpo`, on SmolLM2-135M-Instruct (the
quickstart's model, from the local cache: nothing downloads), the same 8 pairs of ~300 tokens,
micro-batch 8 (TRL's batch), no gradient checkpointing, in fp32 and, where the CPU has
AVX512-BF16 or AMX, bf16 (TRL: autocast; selfplay: `train.precision: bf16`). Each trainer runs in
its own process so its peak RSS is its own; the first step is a warm-up and is not timed.
selfplay runs twice: at TRL's micro-batch of 8, and at micro-batch 2 with 4 accumulation steps
(`selfplay-mb2`: the same optimizer step of 8 pairs, less memory).
Online iteration: `python -m bench.peers_online` (TRL's `OnlineDPOTrainer` with vLLM colocate),
run from here too and stored under `online_iteration`.

TRL is a benchmark-only dependency, never imported by `selfplay/`. It is installed beside the
project's environment, without touching it:
    pip install --no-deps --target ~/.cache/selfplay/trl trl==1.16.0

  python -m bench.peers                    # both parts: offline fp32 and bf16 (if the CPU has
                                           # it), and online (bench.peers_online); 3 steps
  python -m bench.peers --parts offline --precision fp32 --steps 5
Writes bench/results/peers.json (machine, CPU flags, versions, commit) and prints ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (MODEL, REPO, RESULTS, TRL_VERSION, child_env, commit, require_trl,
                          use_trl, versions)

PAIRS, PROMPT_TOKENS, COMPLETION_TOKENS = 8, 60, 240  # ~300 tokens a sequence
BETA, GAMMA, LR = 2.0, 0.5, 1e-6
# selfplay at TRL's micro-batch (all 8 pairs in one forward), and at 2 pairs per forward
# accumulated to the same optimizer step of 8: the same update in less memory.
TOOLS = {"selfplay": PAIRS, "selfplay-mb2": 2}


def make_pairs(tokenizer, path: Path) -> int:
    """8 pairs of plain text (no chat template, so both tools see the same tokens): a
    quickstart prompt and two completions cut from other prompts' text to fixed lengths."""
    rows = [json.loads(line)["prompt"] for line in
            (REPO / "recipes" / "data" / "ifeval-train.jsonl").read_text().splitlines()]
    words = " ".join(rows[PAIRS:]).split()
    pairs, tokens, cursor = [], 0, 0

    def cut(count: int) -> str:
        nonlocal cursor
        text = []
        while len(tokenizer(" ".join(text), add_special_tokens=False)["input_ids"]) < count:
            text.append(words[cursor])
            cursor += 1
        return " ".join(text)

    for prompt in rows[:PAIRS]:
        prompt = prompt if len(tokenizer(prompt)["input_ids"]) >= PROMPT_TOKENS else (
            prompt + " " + cut(PROMPT_TOKENS - len(tokenizer(prompt)["input_ids"])))
        pair = {"prompt": prompt, "chosen": " " + cut(COMPLETION_TOKENS),
                "rejected": " " + cut(COMPLETION_TOKENS)}
        pairs.append(pair)
        tokens += sum(len(tokenizer(pair["prompt"] + pair[side])["input_ids"])
                      for side in ("chosen", "rejected"))
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return tokens


def run_trl(model_dir: str, data: Path, precision: str, steps: int, workdir: Path) -> dict:
    use_trl()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.started)

    config = CPOConfig(
        output_dir=str(workdir / "trl"), loss_type="simpo", cpo_alpha=0.0, beta=BETA,
        simpo_gamma=GAMMA, learning_rate=LR, per_device_train_batch_size=PAIRS,
        gradient_accumulation_steps=1, max_steps=steps + 1, bf16=precision == "bf16",
        fp16=False, gradient_checkpointing=False, max_length=1024, report_to=[],
        save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0,
        lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True)
    dataset = Dataset.from_list(rows * (steps + 1))
    trainer = CPOTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    return {"step_s": step_times[1:], "torch_threads": torch.get_num_threads()}


def run_selfplay(model_dir: str, data: Path, precision: str, steps: int, workdir: Path,
                 micro_batch: int = PAIRS) -> dict:
    run_dir = workdir / "selfplay"
    command = [sys.executable, "-m", "selfplay.cli", "run", str(REPO / "recipes/quickstart.yaml"),
               "-o", str(run_dir), "--no-progress", "mode=offline", f"data.prompts={data}",
               f"data.prompts_per_iteration={PAIRS}", "data.chat_template=false",
               "eval.prompts=null", f"loop.iterations={steps + 1}",
               f"loop.checkpoint_every={steps + 1}", "loss.name=simpo", f"loss.beta={BETA}",
               "gamma.controller=fixed", f"gamma.value={GAMMA}", f"train.lr={LR}",
               f"train.micro_batch_size={micro_batch}", f"train.grad_accum={PAIRS // micro_batch}",
               "train.epochs_per_iteration=1", f"train.precision={precision}",
               "logging.save_rollouts=false"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=child_env())
    if done.returncode != 0:
        raise SystemExit(f"selfplay offline run failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": [r["time_train_s"] for r in records[1:]]}


def worker(args) -> None:
    from selfplay.models import resolve_model_path
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_model_path(MODEL, Path(tmp), seed=0)
        if args.tool == "trl":
            result = run_trl(str(model_dir), Path(args.data), args.precision, args.steps,
                             Path(tmp))
        else:
            result = run_selfplay(str(model_dir), Path(args.data), args.precision, args.steps,
                                  Path(tmp), micro_batch=TOOLS[args.tool])
    # The selfplay run is a child process; TRL runs in this one.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if args.tool != "trl"
                               else resource.RUSAGE_SELF)
    result["peak_rss_gb"] = usage.ru_maxrss / 1024**2
    Path(args.out).write_text(json.dumps(result))


def measure(tool: str, precision: str, data: Path, steps: int, tokens: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "bench.peers", "--worker", tool, "--precision",
                        precision, "--data", str(data), "--steps", str(steps), "--out", out.name],
                       check=True, cwd=REPO)
        result = json.loads(Path(out.name).read_text())
    step = statistics.median(result["step_s"])
    result.update(median_step_s=step, tokens_per_step=tokens, tokens_per_s=tokens / step)
    print(f"{tool:12s} {precision}: {step:6.1f} s/step, {tokens / step:6.0f} tok/s, "
          f"peak RSS {result['peak_rss_gb']:.1f} GB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--parts", nargs="+", default=["offline", "online"],
                        choices=["offline", "online"],
                        help="offline: the SimPO step (~20 min); online: the iteration beside "
                        "OnlineDPOTrainer (bench.peers_online, ~25 min)")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--worker", choices=["trl", *TOOLS], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.tool, args.precision = args.worker, args.precision[0]
        return worker(args)
    require_trl()
    from transformers import AutoTokenizer

    from selfplay.models import resolve_model_path
    from selfplay.runtime import cpu_bf16_flags

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL, Path(tmp), seed=0))
        data = Path(tmp) / "pairs.jsonl"
        tokens = make_pairs(tokenizer, data)
        offline = {}
        for precision in (args.precision if "offline" in args.parts else []):
            if precision == "bf16" and not cpu_bf16_flags():
                print("bf16: skipped, this CPU has neither AVX512-BF16 nor AMX")
                offline["bf16"] = {"skipped": "no AVX512-BF16 or AMX"}
                continue
            rows = {tool: measure(tool, precision, data, args.steps, tokens)
                    for tool in ("trl", *TOOLS)}
            for tool in TOOLS:
                speed = rows[tool]["tokens_per_s"] / rows["trl"]["tokens_per_s"]
                memory = rows[tool]["peak_rss_gb"] / rows["trl"]["peak_rss_gb"]
                rows[f"{tool}_vs_trl_tokens_per_s"] = speed
                rows[f"{tool}_vs_trl_peak_rss"] = memory
                print(f"{precision}: {tool} / TRL tokens/s = {speed:.2f}×, peak RSS "
                      f"{rows[tool]['peak_rss_gb']:.1f} GB ({memory:.2f}×)")
            offline[precision] = rows
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "versions": versions(),
              "trl": TRL_VERSION, "model": MODEL}
    if offline:
        result["offline_step"] = {"pairs": PAIRS, "micro_batches": TOOLS, "beta": BETA,
                                  "gamma": GAMMA, **offline}
    if "online" in args.parts:
        from bench.peers_online import measure_online
        result["online_iteration"] = measure_online(args.steps)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
