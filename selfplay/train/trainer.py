"""The DeepSpeed trainer: preference pairs in, one policy update out. The only module that
imports DeepSpeed.

The trainer never branches on the loss name: it asks the loss registry for a function and feeds
it length-normalised log-likelihoods of chosen and rejected completions, computed in one forward
pass.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from selfplay.losses import get_loss
from selfplay.seeding import epoch_seed
from selfplay.types import Pair
from selfplay.recipe import TrainConfig
from selfplay.train.logps import CompletionLogps, pad_batch


GammaFn = Callable[[Sequence[float]], "float | list[float]"]


@dataclass
class TrainStats:
    loss: float
    margins: list[float]         # per pair, as first seen in this update (before its own step)
    gammas: list[float]          # per pair, the γ its loss used when first seen
    active_fraction: float       # share of pairs with margin < γ when first seen
    steps: int                   # optimizer steps taken
    tokens: int                  # tokens through forward + backward
    seconds: float


def _init_single_process_group() -> None:
    """DeepSpeed needs a process group even for one rank; gloo on CPU."""
    import deepspeed
    import torch.distributed as dist

    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    if dist.is_initialized():  # the rollout engine may have set up the group already
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:  # a free port, so parallel runs do not collide
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model_dir: str, config: TrainConfig, *, loss_name: str,
                 beta: float | None, seed: int, total_steps: int, pad_id: int):
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
        import deepspeed
        from transformers import AutoModelForCausalLM

        _init_single_process_group()
        self.config = config
        self.loss_fn = get_loss(loss_name)
        self.beta = beta
        self.seed = seed
        self.pad_id = pad_id
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        policy = CompletionLogps(model, chunk_tokens=config.logit_chunk_tokens)
        # The fused kernel updates in place: no parameter-sized temporaries (less peak memory).
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay, fused=True)
        warmup = int(config.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps, warmup, config.lr_schedule))
        ds_config = {
            "train_micro_batch_size_per_gpu": config.micro_batch_size,
            "gradient_accumulation_steps": config.grad_accum,
            "gradient_clipping": config.max_grad_norm,
            "zero_optimization": {"stage": config.zero_stage},
            "bf16": {"enabled": config.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, _ = deepspeed.initialize(
            model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)

    # --- log-probs -------------------------------------------------------------------------
    def _batch(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        """Chosen rows first, then rejected rows: both sides in one forward pass."""
        sequences, starts = [], []
        for side in ("chosen", "rejected"):
            for pair in pairs:
                sequences.append(pair.prompt_ids + getattr(pair, side).token_ids)
                starts.append(len(pair.prompt_ids))
        batch = pad_batch(sequences, starts, self.pad_id)
        return {k: v.to(self.engine.device) for k, v in batch.items()}

    def _logps(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor, int]:
        batch = self._batch(pairs)
        scores = self.engine(**batch)
        tokens = int(batch["attention_mask"].sum())
        return scores[:len(pairs)], scores[len(pairs):], tokens

    @torch.no_grad()
    def margins(self, pairs: list[Pair]) -> list[float]:
        """Current margins M = s(chosen) − s(rejected), without updating anything."""
        out = []
        for start in range(0, len(pairs), self.config.micro_batch_size):
            chosen, rejected, _ = self._logps(pairs[start:start + self.config.micro_batch_size])
            out.extend((chosen - rejected).float().tolist())
        return out

    # --- the update ------------------------------------------------------------------------
    def train(self, pairs: list[Pair], gamma: float | GammaFn, iteration: int,
              progress: bool = False) -> TrainStats:
        """One update on this iteration's pairs; each optimizer step averages its window's pairs.

        `gamma` is one value, or a function from a micro-batch's current margins to one γ or one
        per pair (the per-pair and per-step controllers).
        """
        started = time.perf_counter()
        micro, window = self.config.micro_batch_size, self.config.micro_batch_size * self.config.grad_accum
        first_margins: list[float | None] = [None] * len(pairs)
        first_gammas: list[float | None] = [None] * len(pairs)
        gamma_fn = gamma if callable(gamma) else (lambda margins: gamma)
        losses, tokens, steps = [], 0, 0
        self.engine.train()
        micro_batches = self.config.epochs_per_iteration * -(-len(pairs) // micro)
        bar = tqdm(total=micro_batches, desc=f"train iter {iteration}", leave=False,
                   disable=not progress, unit="batch")
        for epoch in range(self.config.epochs_per_iteration):
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, iteration, epoch))
            order = torch.randperm(len(pairs), generator=generator).tolist()
            for window_start in range(0, len(order), window):
                window_ids = order[window_start:window_start + window]
                for micro_start in range(0, len(window_ids), micro):
                    ids = window_ids[micro_start:micro_start + micro]
                    chosen, rejected, n_tokens = self._logps([pairs[i] for i in ids])
                    chosen, rejected = chosen.float(), rejected.float()
                    gammas = gamma_fn((chosen - rejected).detach().tolist())
                    out = self.loss_fn(chosen, rejected, gamma=gammas, beta=self.beta)
                    # Weight by the micro-batch's share of its window so that a short last window
                    # still averages over its own pairs.
                    is_last = micro_start + micro >= len(window_ids)
                    self.engine.set_gradient_accumulation_boundary(is_last)
                    self.engine.backward(out.loss * (len(ids) / len(window_ids)),
                                         scale_wrt_gas=False)
                    self.engine.step()
                    losses.append(out.loss.item() * len(ids))
                    tokens += n_tokens
                    bar.update(1)
                    if epoch == 0:
                        per_pair = gammas if isinstance(gammas, list) else [gammas] * len(ids)
                        for i, margin, pair_gamma in zip(ids, out.margins.tolist(), per_pair):
                            first_margins[i], first_gammas[i] = margin, float(pair_gamma)
                steps += 1
        bar.close()
        margins, gammas_used = [float(m) for m in first_margins], [float(g) for g in first_gammas]
        active = sum(m < g for m, g in zip(margins, gammas_used)) / len(margins)
        return TrainStats(loss=sum(losses) / (len(pairs) * self.config.epochs_per_iteration),
                          margins=margins, gammas=gammas_used, active_fraction=active,
                          steps=steps, tokens=tokens,
                          seconds=time.perf_counter() - started)

    # --- weights out -----------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module.model

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their Hugging Face names, gathered if ZeRO-3 shards them."""
        import deepspeed

        for name, param in self.model.named_parameters():
            if self.config.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach().clone()
            else:
                yield name, param.detach()

    def export(self, out_dir: str, tokenizer) -> None:
        """A Hugging Face directory that transformers and vLLM load as is."""
        state = {name: tensor.to(torch.float32).clone() for name, tensor in self.named_weights()}
        self.model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)

    # --- checkpoint ------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag="trainer", save_latest=False)

    def load(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag="trainer",
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"no trainer state in {directory}")
