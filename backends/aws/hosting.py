"""The Hosting service on AWS: SageMaker real-time endpoints (endpoints.py) autoscaled by Application
Auto Scaling (autoscaling.py). AWS refuses to update a variant registered for autoscaling, so a
blue/green update runs with the variant's scaling suspended, and restored after."""
from __future__ import annotations

import contextlib

from backends.aws.account import AwsAccount
from backends.aws.autoscaling import EndpointAutoscaling
from backends.aws.endpoints import SageMakerEndpoints
from backends.aws.iam import PipelineRoles
from backends.aws.images import inference_image_uri
from backends.types import EndpointState, ModelVersion, ScalingState
from core.config import AutoscalingConfig, HostingConfig


class SageMakerHosting:
    def __init__(self, account: AwsAccount, roles: PipelineRoles, tags: dict[str, str], poll_seconds: float = 30.0):
        self.account, self.roles, self.tags = account, roles, tags
        self.endpoints = SageMakerEndpoints(account.client("sagemaker"), poll_seconds=poll_seconds)
        self.autoscaling = EndpointAutoscaling(account.client("application-autoscaling"))

    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        suspension = contextlib.ExitStack()
        return self.endpoints.deploy(
            name, model, inference_image_uri(self.account.region, hosting.instance_type),
            self.roles.sagemaker_role_arn(), hosting, tags=self.tags,
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
