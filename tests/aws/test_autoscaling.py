"""Endpoint autoscaling on moto: register is an upsert, deregister is idempotent, an update AWS refuses on
an autoscaled variant runs with it deregistered and registers it again."""
import os

for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.autoscaling import EndpointAutoscaling  # noqa: E402
from core.config import AutoscalingConfig  # noqa: E402
from core.scaling import METRIC, SCALABLE_DIMENSION, target_tracking_policy  # noqa: E402

ENDPOINT, VARIANT = "proj-dev-endpoint", "AllTraffic"
RESOURCE = f"endpoint/{ENDPOINT}/variant/{VARIANT}"


@pytest.fixture
def client():
    with mock_aws():
        yield boto3.client("application-autoscaling", region_name="us-east-1")


def _targets(client) -> list[dict]:
    return client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


def _policies(client) -> list[dict]:
    return client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]


def _assert_seed_registration(client) -> None:
    targets, policies = _targets(client), _policies(client)
    assert len(targets) == 1 and len(policies) == 1
    target, policy = targets[0], policies[0]
    assert (target["ResourceId"], target["ScalableDimension"]) == (RESOURCE, SCALABLE_DIMENSION)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 100)
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["ResourceId"] == RESOURCE
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 10.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == METRIC
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (100, 100)


def test_register_twice_makes_one_target_and_one_policy_with_the_seed_values(client):
    scaling = EndpointAutoscaling(client)
    first = scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())
    second = scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())

    _assert_seed_registration(client)
    assert first == second == scaling.describe(ENDPOINT, VARIANT)
    assert (second.resource_id, second.min_capacity, second.max_capacity) == (RESOURCE, 1, 100)
    # The same document the local backend reports: the PutScalingPolicy arguments.
    assert second.policy == target_tracking_policy(ENDPOINT, VARIANT, AutoscalingConfig())


def test_register_again_with_other_values_updates_in_place(client):
    scaling = EndpointAutoscaling(client)
    scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())
    state = scaling.register(ENDPOINT, VARIANT, AutoscalingConfig(
        min_capacity=2, max_capacity=4, target_invocations_per_instance=50, scale_in_cooldown_seconds=300))

    targets, policies = _targets(client), _policies(client)
    assert len(targets) == 1 and len(policies) == 1
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (2, 4)
    tracking = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert (tracking["TargetValue"], tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (50.0, 300, 100)
    assert (state.min_capacity, state.max_capacity) == (2, 4)


def test_describe_is_none_when_not_registered(client):
    assert EndpointAutoscaling(client).describe(ENDPOINT, VARIANT) is None


def test_deregistered_for_update_then_registered_again_the_same_way(client):
    scaling = EndpointAutoscaling(client)
    before = scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())

    with scaling.deregistered_for_update(ENDPOINT, [VARIANT], VARIANT) as deregistered:
        assert deregistered == [VARIANT]
        assert _targets(client) == [] and _policies(client) == []

    _assert_seed_registration(client)
    assert scaling.describe(ENDPOINT, VARIANT) == before


def test_a_renamed_variant_gets_the_registration_of_the_one_it_replaced(client):
    scaling = EndpointAutoscaling(client)
    scaling.register(ENDPOINT, VARIANT, AutoscalingConfig(min_capacity=2, max_capacity=6))

    with scaling.deregistered_for_update(ENDPOINT, [VARIANT], "Blue"):
        pass

    (target,) = _targets(client)
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        f"endpoint/{ENDPOINT}/variant/Blue", 2, 6)
    (policy,) = _policies(client)
    assert policy["ResourceId"] == f"endpoint/{ENDPOINT}/variant/Blue"


def test_a_failed_update_registers_the_old_variant_again(client):
    scaling = EndpointAutoscaling(client)
    scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())

    with pytest.raises(RuntimeError, match="update failed"):
        with scaling.deregistered_for_update(ENDPOINT, [VARIANT], "Blue"):
            raise RuntimeError("update failed")

    _assert_seed_registration(client)  # on AllTraffic, which still serves


def test_deregistered_for_update_does_nothing_when_not_registered(client):
    scaling = EndpointAutoscaling(client)
    with scaling.deregistered_for_update(ENDPOINT, [VARIANT], VARIANT) as deregistered:
        assert deregistered == []
    assert _targets(client) == [] and _policies(client) == []


def test_deregister_twice_is_true_then_false(client):
    scaling = EndpointAutoscaling(client)
    scaling.register(ENDPOINT, VARIANT, AutoscalingConfig())

    assert scaling.deregister(ENDPOINT, VARIANT) is True
    assert _targets(client) == [] and _policies(client) == []
    assert scaling.deregister(ENDPOINT, VARIANT) is False
    assert scaling.describe(ENDPOINT, VARIANT) is None
