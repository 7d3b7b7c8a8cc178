"""tune_hyperparameters: a tuning job (SageMaker HPO, or local parallel trials)."""
from __future__ import annotations

import math
from dataclasses import replace

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.requests import tuning_request
from backends.types import StagedDataset, TuningOutcome
from core.config import PipelineConfig
from core.names import TUNING_JOB_MAX, timestamped_name
from backends.errors import JobFailedError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS
from tasks.train_model import output_uri


def trial_rows(outcome: TuningOutcome) -> list[dict]:
    rows = []
    for t in outcome.trials:
        objective = t.objective if t.objective is not None and math.isfinite(t.objective) else None
        rows.append({"trial": t.job_name, **t.tuned_hyperparameters,
                     outcome.objective_metric: None if objective is None else round(objective, 4),
                     "test_accuracy": round(t.final_metrics["test_accuracy"], 4) if "test_accuracy" in t.final_metrics else None,
                     "status": t.status, "reason": t.failure_reason or "", "seconds": round(t.duration_seconds, 1)})
    return rows


@task(name="tune_hyperparameters", **TASK_OPTIONS)
def tune_hyperparameters(config: PipelineConfig, backend: Backend, dataset: StagedDataset,
                         pretrained_uri: str | None = None, job_name: str | None = None) -> TuningOutcome:
    """job_name: decided by the caller once per flow run, so a retry of this task attaches to its tuning job."""
    logger = get_run_logger()
    training, tuning = config.training, config.training.tuning
    name = job_name or timestamped_name(config.names.tuning_job_prefix, TUNING_JOB_MAX)
    progress = artifacts.Progress(f"{config.stage}-tuning-progress", f"tuning job {name}: 0/{tuning.max_jobs} trials")

    def on_trial(trial, done: int, total: int) -> None:
        progress.update(done / total, f"{done}/{total} trials")
        artifacts.report(f"trial {trial.job_name}", 1.0, f"{trial.status} {tuning.objective.metric}={trial.objective}")
        logger.info("trial %s %s: %s=%s %s", trial.job_name, trial.status, tuning.objective.metric, trial.objective,
                    trial.failure_reason or trial.tuned_hyperparameters)

    def on_trial_progress(trial: str, values: dict[str, float]) -> None:
        if "epoch" not in values:
            artifacts.report(f"trial {trial}", 0.0, "started")
            return
        artifacts.report(f"trial {trial}", values["epoch"] / training.epochs,
                         f"epoch {int(values['epoch'])}/{training.epochs} valid_loss={values.get('valid_loss', float('nan')):.4f}")

    request = tuning_request(config, name, dataset.uri, output_uri(config, backend), pretrained_uri, dataset.checksum)
    outcome = backend.training.run_tuning_job(request, on_trial=on_trial, on_trial_progress=on_trial_progress)
    # Every trial got the requested static values (a backend may add its own, e.g. the weights file's name).
    outcome = replace(outcome, static_hyperparameters={**request.static_hyperparameters,
                                                       **outcome.static_hyperparameters})
    if outcome.job_name != name:  # a job of the same configuration, started by an earlier run, was followed
        logger.info("tuning job %s: followed %s, which was asked the same", name, outcome.job_name)
        name = outcome.job_name
    artifacts.table(f"{config.stage}-trials", trial_rows(outcome), f"trials of tuning job {name}")
    if outcome.status != "Completed":
        raise JobFailedError(f"tuning job {name} failed: {outcome.failure_reason}")
    completed = sum(t.status == "Completed" for t in outcome.trials)
    artifacts.markdown(f"{config.stage}-tuning", "\n".join([
        f"## Tuning job `{name}`", f"- strategy: {tuning.strategy}, objective: {tuning.objective.type} {tuning.objective.metric}",
        f"- trials: {completed} completed of {len(outcome.trials)} ({tuning.max_parallel_jobs} at a time)"]))
    return outcome
