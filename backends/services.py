"""The services a backend is made of. backends/aws/<service>.py and backends/local/<service>.py
implement each one; tasks call them through `Backend` (backends/backend.py) and never know which
backend they have.

Every method that changes something is idempotent: called again with the same arguments it
finds what exists and reuses it, updates it or leaves it, and never makes a second one. Errors
are those of backends/errors.py (a ClientError or a connection error may also pass through as
it came: core.retry classes those as transient or permanent).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from backends.types import (
    EndpointState, EpochCallback, FunctionState, LogCallback, ModelVersion, Progress, ScalingState, StagedDataset,
    TrainingOutcome, TrainingRequest, TrialCallback, TrialProgressCallback, TuningOutcome, TuningRequest,
)
from core.config import AutoscalingConfig, FunctionConfig, HostingConfig, PipelineConfig
from core.plan import Plan


class Storage(Protocol):
    """Objects under s3:// URIs: S3, or the local store that stands in for it."""

    def default_bucket(self) -> str:
        """The bucket the pipeline's objects go to (made, with public access blocked, on first use)."""

    def upload_folder(self, folder: str, prefix_uri: str, progress: Progress | None = None) -> StagedDataset:
        """Make `prefix_uri` mirror `folder`: copy what changed (by SHA-256), remove what is gone.

        Raises:
            NotFoundError: `folder` is not a folder.
        """

    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        """A prefix staged earlier, or any data.source of s3://..., with its checksum (objects that carry
        no SHA-256 are read once to compute it).

        Raises:
            NotFoundError: nothing is stored under the prefix.
            InvalidRequestError: it is not completely staged, or changed since it was.
        """

    def upload_file(self, path: str, uri: str) -> str:
        """Store one file at `uri`; returns `uri`."""

    def list_objects(self, prefix_uri: str) -> list[str]:
        """Keys under the prefix, relative to it, sorted ([] when there are none)."""

    def read_object(self, uri: str) -> bytes:
        """Raises:
            NotFoundError: no object at `uri`.
        """

    def download_file(self, uri: str, path: str) -> str:
        """Copy the object at `uri` to the file `path`; returns `path`.

        Raises:
            NotFoundError: no object at `uri`.
        """


class Training(Protocol):
    """Training jobs under the SageMaker script-mode contract, one at a time or as a tuning job."""

    def run_training_job(self, request: TrainingRequest, on_log: LogCallback | None = None,
                         on_epoch: EpochCallback | None = None) -> TrainingOutcome:
        """Run the job to its end and describe how it ended (Completed, Failed with its reason, Stopped).

        A job of the same name that completed is returned as it is; one still running is attached to.
        """

    def run_tuning_job(self, request: TuningRequest, on_trial: TrialCallback | None = None,
                       on_trial_progress: TrialProgressCallback | None = None) -> TuningOutcome:
        """Run the tuning job to its end, calling `on_trial` once as each trial ends, and
        `on_trial_progress` as trials start ({}) and, where the backend streams them (local), with
        each epoch's metrics.

        A tuning job of the same name is attached to (or, when completed, returned as it is).
        """


class Registry(Protocol):
    """Versioned models of a model group, one of them the champion (the one that serves)."""

    def register_model_version(self, group: str, model_artifact: str, metrics: dict[str, float],
                               hyperparameters: dict[str, str], dataset_checksum: str, job_name: str,
                               dataset_uri: str = "") -> ModelVersion:
        """A new version (PendingManualApproval), or the existing one registered from the same job."""

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        """Every version, oldest first ([] for an unknown group)."""

    def promote_model_version(self, group: str, version: int, reason: str = "promoted") -> ModelVersion:
        """Make `version` the champion (Approved, with the reason); the champion before it is
        Rejected as superseded by it, and promoting it again later is a rollback.

        Raises:
            NotFoundError: the group has no such version.
        """

    def reject_model_version(self, group: str, version: int, reason: str) -> ModelVersion:
        """Mark `version` Rejected with the reason (it stops being the champion if it was).

        Raises:
            NotFoundError: the group has no such version.
        """


class Hosting(Protocol):
    """Real-time endpoints on the SageMaker Runtime API and their autoscaling."""

    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        """Create the endpoint, or update it blue/green (the old model serves until the new one is
        healthy), or leave it as it is when it already serves `model` so.

        Raises:
            DeploymentFailedError: the new model did not reach service; the old one (if any) still serves.
            WaitTimedOutError: the endpoint did not settle in time.
        """

    def describe_endpoint(self, name: str) -> EndpointState | None:
        """The endpoint, or None when there is none of that name."""

    def delete_endpoint(self, name: str) -> bool:
        """Delete the endpoint and what was made for it; False when there was nothing to delete."""

    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig,
                             time_scale: float = 1.0) -> ScalingState:
        """Register the variant for target tracking on invocations per instance (an upsert).
        `time_scale` > 1 runs the policy's minutes and cooldowns that many times faster (a load test's
        demonstration); only the local autoscaler can.

        Raises:
            NotFoundError: no such endpoint.
            InvalidRequestError: a time scale the backend cannot follow (aws: anything but 1).
        """

    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool:
        """Remove the policy and the scalable target; False when none was registered."""


class Functions(Protocol):
    """The Lambda function in front of an endpoint, published with its concurrency."""

    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig,
                         model_version: str = "", s3_prefixes: Sequence[str] = ()) -> FunctionState:
        """Create or update the function for the release of `model_version`, publish a version when
        something changed (serve again the one published with the same code and configuration),
        with the configured reserved and provisioned concurrency. `s3_prefixes` (core.functions.
        readable_s3_prefixes) are the only s3:// locations it may read, by its own check and its role.

        Raises:
            DeploymentFailedError: the function or its provisioned concurrency ended in a failed state.
            WaitTimedOutError: it did not settle in time.
        """

    def check_concurrency(self, name: str, config: FunctionConfig) -> None:
        """Check, before any paid step, that `config`'s reserved and provisioned concurrency fit the
        account: AWS keeps at least 100 concurrent executions unreserved (core.lambda_concurrency);
        the reservation function `name` already holds counts as available to it.

        Raises:
            InvalidRequestError: they do not fit; the message says what to lower to what, or to
                request a quota increase.
        """

    def delete_function(self, name: str) -> bool:
        """Delete the function with its versions and aliases; False when there was none."""


class Planning(Protocol):
    """What a run of a configuration will do, before it does anything: `sagemaker-flows plan`, and the
    first step of every training flow."""

    def plan(self, config: PipelineConfig, release: ModelVersion | None = None) -> Plan:
        """Each resource the run will create, update, keep or delete (found by the names and tags the
        tasks use), its costs (config.preflight's price table and estimates; 0 locally), and the
        pre-flight checks, each failure saying what to change. Only reads: nothing is made, not even
        the bucket. A check that cannot be made (an API refused or missing) is a warn saying so.

        release: plan serving this registered version again (a rollback) instead of a run that stages,
        trains and registers: no data, training, quota or permission check of training can stop it.
        """
