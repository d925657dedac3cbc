"""`letters`: the programmatic reward of the tiny "echo letters" task (recipes/tiny.yaml)."""

from rewarders.base import Rewarder


def _characters(completion: str) -> list[str]:
    """The completion's characters with spaces left out: "a b a" and "aba" score the same."""
    return [c for c in completion if not c.isspace()]


class LettersRewarder(Rewarder):
    """Share of a completion's characters that are among the row's `letters`; 0 when empty.

    Spaces are ignored, so "a b a" and "aba" score the same.
    """

    def __init__(self, field: str = "letters"):
        self.field = field

    def score(self, prompts, completions, metadata):
        scores = []
        for completion, row in zip(completions, metadata):
            allowed = set(row[self.field])
            characters = _characters(completion)
            hits = sum(c in allowed for c in characters)
            scores.append(hits / len(characters) if characters else 0.0)
        return scores


class LetterGroupsRewarder(Rewarder):
    """The "letter groups" toy task (recipes/groups.yaml): answer in the prompt's letter group.

    The reward is ``2·s − 1``, where ``s`` is the share of the completion's characters (spaces
    ignored) that belong to the row's `group`; an empty completion scores −1. The prompts show
    letters of one of three equal groups, balanced over the set, so any policy that ignores the
    prompt scores at most 2·(1/3) − 1 = −1/3 on average: a rising reward means the model reads
    its prompt, not that it learned which characters are common.
    """

    def __init__(self, field: str = "group"):
        self.field = field

    def score(self, prompts, completions, metadata):
        scores = []
        for completion, row in zip(completions, metadata):
            group = set(row[self.field])
            characters = _characters(completion)
            if not characters:
                scores.append(-1.0)
                continue
            share = sum(c in group for c in characters) / len(characters)
            scores.append(2.0 * share - 1.0)
        return scores
