"""The Backend interface every task talks to, and its typed results.

Two implementations: backends/local (this machine, offline) and backends/aws. A task never
knows which one it has; each method is idempotent (a re-run finds what exists and reuses or
updates it, never duplicates it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import AutoscalingConfig, FunctionConfig, HostingConfig


@dataclass(frozen=True)
class StagedDataset:
    uri: str  # s3:// prefix holding train/, valid/, test/
    files: int
    uploaded: int
    unchanged: int
    total_bytes: int
    checksum: str  # SHA-256 over every relative path and file SHA-256


@dataclass(frozen=True)
class TrainingRequest:
    job_name: str
    hyperparameters: dict[str, str]
    dataset_uri: str
    output_uri: str
    pretrained_uri: str | None = None
    instance_type: str = "ml.m5.xlarge"
    max_runtime_seconds: int = 86400


@dataclass(frozen=True)
class TrainingOutcome:
    job_name: str
    status: str  # Completed | Failed | Stopped
    hyperparameters: dict[str, str]
    failure_reason: str | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    model_artifact: str | None = None
    log_location: str = ""
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class TuningRequest:
    job_name: str
    static_hyperparameters: dict[str, str]
    parameter_ranges: dict  # SageMaker's ParameterRanges structure
    strategy: str
    objective_metric: str
    objective_type: str
    max_jobs: int
    max_parallel_jobs: int
    dataset_uri: str
    output_uri: str
    pretrained_uri: str | None = None
    instance_type: str = "ml.m5.xlarge"
    max_runtime_seconds: int = 86400
    seed: int = 0


@dataclass(frozen=True)
class TrialSummary:
    index: int
    job_name: str
    status: str
    tuned_hyperparameters: dict[str, str]
    objective: float | None
    failure_reason: str | None
    final_metrics: dict[str, float]
    model_artifact: str | None
    duration_seconds: float
    epochs: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TuningOutcome:
    job_name: str
    status: str  # Completed | Failed
    objective_metric: str
    objective_type: str
    trials: list[TrialSummary]
    failure_reason: str | None = None


@dataclass(frozen=True)
class ModelVersion:
    group: str
    version: int
    model_artifact: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str]
    dataset_checksum: str
    job_name: str
    created_at: float
    champion: bool = False

    @property
    def label(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class EndpointState:
    name: str
    status: str
    model_version: str
    instance_count: int
    variant_name: str
    invoke_url: str  # where the SageMaker Runtime API answers for it


@dataclass(frozen=True)
class ScalingState:
    resource_id: str
    min_capacity: int
    max_capacity: int
    policy: dict[str, Any]


@dataclass(frozen=True)
class FunctionState:
    name: str
    arn: str
    reserved_concurrency: int | None
    provisioned_concurrency: int
    invoke_url: str
    code_sha256: str = ""


@dataclass(frozen=True)
class TeardownReport:
    removed: list[str]
    kept: list[str]


LogCallback = Callable[[str], None]
EpochCallback = Callable[[dict[str, float]], None]
TrialCallback = Callable[[TrialSummary, int, int], None]


class Backend(ABC):
    """Storage, training, tuning, model registry, endpoints, autoscaling and functions."""

    name: str

    # -- storage --------------------------------------------------------------------
    @abstractmethod
    def default_bucket(self) -> str: ...

    @abstractmethod
    def upload_folder(self, folder: str, prefix_uri: str, progress: Callable[[int, int], None] | None = None) -> StagedDataset:
        """Make prefix_uri mirror folder, copying only what changed."""

    @abstractmethod
    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        """An already staged prefix (e.g. a data.source of s3://...), with its checksum."""

    @abstractmethod
    def upload_file(self, path: str, uri: str) -> str: ...

    @abstractmethod
    def list_objects(self, prefix_uri: str) -> list[str]:
        """Keys under the prefix, relative to it."""

    @abstractmethod
    def read_object(self, uri: str) -> bytes: ...

    # -- training -------------------------------------------------------------------
    @abstractmethod
    def run_training_job(self, request: TrainingRequest, on_log: LogCallback | None = None,
                         on_epoch: EpochCallback | None = None) -> TrainingOutcome: ...

    @abstractmethod
    def run_tuning_job(self, request: TuningRequest, on_trial: TrialCallback | None = None) -> TuningOutcome: ...

    # -- model registry -------------------------------------------------------------
    @abstractmethod
    def register_model_version(self, group: str, model_artifact: str, metrics: dict[str, float],
                               hyperparameters: dict[str, str], dataset_checksum: str, job_name: str) -> ModelVersion:
        """A new version, or the existing one registered from the same job."""

    @abstractmethod
    def list_model_versions(self, group: str) -> list[ModelVersion]: ...

    @abstractmethod
    def promote_model_version(self, group: str, version: int) -> ModelVersion:
        """Make `version` the champion (the one that serves)."""

    # -- endpoints ------------------------------------------------------------------
    @abstractmethod
    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        """Create, or update blue/green (the old keeps serving if the new fails); no-op if unchanged."""

    @abstractmethod
    def describe_endpoint(self, name: str) -> EndpointState | None: ...

    @abstractmethod
    def delete_endpoint(self, name: str) -> bool: ...

    # -- autoscaling ----------------------------------------------------------------
    @abstractmethod
    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> ScalingState: ...

    @abstractmethod
    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool: ...

    # -- functions ------------------------------------------------------------------
    @abstractmethod
    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig) -> FunctionState: ...

    @abstractmethod
    def delete_function(self, name: str) -> bool: ...

    @abstractmethod
    def aws_client(self, service: str):
        """A boto3 client for `service` that reaches this backend (the real AWS, or the local gateway)."""

    def delete_support_resources(self) -> list[str]:
        """Remove what the backend made to support a pipeline (roles, profiles); what was removed."""
        return []

    def close(self) -> None:
        """Release what the backend holds open (clients, connections)."""


@dataclass(frozen=True)
class ModelCandidate:
    """A trained model waiting to be registered: from a single job or a tuning job's best trial."""

    job_name: str
    model_artifact: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str]
