"""selfplay/stats.py: the active share and the paired t interval."""
import math

import pytest

from selfplay.stats import active_fraction, holm, paired, t_cdf, t_quantile


def test_active_fraction_is_the_share_of_pairs_below_their_gamma():
    # 0.1 < 0.5 and 0.2 < 0.3 are active; 0.5 is not below 0.5; 0.9 is not below 0.3.
    assert active_fraction([0.1, 0.5, 0.2, 0.9], [0.5, 0.5, 0.3, 0.3]) == 0.5


def test_active_fraction_of_no_pairs_is_none():
    assert active_fraction([], []) is None


def test_active_fraction_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="3 margins but 2 gammas"):
        active_fraction([0.1, 0.2, 0.3], [0.5, 0.5])


@pytest.mark.parametrize("df, q975", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t_quantile_matches_the_table(df, q975):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_cdf(q975, df) == pytest.approx(0.975, abs=1e-5)


def test_paired_interval_uses_students_t():
    # mean 2, sd √(4/3), n 4: se 0.577, t 3.46 on 3 df; half-width t(0.975, 3) · se.
    result = paired([1.0, 1.0, 3.0, 3.0])
    se = math.sqrt(4 / 3) / 2
    assert result["mean"] == 2.0 and result["t"] == pytest.approx(2.0 / se)
    assert result["half_width"] == pytest.approx(3.18245 * se, rel=1e-5)
    assert result["ci95"] == pytest.approx([2.0 - result["half_width"], 2.0 + result["half_width"]])
    assert 0.03 < result["p"] < 0.05  # between t(0.975, 3) = 3.18 and t(0.99, 3) = 4.54


def test_one_difference_has_no_interval():
    result = paired([0.3])
    assert result["mean"] == 0.3 and math.isnan(result["half_width"]) and math.isnan(result["t"])


def test_holm_steps_down_and_stays_monotone():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06,
                                                                      "c": 0.06})
