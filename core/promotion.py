"""Whether a retrained challenger replaces the champion: better on the same test images, by enough, significantly."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

METRICS_HIGHER_IS_BETTER = {"test_accuracy": True, "test_loss": False}


@dataclass(frozen=True)
class ContingencyTable:
    """How champion and challenger did on the same test images, image by image."""

    both_correct: int  # a
    only_champion: int  # b: champion right, challenger wrong
    only_challenger: int  # c: challenger right, champion wrong
    both_wrong: int  # d

    def __post_init__(self) -> None:
        counts = (self.both_correct, self.only_champion, self.only_challenger, self.both_wrong)
        if any(count < 0 for count in counts):
            raise ValueError(f"contingency counts must be >= 0, got {counts}")

    @property
    def total(self) -> int:
        return self.both_correct + self.only_champion + self.only_challenger + self.both_wrong

    def as_rows(self) -> list[dict]:
        """The 2x2 table, one dict a row, as a Prefect table artifact takes it."""
        return [
            {"": "champion correct", "challenger correct": self.both_correct, "challenger wrong": self.only_champion},
            {"": "champion wrong", "challenger correct": self.only_challenger, "challenger wrong": self.both_wrong},
        ]


def contingency_table(champion_correct: Sequence[bool], challenger_correct: Sequence[bool]) -> ContingencyTable:
    """Count agreement per image; both sequences must be about the same images, in the same order."""
    if len(champion_correct) != len(challenger_correct):
        raise ValueError(f"champion has {len(champion_correct)} results but challenger {len(challenger_correct)}: "
                         "they must be paired per test image")
    if not champion_correct:
        raise ValueError("no test images: cannot compare champion and challenger")
    a = b = c = d = 0
    for champion_right, challenger_right in zip(champion_correct, challenger_correct):
        if champion_right and challenger_right:
            a += 1
        elif champion_right:
            b += 1
        elif challenger_right:
            c += 1
        else:
            d += 1
    return ContingencyTable(both_correct=a, only_champion=b, only_challenger=c, both_wrong=d)


def mcnemar_exact_p_value(only_champion: int, only_challenger: int) -> float:
    """Two-sided exact McNemar test: a binomial test of b against c with p = 1/2 on the n = b + c discordant pairs.

    p = min(1, 2 * sum_{k=0}^{min(b,c)} C(n,k) / 2**n).

    Summed in log space, not with exact integers: the exact big-integer sum takes ~0.7 s at n = 100_000
    (tens of thousands of additions of 100_000-bit numbers). Here the terms are summed from the largest,
    k = min(b,c) (the terms grow up to n/2), downwards by the ratio C(n,k-1)/C(n,k) = k/(n-k+1), stopping
    once the rest provably cannot change a double; so only O(sqrt(n)) terms are visited and nothing
    overflows. The scale of the largest term comes from math.lgamma, which costs a relative error of about
    1e-10 at n = 100_000 (1e-15 for small n): far below anything a significance level cares about.
    """
    if only_champion < 0 or only_challenger < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={only_champion}, c={only_challenger}")
    n = only_champion + only_challenger
    if n == 0 or only_champion == only_challenger:
        return 1.0  # nothing to test, or a tie: exactly 1 (the formula also gives >= 1 before the min)
    m = min(only_champion, only_challenger)
    # Terms relative to the largest one, C(n,m); each next ratio is smaller than the last, so the terms
    # left after one of size `term` with ratio r add up to at most term * r / (1 - r).
    relative_sum = 0.0
    term = 1.0
    k = m
    while k >= 0:
        relative_sum += term
        ratio = k / (n - k + 1)
        if ratio == 0.0 or term * ratio / (1.0 - ratio) < 1e-17 * relative_sum:
            break
        term *= ratio
        k -= 1
    log_largest = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) - n * math.log(2.0)
    log_p = math.log(2.0) + log_largest + math.log(relative_sum)
    return min(1.0, math.exp(log_p))  # exp underflows to 0.0 for p below ~1e-308: still correct to a double


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str  # one sentence a user reads, with the numbers
    metric: str  # "test_accuracy" or "test_loss"
    champion_value: float | None  # None when there is no champion
    challenger_value: float
    improvement: float | None  # challenger better by this much (positive = better), in the metric's own direction
    p_value: float | None
    table: ContingencyTable | None


def decide_promotion(*, metric: str, challenger_value: float, champion_value: float | None,
                     table: ContingencyTable | None, minimum_improvement: float,
                     significance: float) -> PromotionDecision:
    """Promote the challenger only if its metric beats the champion's by at least `minimum_improvement`,
    and McNemar's exact test on the paired test images says it is right more often, at p < `significance`.

    The first model (no champion) is always promoted.
    """
    if metric not in METRICS_HIGHER_IS_BETTER:
        raise ValueError(f"metric must be one of {sorted(METRICS_HIGHER_IS_BETTER)}, got {metric!r}")
    if not math.isfinite(challenger_value):
        raise ValueError(f"challenger {metric} must be a finite number, got {challenger_value!r}")
    if champion_value is not None and not math.isfinite(champion_value):
        raise ValueError(f"champion {metric} must be a finite number, got {champion_value!r}")
    if not (math.isfinite(minimum_improvement) and minimum_improvement >= 0):
        raise ValueError(f"minimum_improvement must be a finite number >= 0, got {minimum_improvement!r}")
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance!r}")

    def decision(promote: bool, reason: str, improvement: float | None = None,
                 p_value: float | None = None) -> PromotionDecision:
        return PromotionDecision(promote=promote, reason=reason, metric=metric, champion_value=champion_value,
                                 challenger_value=challenger_value, improvement=improvement, p_value=p_value,
                                 table=table)

    if champion_value is None:
        return decision(True, "no champion yet: the first model is promoted")
    if table is None:
        raise ValueError("a contingency table of both models on the same test images is needed to compare them")

    if METRICS_HIGHER_IS_BETTER[metric]:
        improvement = challenger_value - champion_value
    else:
        improvement = champion_value - challenger_value
    b, c = table.only_champion, table.only_challenger
    p_value = mcnemar_exact_p_value(b, c)
    test = f"McNemar p = {p_value:.4g}"
    counts = f"(b={b}, c={c} of {table.total} images)"

    if improvement <= 0:
        return decision(False, f"challenger {metric} {challenger_value:.4f} is not better than the champion's "
                               f"{champion_value:.4f}", improvement, p_value)
    if improvement < minimum_improvement:
        return decision(False, f"improvement {improvement:.4f} is below the minimum {minimum_improvement:.4f}",
                        improvement, p_value)
    if not p_value < significance:
        return decision(False, f"the difference is not significant: {test} >= {significance:g} {counts}",
                        improvement, p_value)
    if not c > b:
        # A better metric (say, loss) while the champion is significantly more often right: keep the champion.
        return decision(False, f"the champion is right more often where the two disagree: {test} {counts}",
                        improvement, p_value)
    return decision(True, f"challenger {metric} {challenger_value:.4f} beats the champion's {champion_value:.4f} "
                          f"by {improvement:.4f} (minimum {minimum_improvement:.4f}), significantly: "
                          f"{test} < {significance:g} {counts}", improvement, p_value)
