"""`judge`: parsing and prompting with a fake engine; one real call with the tiny model."""
import pytest

from rewarders.base import RewardError, load_rewarder, score_checked
from rewarders.judge import GREEDY_TEMPERATURE, JUDGE_TEMPLATE, parse_score
from selfplay.api import Completion, Rollout, RolloutEngine
from selfplay.tiny_model import build_tokenizer


class FakeEngine(RolloutEngine):
    """Answers the n-th prompt with replies[n]; records what it was asked. Only the interface
    that RolloutEngine declares, so the judge cannot lean on an engine's internals."""

    def __init__(self, replies, chat_template=None, max_model_len=4096):
        self.replies = replies
        self.tokenizer = build_tokenizer()
        self.tokenizer.chat_template = chat_template
        self.max_model_len = max_model_len
        self.calls = []

    def generate(self, prompts, sampling, seed, progress=False):
        self.calls.append((prompts, sampling, seed))
        return [Rollout([], [Completion(reply, [])]) for reply in self.replies[:len(prompts)]]

    def update_weights(self, named_tensors):
        raise NotImplementedError

    def sequence_logprobs(self, prompt_ids, completion_ids):
        raise NotImplementedError


def judge_with(engine, **kwargs):
    judge = load_rewarder("judge", kwargs)
    judge.bind_policy(engine)
    return judge


@pytest.mark.parametrize("reply, expected", [
    ("clear and correct. Score: 8", 8),
    ("Score: 8/10", 8),  # "Score: N" wins over a later integer
    ("score=3, though 9 was tempting", 3),
    ("I would say 7", 7),
    ("Score: 12", None),
    ("Score: 0", None),
    ("no idea", None),
    ("", None),
])
def test_parse_score(reply, expected):
    assert parse_score(reply, 1, 10) == expected


def test_scores_are_normalised_and_unparsed_replies_fall_back():
    engine = FakeEngine(["Score: 10", "Score: 1", "garbage", "Score: 4"])
    judge = judge_with(engine, fallback=-1.0, seed=7)
    scores = judge.score(["p"] * 4, ["a", "b", "c", "d"], [{}] * 4)
    assert scores == [1.0, 0.0, -1.0, pytest.approx(3 / 9)]
    assert judge.last_unparsed == 1 and judge.metrics() == {"judge_unparsed": 1}
    judge.score(["p"], ["a"], [{}])
    assert (judge.unparsed, judge.last_unparsed) == (1, 0)
    _, sampling, seed = engine.calls[0]
    assert (sampling.n, sampling.temperature, sampling.max_new_tokens, seed) == (
        1, GREEDY_TEMPERATURE, 64, 7)


def test_default_prompt_holds_prompt_completion_and_range():
    engine = FakeEngine(["Score: 5"])
    judge_with(engine, min_score=0, max_score=5).score(["what is 2+2?"], ["4"], [{}])
    expected = JUDGE_TEMPLATE.format(prompt="what is 2+2?", completion="4", min_score=0,
                                     max_score=5)
    assert engine.calls[0][0] == [expected]
    assert "from 0 (useless) to 5" in expected and expected.endswith('"Score: N", where N is '
                                                                     "an integer from 0 to 5.")


def test_custom_template_and_chat_template_are_applied():
    engine = FakeEngine(["Score: 5"], chat_template=(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"))
    judge_with(engine, template="judge {completion} for {prompt}").score(["q"], ["a"], [{}])
    assert engine.calls[0][0] == ["<user>judge a for q<assistant>"]


def test_long_completion_is_cut_to_fit_and_an_oversized_prompt_is_not_judged():
    engine = FakeEngine(["Score: 10"] * 2, max_model_len=200)
    judge = judge_with(engine, template="{prompt}|{completion}", max_new_tokens=50)
    scores = judge.score(["q", "x" * 400], ["a" * 1000, "short"], [{}] * 2)
    (sent,) = engine.calls[0][0]  # the second item was never sent
    assert sent.startswith("q|aaa") and sent.endswith(" [truncated]")
    assert len(engine.tokenizer(sent)["input_ids"]) + 50 <= 200
    assert scores == [1.0, 0.0] and judge.last_unparsed == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"template": "rate {prompt}"}, "template: must contain {completion}"),
    ({"template": "{completion} {answer}"}, "KeyError: 'answer'"),
    ({"min_score": 5, "max_score": 5}, "need min_score < max_score"),
])
def test_bad_kwargs_are_constructor_errors(kwargs, message):
    with pytest.raises(RewardError, match=message):
        load_rewarder("judge", kwargs)


def test_without_model_or_policy_the_error_says_what_to_do():
    with pytest.raises(RewardError, match="rewarder 'judge' raised RuntimeError: judge: no "
                                          "model to judge with; give kwargs.model"):
        score_checked(load_rewarder("judge"), "judge", ["p"], ["c"], [{}])


def test_a_separate_judge_model_ignores_the_bound_policy(tiny_model_dir):
    judge = load_rewarder("judge", {"model": str(tiny_model_dir), "max_new_tokens": 8,
                                    "max_model_len": 512})
    own = judge.engine
    judge.bind_policy(FakeEngine([]))
    assert judge.engine is own


def test_tiny_policy_judges_end_to_end(tiny_model_dir):
    from selfplay.rollout.hf_engine import HFEngine

    judge = judge_with(HFEngine(str(tiny_model_dir), dtype="float32", max_model_len=512),
                       max_new_tokens=8)
    prompts, completions = ["say ab", "count"] * 2, ["ab", "1 2 3", "ba", "x" * 600]
    scores = score_checked(judge, "judge", prompts, completions, [{}] * 4)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    assert judge.score(prompts, completions, [{}] * 4) == scores  # greedy: repeatable
