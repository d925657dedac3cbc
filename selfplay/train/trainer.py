"""The DeepSpeed trainer: preference pairs in, one policy update out. The only module that
imports DeepSpeed.

The trainer never branches on the loss name: it asks the loss registry for a function and feeds
it the log-likelihoods of chosen and rejected completions, computed in one forward pass, in the
normalisation the loss declares (per-token means or sums).
"""
from __future__ import annotations

import copy
import math
import os
import socket
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from selfplay.losses import get_loss
from selfplay.seeding import epoch_seed
from selfplay.types import Pair
from selfplay.recipe import TrainConfig
from selfplay.runtime import choose_accelerator, quiet_stdout
from selfplay.train.logps import CompletionLogps, pad_batch


GammaFn = Callable[[Sequence[float]], "float | list[float]"]


@dataclass
class TrainStats:
    loss: float
    margins: list[float]         # per pair, as first seen in this update (before its own step)
    gammas: list[float]          # per pair, the γ its loss used when first seen
    steps: int                   # optimizer steps taken
    tokens: int                  # tokens through forward + backward


@dataclass
class _MicroStep:
    """What one micro-batch's forward/backward reports back to the update."""
    loss: float                  # the micro-batch's mean loss
    margins: list[float]         # per pair, before this step
    gammas: list[float]          # per pair, the γ the loss used
    tokens: int


def _init_single_process_group() -> None:
    """DeepSpeed needs a process group even for one rank; gloo on CPU. Leaves nothing behind in
    /dev/shm."""
    import deepspeed
    import torch.distributed as dist

    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    if os.environ["WORLD_SIZE"] == "1":
        # LOCAL_SIZE == WORLD_SIZE makes DeepSpeed's CPU comm op create a 69 MB /dev/shm buffer
        # that it never removes; one rank all-reduces nothing, so training is the same without.
        os.environ.pop("LOCAL_SIZE", None)
    if dist.is_initialized():  # the rollout engine may have set up the group already
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:  # a free port, so parallel runs do not collide
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _frozen_copy(policy: CompletionLogps, precision: str) -> CompletionLogps:
    """The policy as it is now, for reference log-probs: no gradient, eval mode, working dtype."""
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    return reference.to(torch.bfloat16) if precision == "bf16" else reference


def total_optimizer_steps(config: TrainConfig, iterations: int, pairs_per_iteration: int) -> int:
    """Optimizer steps of a whole run: each iteration's pairs in windows of
    micro_batch_size × grad_accum, `epochs_per_iteration` times (the schedule's length)."""
    windows = -(-pairs_per_iteration // (config.micro_batch_size * config.grad_accum))
    return iterations * config.epochs_per_iteration * windows


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
    """Owns the policy, its optimizer and its learning-rate schedule.

    The schedule spans the whole run: `iterations` updates of `pairs_per_iteration` pairs each
    (`total_steps`).

    A loss that declares `needs_reference` (DPO) gets a frozen copy of the initial policy
    (`reference`: no gradient, eval mode, never updated): one more copy of the weights in the
    working dtype (fp32, or bf16 with `precision: bf16`), not sharded by ZeRO, and one no-grad
    forward per pair per update. Other losses build none and pay nothing. The reference is the
    weights in `model_dir`, so a resumed run rebuilds the same one.
    """

    def __init__(self, model_dir: str, config: TrainConfig, *, loss_name: str,
                 beta: float | None, seed: int, pad_id: int, iterations: int,
                 pairs_per_iteration: int):
        choose_accelerator()  # before deepspeed loads: it reads DS_ACCELERATOR once, at import
        import deepspeed
        from transformers import AutoModelForCausalLM

        total_steps = total_optimizer_steps(config, iterations, pairs_per_iteration)
        with quiet_stdout():  # DeepSpeed print()s "op built successfully" on every start
            _init_single_process_group()
        self.config = config
        self.loss_fn = get_loss(loss_name)
        self.beta = beta
        self.seed = seed
        self.pad_id = pad_id
        self.total_steps = total_steps
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        policy = CompletionLogps(model, chunk_tokens=config.logit_chunk_tokens,
                                 length_normalised=self.loss_fn.length_normalised)
        # Copied before DeepSpeed wraps (and under ZeRO-3 shards) the policy's parameters.
        self.reference = (_frozen_copy(policy, config.precision)
                          if self.loss_fn.needs_reference else None)
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
        if self.reference is not None:
            self.reference.to(self.engine.device)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return self.engine.get_lr()[0]

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
    def _reference_logps(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The frozen reference's log-probs of each pair's chosen and rejected completion (fp32,
        in pair order); None when the loss needs no reference."""
        if self.reference is None:
            return None
        chosen, rejected = [], []
        for start in range(0, len(pairs), self.config.micro_batch_size):
            some = pairs[start:start + self.config.micro_batch_size]
            scores = self.reference(**self._batch(some)).float()
            chosen.append(scores[:len(some)])
            rejected.append(scores[len(some):])
        return torch.cat(chosen), torch.cat(rejected)

    @torch.no_grad()
    def margins(self, pairs: list[Pair]) -> list[float]:
        """Current margins, without updating anything, in the loss's declared units (per-token
        means or sums): M = s(chosen) − s(rejected), or with a reference the loss's
        h = (s(chosen) − ref(chosen)) − (s(rejected) − ref(rejected))."""
        out = []
        for start in range(0, len(pairs), self.config.micro_batch_size):
            some = pairs[start:start + self.config.micro_batch_size]
            chosen, rejected, _ = self._logps(some)
            if self.reference is None:
                out.extend((chosen - rejected).float().tolist())
                continue
            ref_chosen, ref_rejected = self._reference_logps(some)
            # The loss's own margins, so these match TrainStats.margins' units exactly.
            out.extend(self.loss_fn(chosen.float(), rejected.float(), gamma=0.0, beta=self.beta,
                                    ref_chosen_logps=ref_chosen,
                                    ref_rejected_logps=ref_rejected).margins.tolist())
        return out

    # --- the update ------------------------------------------------------------------------
    def train(self, pairs: list[Pair], gamma: float | GammaFn, iteration: int,
              progress: bool = False) -> TrainStats:
        """One update on this iteration's pairs; each optimizer step averages its window's pairs.

        `gamma` is one value, or a function from a micro-batch's current margins to one γ or one
        per pair (the per-pair and per-step controllers).
        """
        micro = self.config.micro_batch_size
        first_margins: list[float | None] = [None] * len(pairs)
        first_gammas: list[float | None] = [None] * len(pairs)
        gamma_fn = gamma if callable(gamma) else (lambda margins: gamma)
        reference = self._reference_logps(pairs)  # once per pair, before any step
        losses, tokens, steps = [], 0, 0
        self.engine.train()
        micro_batches = self.config.epochs_per_iteration * -(-len(pairs) // micro)
        bar = tqdm(total=micro_batches, desc=f"train iter {iteration}", leave=False,
                   disable=not progress, unit="batch")
        for epoch, window in self._windows(len(pairs), iteration):
            for micro_start in range(0, len(window), micro):
                ids = window[micro_start:micro_start + micro]
                # Weight by the micro-batch's share of its window so that a short last window
                # still averages over its own pairs.
                out = self._micro_step([pairs[i] for i in ids], gamma_fn,
                                       share=len(ids) / len(window),
                                       boundary=micro_start + micro >= len(window),
                                       reference=None if reference is None else
                                       (reference[0][ids], reference[1][ids]))
                losses.append(out.loss * len(ids))
                tokens += out.tokens
                bar.update(1)
                if epoch == 0:
                    for i, margin, pair_gamma in zip(ids, out.margins, out.gammas):
                        first_margins[i], first_gammas[i] = margin, pair_gamma
            steps += 1
        bar.close()
        return TrainStats(loss=sum(losses) / (len(pairs) * self.config.epochs_per_iteration),
                          margins=[float(m) for m in first_margins],
                          gammas=[float(g) for g in first_gammas], steps=steps, tokens=tokens)

    def _windows(self, count: int, iteration: int) -> Iterator[tuple[int, list[int]]]:
        """(epoch, pair indices of one optimizer step), in a seeded order per epoch."""
        window = self.config.micro_batch_size * self.config.grad_accum
        for epoch in range(self.config.epochs_per_iteration):
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, iteration, epoch))
            order = torch.randperm(count, generator=generator).tolist()
            for start in range(0, count, window):
                yield epoch, order[start:start + window]

    def _micro_step(self, pairs: list[Pair], gamma_fn: GammaFn, *, share: float, boundary: bool,
                    reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> _MicroStep:
        """Forward, loss, backward and (at a window's `boundary`) the optimizer step of one
        micro-batch; its gradient counts with weight `share` in its window's average.
        `reference`: the frozen reference's chosen and rejected log-probs of these pairs."""
        chosen, rejected, n_tokens = self._logps(pairs)
        chosen, rejected = chosen.float(), rejected.float()
        gammas = gamma_fn((chosen - rejected).detach().tolist())
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        out = self.loss_fn(chosen, rejected, gamma=gammas, beta=self.beta,
                           ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(out.loss * share, scale_wrt_gas=False)
        self.engine.step()
        per_pair = gammas if isinstance(gammas, list) else [gammas] * len(pairs)
        return _MicroStep(loss=out.loss.item(), margins=out.margins.tolist(),
                          gammas=[float(g) for g in per_pair], tokens=n_tokens)

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
