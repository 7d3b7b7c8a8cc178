import socket

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from core.config import AutoscalingConfig
from core.retry import PermanentError, TransientError, is_transient
from core.scaling import capacity_to_keep, scalable_target, target_tracking_policy, variants_to_deregister


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize("exc", [
    client_error("ThrottlingException"), client_error("ServiceUnavailable", 503), client_error("ResourceInUse"),
    client_error("TooManyRequestsException", 429), client_error("Anything", 500),
    EndpointConnectionError(endpoint_url="https://sagemaker.us-east-1.amazonaws.com"),
    httpx.ConnectError("refused"), ConnectionResetError(), TimeoutError(), socket.timeout(), TransientError("starting"),
])
def test_transient_faults(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    client_error("ValidationException"), client_error("AccessDeniedException", 403), client_error("ResourceNotFound"),
    PermanentError("fix the config"), ValueError("bad"), FileNotFoundError("x"), KeyError("k"), None,
])
def test_permanent_faults(exc):
    assert not is_transient(exc)


def test_seed_scaling_policy():
    config = AutoscalingConfig()
    target = scalable_target("pets-endpoint", "AllTraffic", config)
    assert target == {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/pets-endpoint/variant/AllTraffic",
                      "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "MinCapacity": 1, "MaxCapacity": 100}
    policy = target_tracking_policy("pets-endpoint", "AllTraffic", config)
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking == {"TargetValue": 10.0,
                        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                        "ScaleInCooldown": 100, "ScaleOutCooldown": 100}


@pytest.mark.parametrize("current, variant, instance_type, expected", [
    ({"AllTraffic": "ml.m5.large"}, "AllTraffic", "ml.m5.large", []),  # a new model: AWS allows it
    ({"AllTraffic": "ml.m5.large"}, "AllTraffic", "ml.c5.xlarge", ["AllTraffic"]),  # a new instance type
    ({"AllTraffic": "ml.m5.large"}, "Blue", "ml.m5.large", ["AllTraffic"]),  # renamed: the old one is removed
    ({"AllTraffic": None}, "AllTraffic", "ml.m5.large", ["AllTraffic"]),  # type unknown: assume it changes
    ({"A": "ml.m5.large", "B": "ml.m5.large"}, "A", "ml.m5.large", ["B"]),
])
def test_variants_whose_autoscaling_aws_requires_deregistered_for_an_update(current, variant, instance_type, expected):
    assert variants_to_deregister(current, variant, instance_type) == expected


def test_an_update_keeps_the_variants_desired_count():
    variants = [{"VariantName": "Old", "DesiredInstanceCount": 2},
                {"VariantName": "AllTraffic", "CurrentInstanceCount": 3, "DesiredInstanceCount": 4}]
    assert capacity_to_keep(variants, "AllTraffic", default=1) == 4  # desired: where autoscaling is heading
    assert capacity_to_keep([{"VariantName": "AllTraffic", "CurrentInstanceCount": 3}], "AllTraffic", 1) == 3
    assert capacity_to_keep(variants[:1], "Renamed", default=1) == 2  # the variant it replaces
    assert capacity_to_keep([], "AllTraffic", default=2) == 2
