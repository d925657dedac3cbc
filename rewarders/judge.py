"""`judge`: an LLM rates each completion (LLM-as-judge; self-rewarding when it is the policy)."""
from __future__ import annotations

import re

from rewarders.base import Rewarder
from selfplay.types import GREEDY_TEMPERATURE
from selfplay.api import SamplingConfig, build_engine, format_prompt

JUDGE_TEMPLATE = """\
Rate how well the response answers the request, from {min_score} (useless) to {max_score} \
(excellent).

Request:
{prompt}

Response:
{completion}

Give a one-sentence reason, then end with "Score: N", where N is an integer from {min_score} \
to {max_score}."""

SCORE_LINE = re.compile(r"score\s*[:=]?\s*(\d+)", re.IGNORECASE)
INTEGER = re.compile(r"\d+")
TRUNCATED = " [truncated]"


def parse_score(text: str, min_score: int, max_score: int) -> int | None:
    """The last "Score: N" in the text, else its last integer; None when absent or out of range."""
    found = SCORE_LINE.findall(text) or INTEGER.findall(text)
    if not found:
        return None
    value = int(found[-1])
    return value if min_score <= value <= max_score else None


class JudgeRewarder(Rewarder):
    """An LLM's rating of each completion, from a judging prompt, normalised to [0, 1].

    The judge generates a reply to `template` (default `JUDGE_TEMPLATE`: a rating from
    `min_score` to `max_score` ending in "Score: N"), formatted with the engine tokenizer's chat
    template when it has one. The score is the last "Score: N" in the reply, else its last
    integer, mapped to (N - min_score) / (max_score - min_score); a reply without one in range
    scores `fallback` and is counted in `unparsed` (and `last_unparsed` for the latest call).
    A completion too long for the judge's context keeps its start and is marked "[truncated]";
    an item whose prompt alone is too long is not judged and counts as unparsed.

    kwargs: `model` (default None: the policy itself, handed over by the loop through
    `bind_policy`, i.e. self-rewarding; a model directory: a separate judge, built with
    `engine` (default "hf"), `dtype` (default "float32"), `max_model_len` (default 2048) and
    `kv_cache_gb` (default 1.0)). `max_new_tokens` (default 64). `temperature` (default 0.0,
    greedy). `seed` (default 0). `template` (default None: `JUDGE_TEMPLATE`): str.format text
    with {prompt} and {completion}, optionally {min_score} and {max_score}; literal braces
    doubled. `min_score`, `max_score` (default 1, 10). `fallback` (default 0.0).
    """

    def __init__(self, model: str | None = None, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, template: str | None = None,
                 min_score: int = 1, max_score: int = 10, fallback: float = 0.0,
                 engine: str = "hf", dtype: str = "float32", max_model_len: int = 2048,
                 kv_cache_gb: float = 1.0):
        if not min_score < max_score:
            raise ValueError(f"need min_score < max_score, got {min_score}, {max_score}")
        self.min_score, self.max_score, self.fallback = min_score, max_score, fallback
        self.template = template or JUDGE_TEMPLATE
        if "{completion}" not in self.template:
            raise ValueError("template: must contain {completion}")
        self._render("", "")  # a template with unknown {fields} fails now, not mid-run
        self.sampling = SamplingConfig(n=1, max_new_tokens=max_new_tokens,
                                       temperature=temperature or GREEDY_TEMPERATURE)
        self.seed = seed
        self.unparsed = self.last_unparsed = 0
        self.engine = None
        if model is not None:
            self.engine = build_engine(engine, model, dtype=dtype, seed=seed,
                                       max_model_len=max_model_len, kv_cache_gb=kv_cache_gb)
        self.owns_engine = self.engine is not None

    def metrics(self) -> dict[str, float]:
        """Replies of the last call that gave no score in range (they scored `fallback`)."""
        return {"judge_unparsed": self.last_unparsed}

    def bind_policy(self, engine) -> None:
        """Judge with the policy's rollout engine, unless a separate judge `model` was given."""
        if not self.owns_engine:
            self.engine = engine

    def _render(self, prompt: str, completion: str) -> str:
        return self.template.format(prompt=prompt, completion=completion,
                                    min_score=self.min_score, max_score=self.max_score)

    def _judge_prompt(self, prompt: str, completion: str) -> str | None:
        """The text the judge generates from; None when even an empty completion won't fit."""
        tokenizer = self.engine.tokenizer
        text = format_prompt(tokenizer, self._render(prompt, completion), True)
        room = self.engine.max_model_len - self.sampling.max_new_tokens
        length = len(tokenizer(text)["input_ids"])
        if length <= room:
            return text
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        marker = len(tokenizer(TRUNCATED, add_special_tokens=False)["input_ids"])
        # A few tokens of slack: re-tokenising a cut text may not add up exactly.
        keep = len(completion_ids) - (length - room) - marker - 4
        if keep <= 0:
            return None
        cut = tokenizer.decode(completion_ids[:keep], skip_special_tokens=True) + TRUNCATED
        text = format_prompt(tokenizer, self._render(prompt, cut), True)
        return text if len(tokenizer(text)["input_ids"]) <= room else None

    def score(self, prompts, completions, metadata):
        if self.engine is None:
            raise RuntimeError("judge: no model to judge with; give kwargs.model (a model "
                               "directory) or run it inside the loop, which binds the policy")
        texts = [self._judge_prompt(p, c) for p, c in zip(prompts, completions)]
        fits = [i for i, text in enumerate(texts) if text is not None]
        replies = [None] * len(texts)
        rollouts = (self.engine.generate([texts[i] for i in fits], self.sampling, seed=self.seed)
                    if fits else [])
        for index, rollout in zip(fits, rollouts):
            replies[index] = rollout.completions[0].text
        scores, self.last_unparsed = [], 0
        span = self.max_score - self.min_score
        for reply in replies:
            value = None if reply is None else parse_score(reply, self.min_score, self.max_score)
            if value is None:
                self.last_unparsed += 1
                scores.append(self.fallback)
            else:
                scores.append((value - self.min_score) / span)
        self.unparsed += self.last_unparsed
        return scores
