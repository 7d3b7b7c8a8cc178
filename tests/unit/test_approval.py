"""The approval step of retrain: no answer within the timeout is a rejection, with the reason."""
import logging

from prefect.exceptions import FlowPauseTimeout

import flows.retrain as retrain_flow
from backends.evaluation import Evaluation, ImagePrediction
from core.config import PipelineConfig
from core.promotion import contingency_table, decide_promotion
from tasks.evaluate_models import Comparison


def _evaluation(version: str, right: int, wrong: int) -> Evaluation:
    predictions = [ImagePrediction(f"cat/{i}.png", "cat", "cat", 0.9, 0.9) for i in range(right)]
    predictions += [ImagePrediction(f"cat/x{i}.png", "cat", "dog", 0.9, 0.1) for i in range(wrong)]
    return Evaluation(version, predictions)


def test_no_answer_within_the_timeout_rejects(monkeypatch):
    config = PipelineConfig.model_validate({"data": {"source": "/data"},
                                            "promotion": {"require_approval": True, "approval_timeout_seconds": 600}})
    champion, challenger = _evaluation("m/1", 5, 15), _evaluation("m/2", 18, 2)
    table = contingency_table([p.correct for p in champion.predictions], [p.correct for p in challenger.predictions])
    decision = decide_promotion(metric="test_accuracy", challenger_value=challenger.accuracy,
                                champion_value=champion.accuracy, table=table, minimum_improvement=0.0,
                                significance=0.05)
    assert decision.promote
    asked = {}

    def never_answered(**kwargs):
        asked.update(kwargs)
        raise FlowPauseTimeout("Flow run was paused and never resumed.")

    monkeypatch.setattr(retrain_flow, "pause_flow_run", never_answered)
    monkeypatch.setattr(retrain_flow, "get_run_logger", lambda: logging.getLogger("test"))
    approve, why = retrain_flow.ask_for_approval(config, Comparison(champion, challenger, 20, 0), decision)
    assert (approve, why) == (False, "no reviewer answered within 600 s")
    assert asked["timeout"] == 600 and asked["key"] == "promotion-approval"
    form = asked["wait_for_input"]
    assert "McNemar" in form._description and form.model_fields["approve"].default is True
