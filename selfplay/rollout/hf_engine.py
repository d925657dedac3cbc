"""Transformers `generate` as a rollout engine: the simple fallback (tests, no vLLM).

For a 2-layer toy model it is even faster than vLLM on CPU (vLLM's per-step overhead
dominates); for real models vLLM is ~2x faster.
"""
from __future__ import annotations

from typing import Iterable

import torch

from selfplay.data import check_prompt_lengths
from selfplay.rollout.base import RolloutEngine
from selfplay.tokens import pad_token_id
from selfplay.types import GREEDY_TEMPERATURE, Completion, Rollout, SamplingConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class HFEngine(RolloutEngine):
    def __init__(self, model_dir: str, *, dtype: str, max_model_len: int, batch_size: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.pad_id = pad_token_id(self.tokenizer)
        self.eos_id = self.tokenizer.eos_token_id

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int,
                 progress: bool = False) -> list[Rollout]:
        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        check_prompt_lengths([len(ids) for ids in encoded], self.max_model_len,
                             sampling.max_new_tokens, "prompts")
        rollouts = []
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for start in range(0, len(encoded), self.batch_size):
                batch = encoded[start:start + self.batch_size]
                width = max(len(ids) for ids in batch)
                input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in batch])
                mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=mask, do_sample=True,
                    temperature=max(sampling.temperature, GREEDY_TEMPERATURE), top_p=sampling.top_p, top_k=0,
                    max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                    pad_token_id=self.pad_id, eos_token_id=self.eos_id)
                new_tokens = out[:, width:].tolist()
                for row, ids in enumerate(batch):
                    samples = [self._completion(new_tokens[row * sampling.n + k])
                               for k in range(sampling.n)]
                    rollouts.append(Rollout(prompt_ids=list(ids), completions=samples))
        return rollouts

    def _completion(self, tokens: list[int]) -> Completion:
        if self.eos_id in tokens:  # keep the EOS: stopping was the model's choice
            tokens = tokens[:tokens.index(self.eos_id) + 1]
        return Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), tokens)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                params[name].copy_(tensor)

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + completion_ids])
        logps = self.model(ids).logits[0].float().log_softmax(-1)
        start = len(prompt_ids)
        return [logps[start - 1 + i, token].item() for i, token in enumerate(completion_ids)]
