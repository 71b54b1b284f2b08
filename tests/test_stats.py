import math

import pytest
from scipy import stats as scipy_stats

from clcpmt.stats import diff_cell, gap_closed, mean_std, paired_difference, signed


def test_paired_difference_by_hand_and_against_scipy():
    a = {0: 70.0, 1: 72.0, 2: 75.0, 3: 99.0}  # seed 3 has no partner: left out
    b = {0: 68.0, 1: 71.0, 2: 71.0, 5: 10.0}
    d, se, n = paired_difference(a, b)
    # differences 2, 1, 4: mean 7/3, sample std sqrt(7/3), SE sqrt(7/3)/sqrt(3)
    assert n == 3 and d == pytest.approx(7 / 3) and se == pytest.approx(math.sqrt(7 / 3) / math.sqrt(3))
    t = scipy_stats.ttest_rel([70.0, 72.0, 75.0], [68.0, 71.0, 71.0]).statistic  # t = mean / SE of the differences
    assert d / se == pytest.approx(t)


def test_paired_difference_of_one_seed_and_of_none():
    d, se, n = paired_difference({0: 2.0}, {0: 1.5})
    assert (d, n) == (0.5, 1) and math.isnan(se)
    d, se, n = paired_difference({0: 2.0}, {1: 1.5})
    assert n == 0 and math.isnan(d) and math.isnan(se)


def test_cells():
    assert mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert mean_std([1.234]) == "1.23" and mean_std([]) == "-" and mean_std([math.nan]) == "-"
    assert diff_cell(1.234, 0.456, 3) == "+1.23 ± 0.46"
    assert diff_cell(-0.004, 0.84, 3) == "+0.00 ± 0.84"  # no negative zero
    assert signed(-0.004) == "+0.00" and signed(-0.006) == "-0.01" and signed(1.234) == "+1.23"
    assert diff_cell(-0.5, math.nan, 1) == "-0.50 (n = 1)" and diff_cell(math.nan, math.nan, 0) == "-"


def test_gap_closed_is_seed_paired():
    floor = {0: 40.0, 1: 50.0, 2: 60.0}
    method = {0: 45.0, 1: 52.0}  # seeds 0, 1: differences 5 and 2; the floor there averages 45
    assert gap_closed(method, floor, [65.0]) == pytest.approx(3.5 / (65.0 - 45.0))
    assert math.isnan(gap_closed(method, floor, []))
    assert math.isnan(gap_closed(method, floor, [40.0]))  # no gap to close
    assert math.isnan(gap_closed({7: 1.0}, floor, [65.0]))
