"""One RePO training step on a model of SmolLM2-135M's shape: selfplay's trainer vs a plain loop.

Each (implementation, precision) runs in its own process so that its peak RSS is its own.
  selfplay:      the DeepSpeed trainer (chunked completion log-probs, one forward for both
                 sides), one pair per forward pass (--micro-batch), gradients accumulated.
  selfplay+ckpt: the same with gradient checkpointing (less memory, more compute).
  naive:         plain torch, the whole batch in one forward, full-vocabulary log-softmax over
                 every token.
Achieved FLOP/s is reported as a fraction of a large matmul timed in the same process.

  python -m bench.train_step                       # fp32 and bf16, both implementations
  python -m bench.train_step --pairs 8 --tokens 300 --precision fp32
Writes bench/results/train_step.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS, versions  # sets OMP_NUM_THREADS: all cores

# SmolLM2-135M's architecture (its config.json), so nothing is downloaded.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def matmul_flops_per_s(dtype, size=2048, repeats=5, tries=3) -> float:
    """The best of a few timings: this machine is shared, so the peak is the honest reference."""
    import torch
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(tries):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - started))
    return best


def model_flops(config: dict, batch_tokens: int, completion_tokens: int, seq_len: int,
                sequences: int) -> float:
    """Forward+backward FLOPs a step needs (recomputation not counted): 6·params·tokens for the
    transformer body, 6·vocab·hidden per scored token for the LM head, plus attention."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q,o + k,v + MLP
    body = 6 * layers * per_layer * batch_tokens
    head = 6 * config["vocab_size"] * h * completion_tokens
    attention = 6 * 2 * layers * sequences * seq_len * seq_len * h  # QK^T and AV, causal ignored
    return body + head + attention


def make_pairs(pairs: int, tokens: int, vocab: int):
    import random
    from selfplay.types import Completion, Pair
    rng = random.Random(0)
    prompt_len = tokens // 3
    out = []
    for index in range(pairs):
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        chosen = [rng.randrange(3, vocab) for _ in range(tokens - prompt_len)]
        rejected = [rng.randrange(3, vocab) for _ in range(tokens - prompt_len)]
        out.append(Pair(index, prompt, Completion("", chosen), Completion("", rejected), 1.0, 0.0))
    return out


def build_model_dir(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).save_pretrained(path)
    return path


def run_selfplay(model_dir, pairs, precision, micro_batch, steps, checkpointing=False):
    from selfplay.recipe import TrainConfig
    from selfplay.train.trainer import Trainer
    config = TrainConfig(lr=1e-6, micro_batch_size=micro_batch, grad_accum=len(pairs) // micro_batch,
                         precision=precision, warmup_ratio=0.0, lr_schedule="constant",
                         gradient_checkpointing=checkpointing)
    trainer = Trainer(str(model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=2,
                      iterations=steps + 1, pairs_per_iteration=len(pairs))
    trainer.train(pairs, gamma=0.5, iteration=0)  # warm-up step, not timed
    times = []
    for step in range(steps):
        started = time.perf_counter()
        trainer.train(pairs, gamma=0.5, iteration=step + 1)
        times.append(time.perf_counter() - started)
    return times


def run_naive(model_dir, pairs, precision, micro_batch, steps):
    """The plain loop: full logits, fp32 log-softmax over the vocabulary, AdamW."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def sequence_logps(ids, start):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(ids).logits
        logps = logits.float().log_softmax(-1)[:, start - 1:-1]
        return logps.gather(-1, ids[:, start:].unsqueeze(-1)).squeeze(-1).mean(-1)

    def step():
        optimizer.zero_grad()
        for begin in range(0, len(pairs), micro_batch):
            group = pairs[begin:begin + micro_batch]
            start = len(group[0].prompt_ids)
            ids = torch.tensor([p.prompt_ids + p.chosen.token_ids for p in group]
                               + [p.prompt_ids + p.rejected.token_ids for p in group])
            scores = sequence_logps(ids, start)
            margins = scores[:len(group)] - scores[len(group):]
            loss = torch.relu(0.5 - margins).sum() / len(pairs)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def child(args) -> dict:
    import torch
    model_dir = build_model_dir(Path(args.model_dir))
    pairs = make_pairs(args.pairs, args.tokens, SMOLLM2_135M["vocab_size"])
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak_matmul = matmul_flops_per_s(dtype)
    if args.impl == "naive":  # the plain loop scores the whole batch in one forward pass
        times = run_naive(model_dir, pairs, args.precision, args.pairs, args.steps)
    else:
        times = run_selfplay(model_dir, pairs, args.precision, args.micro_batch, args.steps,
                             checkpointing=args.impl == "selfplay+ckpt")
    seconds = min(times)
    tokens = 2 * args.pairs * args.tokens
    completion = 2 * args.pairs * (args.tokens - args.tokens // 3)
    flops = model_flops(SMOLLM2_135M, tokens, completion, args.tokens, 2 * args.pairs)
    return {"impl": args.impl, "precision": args.precision, "pairs": args.pairs,
            "tokens_per_sequence": args.tokens,
            "micro_batch": args.pairs if args.impl == "naive" else args.micro_batch,
            "step_seconds": seconds, "step_seconds_all": times, "tokens_per_s": tokens / seconds,
            "achieved_flops_per_s": flops / seconds, "matmul_flops_per_s": peak_matmul,
            "fraction_of_matmul": flops / seconds / peak_matmul,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=300, help="tokens per sequence")
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="selfplay's pairs per forward pass (the plain loop takes all)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (the best is kept)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--impl", choices=["selfplay", "selfplay+ckpt", "naive", "all"],
                        default="all")
    parser.add_argument("--model-dir", default=str(Path.home() / ".cache" / "selfplay" /
                                                   "bench-smollm2-135m-shape"))
    parser.add_argument("--out", default=str(RESULTS / "train_step.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    build_model_dir(Path(args.model_dir))
    import torch
    rows, skipped = [], {}
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if "bf16" in precisions:
        fp32_rate = matmul_flops_per_s(torch.float32, size=512)
        bf16_rate = matmul_flops_per_s(torch.bfloat16, size=512, repeats=2, tries=1)
        if bf16_rate < 0.5 * fp32_rate:  # no bf16 units (e.g. AVX2-only CPUs): not worth an hour
            skipped["bf16"] = (f"bf16 matmul runs at {bf16_rate / 1e9:.1f} GFLOP/s vs "
                               f"{fp32_rate / 1e9:.0f} fp32 on this CPU (no native bf16)")
            print(f"skipping bf16: {skipped['bf16']}")
            precisions.remove("bf16")
    impls = ["selfplay", "selfplay+ckpt", "naive"] if args.impl == "all" else [args.impl]
    for precision in precisions:
        for impl in impls:
            command = [sys.executable, "-m", "bench.train_step", "--child", "--impl", impl,
                       "--precision", precision, "--pairs", str(args.pairs), "--tokens",
                       str(args.tokens), "--micro-batch", str(args.micro_batch), "--steps",
                       str(args.steps), "--model-dir", str(Path(args.model_dir).resolve())]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                rows.append({"impl": impl, "precision": precision, "error": result.returncode})
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{impl:9s} {precision}: {row['step_seconds']:.1f} s/step, "
                  f"{row['tokens_per_s']:.0f} tok/s, {row['fraction_of_matmul']:.0%} of matmul "
                  f"({row['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s), peak RSS "
                  f"{row['peak_rss_gb']:.2f} GB", flush=True)
    by_key = {(r["impl"], r["precision"]): r for r in rows if "error" not in r}
    ratios = {}
    for precision in precisions:
        ours, base = by_key.get(("selfplay", precision)), by_key.get(("naive", precision))
        if ours and base:
            ratios[precision] = {"speedup": base["step_seconds"] / ours["step_seconds"],
                                 "rss_ratio": ours["peak_rss_gb"] / base["peak_rss_gb"]}
            print(f"{precision}: selfplay is {ratios[precision]['speedup']:.2f}x the plain loop's "
                  f"speed at {ratios[precision]['rss_ratio']:.2f}x its peak RSS")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                          "versions": versions(), "results": rows,
                                          "ratios": ratios, "skipped": skipped}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
