"""The aws Hosting service on moto: updates shift traffic as configured and roll back on the two
CloudWatch alarms the pipeline creates and owns; deleting the endpoint deletes them.
UpdateEndpoint is played by tests/aws/fakes.py (moto lacks it)."""
import boto3
import pytest
from moto import mock_aws

from backends.aws.backend import AwsBackend
from backends.errors import InvalidRequestError
from backends.types import ModelVersion
from core.config import AutoscalingConfig, HostingConfig
from tests.aws.fakes import FakeSageMakerService

REGION = "us-east-1"


@pytest.fixture
def world():
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        fake = FakeSageMakerService(session.events)
        backend = AwsBackend(session, "proj", "dev", poll_seconds=0, role_propagation_s=0)
        yield backend, fake, session.client("cloudwatch", region_name=REGION)
        backend.close()


def _model(n: int) -> ModelVersion:
    return ModelVersion("proj-dev-models", n, f"s3://bucket/m{n}.tar.gz", {}, {}, "ab" * 32, f"job-{n}", 1.7e9)


def test_canary_update_with_the_pipelines_rollback_alarms(world):
    backend, fake, cloudwatch = world
    hosting = HostingConfig(traffic_shift={"type": "canary", "canary_percent": 20, "wait_seconds": 600,
                                           "max_5xx_errors": 2, "max_model_latency_ms": 500})
    backend.hosting.deploy_endpoint("proj-dev-endpoint", _model(1), hosting)
    backend.hosting.deploy_endpoint("proj-dev-endpoint", _model(2), hosting)

    policy = fake.updates[-1]["DeploymentConfig"]
    assert policy["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "CANARY", "WaitIntervalInSeconds": 600, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}}
    # Time for the new fleet (3000 s), two bakes and the termination wait: not a fixed hour.
    assert policy["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] == 3000 + 2 * 600 + 300
    names = ["proj-dev-endpoint-5xx-errors", "proj-dev-endpoint-model-latency"]
    assert policy["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": n} for n in names]}
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]}
    assert set(alarms) == set(names)
    assert alarms[names[0]]["Threshold"] == 2.0 and alarms[names[1]]["Threshold"] == 500000.0
    assert {d["Name"]: d["Value"] for d in alarms[names[0]]["Dimensions"]} == {
        "EndpointName": "proj-dev-endpoint", "VariantName": "AllTraffic"}

    assert backend.hosting.delete_endpoint("proj-dev-endpoint") is True
    assert cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"] == []
    assert backend.hosting.delete_endpoint("proj-dev-endpoint") is False


def _autoscaling_writes(backend) -> list[str]:
    writes = []
    client = backend.account.client("application-autoscaling")
    client.meta.events.register("before-parameter-build.application-auto-scaling",
                                lambda model, **_: writes.append(model.name)
                                if not model.name.startswith("Describe") else None)
    return writes


def test_a_new_model_keeps_the_scaled_out_count_and_autoscaling_stays_registered(world):
    backend, fake, _ = world
    hosting, name = backend.hosting, "proj-dev-endpoint"
    config = HostingConfig()
    hosting.deploy_endpoint(name, _model(1), config)
    registered = hosting.register_autoscaling(name, config.variant_name, AutoscalingConfig(max_capacity=4))
    backend.client("sagemaker").update_endpoint_weights_and_capacities(  # autoscaling scaled it out
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
    writes = _autoscaling_writes(backend)

    state = hosting.deploy_endpoint(name, _model(2), config)

    assert (state.model_version, state.instance_count) == ("proj-dev-models/2", 3)
    assert fake.updates[-1]["RetainAllVariantProperties"] is True
    assert writes == []  # never deregistered: AWS allows a new model on an autoscaled variant
    assert hosting.autoscaling.describe(name, config.variant_name) == registered


def test_an_instance_type_change_deregisters_and_registers_autoscaling_again(world):
    backend, fake, _ = world
    hosting, name = backend.hosting, "proj-dev-endpoint"
    hosting.deploy_endpoint(name, _model(1), HostingConfig())
    registered = hosting.register_autoscaling(name, "AllTraffic", AutoscalingConfig(min_capacity=2, max_capacity=4))
    writes = _autoscaling_writes(backend)
    seen_by_update = []  # what AWS checks: is the variant still registered when the update comes?
    backend.client("sagemaker").meta.events.register(
        "before-parameter-build.sagemaker.UpdateEndpoint",
        lambda **_: seen_by_update.append(hosting.autoscaling.describe(name, "AllTraffic")))

    state = hosting.deploy_endpoint(name, _model(1), HostingConfig(instance_type="ml.c5.xlarge"))

    assert seen_by_update == [None]
    assert writes == ["DeleteScalingPolicy", "DeregisterScalableTarget", "RegisterScalableTarget", "PutScalingPolicy"]
    assert hosting.autoscaling.describe(name, "AllTraffic") == registered
    assert state.status == "InService"


def test_a_time_scale_is_refused_on_aws_with_what_it_means(world):
    backend = world[0]
    with pytest.raises(InvalidRequestError, match="count real minutes"):
        backend.hosting.register_autoscaling("any-endpoint", "AllTraffic", AutoscalingConfig(), time_scale=60)
