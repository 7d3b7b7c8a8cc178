"""decide_promotion: core's promotion rule on the comparison, and the decision as a Prefect artifact
(both models' metrics, per-class accuracy, the contingency table, the p-value, the verdict)."""
from __future__ import annotations

import math

from prefect import task

from core.config import PipelineConfig
from core.promotion import PromotionDecision, contingency_table, decide_promotion as rule
from tasks import artifacts
from tasks.evaluate_models import Comparison
from tasks.retry_policy import TASK_OPTIONS


def _value(evaluation, metric: str) -> float:
    return evaluation.accuracy if metric == "test_accuracy" else evaluation.loss


@task(name="decide_promotion", **TASK_OPTIONS)
def decide_promotion(config: PipelineConfig, comparison: Comparison) -> PromotionDecision:
    promotion = config.promotion
    champion, challenger = comparison.champion, comparison.challenger
    table = None
    if champion is not None:
        table = contingency_table([p.correct for p in champion.predictions],
                                  [p.correct for p in challenger.predictions])
    decision = rule(metric=promotion.metric, challenger_value=_value(challenger, promotion.metric),
                    champion_value=None if champion is None else _value(champion, promotion.metric), table=table,
                    minimum_improvement=promotion.minimum_improvement, significance=promotion.significance)
    artifacts.markdown(f"{config.stage}-promotion-decision", decision_markdown(config, comparison, decision),
                       "champion and challenger on the same test images")
    artifacts.table(f"{config.stage}-per-class-accuracy", per_class_rows(comparison),
                    "accuracy per class, champion and challenger")
    return decision


def per_class_rows(comparison: Comparison) -> list[dict]:
    challenger = comparison.challenger.per_class_accuracy()
    champion = comparison.champion.per_class_accuracy() if comparison.champion else {}
    return [{"class": label, "champion": round(champion[label], 4) if label in champion else None,
             "challenger": round(accuracy, 4)} for label, accuracy in challenger.items()]


def decision_markdown(config: PipelineConfig, comparison: Comparison, decision: PromotionDecision) -> str:
    champion, challenger = comparison.champion, comparison.challenger
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    lines = [f"## {'Promote' if decision.promote else 'Keep the champion'}: {decision.reason}", "",
             f"{len(challenger.predictions)} test images ({comparison.frozen_images} frozen with the champion, "
             f"{comparison.new_images} new), each model by its own `code/inference.py`.", "",
             "| | model | test accuracy | test loss |", "| --- | --- | --- | --- |",
             f"| champion | {champion.model_version if champion else '(none)'} | "
             f"{fmt(champion.accuracy if champion else None)} | {fmt(champion.loss if champion else None)} |",
             f"| challenger | {challenger.model_version} | {fmt(challenger.accuracy)} | {fmt(challenger.loss)} |", ""]
    if decision.table is not None:
        t = decision.table
        lines += ["| | challenger right | challenger wrong |", "| --- | --- | --- |",
                  f"| **champion right** | {t.both_correct} | {t.only_champion} |",
                  f"| **champion wrong** | {t.only_challenger} | {t.both_wrong} |", "",
                  f"Exact McNemar test on the {t.only_champion + t.only_challenger} images the models disagree on: "
                  f"p = {decision.p_value:.4g} (significance {config.promotion.significance}); "
                  f"{config.promotion.metric} improvement {fmt(decision.improvement)} "
                  f"(minimum {config.promotion.minimum_improvement})."]
    return "\n".join(lines)
