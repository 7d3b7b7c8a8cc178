import socket

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from core.config import AutoscalingConfig
from core.retry import PermanentError, TransientError, is_transient
from core.scaling import scalable_target, target_tracking_policy


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
