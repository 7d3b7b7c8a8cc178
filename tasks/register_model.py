"""register_model: a registry version with metrics, hyperparameters, dataset and job (not yet the champion)."""
from __future__ import annotations

from prefect import task

from backends.backend import Backend
from backends.types import ModelCandidate, ModelVersion, StagedDataset
from core.config import PipelineConfig
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@task(name="register_model", **TASK_OPTIONS)
def register_model(config: PipelineConfig, backend: Backend, candidate: ModelCandidate,
                   dataset: StagedDataset) -> ModelVersion:
    group = config.names.model_group
    version = backend.registry.register_model_version(group, candidate.model_artifact, candidate.metrics,
                                                      candidate.hyperparameters, dataset.checksum, candidate.job_name,
                                                      dataset_uri=dataset.uri)
    artifacts.model_versions(config, backend.registry.list_model_versions(group))
    return version
