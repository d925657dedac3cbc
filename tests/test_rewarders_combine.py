"""`combine` (weighted sum of rewarders) and `length_penalty`."""
import pytest

from rewarders.base import RewardError, load_rewarder, score_checked
from rewarders.length import LengthPenaltyRewarder


class Broken:
    """A part that fails the way a reward server does."""

    def score(self, prompts, completions, metadata):
        raise ConnectionError("reward server went away")


class TooFew:
    def score(self, prompts, completions, metadata):
        return [1.0] * (len(completions) - 1)


class Binds:
    """Records the policy handed to it."""

    def __init__(self):
        self.engine = None

    def bind_policy(self, engine):
        self.engine = engine

    def score(self, prompts, completions, metadata):
        return [0.0] * len(completions)


def test_length_penalty_is_zero_up_to_target_and_minus_one_from_max():
    rewarder = LengthPenaltyRewarder(target_chars=4, max_chars=8)
    completions = ["abc", "abcd", "  abcd  ", "abcdef", "abcdefgh", "a" * 100]
    assert rewarder.score([""] * 6, completions, [{}] * 6) == [0.0, 0.0, 0.0, -0.5, -1.0, -1.0]


def test_length_penalty_rejects_bad_bounds():
    with pytest.raises(RewardError, match="need 0 <= target_chars < max_chars"):
        load_rewarder("length_penalty", {"target_chars": 10, "max_chars": 10})


def test_combine_is_weighted_sum_of_verifier_and_length_penalty():
    combined = load_rewarder("combine", {"rewarders": [
        {"name": "letters"},
        {"name": "length_penalty", "kwargs": {"target_chars": 2, "max_chars": 6},
         "weight": 0.5}]})
    scores = score_checked(combined, "combine", ["p"] * 3, ["ab", "abxx", "abababab"],
                           [{"letters": "ab"}] * 3)
    # letters: 1, 0.5, 1; length penalty: 0, -0.5, -1 (halved by the weight)
    assert scores == [1.0, 0.25, 0.5]
    assert combined.metrics() == {"letters_mean": pytest.approx(2.5 / 3),
                                  "length_penalty_mean": -0.5}


@pytest.mark.parametrize("part, message", [
    ("Broken", "rewarder 'combine' → rewarder '{part}' raised ConnectionError: reward server"),
    ("TooFew", "rewarder 'combine' → rewarder '{part}' returned 1 scores for 2 completions"),
])
def test_failing_part_is_named(part, message):
    name = f"{__name__}:{part}"
    combined = load_rewarder("combine", {"rewarders": [{"name": "letters"}, {"name": name}]})
    with pytest.raises(RewardError) as caught:
        score_checked(combined, "combine", ["p", "q"], ["a", "b"], [{"letters": "a"}] * 2)
    assert str(caught.value).startswith(message.format(part=name))


def test_repeated_part_names_are_told_apart():
    name = f"{__name__}:Broken"
    combined = load_rewarder("combine", {"rewarders": [{"name": "letters"}, {"name": name},
                                                        {"name": name}]})
    with pytest.raises(RewardError, match=f"→ rewarder '{name}#1' raised"):
        score_checked(combined, "combine", ["p"], ["a"], [{"letters": "a"}])


@pytest.mark.parametrize("parts, message", [
    ([], "at least one part"),
    ([{"kwargs": {}}], r"rewarders\[0\]: expected \{name, kwargs, weight\}"),
    ([{"name": "letters", "wieght": 2}], r"rewarders\[0\]: unknown keys \['wieght'\]"),
    ([{"name": "letters", "weight": float("nan")}], r"rewarders\[0\].weight: nan"),
    ([{"name": "nope"}], "unknown rewarder 'nope'"),
])
def test_bad_parts_are_constructor_errors(parts, message):
    with pytest.raises(RewardError, match=message):
        load_rewarder("combine", {"rewarders": parts})


def test_bind_policy_reaches_parts_that_take_it():
    combined = load_rewarder("combine", {"rewarders": [{"name": "letters"},
                                                       {"name": f"{__name__}:Binds"}]})
    engine = object()
    combined.bind_policy(engine)
    assert combined.parts[1][1].plugin.engine is engine
