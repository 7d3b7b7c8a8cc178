"""What tasks hand the backend services and what they get back: the same types from both backends."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StagedDataset:
    uri: str  # s3:// prefix holding train/, valid/, test/
    files: int
    uploaded: int
    unchanged: int
    total_bytes: int
    checksum: str  # core.datasets.folder_checksum: SHA-256 over every relative path and file SHA-256
    deleted: int = 0  # objects removed because their file is gone


@dataclass(frozen=True)
class TrainingRequest:
    job_name: str
    hyperparameters: dict[str, str]
    dataset_uri: str
    output_uri: str
    pretrained_uri: str | None = None
    instance_type: str = "ml.m5.xlarge"
    max_runtime_seconds: int = 86400
    ec2_instance_type: str | None = None  # the aws backend's instance for one job (None: instance_type less "ml.")
    dataset_checksum: str = ""  # the data's content (an s3:// source keeps its URI when its objects change)


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
    dataset_checksum: str = ""  # the data's content (an s3:// source keeps its URI when its objects change)


@dataclass(frozen=True)
class TrialSummary:
    """One training job of a tuning job (it satisfies core.best_trial.Trial)."""

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
    log_location: str = ""


@dataclass(frozen=True)
class TuningOutcome:
    job_name: str
    status: str  # Completed | Failed
    objective_metric: str
    objective_type: str
    trials: list[TrialSummary]
    failure_reason: str | None = None
    # What every trial was trained with besides its tuned values (a model's full set: these, then its tuned ones).
    static_hyperparameters: dict[str, str] = field(default_factory=dict)


PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"  # SageMaker's approval statuses


@dataclass(frozen=True)
class ModelVersion:
    """A registered model. Its status follows SageMaker's model registry: PendingManualApproval when
    registered, Approved while it is the champion (the one that serves), Rejected when it was turned
    down or superseded, with the reason and when."""

    group: str
    version: int
    model_artifact: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str]
    dataset_checksum: str
    job_name: str
    created_at: float
    champion: bool = False
    dataset_uri: str = ""  # the staged dataset it was trained and tested on (its test/ split is frozen)
    status: str = PENDING
    status_reason: str = ""
    status_changed_at: float | None = None

    @property
    def label(self) -> str:
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class EndpointState:
    """An endpoint as a backend describes it."""

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
    """A published function as a backend describes it."""

    name: str
    arn: str  # of the alias that serves (aws), or of the function (local)
    reserved_concurrency: int | None
    provisioned_concurrency: int
    invoke_url: str
    code_sha256: str = ""
    alias: str | None = None  # what Invoke's Qualifier names to reach this release (aws: the alias)
    version: str = ""  # the published version the alias points at (aws)


@dataclass(frozen=True)
class TeardownReport:
    removed: list[str]
    kept: list[str]


@dataclass(frozen=True)
class ModelCandidate:
    """A trained model waiting to be registered: from a single job or a tuning job's best trial."""

    job_name: str
    model_artifact: str
    metrics: dict[str, float]
    hyperparameters: dict[str, str]


LogCallback = Callable[[str], None]
EpochCallback = Callable[[dict[str, float]], None]
TrialCallback = Callable[[TrialSummary, int, int], None]  # (trial, trials ended so far, trials in all)
# (trial job name, what it reported: {} when it started, then each epoch's metric line where the backend streams them)
TrialProgressCallback = Callable[[str, dict[str, float]], None]
Progress = Callable[[int, int], None]  # (done, total)
