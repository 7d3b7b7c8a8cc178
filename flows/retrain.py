"""retrain: train a challenger and replace the champion only with a better model.

plan_run (pre-flight: a failed check stops here) -> stage_dataset -> train challenger (instance | tuning)
  -> register_model
  -> evaluate_models (champion and challenger on the same images, each by its own code/inference.py)
  -> decide_promotion (core: minimum improvement + exact McNemar test)
  -> [promotion.require_approval: pause for a reviewer in the Prefect UI; a timeout rejects]
  -> release: deploy blue/green -> smoke test -> promote (a failed smoke test rolls back)
     | reject_model with the reason
"""
# No `from __future__ import annotations` in flow modules: Prefect builds the parameter model from
# the real annotations.
from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from backends import get_backend
from backends.evaluation import Evaluation
from backends.types import ModelVersion
from core.config import PipelineConfig
from core.promotion import PromotionDecision
from flows.release import champion as current_champion
from flows.release import release
from flows.steps import StepTimer, train_candidate
from tasks.decide_promotion import decide_promotion, decision_markdown
from tasks.evaluate_models import evaluate_models
from tasks.register_model import register_model
from tasks.reject_model import reject_model


class ModelSummary(BaseModel):
    version: int
    label: str
    test_accuracy: float = Field(description="On the test images both models were evaluated on.")
    test_loss: float
    status: str = Field(description="Its registry status after the run: Approved, Rejected or PendingManualApproval.")


class RetrainResult(BaseModel):
    promoted: bool
    reason: str
    champion: ModelSummary | None = Field(description="The champion before the run (None for a first model).")
    challenger: ModelSummary
    p_value: float | None = Field(description="Exact McNemar test on the images the two disagree on.")
    test_images: int
    serving: str = Field(description="The model the endpoint serves after the run.")
    step_seconds: dict[str, float]


class PromotionApproval(RunInput):
    """A reviewer's answer, asked for when promotion.require_approval is on."""

    approve: bool = Field(description="Promote the challenger (pre-filled with the rule's recommendation).")
    comment: str = Field(default="", description="Why: kept with the model version's status.")


def _summary(model: ModelVersion, evaluation: Evaluation, status: str) -> ModelSummary:
    return ModelSummary(version=model.version, label=model.label, test_accuracy=evaluation.accuracy,
                        test_loss=evaluation.loss, status=status)


def _nothing_new(champion: ModelVersion, timer: StepTimer) -> RetrainResult:
    get_run_logger().info("nothing new to train: the data and the configuration are those of the champion %s",
                          champion.label)
    summary = ModelSummary(version=champion.version, label=champion.label,
                           test_accuracy=champion.metrics.get("test_accuracy", float("nan")),
                           test_loss=champion.metrics.get("test_loss", float("nan")), status=champion.status)
    return RetrainResult(
        promoted=False, reason=f"nothing new was trained: the data and the configuration are those of the champion "
        f"{champion.label} (its job {champion.job_name} was found again instead of training twice)",
        champion=summary, challenger=summary, p_value=None, test_images=0, serving=champion.label,
        step_seconds=timer.seconds)


# How soon after a reviewer answers the run goes on (Prefect's default is 10 s): one API read each time.
APPROVAL_POLL_SECONDS = 2


def ask_for_approval(config: PipelineConfig, comparison, decision: PromotionDecision) -> tuple[bool, str]:
    """Pause until a reviewer answers in the Prefect UI (or resume_flow_run with run_input); a timeout rejects."""
    logger = get_run_logger()
    description = (decision_markdown(config, comparison, decision)
                   + "\n\nApprove to deploy the challenger blue/green, or reject to keep the champion.")
    logger.info("waiting up to %d s for a reviewer to approve or reject the promotion",
                config.promotion.approval_timeout_seconds)
    try:
        answer = pause_flow_run(
            wait_for_input=PromotionApproval.with_initial_data(description=description, approve=True, comment=""),
            timeout=config.promotion.approval_timeout_seconds, key="promotion-approval",
            poll_interval=APPROVAL_POLL_SECONDS)
    except FlowPauseTimeout:
        return False, f"no reviewer answered within {config.promotion.approval_timeout_seconds} s"
    verdict = "approved" if answer.approve else "rejected"
    return answer.approve, f"{verdict} by a reviewer" + (f": {answer.comment}" if answer.comment else "")


@flow(name="retrain", log_prints=True)
def retrain(config: PipelineConfig) -> RetrainResult:
    """Train a challenger; promote it only if it beats the champion on the same test images."""
    backend = get_backend(config.backend, config)
    timer = StepTimer()
    try:
        champion = current_champion(backend, config)
        dataset, candidate = train_candidate(config, backend, timer)
        with timer.step("register_model"):
            challenger = register_model(config, backend, candidate, dataset)
        if champion is not None and champion.version == challenger.version:
            # The same data and configuration as the champion's: its finished job was found again
            # (by configuration digest) instead of paying for the same training twice.
            return _nothing_new(champion, timer)
        with timer.step("evaluate_models"):
            comparison = evaluate_models(backend, champion, challenger, dataset)
        decision = decide_promotion(config, comparison)
        promote, reason = decision.promote, decision.reason
        if promote and config.promotion.require_approval:
            with timer.step("approval"):
                promote, answer = ask_for_approval(config, comparison, decision)
            reason = f"{decision.reason}; {answer}"
        if promote:
            released = release(config, backend, challenger, dataset, reason, timer)
            status, serving = released.model.status, released.endpoint.model_version
        else:
            status = reject_model(config, backend, challenger, reason).status
            serving = champion.label if champion else ""
    finally:
        backend.close()
    return RetrainResult(
        promoted=promote, reason=reason,
        champion=_summary(champion, comparison.champion, "Rejected" if promote else champion.status)
        if champion else None,
        challenger=_summary(challenger, comparison.challenger, status), p_value=decision.p_value,
        test_images=len(comparison.challenger.predictions), serving=serving, step_seconds=timer.seconds)
