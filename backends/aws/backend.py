"""The aws backend: S3, EC2, SageMaker (tuning, registry, endpoints), Application Auto Scaling,
Lambda and IAM, and planning a run over them (Service Quotas, IAM's policy simulator). Every client
comes from one AwsAccount (one boto3 session, backends/session.py) and is handed to the service that
uses it."""
from __future__ import annotations

from collections.abc import Sequence

from backends.aws.account import AwsAccount
from backends.aws.errors import ROLE_PROPAGATION_BUDGET_S
from backends.aws.functions import LambdaFunctions
from backends.aws.hosting import SageMakerHosting
from backends.aws.iam import PipelineRoles
from backends.aws.images import inference_image_uri
from backends.aws.planning import AwsPlanning
from backends.aws.registry import ModelRegistry
from backends.aws.storage import S3Storage
from backends.aws.training import AwsTraining, Ec2Network
from backends.backend import Backend
from backends.session import aws_session
from core.config import PipelineConfig
from core.iam import training_inputs
from core.names import PipelineNames

# The instance type whose inference image registered model versions name, unless configured.
DEFAULT_HOSTING_TYPE = "ml.m5.large"


class AwsBackend(Backend):
    name = "aws"

    def __init__(self, session, project: str, stage: str, bucket: str | None = None, endpoint_url: str | None = None,
                 poll_seconds: float = 30.0, role_propagation_s: float = ROLE_PROPAGATION_BUDGET_S, *,
                 hosting_instance_type: str = DEFAULT_HOSTING_TYPE, ec2_network: Ec2Network = Ec2Network(),
                 readable_s3_uris: Sequence[str] = ()):
        """role_propagation_s: how long a create that passes a new role (a model, a function) keeps
        retrying while AWS says the role cannot be assumed yet. readable_s3_uris: the s3:// data and
        weights outside the pipeline's prefix that the training roles must read (a prefix ends in "/")."""
        self.names = names = PipelineNames(project, stage)
        self.account = account = AwsAccount(session, endpoint_url)
        self.storage = S3Storage(account.client("s3"), bucket or account.default_bucket_name,
                                 kms=account.client("kms"))
        self.roles = PipelineRoles(account.client("iam"), names, self.storage.default_bucket,
                                   lambda: account.account_id, account.region, readable_uris=readable_s3_uris,
                                   bucket_key=self.storage.bucket_key_arn)
        self.training = AwsTraining(account, names, self.storage, self.roles, poll_seconds, ec2_network)
        self.registry = ModelRegistry(account.client("sagemaker"),
                                      lambda: inference_image_uri(account.region, hosting_instance_type),
                                      f"models of {names.prefix}")
        self.hosting = SageMakerHosting(account, self.roles, names.tags, poll_seconds, role_propagation_s)
        self.functions = LambdaFunctions(account.client("lambda"), poll_seconds=min(poll_seconds, 2.0),
                                         role_arn=self.roles.lambda_role_arn, tags=names.tags,
                                         role_budget_s=role_propagation_s)
        self.planning = AwsPlanning(account, self.storage, self.registry, self.hosting.autoscaling, self.functions,
                                    (lambda: bucket) if bucket else account.default_bucket_name, self.roles)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "AwsBackend":
        aws = config.aws
        session = aws_session(aws.region, aws.profile, aws.credentials_block)
        return cls(session, config.project, config.stage, aws.bucket, aws.endpoint_url,
                   hosting_instance_type=config.hosting.instance_type,
                   ec2_network=Ec2Network(aws.subnet_id, tuple(aws.security_group_ids)),
                   readable_s3_uris=training_inputs(config.data.source, config.training.pretrained_weights))

    @property
    def endpoint_url(self) -> str | None:
        return self.account.endpoint_url

    def client(self, service: str):
        return self.account.client(service)

    def delete_support_resources(self) -> list[str]:
        return self.roles.delete_all()

    def close(self) -> None:
        self.account.close()

