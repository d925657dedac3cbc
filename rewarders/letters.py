"""`letters`: the programmatic reward of the tiny "echo letters" task (recipes/tiny.yaml)."""


class LettersRewarder:
    """Share of a completion's characters that are among the row's `letters`; 0 when empty.

    Spaces are ignored, so "a b a" and "aba" score the same.
    """

    def __init__(self, field: str = "letters"):
        self.field = field

    def score(self, prompts, completions, metadata):
        scores = []
        for completion, row in zip(completions, metadata):
            allowed = set(row[self.field])
            characters = [c for c in completion if not c.isspace()]
            hits = sum(c in allowed for c in characters)
            scores.append(hits / len(characters) if characters else 0.0)
        return scores
