"""`reward_model`: scores from a local sequence-classification reward model."""
from __future__ import annotations

from pathlib import Path

from rewarders.base import Rewarder

DTYPES = ("float32", "bfloat16", "float16")


class RewardModelRewarder(Rewarder):
    """Scores from a local Hugging Face `AutoModelForSequenceClassification` directory.

    kwargs: `path` (required): the model directory, whose config's architectures must end in
    `ForSequenceClassification`. `batch_size` (default 8). `max_length` (default 1024): longer
    inputs lose tokens from the left, i.e. the start of the prompt (a leading BOS is kept), so
    the end of the completion, where the model reads off its score, is always seen.
    `device` (default "auto": cuda when available, else cpu). `dtype` (default "float32";
    also "bfloat16", "float16"). `chat_template` (default True): when the tokenizer has a chat
    template, the input is [user: prompt, assistant: completion] formatted with it, else the
    prompt followed directly by the completion. `label` (default None: the last label) picks
    the logit to use when the model has several labels; with one label its logit is the score.
    """

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 1024,
                 device: str = "auto", dtype: str = "float32", chat_template: bool = True,
                 label: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"path: no model directory (with config.json) at {path}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        architectures = AutoConfig.from_pretrained(path).architectures or []
        # A causal LM would load too, with a random score head: refuse it rather than score noise.
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(f"path: {path} holds {architectures or 'no architectures'}, not a "
                             "sequence-classification reward model (*ForSequenceClassification)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=getattr(torch, dtype)).to(device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        if self.model.config.pad_token_id is None:  # the model finds each row's end by it
            self.model.config.pad_token_id = self.pad_id
        num_labels = self.model.config.num_labels
        self.label = 0 if num_labels == 1 else (num_labels - 1 if label is None else label)
        if not 0 <= self.label < num_labels:
            raise ValueError(f"label: {label} is out of range for {num_labels} labels")
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.use_chat_template = chat_template and bool(self.tokenizer.chat_template)

    def encode(self, prompt: str, completion: str) -> list[int]:
        """The token ids the model scores, truncated from the left to `max_length`."""
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt},
                 {"role": "assistant", "content": completion}], tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # template has BOS
        else:
            ids = self.tokenizer(prompt + completion)["input_ids"]
        if len(ids) <= self.max_length:
            return ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[0] == bos:
            return [bos] + ids[len(ids) - self.max_length + 1:]
        return ids[len(ids) - self.max_length:]

    def score(self, prompts, completions, metadata):
        import torch

        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        scores = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                batch = encoded[start:start + self.batch_size]
                width = max(len(ids) for ids in batch)
                # Right padding keeps each row's positions as they are without a batch.
                input_ids = torch.tensor([ids + [self.pad_id] * (width - len(ids))
                                          for ids in batch], device=self.device)
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch],
                                    device=self.device)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                scores.extend(logits[:, self.label].float().tolist())
        return scores
