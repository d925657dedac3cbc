import math

import pytest

from rewarders.base import RewardError, load_rewarder, score_checked
from rewarders.letters import LetterGroupsRewarder, LettersRewarder


def test_letters_scores_share_of_allowed_characters():
    rewarder = LettersRewarder()
    scores = rewarder.score(["p"] * 4, ["abab", "a z", "", "xyz"], [{"letters": "ab"}] * 4)
    assert scores == [1.0, 0.5, 0.0, 0.0]


def test_letter_groups_scores_twice_the_in_group_share_minus_one():
    rewarder = LetterGroupsRewarder()
    rows = [{"group": "abcdefgh"}] * 4
    assert rewarder.score(["p"] * 4, ["abc", "a b", "aq", ""], rows) == [1.0, 1.0, 0.0, -1.0]
    assert rewarder.score(["p"], ["qqqq"], rows[:1]) == [-1.0]


def test_letter_groups_prompt_blind_policies_score_at_most_minus_a_third():
    # The task's point: ignoring the prompt cannot score above −1/3 on the balanced splits.
    import json
    import string
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "recipes" / "data" / "groups-heldout.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rewarder = LetterGroupsRewarder()
    for completion in [*string.ascii_lowercase, "aiq", "abcdefghijklmnopqrstuvwx"]:
        scores = rewarder.score([r["prompt"] for r in rows], [completion] * len(rows), rows)
        assert sum(scores) / len(scores) <= -1 / 3 + 1e-9, completion


def test_load_by_short_name_and_dotted_path():
    assert isinstance(load_rewarder("letters"), LettersRewarder)
    assert isinstance(load_rewarder("rewarders.letters:LettersRewarder", {"field": "x"}),
                      LettersRewarder)


def test_unknown_and_unimportable_names_are_clear():
    with pytest.raises(RewardError, match="unknown rewarder 'nope'; built-ins: combine, http, .*letters"):
        load_rewarder("nope")
    with pytest.raises(RewardError, match="cannot import 'no_such_pkg.mod:Cls': no module named "
                                          "'no_such_pkg'; install the package"):
        load_rewarder("no_such_pkg.mod:Cls")
    with pytest.raises(RewardError, match=r"cannot import 'rewarders.letters:Nope': module "
                                          r"'rewarders.letters' has no 'Nope' \(its classes: "
                                          r"LetterGroupsRewarder, LettersRewarder\); fix the name after the colon"):
        load_rewarder("rewarders.letters:Nope")
    with pytest.raises(RewardError, match="constructor failed"):
        load_rewarder("letters", {"bogus": 1})


class Returns:
    def __init__(self, value):
        self.value = value

    def score(self, prompts, completions, metadata):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize("value, message", [
    (ValueError("boom"), "rewarder 'mine' raised ValueError: boom"),
    ([1.0], "rewarder 'mine' returned 1 scores for 2 completions"),
    ([1.0, math.nan], "rewarder 'mine' returned nan for item 1"),
    ([1.0, math.inf], "rewarder 'mine' returned inf for item 1"),
    (["a", 1.0], "non-numeric"),
])
def test_bad_rewarder_output_names_rewarder_and_item(value, message):
    with pytest.raises(RewardError, match=message.replace("(", r"\(")):
        score_checked(Returns(value), "mine", ["p", "q"], ["x", "y"], [{}, {}])


def test_a_scoring_call_past_its_timeout_is_an_error_naming_the_rewarder():
    import threading

    release = threading.Event()

    class Hangs:
        def score(self, prompts, completions, metadata):
            release.wait()
            return [1.0] * len(completions)

    try:
        with pytest.raises(RewardError, match=r"rewarder 'slow' did not return within "
                                              r"reward.timeout_s=0.2 s"):
            score_checked(Hangs(), "slow", ["p"], ["x"], [{}], timeout_s=0.2)
    finally:
        release.set()
    assert score_checked(Hangs(), "slow", ["p"], ["x"], [{}], timeout_s=5) == [1.0]


def test_errors_inside_a_timed_call_keep_their_message():
    with pytest.raises(RewardError, match="rewarder 'mine' raised ValueError: boom"):
        score_checked(Returns(ValueError("boom")), "mine", ["p"], ["x"], [{}], timeout_s=5)


def test_rewarder_metrics_are_prefixed_numbers_and_a_failing_one_is_named():
    from rewarders.base import PluginRewarder, rewarder_metrics

    class Reports(Returns):
        def metrics(self):
            if isinstance(self.value, Exception):
                raise self.value
            return {"unparsed": 2, "share": 0.5}

    assert rewarder_metrics(PluginRewarder(Reports([1.0])), "mine") == {"reward_unparsed": 2.0,
                                                                        "reward_share": 0.5}
    assert rewarder_metrics(PluginRewarder(Returns([1.0])), "mine") == {}
    with pytest.raises(RewardError, match="rewarder 'mine': metrics\\(\\) failed: KeyError"):
        rewarder_metrics(PluginRewarder(Reports(KeyError("x"))), "mine")


def test_a_plugin_with_only_score_gets_the_whole_interface():
    from rewarders.base import Rewarder

    loaded = load_rewarder(f"{__name__}:Returns", {"value": [0.5]})
    assert isinstance(loaded, Rewarder) and loaded.score(["p"], ["c"], [{}]) == [0.5]
    loaded.bind_policy(object())  # a no-op, not an AttributeError
    assert loaded.metrics() == {} and loaded.unavailable({"row": 1}) is None
