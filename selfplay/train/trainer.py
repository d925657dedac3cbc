"""The DeepSpeed trainer: preference pairs in, one policy update out. With train/ranks.py the
only code that imports DeepSpeed.

The trainer never branches on the loss name: it asks the loss registry for a function and feeds
it the log-likelihoods of chosen and rejected completions, computed in one forward pass, in the
normalisation the loss declares (per-token means or sums).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy
import torch
from tqdm.auto import tqdm

from selfplay.losses import get_loss, scale_to_active
from selfplay.recipe import TrainConfig
from selfplay.runtime import choose_accelerator, quiet_stdout, train_precision
from selfplay.seeding import epoch_seed
from selfplay.train.logps import CompletionLogps, pad_batch
from selfplay.train.ranks import Ranks, fill_gaps, init_process_group, interleave
from selfplay.train.schedule import lr_multiplier, total_optimizer_steps
from selfplay.types import Pair, TrainStats

if TYPE_CHECKING:
    from selfplay.control import GammaPOTargets

PAIR_TARGETS_FILE = "pair_targets.json"


@dataclass
class _MicroStep:
    """What one micro-batch's forward/backward reports back to the update."""
    loss: float                  # the micro-batch's mean loss
    margins: list[float]         # per pair, before this step
    gammas: list[float]          # per pair, the γ the loss used
    tokens: int


def _frozen_copy(policy: CompletionLogps, precision: str) -> CompletionLogps:
    """The policy as it is now, for reference log-probs: no gradient, eval mode, working dtype."""
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    return reference.to(torch.bfloat16) if precision == "bf16" else reference


class Trainer:
    """Owns the policy, its optimizer and its learning-rate schedule.

    The schedule spans the whole run: `iterations` updates of `pairs_per_iteration` pairs each
    (`total_steps`).

    A loss that declares `needs_reference` (DPO) gets a frozen copy of the initial policy
    (`reference`: no gradient, eval mode, never updated): one more copy of the weights in the
    working dtype (fp32, or bf16 with `precision: bf16`), not sharded by ZeRO, and one no-grad
    forward per pair per update. Other losses build none and pay nothing. The reference is the
    weights in `model_dir`, so a resumed run rebuilds the same one.

    `pair_targets` (γ-PO) turns each micro-batch's margins and the iteration's γ into one target
    per pair; the trainer owns it because it changes with every micro-batch, and saves its state
    with the weights.
    """

    def __init__(self, model_dir: str, config: TrainConfig, *, loss_name: str,
                 beta: float | None, seed: int, pad_id: int, iterations: int,
                 pairs_per_iteration: int, reduction: str = "all",
                 pair_targets: GammaPOTargets | None = None):
        choose_accelerator()  # before deepspeed loads: it reads DS_ACCELERATOR once, at import
        import deepspeed
        from transformers import AutoModelForCausalLM

        total_steps = total_optimizer_steps(config, iterations, pairs_per_iteration)
        with quiet_stdout():  # DeepSpeed print()s "op built successfully" on every start
            init_process_group()
        self.ranks = Ranks()
        self.config = config
        self.precision, _ = train_precision(config.precision)  # "auto": decided on this machine
        self.loss_fn = get_loss(loss_name)
        self.beta = beta
        self.reduction = reduction  # the loss's average: over all pairs, or the active ones
        self.pair_targets = pair_targets
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
        self.reference = (_frozen_copy(policy, self.precision)
                          if self.loss_fn.needs_reference else None)
        # The fused kernel updates in place: no parameter-sized temporaries (less peak memory).
        optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay, fused=True)
        warmup = int(config.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, total_steps, warmup, config.lr_schedule))
        ds_config = {
            # Bookkeeping only (this trainer calls backward and step itself): each rank's share of
            # a micro-batch.
            "train_micro_batch_size_per_gpu": -(-config.micro_batch_size // self.ranks.world_size),
            "gradient_accumulation_steps": config.grad_accum,
            "gradient_clipping": config.max_grad_norm,
            "zero_optimization": {"stage": config.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        with quiet_stdout():  # it sets up DeepSpeed's comm backend when the engine made the group
            self.engine, _, _, _ = deepspeed.initialize(
                model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        if self.reference is not None:
            self.reference.to(self.engine.device)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses."""
        return self.engine.get_lr()[0]

    @property
    def rank(self) -> int:
        """This process's rank in the data-parallel world (0 for one process)."""
        return self.ranks.rank

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
    def _reference_scores(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen reference's log-probs of these pairs' chosen and rejected completions
        (fp32, in pair order), scored by this rank alone."""
        chosen, rejected = [], []
        for start in range(0, len(pairs), self.config.micro_batch_size):
            some = pairs[start:start + self.config.micro_batch_size]
            scores = self.reference(**self._batch(some)).float()
            chosen.append(scores[:len(some)])
            rejected.append(scores[len(some):])
        return torch.cat(chosen), torch.cat(rejected)

    def _reference_logps(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference's log-probs of every pair, on every rank (each rank scores its share);
        None when the loss needs no reference."""
        if self.reference is None:
            return None
        if not self.ranks.several:
            return self._reference_scores(pairs)
        own = self.ranks.own(range(len(pairs)))
        scores = self._reference_scores([pairs[i] for i in own]) if own else None
        chosen = torch.empty(len(pairs), dtype=torch.float32)
        rejected = torch.empty(len(pairs), dtype=torch.float32)
        for ids, part in self.ranks.all_gather(
                (own, None if scores is None else tuple(t.cpu() for t in scores))):
            if ids:
                chosen[ids], rejected[ids] = part
        return chosen.to(self.engine.device), rejected.to(self.engine.device)

    @torch.no_grad()
    def margins(self, pairs: list[Pair]) -> list[float]:
        """Current margins, without updating anything, in the loss's declared units (per-token
        means or sums): M = s(chosen) − s(rejected), or with a reference the loss's
        h = (s(chosen) − ref(chosen)) − (s(rejected) − ref(rejected)).

        Every rank calls it with the same pairs and gets all of them back, in order; each rank
        scores its share of each micro-batch.
        """
        out: list[float | None] = [None] * len(pairs)
        for start in range(0, len(pairs), self.config.micro_batch_size):
            ids = range(start, min(start + self.config.micro_batch_size, len(pairs)))
            own = self.ranks.own(ids)
            # A rank without a pair here still runs a forward: under ZeRO-3 it gathers
            # parameters together with the others.
            some = [pairs[i] for i in (own or ids[:1])]
            chosen, rejected, _ = self._logps(some)
            if self.reference is None:
                values = (chosen - rejected).float().tolist()
            else:
                ref_chosen, ref_rejected = self._reference_scores(some)
                # The loss's own margins, so these match TrainStats.margins' units exactly.
                values = self.loss_fn(chosen.float(), rejected.float(), gamma=0.0,
                                      beta=self.beta, ref_chosen_logps=ref_chosen,
                                      ref_rejected_logps=ref_rejected).margins.tolist()
            for i, value in zip(own, values):
                out[i] = value
        if self.ranks.several:
            out = fill_gaps(out, self.ranks.all_gather(out))
        return out

    # --- the update ------------------------------------------------------------------------
    def train(self, pairs: list[Pair], gamma: float, iteration: int,
              progress: bool = False) -> TrainStats:
        """One update on this iteration's pairs; each optimizer step averages its window's pairs.

        `gamma` is the iteration's γ; with `pair_targets` (γ-PO) it is the mean of the per-pair
        targets, which are computed from the whole micro-batch's margins.

        With N ranks every rank calls this with the same arguments: each micro-batch is split
        among them (rank r takes every N-th pair from the r-th), their gradients are averaged,
        and every rank returns the same TrainStats, which match one rank's up to summation order.
        """
        gamma = float(gamma)
        micro, world = self.config.micro_batch_size, self.ranks.world_size
        first_margins: list[float | None] = [None] * len(pairs)
        first_gammas: list[float | None] = [None] * len(pairs)
        reference = self._reference_logps(pairs)  # once per pair, before any step
        losses, tokens, steps = [], 0, 0
        self.engine.train()
        micro_batches = self.config.epochs_per_iteration * -(-len(pairs) // micro)
        bar = tqdm(total=micro_batches, desc=f"train iter {iteration}", leave=False,
                   disable=not progress or self.rank != 0, unit="batch")
        for epoch, window in self._windows(len(pairs), iteration):
            for micro_start in range(0, len(window), micro):
                ids = window[micro_start:micro_start + micro]
                own = self.ranks.own(ids)
                # A rank without a pair here still steps through forward and backward (on one
                # pair, with weight 0): DeepSpeed reduces gradients across ranks collectively.
                used = own or ids[:1]
                # Weight by the micro-batch's share of its window so that a short last window
                # still averages over its own pairs; × world size because DeepSpeed averages
                # the ranks' gradients.
                out = self._micro_step([pairs[i] for i in used], gamma,
                                       share=len(own) * world / len(window),
                                       boundary=micro_start + micro >= len(window),
                                       counted=bool(own),
                                       reference=None if reference is None else
                                       (reference[0][used], reference[1][used]))
                losses.append(out.loss * len(own))
                tokens += out.tokens
                bar.update(1)
                if epoch == 0:
                    for i, margin, pair_gamma in zip(own, out.margins, out.gammas):
                        first_margins[i], first_gammas[i] = margin, pair_gamma
            steps += 1
        bar.close()
        if self.ranks.several:
            parts = self.ranks.all_gather((losses, tokens, first_margins, first_gammas))
            losses = [loss for part in parts for loss in part[0]]
            tokens = sum(part[1] for part in parts)
            first_margins = fill_gaps(first_margins, [part[2] for part in parts])
            first_gammas = fill_gaps(first_gammas, [part[3] for part in parts])
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

    def _pair_gammas(self, gamma: float, margins: list[float], counted: bool
                     ) -> float | list[float]:
        """γ for this rank's pairs: `gamma` itself, or with `pair_targets` the targets computed
        from the whole micro-batch's margins (each weighed against the others) — every rank
        computes the same targets and keeps its share."""
        if self.pair_targets is None:
            return gamma
        if not self.ranks.several:
            return self.pair_targets(margins, gamma)
        whole = interleave(self.ranks.all_gather(margins if counted else []))
        targets = self.pair_targets(whole, gamma)
        return targets[self.rank::self.ranks.world_size] if counted else targets[:1]

    def _loss(self, chosen: torch.Tensor, rejected: torch.Tensor, gammas: float | list[float],
              reference: tuple[torch.Tensor, torch.Tensor] | None, counted: bool):
        """The loss of this rank's share; an `active` reduction over several ranks divides by
        the whole micro-batch's active count (the shares' own counts, summed)."""
        ref_chosen, ref_rejected = reference if reference is not None else (None, None)
        several_active = self.reduction == "active" and self.ranks.several
        out = self.loss_fn(chosen, rejected, gamma=gammas, beta=self.beta,
                           ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected,
                           reduction="all" if several_active else self.reduction)
        if not several_active:
            return out.loss, out
        counts = self.ranks.all_gather((len(chosen), out.n_active) if counted else (0, 0))
        pairs, active = (sum(count[k] for count in counts) for k in (0, 1))
        return scale_to_active(out.loss, pairs, active), out

    def _micro_step(self, pairs: list[Pair], gamma: float, *, share: float, boundary: bool,
                    counted: bool = True,
                    reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> _MicroStep:
        """Forward, loss, backward and (at a window's `boundary`) the optimizer step of one
        micro-batch (this rank's share of it); its gradient counts with weight `share` in its
        window's average. `counted` False: a stand-in pair whose loss counts for nothing.
        `reference`: the frozen reference's chosen and rejected log-probs of these pairs."""
        chosen, rejected, n_tokens = self._logps(pairs)
        chosen, rejected = chosen.float(), rejected.float()
        gammas = self._pair_gammas(gamma, (chosen - rejected).detach().tolist(), counted)
        loss, out = self._loss(chosen, rejected, gammas, reference, counted)
        self.ranks.check_in()  # before DeepSpeed's reduction, which would wait forever
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss * share, scale_wrt_gas=False)
        self.engine.step()
        if not counted:
            return _MicroStep(loss=0.0, margins=[], gammas=[], tokens=0)
        per_pair = gammas if isinstance(gammas, list) else [gammas] * len(pairs)
        return _MicroStep(loss=loss.item(), margins=out.margins.tolist(),
                          gammas=[float(g) for g in per_pair], tokens=n_tokens)

    # --- weights out -----------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module.model

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their Hugging Face names, gathered if ZeRO-3 shards them
        (then every rank must iterate to the end: each gather is collective)."""
        import deepspeed

        for name, param in self.model.named_parameters():
            if self.config.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach().clone()
            else:
                yield name, param.detach()

    def weight_spec(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, full shape, dtype) of each tensor `named_weights()` yields, in its order,
        without gathering anything (ZeRO-3 keeps a sharded parameter's shape in `ds_shape`)."""
        return [(name, tuple(getattr(param, "ds_shape", param.shape)), param.dtype)
                for name, param in self.model.named_parameters()]

    def state_dict_numpy(self) -> dict[str, numpy.ndarray] | None:
        """The full weights as NumPy arrays (copies) on rank 0, None on the others; every rank
        must call it. The working dtype, except bf16 which NumPy lacks: upcast to fp32, exactly."""
        state: dict[str, numpy.ndarray] = {}
        for name, tensor in self.named_weights():
            if self.rank == 0:
                dtype = torch.float32 if tensor.dtype == torch.bfloat16 else tensor.dtype
                state[name] = tensor.to("cpu", dtype=dtype, copy=True).numpy()
        return state if self.rank == 0 else None

    def export(self, out_dir: str, tokenizer) -> None:
        """A Hugging Face directory that transformers and vLLM load as is. Every rank must call
        it; rank 0 writes, and it returns once the directory is complete."""
        state = {}
        for name, tensor in self.named_weights():
            if self.rank == 0:
                state[name] = tensor.to(torch.float32).clone()
        if self.rank == 0:
            self.model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
        self.ranks.barrier()

    # --- checkpoint ------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """Model, optimizer, schedule and per-pair-target state. Every rank must call it with the
        same directory: each writes its own optimizer (and under ZeRO-3 parameter) shards into
        it; rank 0 the targets' state, which every rank holds the same."""
        self.engine.save_checkpoint(directory, tag="trainer", save_latest=False)
        if self.pair_targets is not None and self.rank == 0:
            (Path(directory) / PAIR_TARGETS_FILE).write_text(
                json.dumps(self.pair_targets.state_dict()))

    def load(self, directory: str) -> None:
        """What `save` wrote, with the same world size and ZeRO stage; every rank must call it."""
        path, _ = self.engine.load_checkpoint(directory, tag="trainer",
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"no trainer state in {directory}")
        if self.pair_targets is not None:
            saved = Path(directory) / PAIR_TARGETS_FILE
            if not saved.exists():
                raise RuntimeError(f"no per-pair target (γ-PO) state in {directory}")
            self.pair_targets.load_state_dict(json.loads(saved.read_text()))
