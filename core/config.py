"""PipelineConfig: the one typed configuration of a pipeline.

It is the flows' parameter, so the Prefect UI renders it as a form (defaults, descriptions,
enums, bounds), and it is validated before any side effect. Defaults are the seed project's
choices (ResNet-50 with a frozen backbone and a 128-unit head; autoscaling 1..100 at 10
invocations per instance with 100 s cooldowns; Lambda reserved 100 / provisioned 5).
"""
from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.metrics import MAXIMIZED_METRICS, MINIMIZED_METRICS
from core.names import PipelineNames
from core.traffic import MAX_EXECUTION_S, deployment_seconds, longest_bake_s, traffic_steps

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
# Flags of training/train.py that a tuning job may vary.
TUNABLE_HYPERPARAMETERS = (
    "learning-rate", "batch-size", "epochs", "early-stopping-patience", "architecture",
    "image-size", "freeze-backbone", "augmentation", "seed",
)
ObjectiveMetric = Literal["valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "train_loss", "train_accuracy"]


def _plain_input(schema: dict) -> None:
    """`X | None = None` as one plain X box in the Prefect UI's form, not a X/None switch that starts
    on None (an empty box is left out of the run's parameters, so Python still gets None)."""
    schema.update(next(s for s in schema.pop("anyOf") if s.get("type") != "null"))
    if schema.get("default", 0) is None:
        del schema["default"]


def _labelled_none(value_label: str, none_label: str):
    """`X | None` kept as a switch in the form, with buttons that say what each choice means."""
    def extra(schema: dict) -> None:
        for branch in schema["anyOf"]:
            branch["title"] = none_label if branch.get("type") == "null" else value_label
    return extra


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    source: str = Field(
        min_length=1,
        description="Where the images are: a local folder, an s3://bucket/prefix, or an https:// URL of a zip. "
        "Each holds train/, valid/ and test/, with one folder per class.",
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", json_schema_extra=_plain_input,
        description="SHA-256 of the zip (hex); required for an https:// source so a changed download is refused.",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, source: str) -> str:
        if source.startswith("s3://"):
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", source):
                raise ValueError(f"{source!r} is not an s3://bucket/prefix URI with a valid bucket name")
        elif "://" in source and not source.startswith("https://"):
            raise ValueError(f"{source!r}: only local folders, s3:// prefixes and https:// zip URLs are supported")
        return source

    @model_validator(mode="after")
    def _zip_needs_checksum(self) -> "DataConfig":
        if self.source.startswith("https://") and not self.sha256:
            raise ValueError("sha256 is required for an https:// source (the zip's SHA-256, in hex)")
        return self


class FixedHyperparameters(Section):
    learning_rate: float = Field(default=0.001, gt=0, le=10, description="Adam learning rate.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Images per training step.")


class ContinuousParameterRange(Section):
    name: str = Field(description="Hyperparameter (flag of training/train.py), e.g. learning-rate.")
    min_value: float = Field(description="Smallest value tried.")
    max_value: float = Field(description="Largest value tried.")
    scaling_type: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = Field(
        default="Auto", description="How values are spread over the range, as in SageMaker.")

    @model_validator(mode="after")
    def _ordered(self) -> "ContinuousParameterRange":
        if not (math.isfinite(self.min_value) and math.isfinite(self.max_value)):
            raise ValueError("min_value and max_value must be finite numbers")
        if self.max_value <= self.min_value:
            raise ValueError(f"max_value ({self.max_value}) must be > min_value ({self.min_value})")
        if self.scaling_type == "Logarithmic" and self.min_value <= 0:
            raise ValueError("Logarithmic scaling needs min_value > 0")
        if self.scaling_type == "ReverseLogarithmic" and not (0 <= self.min_value and self.max_value < 1):
            raise ValueError("ReverseLogarithmic scaling needs 0 <= min_value < max_value < 1")
        return self


class IntegerParameterRange(Section):
    name: str = Field(description="Hyperparameter (flag of training/train.py), e.g. epochs.")
    min_value: int = Field(description="Smallest value tried.")
    max_value: int = Field(description="Largest value tried.")
    scaling_type: Literal["Auto", "Linear", "Logarithmic"] = Field(default="Auto", description="As in SageMaker.")

    @model_validator(mode="after")
    def _ordered(self) -> "IntegerParameterRange":
        if self.max_value <= self.min_value:
            raise ValueError(f"max_value ({self.max_value}) must be > min_value ({self.min_value})")
        if self.scaling_type == "Logarithmic" and self.min_value <= 0:
            raise ValueError("Logarithmic scaling needs min_value > 0")
        return self


class CategoricalParameterRange(Section):
    name: str = Field(description="Hyperparameter (flag of training/train.py), e.g. batch-size.")
    values: list[str] = Field(min_length=1, max_length=30, description="The values tried, as strings.")


class ParameterRanges(Section):
    """The same three lists as SageMaker's ParameterRanges."""

    continuous: list[ContinuousParameterRange] = Field(default_factory=list, description="Continuous ranges.")
    integer: list[IntegerParameterRange] = Field(default_factory=list, description="Integer ranges.")
    categorical: list[CategoricalParameterRange] = Field(default_factory=list, description="Categorical ranges.")

    @model_validator(mode="after")
    def _known_unique_names(self) -> "ParameterRanges":
        names = [r.name for r in (*self.continuous, *self.integer, *self.categorical)]
        unknown = sorted(set(names) - set(TUNABLE_HYPERPARAMETERS))
        if unknown:
            raise ValueError(f"unknown hyperparameter {unknown[0]!r}; tunable: {', '.join(TUNABLE_HYPERPARAMETERS)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"hyperparameter {repeated[0]!r} has more than one range")
        if not names:
            raise ValueError("at least one parameter range is needed to tune")
        return self

    @property
    def names(self) -> list[str]:
        return [r.name for r in (*self.continuous, *self.integer, *self.categorical)]

    def to_sagemaker(self) -> dict:
        """The ParameterRanges structure of CreateHyperParameterTuningJob (values as strings)."""
        return {
            "ContinuousParameterRanges": [
                {"Name": r.name, "MinValue": repr(r.min_value), "MaxValue": repr(r.max_value), "ScalingType": r.scaling_type}
                for r in self.continuous
            ],
            "IntegerParameterRanges": [
                {"Name": r.name, "MinValue": str(r.min_value), "MaxValue": str(r.max_value), "ScalingType": r.scaling_type}
                for r in self.integer
            ],
            "CategoricalParameterRanges": [{"Name": r.name, "Values": list(r.values)} for r in self.categorical],
        }


def _seed_ranges() -> ParameterRanges:
    # The seed's hpo notebook: learning rate 0.001..0.1 and a choice of batch sizes.
    return ParameterRanges(
        continuous=[ContinuousParameterRange(name="learning-rate", min_value=0.001, max_value=0.1, scaling_type="Logarithmic")],
        categorical=[CategoricalParameterRange(name="batch-size", values=["32", "64", "128"])],
    )


class ObjectiveConfig(Section):
    metric: ObjectiveMetric = Field(default="valid_loss", description="Metric the tuning optimizes (of the best epoch).")
    type: Literal["Minimize", "Maximize"] = Field(default="Minimize", description="Whether lower or higher is better.")

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> "ObjectiveConfig":
        if self.metric in MAXIMIZED_METRICS and self.type != "Maximize":
            raise ValueError(f"type must be Maximize for {self.metric} (higher is better)")
        if self.metric in MINIMIZED_METRICS and self.type != "Minimize":
            raise ValueError(f"type must be Minimize for {self.metric} (lower is better)")
        return self


class TuningConfig(Section):
    strategy: Literal["Bayesian", "Random", "Grid"] = Field(default="Bayesian", description="How trials are chosen.")
    max_jobs: int = Field(default=4, ge=1, le=500, description="Training jobs in all.")
    max_parallel_jobs: int = Field(default=2, ge=1, le=100, description="Training jobs at once (they share the CPUs locally).")
    objective: ObjectiveConfig = Field(title="Objective", default_factory=ObjectiveConfig, description="What the best trial is chosen by.")
    parameter_ranges: ParameterRanges = Field(
        default_factory=_seed_ranges, description="What the trials vary.", title="Parameter ranges",
        # default_factory leaves the schema without a default: the form would show the ranges empty.
        json_schema_extra=lambda schema: schema.setdefault("default", _seed_ranges().model_dump(mode="json")))

    @field_validator("max_parallel_jobs")
    @classmethod
    def _parallel_within_jobs(cls, value: int, info) -> int:
        max_jobs = info.data.get("max_jobs")
        if max_jobs is not None and value > max_jobs:
            raise ValueError(f"must be <= max_jobs ({max_jobs})")
        return value

    @model_validator(mode="after")
    def _grid_is_discrete(self) -> "TuningConfig":
        if self.strategy == "Grid" and self.parameter_ranges.continuous:
            raise ValueError("Grid strategy takes only integer and categorical ranges (as SageMaker); "
                             f"{self.parameter_ranges.continuous[0].name} is continuous")
        return self


class TrainingConfig(Section):
    mode: Literal["instance", "tuning"] = Field(
        default="tuning", description="instance: one job with fixed hyperparameters (an EC2 instance on aws); "
        "tuning: a hyperparameter tuning job.")
    architecture: str = Field(default="resnet50", pattern=r"^[a-z0-9_]+$", description="A torchvision classification model name.")
    image_size: int = Field(default=224, ge=16, le=1024, description="Images are resized to this many pixels square.")
    epochs: int = Field(default=5, ge=1, le=1000, description="Most epochs per training job (early stopping may end sooner).")
    early_stopping_patience: int = Field(default=3, ge=0, le=1000, description="Epochs without a lower validation loss before stopping (0: never).")
    freeze_backbone: bool = Field(default=True, description="Train only the new head (Linear-128-ReLU-Linear), as the seed did.")
    augmentation: Literal["none", "flip", "crop_flip"] = Field(default="flip", description="Training augmentation.")
    pretrained_weights: str | None = Field(
        default=None, json_schema_extra=_plain_input, description="A torchvision state-dict file (local path or s3:// URI) to start from. Nothing is downloaded.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Random seed of shuffling, augmentation and initialization.")
    hyperparameters: FixedHyperparameters = Field(title="Fixed hyperparameters", default_factory=FixedHyperparameters, description="Used as they are in instance mode; the base that tuning varies.")
    tuning: TuningConfig = Field(title="Tuning", default_factory=TuningConfig, description="Used in tuning mode.")
    instance_type: str = Field(default="ml.m5.xlarge", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$", description="SageMaker training instance type.")
    ec2_instance_type: str = Field(default="m5.xlarge", pattern=r"^[a-z0-9]+\.[a-z0-9]+$", description="EC2 instance type for instance mode on aws.")
    max_runtime_seconds: int = Field(default=86400, ge=60, le=432000, description="A training job running longer is stopped and fails.")

    @field_validator("pretrained_weights")
    @classmethod
    def _weights_location(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith("s3://"):
            raise ValueError("must be a local file path or an s3:// URI")
        return value or None


class TrafficShiftConfig(Section):
    """How an update moves traffic to the new model, as SageMaker's deployment guardrails do."""

    type: Literal["all_at_once", "canary", "linear"] = Field(
        default="all_at_once", description="all_at_once: every request at once; canary: a share first, then the "
        "rest; linear: equal steps.")
    # SageMaker's bounds (TrafficRoutingConfig): a canary is at most 50 % of the new fleet, a linear step 10-50 %.
    canary_percent: int = Field(default=10, ge=1, le=50, description="canary: the share of the new fleet that takes "
                                "traffic first (SageMaker allows at most 50).")
    linear_step_percent: int = Field(default=25, ge=10, le=50, description="linear: the share added at each step "
                                     "(SageMaker allows 10 to 50).")
    wait_seconds: int = Field(default=300, ge=0, le=3600, description="Bake time: how long each step watches the "
                              "alarms before the next (all steps together must fit SageMaker's 8-hour deployment limit).")
    max_5xx_errors: int = Field(default=0, ge=0, le=100000, description="Roll back when the new model answers more 5xx errors than this in a minute.")
    max_model_latency_ms: int = Field(default=2000, ge=1, le=600000, description="Roll back when the new model's average latency in a minute is above this.")

    @field_validator("wait_seconds")
    @classmethod
    def _deployment_fits(cls, wait_seconds: int, info) -> int:
        if not {"type", "canary_percent", "linear_step_percent"} <= info.data.keys():
            return wait_seconds  # those are refused already
        steps = len(traffic_steps(cls.model_construct(**info.data)))
        longest = longest_bake_s(steps)
        if wait_seconds > longest:
            raise ValueError(
                f"must be at most {longest} with {steps} {info.data['type']} steps: each step bakes wait_seconds, "
                f"and the whole update must end within SageMaker's {MAX_EXECUTION_S} s "
                f"({deployment_seconds(steps, wait_seconds)} s needed); use fewer steps or a shorter bake")
        return wait_seconds


class HostingConfig(Section):
    instance_type: str = Field(default="ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$", description="Endpoint instance type.")
    initial_instance_count: int = Field(default=1, ge=1, le=100, description="Instances when the endpoint is created.")
    variant_name: str = Field(default="AllTraffic", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$", description="Production variant name.")
    top_k: int = Field(default=3, ge=1, le=100, description="Labels returned per prediction.")
    inference_precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="The model's arithmetic: fp32, or bf16 autocast where the instance's CPU computes "
        "bf16 natively (AVX-512/AMX; elsewhere it stays fp32). bf16 is faster and may change ~1% of top-1 answers.")
    traffic_shift: TrafficShiftConfig = Field(default_factory=TrafficShiftConfig, title="Traffic shift",
                                              description="How an update moves traffic, and when it rolls back by itself.")

    def model_environment(self) -> dict[str, str]:
        """What the serving code (training/inference.py) reads from its environment. fp32 is left out: an
        endpoint deployed before the setting existed keeps its model (the environment is part of its name)."""
        return {"TOP_K": str(self.top_k)} | ({} if self.inference_precision == "fp32" else
                                             {"INFERENCE_PRECISION": self.inference_precision})


class AutoscalingConfig(Section):
    enabled: bool = Field(default=True, description="Register the endpoint variant with Application Auto Scaling.")
    min_capacity: int = Field(default=1, ge=1, le=1000, description="Fewest instances.")
    max_capacity: int = Field(default=100, ge=1, le=1000, description="Most instances.")
    target_invocations_per_instance: float = Field(
        default=10.0, gt=0, le=100000, description="Target of SageMakerVariantInvocationsPerInstance (per minute).")
    scale_in_cooldown_seconds: int = Field(default=100, ge=0, le=86400, description="Wait after a scale-in.")
    scale_out_cooldown_seconds: int = Field(default=100, ge=0, le=86400, description="Wait after a scale-out.")

    @field_validator("max_capacity")
    @classmethod
    def _max_at_least_min(cls, value: int, info) -> int:
        low = info.data.get("min_capacity")
        if low is not None and value < low:
            raise ValueError(f"must be >= min_capacity ({low})")
        return value


class FunctionConfig(Section):
    memory_mb: int = Field(default=512, ge=128, le=10240, description="Lambda memory.")
    timeout_seconds: int = Field(default=30, ge=1, le=900, description="Lambda timeout.")
    reserved_concurrency: int | None = Field(
        default=100, ge=0, le=10000, json_schema_extra=_labelled_none("limit", "unreserved"),
        description="Most concurrent executions; the rest are throttled (unreserved: no limit of its own).")
    provisioned_concurrency: int = Field(default=5, ge=0, le=10000, description="Execution environments kept initialized.")
    allowed_url_hosts: list[str] = Field(
        default_factory=list, description="Hosts whose images the function may fetch for {\"url\": ...} requests.")
    readable_s3_prefixes: list[str] = Field(
        default_factory=list, max_length=20,
        description="s3://bucket/prefix/ locations, besides the pipeline's own prefix, whose images {\"s3_uri\": ...} "
        "requests may name; the function's role may read exactly these.")

    @field_validator("readable_s3_prefixes")
    @classmethod
    def _s3_prefixes(cls, values: list[str]) -> list[str]:
        cleaned = []
        for value in values:
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^*?]+$", value) or ".." in value.split("/"):
                raise ValueError(f"{value!r} is not an s3://bucket/prefix/ location (a key prefix, no wildcards)")
            cleaned.append(value if value.endswith("/") else value + "/")
        return cleaned

    @field_validator("provisioned_concurrency")
    @classmethod
    def _provisioned_within_reserved(cls, value: int, info) -> int:
        reserved = info.data.get("reserved_concurrency")
        if reserved is not None and value > reserved:
            raise ValueError(f"must be <= reserved_concurrency ({reserved})")
        return value


class PromotionConfig(Section):
    metric: Literal["test_accuracy", "test_loss"] = Field(default="test_accuracy", description="Champion and challenger are compared on this, on the same test images.")
    minimum_improvement: float = Field(default=0.0, ge=0, le=1000, description="A challenger must beat the champion by at least this much (0.01: one point of accuracy).")
    significance: float = Field(default=0.05, gt=0, lt=1, description="The challenger must also be significantly better: exact McNemar test p-value below this.")
    require_approval: bool = Field(default=False, description="Pause a retrain that would promote, until someone approves or rejects it in the Prefect UI.")
    approval_timeout_seconds: int = Field(default=86400, ge=60, le=2_592_000, description="A retrain waiting for approval this long rejects the challenger.")
    smoke_test_min_accuracy: float = Field(default=0.0, ge=0, le=1, description="A deploy whose smoke test through the Lambda scores below this is rolled back (0: only errors fail it).")


class ScheduleConfig(Section):
    retrain_cron: str = Field(default="0 3 * * 1", description="When the retrain deployment runs: a cron line of 5 fields (default Mondays 03:00).")
    timezone: str = Field(default="UTC", min_length=1, description="Time zone of the cron line (an IANA name such as Europe/Berlin).")

    @field_validator("retrain_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?LW#]+", f) for f in fields):
            raise ValueError(f"{value!r} is not a cron line of 5 fields (minute hour day month weekday), e.g. '0 3 * * 1'")
        return " ".join(fields)


class AwsConfig(Section):
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", json_schema_extra=_plain_input, description="AWS region, e.g. us-east-1 (empty: the environment's).")
    profile: str | None = Field(default=None, json_schema_extra=_plain_input, description="AWS profile name (empty: the default credentials).")
    credentials_block: str | None = Field(default=None, json_schema_extra=_plain_input, description="Name of a prefect-aws AwsCredentials block to take credentials from.")
    bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", json_schema_extra=_plain_input, description="S3 bucket (empty: sagemaker-flows-ACCOUNT-REGION, made when missing).")
    endpoint_url: str | None = Field(default=None, json_schema_extra=_plain_input, description="Send every AWS call here instead (tests, a moto server).")
    subnet_id: str | None = Field(
        default=None, pattern=r"^subnet-[0-9a-f]{8,17}$", json_schema_extra=_plain_input,
        description="Subnet of the EC2 training instance (empty: the default VPC's; accounts without one must set it).")
    security_group_ids: list[str] = Field(
        default_factory=list, max_length=5,
        description="Security groups of the EC2 training instance (empty: the VPC's default group).")

    @field_validator("security_group_ids")
    @classmethod
    def _security_groups(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"sg-[0-9a-f]{8,17}", value):
                raise ValueError(f"{value!r} is not a security group id (sg-...)")
        return values


class LocalConfig(Section):
    home: str | None = Field(default=None, json_schema_extra=_plain_input, description="State folder (empty: SAGEMAKER_FLOWS_HOME, else .sagemaker-flows in the working folder).")
    cpus: int | None = Field(default=None, ge=1, le=1024, json_schema_extra=_plain_input, description="CPU cores training may use (empty: all).")


class PreflightConfig(Section):
    """What `sagemaker-flows plan` (the first step of every training run) checks and estimates."""

    enforce: bool = Field(default=True, description="Refuse to start a paid step when a pre-flight check fails "
                          "(false: failed checks are logged as warnings and the run goes on).")
    expected_training_hours: float = Field(default=1.0, gt=0, le=120, description="Expected hours per training job, "
                                           "for the training cost estimate.")
    request_duration_ms: float = Field(default=100.0, gt=0, le=900_000, description="Expected duration of one "
                                       "function request, for the cost of a million requests.")
    prices_file: str | None = Field(
        default=None, json_schema_extra=_plain_input, description="A price table (JSON, the shape of "
        "core/data/prices.json) to estimate costs from instead of the shipped one.")


class PipelineConfig(Section):
    """Everything a pipeline run needs, validated before any side effect."""

    project: str = Field(default="sagemaker-flows", max_length=24, pattern=NAME_PATTERN, description="Project name, part of every resource name.")
    stage: str = Field(default="dev", max_length=12, pattern=NAME_PATTERN, description="Stage name (dev, prod ...), part of every resource name.")
    backend: Literal["local", "aws"] = Field(default="local", description="local: this machine, offline; aws: your AWS account.")
    data: DataConfig = Field(title="Data", description="The images.")
    training: TrainingConfig = Field(title="Training", default_factory=TrainingConfig, description="Training and tuning.")
    hosting: HostingConfig = Field(title="Hosting", default_factory=HostingConfig, description="The endpoint.")
    autoscaling: AutoscalingConfig = Field(title="Autoscaling", default_factory=AutoscalingConfig, description="Endpoint autoscaling.")
    function: FunctionConfig = Field(title="Lambda function", default_factory=FunctionConfig, description="The Lambda function in front of the endpoint.")
    promotion: PromotionConfig = Field(title="Promotion", default_factory=PromotionConfig, description="When retraining replaces the champion.")
    schedule: ScheduleConfig = Field(title="Schedule", default_factory=ScheduleConfig, description="When retraining runs, once served as a deployment.")
    aws: AwsConfig = Field(title="AWS", default_factory=AwsConfig, description="AWS account settings (aws backend).")
    local: LocalConfig = Field(title="Local backend", default_factory=LocalConfig, description="Local backend settings.")
    preflight: PreflightConfig = Field(title="Pre-flight", default_factory=PreflightConfig,
                                       description="The plan and checks every training run starts with.")

    @property
    def names(self) -> PipelineNames:
        """What this pipeline calls everything it makes (core/names.py)."""
        return PipelineNames(self.project, self.stage)

    @model_validator(mode="after")
    def _capacity_fits_initial_count(self) -> "PipelineConfig":
        a, h = self.autoscaling, self.hosting
        if a.enabled and not (a.min_capacity <= h.initial_instance_count <= a.max_capacity):
            raise ValueError(
                f"hosting.initial_instance_count ({h.initial_instance_count}) must be within autoscaling "
                f"min_capacity..max_capacity ({a.min_capacity}..{a.max_capacity})")
        return self
