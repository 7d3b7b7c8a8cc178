"""train_model: one training job with fixed hyperparameters (the EC2-style path)."""
from __future__ import annotations

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.requests import training_request
from backends.types import ModelCandidate, StagedDataset
from core.config import PipelineConfig
from core.names import timestamped_name
from core.metrics import model_metrics
from backends.errors import JobFailedError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


def output_uri(config: PipelineConfig, backend: Backend) -> str:
    return config.names.jobs_uri(backend.storage.default_bucket())


@task(name="train_model", **TASK_OPTIONS)
def train_model(config: PipelineConfig, backend: Backend, dataset: StagedDataset,
                pretrained_uri: str | None = None, job_name: str | None = None) -> ModelCandidate:
    """job_name: decided by the caller once per flow run, so a retry of this task finds its job."""
    logger = get_run_logger()
    training = config.training
    name = job_name or timestamped_name(config.names.training_job_prefix)
    progress = artifacts.Progress(f"{config.stage}-training-progress", f"training job {name}")

    def on_epoch(values: dict[str, float]) -> None:
        progress.update(values["epoch"] / training.epochs,
                        f"epoch {int(values['epoch'])}/{training.epochs}: valid_loss={values.get('valid_loss', float('nan')):.4f}")
        logger.info("epoch %d: %s", int(values["epoch"]),
                    " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != "epoch"))

    request = training_request(config, name, dataset.uri, output_uri(config, backend), pretrained_uri, dataset.checksum)
    outcome = backend.training.run_training_job(request, on_epoch=on_epoch)
    if outcome.job_name != name:  # a job of the same configuration, started by an earlier run, was followed
        logger.info("training job %s: followed %s, which was asked the same", name, outcome.job_name)
        name = outcome.job_name
    if outcome.status != "Completed":
        raise JobFailedError(f"training job {name} {outcome.status.lower()}: {outcome.failure_reason} "
                             f"(log: {outcome.log_location})")
    progress.update(1.0, f"{name} completed")
    metrics = outcome.final_metrics
    artifacts.table(f"{config.stage}-epochs", artifacts.epoch_rows(outcome.epochs), f"per-epoch metrics of {name}")
    if outcome.epochs:
        artifacts.markdown(f"{config.stage}-training-curve", artifacts.training_curve_markdown(outcome.epochs, name),
                           f"training curve of {name}")
    artifacts.markdown(f"{config.stage}-training", "\n".join([
        f"## Training job `{name}`", f"- status: {outcome.status} in {outcome.duration_seconds:.1f} s",
        f"- test accuracy: {metrics.get('test_accuracy', float('nan')):.4f}, "
        f"valid loss: {metrics.get('valid_loss', float('nan')):.4f} (best epoch {int(metrics.get('best_epoch', 0))})",
        f"- model: `{outcome.model_artifact}`", f"- log: `{outcome.log_location}`"]))
    return ModelCandidate(name, outcome.model_artifact, model_metrics(metrics), outcome.hyperparameters)
