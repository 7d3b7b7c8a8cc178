"""The training and tuning requests a configuration asks for, built in one place: the tasks send
them, and planning digests them to find the job a run would follow (the digest leaves the name out)."""
from __future__ import annotations

from backends.types import TrainingRequest, TuningRequest
from core.config import PipelineConfig
from core.hyperparameters import static_hyperparameters


def training_request(config: PipelineConfig, job_name: str, dataset_uri: str, output_uri: str,
                     pretrained_uri: str | None, dataset_checksum: str = "") -> TrainingRequest:
    training = config.training
    return TrainingRequest(job_name, static_hyperparameters(training), dataset_uri, output_uri, pretrained_uri,
                           training.instance_type, training.max_runtime_seconds,
                           ec2_instance_type=training.ec2_instance_type, dataset_checksum=dataset_checksum)


def tuning_request(config: PipelineConfig, job_name: str, dataset_uri: str, output_uri: str,
                   pretrained_uri: str | None, dataset_checksum: str = "") -> TuningRequest:
    training, tuning = config.training, config.training.tuning
    return TuningRequest(
        job_name, static_hyperparameters(training, tuning.parameter_ranges.names), tuning.parameter_ranges.to_sagemaker(),
        tuning.strategy, tuning.objective.metric, tuning.objective.type, tuning.max_jobs, tuning.max_parallel_jobs,
        dataset_uri, output_uri, pretrained_uri, training.instance_type, training.max_runtime_seconds, training.seed,
        dataset_checksum)
