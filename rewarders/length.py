"""`length_penalty`: a penalty for long completions, to add to another reward with `combine`."""

from rewarders.base import Rewarder


class LengthPenaltyRewarder(Rewarder):
    """Penalty in [-1, 0]: 0 up to `target_chars` characters, falling linearly to -1 at `max_chars`.

    kwargs: `max_chars` (required): the length that earns the full -1 penalty, and anything
    longer too; `target_chars` (default 0): the length allowed for free. Length counts the
    completion's characters after stripping surrounding whitespace. Being a penalty (never a
    bonus), it leaves a verifier's ranking of completions of acceptable length unchanged
    when the two are summed with `combine`.
    """

    def __init__(self, max_chars: int, target_chars: int = 0):
        if not 0 <= target_chars < max_chars:
            raise ValueError(f"need 0 <= target_chars < max_chars, got target_chars="
                             f"{target_chars}, max_chars={max_chars}")
        self.max_chars, self.target_chars = max_chars, target_chars

    def score(self, prompts, completions, metadata):
        span = self.max_chars - self.target_chars
        return [-min(1.0, max(0, len(c.strip()) - self.target_chars) / span)
                for c in completions]
