"""The aws backend: S3, EC2, SageMaker (tuning, registry, endpoints), Application Auto Scaling,
Lambda and IAM behind the Backend interface. Every client comes from one session factory
(backends/session.py) and is handed to the small module that uses it."""
from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from functools import cached_property
from pathlib import Path

from backends.aws import iam as iam_ops
from backends.aws.autoscaling import EndpointAutoscaling
from backends.aws.ec2_training import Ec2Training
from backends.aws.endpoints import SageMakerEndpoints
from backends.aws.functions import LambdaFunctions, zip_source
from backends.aws.registry import ModelRegistry
from backends.aws.storage import S3Storage
from backends.base import (
    Backend, EndpointState, FunctionState, ModelVersion, ScalingState, StagedDataset, TrainingOutcome,
    TrainingRequest, TuningOutcome, TuningRequest,
)
from backends.session import aws_session, make_client
from core import iam as policies
from core.config import AutoscalingConfig, FunctionConfig, HostingConfig, PipelineConfig

SOURCE_ROOT = Path(__file__).resolve().parents[2]
TRAINING_DIR = SOURCE_ROOT / "training"
LAMBDA_DIR = SOURCE_ROOT / "lambda_src"
DEFAULT_HOSTING_TYPE = "ml.m5.large"


class AwsBackend(Backend):
    name = "aws"

    def __init__(self, session, project: str, stage: str, bucket: str | None = None, endpoint_url: str | None = None,
                 poll_seconds: float = 30.0, role_propagation_s: float = 10.0):
        self.session = session
        self.project, self.stage = project, stage
        self.endpoint_url = endpoint_url
        self.poll_seconds = poll_seconds
        self.role_propagation_s = role_propagation_s
        self._bucket = bucket
        self._clients: dict[str, object] = {}
        self._bucket_ready = False

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "AwsBackend":
        aws = config.aws
        session = aws_session(aws.region, aws.profile, aws.credentials_block)
        return cls(session, config.project, config.stage, aws.bucket, aws.endpoint_url)

    # -- clients, identity, names ------------------------------------------------------
    def aws_client(self, service: str):
        if service not in self._clients:
            self._clients[service] = make_client(self.session, service, self.endpoint_url)
        return self._clients[service]

    @property
    def region(self) -> str:
        return self.aws_client("sts").meta.region_name

    @cached_property
    def account_id(self) -> str:
        return self.aws_client("sts").get_caller_identity()["Account"]

    @property
    def prefix(self) -> str:
        return f"{self.project}/{self.stage}"

    def _role_name(self, kind: str) -> str:
        return f"{self.project}-{self.stage}-{kind}"[:64]

    @property
    def _tags(self) -> dict[str, str]:
        return {"sagemaker-flows:project": self.project, "sagemaker-flows:stage": self.stage}

    # -- storage --------------------------------------------------------------------
    @cached_property
    def storage(self) -> S3Storage:
        return S3Storage(self.aws_client("s3"))

    def default_bucket(self) -> str:
        bucket = self._bucket or f"sagemaker-flows-{self.account_id}-{self.region}"
        if not self._bucket_ready:
            self.storage.ensure_bucket(bucket, self.region)
            self._bucket, self._bucket_ready = bucket, True
        return bucket

    def upload_folder(self, folder, prefix_uri, progress=None) -> StagedDataset:
        s = self.storage.sync_folder(folder, prefix_uri, progress=progress)
        return StagedDataset(s.uri, s.files, s.uploaded, s.unchanged, s.total_bytes, s.checksum)

    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        s = self.storage.describe_prefix(prefix_uri)
        return StagedDataset(s.uri, s.files, s.uploaded, s.unchanged, s.total_bytes, s.checksum)

    def upload_file(self, path: str, uri: str) -> str:
        return self.storage.put_file(path, uri)

    def list_objects(self, prefix_uri: str) -> list[str]:
        return self.storage.list_keys(prefix_uri)

    def read_object(self, uri: str) -> bytes:
        return self.storage.read(uri)

    # -- roles ------------------------------------------------------------------------
    def sagemaker_role_arn(self) -> str:
        document = policies.sagemaker_execution_policy(self.default_bucket(), self.prefix, self.account_id, self.region)
        return iam_ops.ensure_role(self.aws_client("iam"), self._role_name("sagemaker"), "sagemaker.amazonaws.com",
                                   "sagemaker-flows-execution", document, self._tags, self.role_propagation_s)

    def _ec2_instance_profile_arn(self) -> str:
        name = self._role_name("ec2")
        document = policies.ec2_training_policy(self.default_bucket(), self.prefix, self.account_id, self.region)
        iam_ops.ensure_role(self.aws_client("iam"), name, "ec2.amazonaws.com", "sagemaker-flows-ec2-training", document,
                            self._tags, self.role_propagation_s)
        return iam_ops.ensure_instance_profile(self.aws_client("iam"), name, name, self.role_propagation_s)

    def _lambda_role_arn(self, function_name: str, endpoint_name: str) -> str:
        endpoint_arn = policies.endpoint_arn(self.region, self.account_id, endpoint_name)
        document = policies.lambda_policy(endpoint_arn, self.default_bucket(), self.prefix, self.account_id, self.region,
                                          function_name)
        return iam_ops.ensure_role(self.aws_client("iam"), self._role_name("lambda"), "lambda.amazonaws.com",
                                   "sagemaker-flows-invoke-endpoint", document, self._tags, self.role_propagation_s)

    # -- training -------------------------------------------------------------------
    def _training_code_uri(self) -> str:
        """training/*.py as a tarball in S3, named by content so unchanged code is uploaded once."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(TRAINING_DIR.glob("*.py")):
                info = tar.gettarinfo(str(path), arcname=path.name)
                info.mtime = 0
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        data = buffer.getvalue()
        uri = f"s3://{self.default_bucket()}/{self.prefix}/code/training-{hashlib.sha256(data).hexdigest()[:16]}.tar.gz"
        if not self.storage.exists(uri):
            import tempfile

            with tempfile.NamedTemporaryFile(suffix=".tar.gz") as tmp:
                tmp.write(data)
                tmp.flush()
                self.storage.put_file(tmp.name, uri)
        return uri

    def run_training_job(self, request: TrainingRequest, on_log=None, on_epoch=None) -> TrainingOutcome:
        runner = Ec2Training(self.aws_client("ec2"), self.aws_client("ssm"), self.aws_client("s3"), self.poll_seconds)
        return runner.run(request, instance_type=request.instance_type.removeprefix("ml."),
                          instance_profile_arn=self._ec2_instance_profile_arn(), code_uri=self._training_code_uri(),
                          region=self.region, tags=self._tags, on_log=on_log, on_epoch=on_epoch)

    def run_tuning_job(self, request: TuningRequest, on_trial=None) -> TuningOutcome:
        from backends.aws.sagemaker_tuning import SageMakerTuning

        tuning = SageMakerTuning(self.session, self.aws_client("sagemaker"), self.poll_seconds)
        return tuning.run(request, role_arn=self.sagemaker_role_arn(), region=self.region, source_dir=str(TRAINING_DIR),
                          code_bucket_prefix=f"s3://{self.default_bucket()}/{self.prefix}/code", on_trial=on_trial)

    # -- model registry -------------------------------------------------------------
    @cached_property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.aws_client("sagemaker"))

    def register_model_version(self, group, model_artifact, metrics, hyperparameters, dataset_checksum, job_name):
        from backends.aws.images import inference_image_uri

        self.registry.ensure_group(group, f"models of {self.project}/{self.stage}")
        return self.registry.register(group, model_artifact, inference_image_uri(self.region, DEFAULT_HOSTING_TYPE),
                                      metrics, hyperparameters, dataset_checksum, job_name)

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        return self.registry.list(group)

    def promote_model_version(self, group: str, version: int) -> ModelVersion:
        return self.registry.promote(group, version)

    # -- endpoints and autoscaling ----------------------------------------------------
    @cached_property
    def endpoints(self) -> SageMakerEndpoints:
        return SageMakerEndpoints(self.aws_client("sagemaker"), poll_seconds=self.poll_seconds)

    @cached_property
    def autoscaling(self) -> EndpointAutoscaling:
        return EndpointAutoscaling(self.aws_client("application-autoscaling"))

    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        from backends.aws.images import inference_image_uri

        # AWS refuses to update a variant registered for autoscaling: deregister around the update.
        suspension = contextlib.ExitStack()
        return self.endpoints.deploy(
            name, model, inference_image_uri(self.region, hosting.instance_type), self.sagemaker_role_arn(), hosting,
            tags=self._tags,
            before_update=lambda: suspension.enter_context(
                self.autoscaling.suspended_for_update(name, hosting.variant_name)),
            after_update=suspension.close)

    def describe_endpoint(self, name: str) -> EndpointState | None:
        return self.endpoints.describe(name)

    def delete_endpoint(self, name: str) -> bool:
        return self.endpoints.delete(name)

    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> ScalingState:
        return self.autoscaling.register(endpoint_name, variant_name, config)

    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool:
        return self.autoscaling.deregister(endpoint_name, variant_name)

    # -- functions ------------------------------------------------------------------
    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig) -> FunctionState:
        role_arn = self._lambda_role_arn(name, endpoint_name)
        functions = LambdaFunctions(self.aws_client("lambda"), poll_seconds=min(self.poll_seconds, 2.0))
        environment = {"ENDPOINT_NAME": endpoint_name, "ALLOWED_URL_HOSTS": ",".join(config.allowed_url_hosts)}
        return functions.publish(name, role_arn, zip_source(str(LAMBDA_DIR)), environment, config, tags=self._tags)

    def delete_function(self, name: str) -> bool:
        return LambdaFunctions(self.aws_client("lambda")).delete(name)

    def delete_support_resources(self) -> list[str]:
        """The roles and instance profile this pipeline made."""
        iam, removed = self.aws_client("iam"), []
        if iam_ops.delete_instance_profile(iam, self._role_name("ec2")):
            removed.append(f"instance profile {self._role_name('ec2')}")
        for kind in ("lambda", "sagemaker", "ec2"):
            if iam_ops.delete_role(iam, self._role_name(kind)):
                removed.append(f"role {self._role_name(kind)}")
        return removed
