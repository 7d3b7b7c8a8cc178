"""Hosting promises, the same on both backends: a re-deploy changes nothing, an update keeps
serving, a failed update leaves the old model serving, deletes say whether there was anything."""
import pytest

from backends.errors import DeploymentFailedError
from core.config import AutoscalingConfig, HostingConfig

HOSTING = HostingConfig(instance_type="ml.m5.large", initial_instance_count=1, top_k=2)
SCALING = AutoscalingConfig(min_capacity=1, max_capacity=3, target_invocations_per_instance=50)


def test_deploy_again_then_update_then_delete(world):
    hosting, name = world.backend.hosting, world.unique("endpoint")
    assert hosting.describe_endpoint(name) is None

    first = hosting.deploy_endpoint(name, world.model(1), HOSTING)
    assert (first.name, first.status, first.model_version) == (name, "InService", "contract-test-models/1")
    assert first.instance_count == 1 and first.invoke_url.endswith(f"/endpoints/{name}/invocations")
    assert hosting.deploy_endpoint(name, world.model(1), HOSTING) == first
    assert hosting.describe_endpoint(name) == first

    updated = hosting.deploy_endpoint(name, world.model(2), HOSTING)
    assert (updated.status, updated.model_version) == ("InService", "contract-test-models/2")
    assert hosting.describe_endpoint(name).model_version == "contract-test-models/2"

    assert hosting.delete_endpoint(name) is True
    assert hosting.describe_endpoint(name) is None
    assert hosting.delete_endpoint(name) is False


def test_a_failed_update_leaves_the_old_model_serving(world):
    hosting, name = world.backend.hosting, world.unique("endpoint")
    hosting.deploy_endpoint(name, world.model(1), HOSTING)
    with pytest.raises(DeploymentFailedError):
        hosting.deploy_endpoint(name, world.broken_model(2), HOSTING)
    still = hosting.describe_endpoint(name)
    assert (still.status, still.model_version) == ("InService", "contract-test-models/1")
    hosting.delete_endpoint(name)


def test_autoscaling_registers_once_and_deregisters_once(world):
    hosting, name = world.backend.hosting, world.unique("endpoint")
    hosting.deploy_endpoint(name, world.model(1), HOSTING)
    assert hosting.deregister_autoscaling(name, HOSTING.variant_name) is False
    first = hosting.register_autoscaling(name, HOSTING.variant_name, SCALING)
    assert hosting.register_autoscaling(name, HOSTING.variant_name, SCALING) == first
    assert (first.resource_id, first.min_capacity, first.max_capacity) == (
        f"endpoint/{name}/variant/AllTraffic", 1, 3)
    assert first.policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 50.0
    assert hosting.deregister_autoscaling(name, HOSTING.variant_name) is True
    assert hosting.deregister_autoscaling(name, HOSTING.variant_name) is False
    hosting.delete_endpoint(name)
