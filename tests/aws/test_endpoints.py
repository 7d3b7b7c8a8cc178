"""SageMaker endpoints on moto: create, the re-run no-op, blue/green update, rollback, delete.

moto 5 implements models, endpoint configs and endpoints (created InService at once) but not
UpdateEndpoint. The update tests therefore answer UpdateEndpoint on the client itself: a
`before-call.sagemaker.UpdateEndpoint` handler that returns an (http response, parsed response)
tuple makes botocore skip sending the request (botocore/client.py, _make_api_call), so the test
sees the exact parameters the code sent, and the handler plays SageMaker's part: it moves the
endpoint to the new config (a successful update) or leaves it on the old one (a rollback).
"""
import contextlib
import os
from collections import Counter

# Fake credentials before boto3 is imported: no test may reach a real AWS account.
for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.awsrequest import AWSResponse  # noqa: E402
from moto import mock_aws  # noqa: E402

from botocore.exceptions import ClientError, ConnectionClosedError  # noqa: E402

from backends.aws.endpoints import SageMakerEndpoints  # noqa: E402
from backends.aws.errors import RoleNotUsableError  # noqa: E402
from backends.session import make_client  # noqa: E402
from backends.errors import DeploymentFailedError, WaitTimedOutError  # noqa: E402
from backends.types import ModelVersion  # noqa: E402
from backends.waiting import Clock  # noqa: E402
from core.config import HostingConfig  # noqa: E402
from core.retry import is_transient  # noqa: E402
from tests.aws.fakes import LostAnswerResent, answer  # noqa: E402
from tests.helpers import FakeClock

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
        # "apply": move to the new config; "rollback": stay on the old one; any other status: end in it
        self._update = update
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
        elif self._update not in (None, "rollback"):
            _stuck(self._update, "the new fleet failed its health check, and so did the way back")
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


class Guard:
    """Stands in for hosting's without_autoscaling: records the variants it was asked to deregister,
    and when the update inside it began and ended."""

    def __init__(self):
        self.entered: list[list[str]] = []
        self.events: list[str] = []

    @contextlib.contextmanager
    def __call__(self, variants):
        self.entered.append(list(variants))
        self.events.append("deregistered")
        try:
            yield
        finally:
            self.events.append("registered again")


def test_second_deploy_of_the_same_version_changes_nothing(endpoints, sagemaker):
    first = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker)
    guard = Guard()
    again = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING, without_autoscaling=guard)
    assert again == first
    assert calls.names and calls.mutating() == []  # only Describe calls
    assert guard.entered == []


def test_deploy_of_a_new_version_updates_blue_green_keeping_autoscaling(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    guard = Guard()

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING, without_autoscaling=guard)

    assert calls.mutating() == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert guard.entered == []  # a new model on the same variant and instance type: AWS allows it as it is
    (update,) = calls.updates
    new_config = sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"]
    assert update == {
        "EndpointName": NAME, "EndpointConfigName": new_config, "RetainAllVariantProperties": True,
        "DeploymentConfig": {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300},
            "TerminationWaitInSeconds": 300, "MaximumExecutionTimeoutInSeconds": 3600}}}
    assert (state.status, state.model_version) == ("InService", "proj-dev-models/2")
    assert endpoints.describe(NAME).model_version == "proj-dev-models/2"
    models, configs, _ = _names(sagemaker)
    assert len(models) == 2 and len(configs) == 2  # the old ones stay until delete()


def test_an_update_keeps_the_scaled_out_instance_count_and_a_rerun_changes_nothing(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)  # 2 instances
    sagemaker.update_endpoint_weights_and_capacities(  # as autoscaling does
        EndpointName=NAME, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
    calls = Calls(sagemaker, update="apply")

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert calls.updates[0]["RetainAllVariantProperties"] is True
    config = sagemaker.describe_endpoint_config(EndpointConfigName=calls.updates[0]["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 3
    assert state.instance_count == 3
    assert sagemaker.describe_endpoint(EndpointName=NAME)["ProductionVariants"][0]["DesiredInstanceCount"] == 3

    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=NAME, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 5}])
    calls = Calls(sagemaker, update="apply")
    again = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)
    assert calls.mutating() == []  # the count autoscaling set is no reason to deploy again
    assert again.instance_count == 5


def test_update_passes_rollback_alarms(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING, rollback_alarms=["proj-dev-5xx"])
    assert calls.updates[0]["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "proj-dev-5xx"}]}


def test_an_instance_type_change_updates_with_the_variant_deregistered(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    guard = Guard()
    bigger = HostingConfig(instance_type="ml.c5.xlarge", initial_instance_count=2, top_k=4)

    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, bigger, without_autoscaling=guard)

    assert calls.mutating() == ["CreateEndpointConfig", "UpdateEndpoint"]  # the model is reused
    assert guard.entered == [["AllTraffic"]] and guard.events == ["deregistered", "registered again"]
    assert state.model_version == "proj-dev-models/1"


def test_a_renamed_variant_is_deregistered_as_a_removed_one(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    Calls(sagemaker, update="apply")
    guard = Guard()
    renamed = HostingConfig(instance_type="ml.m5.large", initial_instance_count=2, variant_name="Blue", top_k=4)

    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, renamed, without_autoscaling=guard)

    assert guard.entered == [["AllTraffic"]]
    assert (state.variant_name, state.instance_count) == ("Blue", 2)


def test_rolled_back_update_raises_and_registers_autoscaling_again(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    old_config = sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"]
    Calls(sagemaker, update="rollback")
    guard = Guard()
    bigger = HostingConfig(instance_type="ml.c5.xlarge", initial_instance_count=2, top_k=4)
    with pytest.raises(DeploymentFailedError, match="rolled back"):
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, bigger, without_autoscaling=guard)
    assert guard.events == ["deregistered", "registered again"]
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


def _lose_the_answer_once(client, operation: str) -> list[str]:
    """After `operation` succeeded, drop its answer once (the connection closes before the response
    arrives), as a network fault does; the list records each time."""
    lost = []

    def drop(**_):
        if not lost:
            lost.append(operation)
            raise ConnectionClosedError(endpoint_url=f"https://api.sagemaker.{REGION}.amazonaws.com/")
    client.meta.events.register(f"after-call.sagemaker.{operation}", drop)
    return lost


def _creates(calls: Calls) -> Counter:
    return Counter(n for n in calls.names if n.startswith("Create"))


ONE_OF_EACH = {"CreateModel": 1, "CreateEndpointConfig": 1, "CreateEndpoint": 1}


@pytest.mark.parametrize("operation", ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"])
def test_a_create_whose_answer_was_lost_is_not_made_twice(endpoints, sagemaker, operation):
    calls = Calls(sagemaker)  # moto overwrites a second create: count the calls, not what is left
    lost = _lose_the_answer_once(sagemaker, operation)
    with pytest.raises(ConnectionClosedError):
        endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    assert lost == [operation]

    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)  # as the task's retry does

    assert _creates(calls) == ONE_OF_EACH
    models, configs, eps = _names(sagemaker)
    assert (len(models), len(configs), eps) == (1, 1, [NAME])
    assert state.status == "InService" and state.model_version == "proj-dev-models/1"


# What SageMaker answers a create of a name that exists, as AWS writes it (a ValidationException):
#   Cannot create already existing model "arn:aws:sagemaker:us-east-2:...:model/provider-knn-model".
#       (astronomer/astronomer-providers#1055)
#   Cannot create already existing endpoint configuration "arn:aws-cn:sagemaker:...:endpoint-config/..."
#       (awslabs/spot-tagging-bot-for-digital-assets#2)
#   Cannot create already existing endpoint "arn:aws:sagemaker:eu-west-1:...:endpoint/iris".
#       (aws/sagemaker-python-sdk#101)
_EXISTING = {"CreateModel": ("ModelName", "model", "model"),
             "CreateEndpointConfig": ("EndpointConfigName", "endpoint configuration", "endpoint-config"),
             "CreateEndpoint": ("EndpointName", "endpoint", "endpoint")}


def _already_existing(operation: str):
    key, noun, kind = _EXISTING[operation]
    return lambda body: (400, "ValidationException", f'Cannot create already existing {noun} '
                                                     f'"arn:aws:sagemaker:{REGION}:123456789012:{kind}/{body[key]}".')


@pytest.mark.parametrize("operation", ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"])
def test_a_create_botocore_resent_after_a_dropped_connection_completes_the_deploy(sagemaker, operation):
    client = make_client(boto3.Session(region_name=REGION), "sagemaker")  # the pipeline's retry settings
    calls = Calls(client)
    resent = LostAnswerResent(client, operation, _already_existing(operation))

    state = SageMakerEndpoints(client, poll_seconds=0.01, timeout_s=5).deploy(NAME, _version(1), IMAGE, ROLE,
                                                                              HOSTING)

    assert resent.sends == 2  # botocore did resend it, and SageMaker refused the resend
    assert _creates(calls) == ONE_OF_EACH
    models, configs, eps = _names(client)
    assert (len(models), len(configs), eps) == (1, 1, [NAME])
    assert client.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == configs[0]
    assert client.describe_endpoint_config(EndpointConfigName=configs[0])["ProductionVariants"][0]["ModelName"] == (
        models[0])
    assert state.status == "InService" and state.model_version == "proj-dev-models/1"


def _update_refused_as_in_progress(client) -> None:
    """UpdateEndpoint answered as SageMaker answers a resent one whose first send went through (botocore
    resends after a dropped connection; moto lacks UpdateEndpoint, so Calls answers it without sending,
    and this `after-call` hook hands the caller the resend's answer instead). AWS writes it
    ValidationException: Cannot update in-progress endpoint "arn:aws:sagemaker:...:endpoint/<name>".
    (aws/amazon-sagemaker-operator-for-k8s classes it by that message)."""
    def refuse(http_response, parsed, **_):
        http_response.status_code = 400
        parsed["ResponseMetadata"]["HTTPStatusCode"] = 400
        parsed["Error"] = {"Code": "ValidationException", "Message": 'Cannot update in-progress endpoint '
                           f'"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{NAME}".'}
    client.meta.events.register("after-call.sagemaker.UpdateEndpoint", refuse)


def test_an_update_resent_after_a_dropped_connection_follows_the_update_it_started(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")  # the first send went through: the endpoint moves
    _update_refused_as_in_progress(sagemaker)

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    (update,) = calls.updates
    assert sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == update["EndpointConfigName"]
    assert (state.status, state.model_version) == ("InService", "proj-dev-models/2")


def test_an_update_refused_while_another_is_in_progress_is_a_clear_permanent_error(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    old_config = sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"]
    calls = Calls(sagemaker)  # nothing of ours was applied: another update held the endpoint
    _update_refused_as_in_progress(sagemaker)

    with pytest.raises(DeploymentFailedError, match=f"serves {old_config}, not .*already in progress") as failure:
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert not is_transient(failure.value) and len(calls.updates) == 1
    assert endpoints.describe(NAME).model_version == "proj-dev-models/1"


def test_an_update_whose_answer_was_lost_is_not_sent_twice(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    lost = _lose_the_answer_once(sagemaker, "UpdateEndpoint")
    with pytest.raises(ConnectionClosedError):
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)
    assert lost == ["UpdateEndpoint"]

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert len(calls.updates) == 1 and state.model_version == "proj-dev-models/2"
    models, configs, eps = _names(sagemaker)
    assert (len(models), len(configs), eps) == (2, 2, [NAME])


def test_create_model_waits_while_sagemaker_cannot_assume_a_new_role(sagemaker):
    refusals = []

    def refuse_twice(**_):  # SageMaker's answer while IAM has not propagated the role yet
        if len(refusals) < 2:
            refusals.append(1)
            return answer(400, {"Error": {"Code": "ValidationException",
                                          "Message": f"Could not assume role {ROLE}. Please ensure that the role "
                                                     "exists and allows principal 'sagemaker.amazonaws.com' to "
                                                     "assume the role."}})
    sagemaker.meta.events.register("before-call.sagemaker.CreateModel", refuse_twice)
    clock = FakeClock()
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0.01, timeout_s=5, clock=Clock(clock.now, clock.sleep))

    state = endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)

    assert clock.sleeps == [1.0, 2.0] and state.status == "InService"
    assert len(_names(sagemaker)[0]) == 1


def test_a_role_still_refused_after_the_budget_is_a_permanent_error(sagemaker):
    sagemaker.meta.events.register("before-call.sagemaker.CreateModel", lambda **_: answer(
        400, {"Error": {"Code": "ValidationException", "Message": f"Could not assume role {ROLE}."}}))
    clock = FakeClock()
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0.01, timeout_s=5, role_budget_s=30,
                                   clock=Clock(clock.now, clock.sleep))
    with pytest.raises(RoleNotUsableError, match="trust policy") as failure:
        endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    assert not is_transient(failure.value)
    assert sum(clock.sleeps) == 30 and clock.sleeps[:5] == [1.0, 2.0, 4.0, 8.0, 15.0]


def _stuck(status: str, reason: str | None = None):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    endpoint = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].endpoints[NAME]
    endpoint.endpoint_status = status
    if reason is not None:
        endpoint.failure_reason = reason


@pytest.mark.parametrize("status", ["UpdateRollbackFailed", "OutOfService"])
def test_an_update_ending_where_no_endpoint_leaves_by_itself_fails_at_once_saying_why(sagemaker, status):
    # botocore's endpoint_in_service knows Failed only: it would poll these until the hour is out.
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0.01, timeout_s=3600)
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update=status)

    with pytest.raises(DeploymentFailedError, match=f"is {status} .*the way back") as failure:
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert not is_transient(failure.value)
    after_update = calls.names[calls.names.index("UpdateEndpoint"):]
    assert after_update.count("DescribeEndpoint") == 2  # the waiter's first poll, then the description


def test_an_endpoint_whose_rollback_failed_is_updated_not_deleted(endpoints, sagemaker):
    # It still serves (a mix of both configurations), and AWS has it brought back by an update;
    # DeleteEndpoint is for Failed ones, on which it is the only operation AWS allows.
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    _stuck("UpdateRollbackFailed", "alarm 5xx-errors went off, and the rollback failed")
    calls = Calls(sagemaker, update="apply")

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert calls.mutating() == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert (state.status, state.model_version) == ("InService", "proj-dev-models/2")


def test_an_endpoint_created_again_after_failing_starts_with_the_configured_instance_count(endpoints, sagemaker):
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)  # 2 instances
    sagemaker.update_endpoint_weights_and_capacities(  # as autoscaling does
        EndpointName=NAME, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
    Calls(sagemaker, update="apply")
    endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)  # its config keeps the 3 instances
    _stuck("Failed", "container did not pass the ping check")
    calls = Calls(sagemaker)

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert calls.mutating() == ["DeleteEndpoint", "CreateEndpointConfig", "CreateEndpoint"]
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=sagemaker.describe_endpoint(EndpointName=NAME)["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2 == HOSTING.initial_instance_count
    assert (state.status, state.instance_count, state.model_version) == ("InService", 2, "proj-dev-models/2")


def test_an_endpoint_that_never_settles_times_out_permanently(sagemaker):
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0, timeout_s=0)  # botocore's waiter: one attempt
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    _stuck("Creating")  # (an Updating one is given its update's own time limit: the test below)
    with pytest.raises(WaitTimedOutError, match=f"endpoint {NAME} to be InService.*still Creating") as failure:
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)
    assert not is_transient(failure.value)


def _updating_for(client, polls: int) -> list[int]:
    """DescribeEndpoint reports the endpoint Updating for `polls` answers after an UpdateEndpoint, as
    SageMaker does while a blue/green update provisions, bakes and shifts; the list counts them."""
    seen: list[int] = []
    updated: list[int] = []
    client.meta.events.register("after-call.sagemaker.UpdateEndpoint", lambda **_: updated.append(1))

    def still_updating(parsed, **_):
        if updated and len(seen) < polls:
            seen.append(1)
            parsed["EndpointStatus"] = "Updating"
    client.meta.events.register("after-call.sagemaker.DescribeEndpoint", still_updating)
    return seen


def test_an_update_is_waited_for_as_long_as_its_own_time_limit(sagemaker):
    # timeout_s=0 leaves a create one poll; an update gets MaximumExecutionTimeoutInSeconds on top.
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0, timeout_s=0)
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    calls = Calls(sagemaker, update="apply")
    polls = _updating_for(sagemaker, 20)

    state = endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)

    assert len(polls) == 20 and len(calls.updates) == 1
    assert (state.status, state.model_version) == ("InService", "proj-dev-models/2")


def test_an_endpoint_that_is_never_deleted_times_out_permanently(sagemaker):
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0, timeout_s=0)
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    sagemaker.meta.events.register("before-call.sagemaker.DeleteEndpoint",  # accepted, but it stays
                                   lambda **_: answer(200, {}))
    _stuck("Deleting")
    with pytest.raises(WaitTimedOutError, match="to be deleted.*still Deleting"):
        endpoints.delete(NAME)


def test_a_throttled_wait_raises_the_transient_error_not_a_verdict(sagemaker):
    endpoints = SageMakerEndpoints(sagemaker, poll_seconds=0, timeout_s=5)
    endpoints.deploy(NAME, _version(1), IMAGE, ROLE, HOSTING)
    _stuck("Updating")
    describes = []

    def throttle_the_waiter(**_):  # the first describe finds it Updating; the waiter's polls are throttled
        describes.append(1)
        if len(describes) > 1:
            return answer(400, {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}})
    sagemaker.meta.events.register("before-call.sagemaker.DescribeEndpoint", throttle_the_waiter)
    with pytest.raises(ClientError, match="Rate exceeded") as failure:
        endpoints.deploy(NAME, _version(2), IMAGE, ROLE, HOSTING)
    assert is_transient(failure.value) and len(describes) == 2
