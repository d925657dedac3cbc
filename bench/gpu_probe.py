"""The GPU checks, as one prepared script for a lent GPU machine (one H100 or H200, no package
registry, ≤ 6 minutes): what the CPU machines cannot show about the GPU path.

1. trainer: selfplay's DeepSpeed trainer on CUDA, SmolLM2-135M's shape with random weights
   (nothing downloaded), 8 pairs × 300 tokens, micro-batch 2, at ZeRO 0 and 3, fp32 and bf16:
   median seconds of 3 steps after a warm-up, peak GPU memory, seconds to export the model and
   whether the export loads with the trained values. Each setting in its own process.
2. resume: the tiny recipe (HF engine: vLLM is not installed there) on the GPU, 3 iterations
   straight against 2 then `--resume` to 3: whether the final weights are bit-identical; and the
   same recipe on the CPU beside it (per-iteration reward and loss, for the record).
3. sync: the in-memory weight reload into the HF engine on the same GPU (local placement),
   seconds per sync (vLLM's reload is not measured: vLLM is not in the GPU image). An NCCL broadcast between processes needs two GPUs: not measurable on one, said so.

Predictions, written before the script first ran on a GPU, are PREDICTIONS; the JSON puts each
measurement beside its prediction.

  python -m bench.gpu_probe --out DIR                  # on the GPU machine
  python -m bench.gpu_probe --out DIR --device cpu --quick   # the same code on a CPU, small
The packages the GPU image lacks travel as wheels: `bash bench/gpu_probe_wheels.sh` here, then
on the GPU machine (device tool, carry .whl):
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. \\
      python3 -m bench.gpu_probe --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, commit, versions

PREDICTIONS = {
    # One H100, SmolLM2-135M shape, 8 pairs × 300 tokens, micro-batch 2 (4 forward/backward).
    "trainer_step_s": {"zero0-fp32": 0.5, "zero0-bf16": 0.35, "zero3-fp32": 0.8,
                       "zero3-bf16": 0.6},
    "trainer_peak_gib": {"zero0-fp32": 3.5, "zero0-bf16": 3.0, "zero3-fp32": 4.0,
                         "zero3-bf16": 3.5},
    "export_loads": True,
    "resume_bit_identical_on_gpu": False,  # cuBLAS picks non-deterministic kernels by default
    "sync_s": 0.05,
}
SETTINGS = [(zero, precision) for zero in (0, 3) for precision in ("fp32", "bf16")]


class _NoTokenizer:
    """The random-weight model has no tokenizer; the export writes only the weights."""

    def save_pretrained(self, directory):
        pass


def trainer_setting(zero: int, precision: str, device: str, quick: bool) -> dict:
    """One (ZeRO stage, precision) setting in this process."""
    import torch

    from bench.train_step import SMOLLM2_135M, build_model_dir, make_pairs
    from selfplay.recipe import TrainConfig
    from selfplay.runtime import choose_accelerator
    choose_accelerator()
    from selfplay.train.trainer import Trainer

    cuda = device == "cuda"
    work = Path(tempfile.mkdtemp())
    model_dir = build_model_dir(work / "model")
    pairs = make_pairs(4 if quick else 8, 60 if quick else 300, SMOLLM2_135M["vocab_size"])
    config = TrainConfig(lr=1e-5, micro_batch_size=2, grad_accum=len(pairs) // 2,
                         precision=precision, zero_stage=zero, warmup_ratio=0.0,
                         lr_schedule="constant")
    steps = 1 if quick else 3
    trainer = Trainer(str(model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=2,
                      iterations=steps + 1, pairs_per_iteration=len(pairs))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train(pairs, gamma=0.5, iteration=0)  # warm-up
    times = []
    for step in range(steps):
        sync()
        started = time.perf_counter()
        trainer.train(pairs, gamma=0.5, iteration=step + 1)
        sync()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    trainer.export(str(work / "export"), _NoTokenizer())
    export_s = time.perf_counter() - started
    from transformers import AutoModelForCausalLM
    loaded = dict(AutoModelForCausalLM.from_pretrained(work / "export").named_parameters())
    trained = dict(trainer.named_weights())
    shared = [name for name in trained if name in loaded]  # a tied head is saved once
    loads = len(shared) >= len(trained) - 1 and all(
        torch.equal(loaded[name].float(), trained[name].float().cpu()) for name in shared)
    return {"step_s": statistics.median(times), "steps": times, "export_s": export_s,
            "export_loads": loads,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run_setting(zero: int, precision: str, device: str, quick: bool) -> dict:
    command = [sys.executable, "-m", "bench.gpu_probe", "--setting", f"{zero},{precision}",
               "--device", device] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def selfplay_run(run_dir: Path, *overrides: str, resume: bool = False, cpu: bool = False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", "selfplay.cli", "run", str(REPO / "recipes" / "tiny.yaml"),
               "-o", str(run_dir), "--no-progress", "rollout.engine=hf", *overrides]
    return subprocess.run(command + (["--resume"] if resume else []), capture_output=True,
                          text=True, cwd=REPO, env=env)


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(run_dir / "final" / "model.safetensors"))


def resume_and_sync(device: str) -> dict:
    """The tiny recipe straight and resumed on `device`, and on the CPU beside it."""
    work = Path(tempfile.mkdtemp())
    three = ["loop.iterations=3", "loop.checkpoint_every=1"]
    straight = selfplay_run(work / "straight", *three, cpu=device == "cpu")
    first = selfplay_run(work / "resumed", "loop.iterations=2", "loop.checkpoint_every=1",
                         cpu=device == "cpu")
    resumed = selfplay_run(work / "resumed", *three, resume=True, cpu=device == "cpu")
    cpu = selfplay_run(work / "cpu", *three, cpu=True)
    failed = [(name, run.stderr.strip().splitlines()[-1:]) for name, run in
              (("straight", straight), ("first", first), ("resumed", resumed), ("cpu", cpu))
              if run.returncode]
    if failed:
        return {"error": failed}
    a, b = final_weights(work / "straight"), final_weights(work / "resumed")
    records = {name: [json.loads(line) for line in (work / name / "metrics.jsonl")
                      .read_text().splitlines()] for name in ("straight", "cpu")}
    return {
        "resume_bit_identical": all(bool((a[k] == b[k]).all()) for k in a),
        "resume_max_abs_diff": max(float((a[k].float() - b[k].float()).abs().max()) for k in a),
        "sync_s": statistics.median(r["time_sync_s"] for r in records["straight"]),
        "per_iteration": {name: [{"reward_mean": r["reward_mean"], "loss": r["loss"]}
                                 for r in rows] for name, rows in records.items()},
        "nccl_broadcast": "not measured: a broadcast between processes needs two GPUs",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="Small pairs, one timed step.")
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # a child: "ZERO,PRECISION"
    args = parser.parse_args()
    if args.setting:
        zero, precision = args.setting.split(",")
        print(json.dumps(trainer_setting(int(zero), precision, args.device, args.quick)))
        return
    import torch
    started = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit(), "versions": versions(),
              "device": args.device, "quick": args.quick, "predictions": PREDICTIONS,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "trainer": {}}
    for zero, precision in SETTINGS:
        name = f"zero{zero}-{precision}"
        result["trainer"][name] = run_setting(zero, precision, args.device, args.quick)
        print(name, result["trainer"][name], flush=True)
    result["resume"] = resume_and_sync(args.device)
    print("resume", {k: v for k, v in result["resume"].items() if k != "per_iteration"})
    result["seconds"] = time.perf_counter() - started
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_probe.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
