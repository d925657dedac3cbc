"""Completion log-likelihoods (per-token means or sums) without a vocabulary-sized tensor per batch.

A plain implementation materialises fp32 log-softmax over the whole vocabulary for every token
(12.8 GB for SmolLM2-135M on 8 pairs x 300 tokens). Here the LM head runs only on completion
positions, in chunks, and each chunk's logits are recomputed in backward instead of kept (for
a plain linear head by a hand-written backward that works on them in place).

Skipping the model's own forward also skips what it does to the head's output: `LogitTransform`
re-applies the post-processing of the models we know (Gemma's soft-capping, Cohere's and
Granite's logit scaling), and `CompletionLogps` checks itself against the model's forward once,
refusing a model whose logits it does not reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from selfplay.errors import UserError


class UnsupportedModelError(UserError):
    """The model changes its logits in a way completion log-probs would not reproduce."""

    resumable = False


@dataclass(frozen=True)
class LogitTransform:
    """What a causal LM does to its LM head's output before the softmax, in its order."""
    scale: float | None = None      # Cohere: logits * logit_scale
    divisor: float | None = None    # Granite: logits / logits_scaling
    soft_cap: float | None = None   # Gemma 2/3, nanochat: cap * tanh(logits / cap)

    @classmethod
    def of(cls, model: torch.nn.Module) -> "LogitTransform":
        config = model.config
        return cls(scale=_number(getattr(model, "logit_scale", None)),
                   divisor=_number(getattr(config, "logits_scaling", None)),
                   soft_cap=_number(getattr(config, "final_logit_softcapping", None)))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            logits = logits * self.scale
        if self.divisor is not None:
            logits = logits / self.divisor
        if self.soft_cap is not None:
            logits = torch.tanh(logits / self.soft_cap) * self.soft_cap
        return logits


def _number(value) -> float | None:
    """A plain number from a config or model attribute; None for absent, null or non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def pad_batch(sequences: list[list[int]], completion_starts: list[int], pad_id: int
              ) -> dict[str, torch.Tensor]:
    """Right-pads token sequences; `completion_mask` marks completion tokens (not prompt, not pad)."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, (tokens, start) in enumerate(zip(sequences, completion_starts)):
        input_ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, :len(tokens)] = 1
        completion_mask[row, start:len(tokens)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask}


def _chunk_token_logps(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module,
                       transform: LogitTransform | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if transform is not None:
        logits = transform(logits)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class _PlainHeadTokenLogps(torch.autograd.Function):
    """log p(target) of one chunk of positions under a plain linear LM head (no bias, no logit
    post-processing): the same values and gradients as `_chunk_token_logps` under a checkpoint,
    with less work. Forward keeps only the log-partition; backward recomputes the logits once
    and turns them into the gradient in place (softmax, scale, one-hot), where autograd's
    recompute would redo the whole log-sum-exp and allocate a softmax and a one-hot of the
    chunk's logits' size besides."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        logits = (hidden @ weight.t()).float()
        log_partition = logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, targets, log_partition)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_partition

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, log_partition = ctx.saved_tensors
        # d out / d logits = one_hot(target) − softmax(logits), times the incoming gradient.
        grad = (hidden @ weight.t()).float()
        grad.sub_(log_partition.unsqueeze(-1)).exp_().mul_(-grad_out.unsqueeze(-1))
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_out.unsqueeze(-1))
        grad = grad.to(hidden.dtype)
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def _is_plain_head(lm_head: torch.nn.Module) -> bool:
    """A bias-free nn.Linear whose weight is a whole tensor (ZeRO-3 shards parameters and gathers
    them in module hooks, which reading `.weight` directly would bypass)."""
    return (type(lm_head) is torch.nn.Linear and lm_head.bias is None
            and not hasattr(lm_head.weight, "ds_id"))


class CompletionLogps(torch.nn.Module):
    """Wraps a causal LM; forward returns each sequence's log-prob of its completion tokens: the
    mean per token (`length_normalised`, the default) or the sum.

    Being the module DeepSpeed wraps, it keeps the HF model as `.model` so weights export under
    their usual names. Raises `UnsupportedModelError` when its log-probs differ from the model's
    own forward (checked once, on a few tokens).
    """

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 1024,
                 length_normalised: bool = True):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.length_normalised = length_normalised
        transform = LogitTransform.of(model)
        self.transform = None if transform == LogitTransform() else transform
        self._check_against_model_forward()

    @torch.no_grad()
    def _check_against_model_forward(self, tolerance: float = 1e-3) -> None:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        input_ids = (torch.arange(12) * 7919 % vocab).unsqueeze(0)  # any tokens will do
        device = next(self.model.parameters()).device
        batch = {"input_ids": input_ids.to(device),
                 "attention_mask": torch.ones_like(input_ids).to(device),
                 "completion_mask": torch.ones_like(input_ids, dtype=torch.bool).to(device)}
        was_training = self.model.training
        self.model.eval()
        try:
            ours = self(**batch)[0].item()
            if not self.length_normalised:
                ours /= input_ids.shape[1] - 1  # compare per token: the tolerance stays meaningful
            logits = self.model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).logits.float()
        finally:
            self.model.train(was_training)
        theirs = logits[0, :-1].log_softmax(-1).gather(
            -1, batch["input_ids"][0, 1:].unsqueeze(-1)).mean().item()
        if not abs(ours - theirs) <= tolerance:
            raise UnsupportedModelError(
                f"model class {type(self.model).__name__} post-processes its logits in a way "
                f"selfplay does not know (completion log-prob {ours:.4f}, the model's own "
                f"forward {theirs:.4f}); supported: plain LM heads, final_logit_softcapping, "
                "logit_scale, logits_scaling")

    def forward(self, input_ids, attention_mask, completion_mask):
        hidden = self.model.base_model(input_ids=input_ids,
                                       attention_mask=attention_mask).last_hidden_state
        # Position t predicts token t+1: a completion token is scored from the position before it.
        target_mask = completion_mask[:, 1:]
        selected = hidden[:, :-1][target_mask]
        targets = input_ids[:, 1:][target_mask]
        lm_head = self.model.get_output_embeddings()
        plain = self.transform is None and _is_plain_head(lm_head)
        pieces = []
        for start in range(0, selected.shape[0], self.chunk_tokens):
            end = start + self.chunk_tokens
            if plain and torch.is_grad_enabled():
                pieces.append(_PlainHeadTokenLogps.apply(selected[start:end], lm_head.weight,
                                                         targets[start:end]))
            elif torch.is_grad_enabled():
                pieces.append(checkpoint(_chunk_token_logps, selected[start:end], targets[start:end],
                                         lm_head, self.transform, use_reentrant=False))
            else:
                pieces.append(_chunk_token_logps(selected[start:end], targets[start:end], lm_head,
                                                 self.transform))
        token_logps = torch.cat(pieces)
        rows = torch.arange(input_ids.shape[0]).unsqueeze(1).expand_as(target_mask)[target_mask]
        sums = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype).index_add(0, rows,
                                                                                  token_logps)
        if not self.length_normalised:
            return sums
        return sums / target_mask.sum(1).clamp(min=1)
