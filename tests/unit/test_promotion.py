import math
from fractions import Fraction

import pytest

from core.promotion import (
    ContingencyTable,
    contingency_table,
    decide_promotion,
    mcnemar_exact_p_value,
)


def exact_reference(b, c):
    """The definition, in exact integers (slow for large n; fine as a reference)."""
    n = b + c
    if n == 0:
        return 1.0
    tail, term = 0, 1
    for k in range(min(b, c) + 1):  # C(n, k) by C(n, k+1) = C(n, k) * (n-k) / (k+1), exactly
        tail += term
        term = term * (n - k) // (k + 1)
    assert term == math.comb(n, min(b, c) + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


# --- McNemar exact p-values -------------------------------------------------------------------------------

@pytest.mark.parametrize("b, c, expected", [
    (0, 5, 0.0625),  # 2 / 32
    (1, 9, 0.021484375),  # 2 * (1 + 10) / 1024
    (3, 6, 0.5078125),  # 2 * (1 + 9 + 36 + 84) / 512
    (0, 1, 1.0),  # 2 * 1/2, capped
    (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
    (10, 10, 1.0),
    (0, 0, 1.0),
])
def test_known_exact_p_values(b, c, expected):
    assert mcnemar_exact_p_value(b, c) == pytest.approx(expected, rel=1e-13, abs=0)


def test_symmetric_in_b_and_c():
    for b, c in [(0, 5), (1, 9), (3, 6), (17, 40), (4900, 5100)]:
        assert mcnemar_exact_p_value(b, c) == mcnemar_exact_p_value(c, b)


def test_matches_exact_integer_definition_over_a_grid():
    for b in range(41):
        for c in range(41):
            assert mcnemar_exact_p_value(b, c) == pytest.approx(exact_reference(b, c), rel=1e-12), (b, c)


@pytest.mark.parametrize("b, c", [(480, 520), (300, 700), (1000, 1003), (0, 1500), (999, 1001)])
def test_matches_exact_integer_definition_for_moderate_n(b, c):
    assert mcnemar_exact_p_value(b, c) == pytest.approx(exact_reference(b, c), rel=1e-11)


def test_large_case_near_the_normal_approximation():
    # z = (c - b - 1) / sqrt(n) with continuity correction: (200 - 1) / 100 = 1.99; two-sided tail ~ 0.0466.
    p = mcnemar_exact_p_value(4900, 5100)
    normal = math.erfc(1.99 / math.sqrt(2))
    assert abs(p - normal) < 1e-3
    assert p == pytest.approx(exact_reference(4900, 5100), rel=1e-10)


def test_large_case_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(4900, 5100), (49_000, 51_000), (49_900, 50_100), (49_999, 50_001), (12, 30), (3, 6)]:
        assert mcnemar_exact_p_value(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-8)


@pytest.mark.parametrize("b, c", [(50_000, 50_000), (49_999, 50_001), (49_000, 51_000), (0, 100_000),
                                  (1, 99_999), (30_000, 70_000), (60_000, 60_001)])
def test_n_of_100_000_does_not_overflow(b, c):
    p = mcnemar_exact_p_value(b, c)
    assert 0.0 <= p <= 1.0
    assert not math.isnan(p)


def test_p_value_shrinks_as_the_split_gets_more_lopsided():
    n = 200
    values = [mcnemar_exact_p_value(b, n - b) for b in range(101)]
    assert values == sorted(values)
    assert values[-1] == 1.0 and values[0] < 1e-50


def test_negative_counts_are_refused():
    with pytest.raises(ValueError):
        mcnemar_exact_p_value(-1, 5)
    with pytest.raises(ValueError):
        mcnemar_exact_p_value(5, -1)


# --- contingency table ------------------------------------------------------------------------------------

def test_contingency_table_from_paired_results():
    champion = [True, True, False, False, True, False, True]
    challenger = [True, False, True, False, True, True, True]
    table = contingency_table(champion, challenger)
    assert table == ContingencyTable(both_correct=3, only_champion=1, only_challenger=2, both_wrong=1)
    assert table.total == 7


def test_contingency_table_rows_for_an_artifact():
    table = ContingencyTable(both_correct=180, only_champion=3, only_challenger=6, both_wrong=11)
    assert table.as_rows() == [
        {"": "champion correct", "challenger correct": 180, "challenger wrong": 3},
        {"": "champion wrong", "challenger correct": 6, "challenger wrong": 11},
    ]


def test_contingency_table_refuses_unpaired_or_empty_results():
    with pytest.raises(ValueError, match="paired"):
        contingency_table([True, False], [True])
    with pytest.raises(ValueError):
        contingency_table([], [])


def test_negative_table_counts_are_refused():
    with pytest.raises(ValueError):
        ContingencyTable(both_correct=1, only_champion=-1, only_challenger=0, both_wrong=0)


# --- decide_promotion -------------------------------------------------------------------------------------

SIGNIFICANT = ContingencyTable(both_correct=897, only_champion=3, only_challenger=25, both_wrong=75)  # 1000 images


def decide(**overrides):
    arguments = {"metric": "test_accuracy", "challenger_value": 0.9220, "champion_value": 0.9000, "table": SIGNIFICANT,
                 "minimum_improvement": 0.01, "significance": 0.05}
    arguments.update(overrides)
    return decide_promotion(**arguments)


def test_no_champion_promotes_the_first_model():
    decision = decide(champion_value=None, table=None)
    assert decision.promote
    assert decision.reason == "no champion yet: the first model is promoted"
    assert decision.champion_value is None and decision.improvement is None and decision.p_value is None


def test_worse_challenger_is_rejected():
    decision = decide(challenger_value=0.8120, champion_value=0.9010)
    assert not decision.promote
    assert decision.improvement == pytest.approx(-0.089)
    assert "0.8120" in decision.reason and "0.9010" in decision.reason and "not better" in decision.reason


def test_equal_challenger_is_rejected():
    decision = decide(challenger_value=0.9, champion_value=0.9, minimum_improvement=0.0)
    assert not decision.promote
    assert "not better" in decision.reason


def test_better_but_not_significant_on_three_images_is_rejected():
    tiny = contingency_table([False, False, False], [True, True, True])
    decision = decide(challenger_value=1.0, champion_value=0.0, table=tiny)
    assert not decision.promote
    assert decision.p_value == pytest.approx(0.25)
    assert "not significant" in decision.reason
    for number in ("p = 0.25", ">= 0.05", "b=0", "c=3", "of 3 images"):
        assert number in decision.reason


def test_better_significant_and_above_the_minimum_is_promoted():
    decision = decide()
    assert decision.promote
    assert decision.improvement == pytest.approx(0.022)
    assert decision.p_value == pytest.approx(exact_reference(3, 25))
    assert decision.p_value < 0.05
    assert decision.table is SIGNIFICANT
    for number in ("0.9220", "0.9000", "by 0.0220", f"p = {decision.p_value:.4g}", "b=3", "c=25", "1000 images"):
        assert number in decision.reason


def test_significant_but_below_the_minimum_improvement_is_rejected():
    decision = decide(minimum_improvement=0.05)
    assert not decision.promote
    assert decision.reason == "improvement 0.0220 is below the minimum 0.0500"


def test_tied_discordant_pairs_are_never_significant():
    tied = ContingencyTable(both_correct=180, only_champion=10, only_challenger=10, both_wrong=0)
    decision = decide(table=tied, significance=0.5)
    assert not decision.promote
    assert decision.p_value == 1.0


def test_loss_direction_lower_is_better():
    promoted = decide(metric="test_loss", challenger_value=0.30, champion_value=0.40)
    assert promoted.promote
    assert promoted.improvement == pytest.approx(0.10)
    assert "test_loss 0.3000" in promoted.reason and "0.4000" in promoted.reason

    rejected = decide(metric="test_loss", challenger_value=0.50, champion_value=0.40)
    assert not rejected.promote
    assert rejected.improvement == pytest.approx(-0.10)
    assert rejected.reason == "challenger test_loss 0.5000 is not better than the champion's 0.4000"


def test_lower_loss_without_a_visible_difference_in_answers_is_rejected():
    same_answers = ContingencyTable(both_correct=950, only_champion=0, only_challenger=0, both_wrong=50)
    decision = decide(metric="test_loss", challenger_value=0.20, champion_value=0.40, table=same_answers)
    assert not decision.promote
    assert decision.p_value == 1.0
    assert "not significant" in decision.reason and "b=0, c=0 of 1000 images" in decision.reason


def test_lower_loss_while_the_champion_is_right_more_often_is_rejected():
    champion_wins = ContingencyTable(both_correct=897, only_champion=25, only_challenger=3, both_wrong=75)
    decision = decide(metric="test_loss", challenger_value=0.30, champion_value=0.40, table=champion_wins)
    assert not decision.promote
    assert decision.p_value < 0.05
    assert "champion is right more often" in decision.reason and "b=25, c=3" in decision.reason


@pytest.mark.parametrize("overrides", [
    {"metric": "f1"},
    {"challenger_value": math.nan},
    {"challenger_value": math.inf},
    {"champion_value": math.nan},
    {"champion_value": -math.inf},
    {"champion_value": None, "challenger_value": math.nan},
    {"significance": 0.0},
    {"significance": 1.0},
    {"significance": 1.5},
    {"significance": math.nan},
    {"minimum_improvement": -0.01},
    {"minimum_improvement": math.nan},
    {"minimum_improvement": math.inf},
    {"table": None},
])
def test_bad_arguments_are_refused(overrides):
    with pytest.raises(ValueError):
        decide(**overrides)


def test_decision_is_frozen():
    decision = decide()
    with pytest.raises(AttributeError):
        decision.promote = False  # type: ignore[misc]
