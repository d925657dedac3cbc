"""The one pad-id fallback: pad token, else end-of-sequence token, else 0."""
from types import SimpleNamespace

import pytest

from selfplay.tokens import pad_token_id


@pytest.mark.parametrize("pad, eos, expected", [(5, 2, 5), (None, 2, 2), (None, None, 0),
                                                (0, 7, 0)])
def test_pad_token_id_falls_back_to_eos_then_zero(pad, eos, expected):
    assert pad_token_id(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == expected
