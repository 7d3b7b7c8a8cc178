"""register_model: a registry version with metrics, hyperparameters, dataset checksum and job."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from backends.types import ModelCandidate, ModelVersion, StagedDataset
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="register_model", **TASK_OPTIONS)
def register_model(config: PipelineConfig, backend: Backend, candidate: ModelCandidate, dataset: StagedDataset,
                   promote: bool = True) -> ModelVersion:
    group = config.names.model_group
    version = backend.registry.register_model_version(group, candidate.model_artifact, candidate.metrics,
                                             candidate.hyperparameters, dataset.checksum, candidate.job_name)
    if promote:
        version = backend.registry.promote_model_version(group, version.version)
    history = backend.registry.list_model_versions(group)
    artifacts.table(f"{config.stage}-model-versions", [
        {"version": v.version, "champion": v.champion, "job": v.job_name,
         "test_accuracy": round(v.metrics.get("test_accuracy", float("nan")), 4),
         "valid_loss": round(v.metrics.get("valid_loss", float("nan")), 4), "dataset": v.dataset_checksum[:12]}
        for v in history], f"versions of {group}")
    return version
