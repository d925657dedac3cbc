"""Token-level facts about a tokenizer that several parts need, in one place (no heavy imports)."""
from __future__ import annotations


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token, else 0.

    Padded positions are masked out everywhere, so any valid id works; many chat models ship
    without a pad token.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
