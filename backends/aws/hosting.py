"""The Hosting service on AWS: SageMaker real-time endpoints (endpoints.py) autoscaled by Application
Auto Scaling (autoscaling.py). A blue/green update keeps the variant's instance count and its
autoscaling; only an update AWS refuses on an autoscaled variant (a new instance type, a removed or
renamed variant) runs with that variant deregistered, and registers it again after.

Updates shift traffic as hosting.traffic_shift says (all at once, canary, linear, each step baked),
and SageMaker rolls back by itself when one of the two CloudWatch alarms the pipeline creates and
owns goes off: the variant's 5xx errors and its model latency (core/traffic.py)."""
from __future__ import annotations

from backends.aws.account import AwsAccount
from backends.aws.errors import ROLE_PROPAGATION_BUDGET_S, if_exists
from backends.aws.autoscaling import EndpointAutoscaling
from backends.aws.endpoints import SageMakerEndpoints
from backends.aws.iam import PipelineRoles
from backends.aws.images import inference_image_uri
from backends.errors import InvalidRequestError
from backends.types import EndpointState, ModelVersion, ScalingState
from core.config import AutoscalingConfig, HostingConfig
from core.traffic import alarm_names, rollback_alarms


class SageMakerHosting:
    def __init__(self, account: AwsAccount, roles: PipelineRoles, tags: dict[str, str], poll_seconds: float = 30.0,
                 role_budget_s: float = ROLE_PROPAGATION_BUDGET_S):
        self.account, self.roles, self.tags = account, roles, tags
        self.endpoints = SageMakerEndpoints(account.client("sagemaker"), poll_seconds=poll_seconds,
                                            role_budget_s=role_budget_s)
        self.autoscaling = EndpointAutoscaling(account.client("application-autoscaling"))

    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        alarms = self._ensure_alarms(name, hosting)
        return self.endpoints.deploy(
            name, model, inference_image_uri(self.account.region, hosting.instance_type),
            self.roles.sagemaker_role_arn(), hosting, tags=self.tags, rollback_alarms=alarms,
            without_autoscaling=lambda variants: self.autoscaling.deregistered_for_update(
                name, variants, hosting.variant_name))

    def describe_endpoint(self, name: str) -> EndpointState | None:
        return self.endpoints.describe(name)

    def delete_endpoint(self, name: str) -> bool:
        removed = self.endpoints.delete(name)
        cloudwatch = self.account.client("cloudwatch")
        alarms = [a for a in alarm_names(name)
                  if cloudwatch.describe_alarms(AlarmNames=[a]).get("MetricAlarms")]
        return (if_exists(cloudwatch.delete_alarms, AlarmNames=alarms) if alarms else False) or removed

    def _ensure_alarms(self, name: str, hosting: HostingConfig) -> list[str]:
        """The endpoint's rollback alarms, made or brought up to date (PutMetricAlarm is an upsert)."""
        cloudwatch = self.account.client("cloudwatch")
        documents = rollback_alarms(name, hosting.variant_name, hosting.traffic_shift)
        tags = [{"Key": k, "Value": v} for k, v in self.tags.items()]
        for document in documents:
            cloudwatch.put_metric_alarm(**document, **({"Tags": tags} if tags else {}))
        return [d["AlarmName"] for d in documents]

    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig,
                             time_scale: float = 1.0) -> ScalingState:
        if time_scale != 1:
            raise InvalidRequestError(f"time_scale {time_scale:g}: Application Auto Scaling's alarms count real "
                                      "minutes; only the local backend's autoscaler runs faster")
        return self.autoscaling.register(endpoint_name, variant_name, config)

    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool:
        return self.autoscaling.deregister(endpoint_name, variant_name)
