"""SageMaker endpoints on moto: create, the re-run no-op, blue/green update, rollback, delete.

moto 5 implements models, endpoint configs and endpoints (created InService at once) but not
UpdateEndpoint. The update tests therefore answer UpdateEndpoint on the client itself: a
`before-call.sagemaker.UpdateEndpoint` handler that returns an (http response, parsed response)
tuple makes botocore skip sending the request (botocore/client.py, _make_api_call), so the test
sees the exact parameters the code sent, and the handler plays SageMaker's part: it moves the
endpoint to the new config (a successful update) or leaves it on the old one (a rollback).
"""
import os

# Fake credentials before boto3 is imported: no test may reach a real AWS account.
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.awsrequest import AWSResponse  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.endpoints import SageMakerEndpoints  # noqa: E402
from backends.errors import DeploymentFailedError  # noqa: E402
from backends.types import ModelVersion  # noqa: E402
from core.config import HostingConfig  # noqa: E402

REGION = "us-east-1"
NAME = "proj-dev-endpoint"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311"
ROLE = "arn:aws:iam::123456789012:role/proj-dev-sagemaker"
HOSTING = HostingConfig(instance_type="ml.m5.large", initial_instance_count=2, variant_name="AllTraffic", top_k=4)
MUTATING = ("Create", "Update", "Delete")


def _version(number: int, group: str = "proj-dev-models") -> ModelVersion:
    return ModelVersion(group, number, f"s3://bucket/models/train-{number}/output/model.tar.gz",
                        {"val_accuracy": 0.9}, {"lr": "0.001"}, "ab" * 32, f"train-{number}", 1.7e9)


class Calls:
    """Every SageMaker operation the client makes, by name, and UpdateEndpoint answered here."""

    def __init__(self, client, update: str | None = None):
        self.names: list[str] = []
        self.updates: list[dict] = []
        self._update = update  # "apply": move to the new config; "rollback": stay on the old one
        self._other = boto3.client("sagemaker", region_name=REGION)  # plays SageMaker for updates
        client.meta.events.register("before-parameter-build.sagemaker", self._record)
        client.meta.events.register("before-call.sagemaker.UpdateEndpoint", self._answer_update)

    def _record(self, params, model, **_):
        self.names.append(model.name)
        if model.name == "UpdateEndpoint":
            self.updates.append(dict(params))

    def _answer_update(self, params, **_):
        request = self.updates[-1]
        if self._update == "apply":
            # SageMaker's blue/green update, done in two steps moto has: the endpoint ends on the new config.
            self._other.delete_endpoint(EndpointName=request["EndpointName"])
            self._other.create_endpoint(EndpointName=request["EndpointName"],
                                        EndpointConfigName=request["EndpointConfigName"])
        arn = f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{request['EndpointName'].lower()}"
        http = AWSResponse(f"https://api.sagemaker.{REGION}.amazonaws.com/", 200, {}, None)
        return http, {"EndpointArn": arn, "ResponseMetadata": {"HTTPStatusCode": 200}}

    def mutating(self) -> list[str]:
        return [n for n in self.names if n.startswith(MUTATING)]


@pytest.fixture
def sagemaker():
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


@pytest.fixture
def endpoints(sagemaker):
    return SageMakerEndpoints(sagemaker, poll_seconds=0.01, timeout_s=5)


def _names(sagemaker) -> tuple[list[str], list[str], list[str]]:
    models = sorted(m["ModelName"] for m in sagemaker.list_models()["Models"])
    configs = sorted(c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"])
    eps = sorted(e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"])
    return models, configs, eps


def test_first_deploy_creates_model_config_and_endpoint(endpoints, sagemaker):
    calls = Calls(sagemaker)
    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING, environment={"EXTRA": "1"},
                             tags={"sagemaker-flows:project": "proj"})
    assert calls.mutating() == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert state.name == NAME and state.status == "InService"
    assert (state.model_version, state.instance_count, state.variant_name) == ("proj-dev-models/1", 2, "AllTraffic")
    assert state.invoke_url == f"https://runtime.sagemaker.{REGION}.amazonaws.com/endpoints/{NAME}/invocations"

    models, configs, eps = _names(sagemaker)
    assert eps == [NAME] and len(models) == 1 and len(configs) == 1
    assert models[0].startswith(f"{NAME}-v1-") and len(models[0]) == len(NAME) + 12
    assert configs[0].startswith(f"{NAME}-cfg-")

    model = sagemaker.describe_model(ModelName=models[0])
    assert model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE and container["ModelDataUrl"] == _version(1).model_artifact
    assert container["Environment"] == {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "EXTRA": "1", "TOP_K": "4", "MODEL_VERSION": "proj-dev-models/1"}
    variant = sagemaker.describe_endpoint_config(EndpointConfigName=configs[0])["ProductionVariants"][0]
    assert (variant["VariantName"], variant["ModelName"], variant["InitialInstanceCount"], variant["InstanceType"]) == (
        "AllTraffic", models[0], 2, "ml.m5.large")
    endpoint = sagemaker.describe_endpoint(EndpointName=NAME)
    assert endpoint["EndpointConfigName"] == configs[0]
    assert {"Key": "sagemaker-flows:project", "Value": "proj"} in sagemaker.list_tags(
        ResourceArn=endpoint["EndpointArn"])["Tags"]

    assert endpoints.describe(NAME) == state


def test_second_deploy_of_the_same_version_changes_nothing(endpoints, sagemaker):
    first = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker)
    hooks = []
    again = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING,
                             before_update=lambda: hooks.append("before"), after_update=lambda: hooks.append("after"))
    assert again == first
    assert calls.names and calls.mutating() == []  # only Describe calls
    assert hooks == []


def test_deploy_of_a_new_version_updates_blue_green(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    order = []
    calls_at_hook = {}

    def before():
        order.append("before")
        calls_at_hook["before"] = list(calls.mutating())

    def after():
        order.append("after")
        calls_at_hook["after"] = list(calls.mutating())

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING, before_update=before, after_update=after)
    assert calls.mutating() == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert order == ["before", "after"]
    assert calls_at_hook == {"before": ["CreateModel", "CreateEndpointConfig"],
                             "after": ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]}

    (update,) = calls.updates
    new_config = sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"]
    assert update == {
        "EndpointName": NAME, "EndpointConfigName": new_config, "RetainAllVariantProperties": False,
        "DeploymentConfig": {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 300, "MaximumExecutionTimeoutInSeconds": 3600}}}
    assert (state.status, state.model_version) == ("InService", "proj-dev-models/2")
    assert endpoints.describe(NAME).model_version == "proj-dev-models/2"
    models, configs, _ = _names(sagemaker)
    assert len(models) == 2 and len(configs) == 2  # the old ones stay until delete()


def test_update_passes_rollback_alarms(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING, rollback_alarms=["proj-dev-5xx"])
    assert calls.updates[0]["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "proj-dev-5xx"}]}


def test_hosting_change_alone_updates(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    bigger = HostingConfig(instance_type="ml.c5.xlarge", initial_instance_count=2, top_k=4)
    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, bigger)
    assert calls.mutating() == ["CreateEndpointConfig", "UpdateEndpoint"]  # the model is reused
    assert state.model_version == "proj-dev-models/1"


def test_rolled_back_update_raises_and_still_calls_after_update(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    old_config = sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"]
    Calls(sagemaker, update="rollback")
    order = []
    with pytest.raises(DeploymentFailedError, match="rolled back"):
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING,
                         before_update=lambda: order.append("before"), after_update=lambda: order.append("after"))
    assert order == ["before", "after"]
    assert sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == old_config
    assert endpoints.describe(NAME).model_version == "proj-dev-models/1"


def test_failed_endpoint_is_deleted_and_created_again(endpoints, sagemaker):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    fake = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].endpoints[NAME]
    fake.endpoint_status, fake.failure_reason = "Failed", "container did not pass the ping check"
    calls = Calls(sagemaker)
    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    assert calls.mutating() == ["DeleteEndpoint", "CreateEndpoint"]
    assert state.status == "InService"


def test_delete_removes_what_deploy_made_and_nothing_else(endpoints, sagemaker):
    Calls(sagemaker, update="apply")
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)
    endpoints.deploy(f"{NAME}-b", _version(1), IMAGE, ROLE, HOSTING)  # a neighbour whose names start with NAME-
    sagemaker.create_model(ModelName=f"{NAME}-handmade", ExecutionRoleArn=ROLE,
                           PrimaryContainer={"Image": IMAGE})

    assert endpoints.delete(NAME) is True
    models, configs, eps = _names(sagemaker)
    assert eps == [f"{NAME}-b"]
    assert sorted(models) == sorted([f"{NAME}-handmade"] + [m for m in models if m.startswith(f"{NAME}-b-")])
    assert len(models) == 2 and len(configs) == 1 and configs[0].startswith(f"{NAME}-b-cfg-")
    assert endpoints.describe(NAME) is None

    assert endpoints.delete(NAME) is False


def test_long_names_fit_and_are_deleted(endpoints, sagemaker):
    name = "e" + "-x" * 31  # 63 characters, SageMaker's longest endpoint name
    state = endpoints.deploy(name, _version(12345), IMAGE, ROLE, HOSTING)
    models, configs, _ = _names(sagemaker)
    assert all(len(n) <= 63 for n in models + configs)
    assert state.model_version == "proj-dev-models/12345"
    assert endpoints.delete(name) is True
    assert _names(sagemaker) == ([], [], [])


def test_describe_unknown_endpoint(endpoints):
    assert endpoints.describe("nope") is None
