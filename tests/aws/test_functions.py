"""The Lambda function on moto: publish converges (no new version when nothing changed), the code zip
is deterministic, and delete is idempotent.

moto implements functions, versions, aliases and reserved concurrency, but not provisioned
concurrency (Put/Get/DeleteProvisionedConcurrencyConfig). FakeProvisioned answers those three
operations only, from botocore's before-call event on the test's own client: a handler that returns
an (http_response, parsed) tuple short-circuits the call (botocore.client._make_api_call), so the
request never reaches moto. Every other call goes to moto as usual.
"""
import base64
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ[_key] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.exceptions import ConnectionClosedError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.functions import LambdaFunctions, code_sha256, zip_source  # noqa: E402
from backends.errors import DeploymentFailedError, InvalidRequestError, WaitTimedOutError  # noqa: E402
from backends.waiting import Clock  # noqa: E402
from core.config import FunctionConfig  # noqa: E402
from core.retry import is_transient  # noqa: E402
from tests.aws.fakes import FakeProvisioned, answer  # noqa: E402
from tests.helpers import FakeClock

REGION, NAME = "us-east-1", "proj-dev-predict"
LAMBDA_SRC = Path(__file__).resolve().parents[2] / "lambda_src"
ENVIRONMENT = {"ENDPOINT_NAME": "proj-dev-endpoint", "ALLOWED_URL_HOSTS": ""}
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}
# Operations that change something; a re-run with nothing changed must call none of them.
WRITES = {"CreateFunction", "UpdateFunctionCode", "UpdateFunctionConfiguration", "PublishVersion", "CreateAlias",
          "UpdateAlias", "PutFunctionConcurrency", "DeleteFunctionConcurrency", "PutProvisionedConcurrencyConfig",
          "DeleteProvisionedConcurrencyConfig", "TagResource"}


class Calls:
    """The operation names (and arguments) the client was asked for, in order."""

    def __init__(self, client):
        self.log: list[tuple[str, dict]] = []
        client.meta.events.register("provide-client-params.lambda", self._record)

    def _record(self, params, event_name, **kwargs):
        self.log.append((event_name.rsplit(".", 1)[-1], dict(params)))

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def clear(self) -> None:
        self.log.clear()


@pytest.fixture
def aws():
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="proj-dev-lambda", AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
        client = boto3.client("lambda", region_name=REGION)
        yield client, role


def _source(tmp_path: Path, body: str = "def lambda_handler(event, context):\n    return 1\n") -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (folder / "handler.py").write_text(body)
    return folder


def _versions(client) -> list[str]:
    return [v["Version"] for v in client.list_versions_by_function(FunctionName=NAME)["Versions"]]


def test_publish_creates_the_function_a_version_the_alias_and_its_concurrency(aws):
    """Provisioned concurrency comes from FakeProvisioned (moto does not implement it): the Put on
    the alias is captured, and publish polls Get through IN_PROGRESS until READY."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    code = zip_source(str(LAMBDA_SRC))

    state = LambdaFunctions(client, poll_seconds=0).publish(NAME, role, code, ENVIRONMENT, FunctionConfig(),
                                                            tags={"sagemaker-flows:project": "proj"})

    configuration = client.get_function_configuration(FunctionName=NAME)
    assert configuration["Runtime"] == "python3.12"
    assert configuration["Handler"] == "handler.lambda_handler"
    assert configuration["Environment"]["Variables"] == ENVIRONMENT
    assert (configuration["MemorySize"], configuration["Timeout"], configuration["Role"]) == (512, 30, role)
    assert configuration["CodeSha256"] == code_sha256(code) == state.code_sha256
    assert _versions(client) == ["$LATEST", "1"]
    alias = client.get_alias(FunctionName=NAME, Name="live")
    assert alias["FunctionVersion"] == "1"
    assert client.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 100
    assert provisioned.puts == [{"FunctionName": NAME, "Qualifier": "live", "ProvisionedConcurrentExecutions": 5}]
    assert provisioned.gets >= 3  # not found before the put, then IN_PROGRESS, then READY
    assert client.list_tags(Resource=configuration["FunctionArn"])["Tags"] == {"sagemaker-flows:project": "proj"}

    assert state.name == NAME and state.arn == alias["AliasArn"] and state.arn.endswith(f":function:{NAME}:live")
    assert (state.reserved_concurrency, state.provisioned_concurrency) == (100, 5)
    assert state.invoke_url == f"https://lambda.{REGION}.amazonaws.com/2015-03-31/functions/{NAME}:live/invocations"


def test_publish_again_with_nothing_changed_publishes_no_version_and_updates_nothing(aws):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    calls = Calls(client)
    functions = LambdaFunctions(client, poll_seconds=0)
    code = zip_source(str(LAMBDA_SRC))
    first = functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig(), tags={"k": "v"})
    calls.clear()

    second = functions.publish(NAME, role, zip_source(str(LAMBDA_SRC)), dict(ENVIRONMENT), FunctionConfig(),
                               tags={"k": "v"})

    assert not WRITES & set(calls.names()), calls.names()
    assert second == first
    assert _versions(client) == ["$LATEST", "1"]
    assert len(provisioned.puts) == 1


def test_a_code_change_updates_the_code_publishes_a_version_and_moves_the_alias(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement; the
    alias keeps its config, so no second Put is needed."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    calls = Calls(client)
    functions = LambdaFunctions(client, poll_seconds=0)
    folder = _source(tmp_path)
    first = functions.publish(NAME, role, zip_source(str(folder)), ENVIRONMENT, FunctionConfig())
    calls.clear()

    (folder / "handler.py").write_text("def lambda_handler(event, context):\n    return 2\n")
    code = zip_source(str(folder))
    second = functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())

    names = calls.names()
    assert "UpdateFunctionCode" in names and "UpdateFunctionConfiguration" not in names
    assert names.count("PublishVersion") == 1 and "UpdateAlias" in names and "CreateFunction" not in names
    assert _versions(client) == ["$LATEST", "1", "2"]
    assert client.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] == "2"
    assert second.code_sha256 == code_sha256(code) != first.code_sha256
    assert client.get_function_configuration(FunctionName=NAME, Qualifier="2")["CodeSha256"] == second.code_sha256
    assert second.arn == first.arn
    assert len(provisioned.puts) == 1


def test_a_configuration_change_updates_only_the_configuration(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    FakeProvisioned(client.meta.events)
    calls = Calls(client)
    functions = LambdaFunctions(client, poll_seconds=0)
    code = zip_source(str(_source(tmp_path)))
    functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())
    calls.clear()

    functions.publish(NAME, role, code, {**ENVIRONMENT, "ALLOWED_URL_HOSTS": "example.com"},
                      FunctionConfig(memory_mb=1024))

    names = calls.names()
    assert "UpdateFunctionConfiguration" in names and "UpdateFunctionCode" not in names
    configuration = client.get_function_configuration(FunctionName=NAME, Qualifier="live")
    assert configuration["MemorySize"] == 1024
    assert configuration["Environment"]["Variables"]["ALLOWED_URL_HOSTS"] == "example.com"
    assert _versions(client) == ["$LATEST", "1", "2"]


def test_an_unpublished_update_from_an_interrupted_run_is_published(aws, tmp_path):
    """$LATEST changed but no version was published (a run stopped in between): the re-run publishes
    it. FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0)
    folder = _source(tmp_path)
    functions.publish(NAME, role, zip_source(str(folder)), ENVIRONMENT, FunctionConfig())
    (folder / "handler.py").write_text("def lambda_handler(event, context):\n    return 3\n")
    code = zip_source(str(folder))
    client.update_function_code(FunctionName=NAME, ZipFile=code)  # ... and the run stopped here

    functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())

    assert _versions(client) == ["$LATEST", "1", "2"]
    assert client.get_function_configuration(FunctionName=NAME, Qualifier="live")["CodeSha256"] == code_sha256(code)


def test_no_reserved_and_no_provisioned_concurrency_removes_both(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0)
    code = zip_source(str(_source(tmp_path)))
    functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())

    state = functions.publish(NAME, role, code, ENVIRONMENT,
                              FunctionConfig(reserved_concurrency=None, provisioned_concurrency=0))

    assert client.get_function_concurrency(FunctionName=NAME).get("ReservedConcurrentExecutions") is None
    assert provisioned.configs == {}
    assert (state.reserved_concurrency, state.provisioned_concurrency) == (None, 0)


def test_failed_provisioned_concurrency_raises_with_its_reason(aws, tmp_path):
    """FakeProvisioned (moto does not implement provisioned concurrency) reports FAILED after the put."""
    client, role = aws
    FakeProvisioned(client.meta.events, statuses=("IN_PROGRESS", "FAILED"), reason="Insufficient unreserved concurrency")

    with pytest.raises(DeploymentFailedError, match=r"live.*failed: Insufficient unreserved concurrency"):
        LambdaFunctions(client, poll_seconds=0).publish(NAME, role, zip_source(str(_source(tmp_path))),
                                                        ENVIRONMENT, FunctionConfig())


def test_provisioned_concurrency_that_never_gets_ready_times_out(aws, tmp_path):
    """FakeProvisioned (moto does not implement provisioned concurrency) stays IN_PROGRESS."""
    client, role = aws
    FakeProvisioned(client.meta.events, statuses=("IN_PROGRESS",))

    with pytest.raises(WaitTimedOutError, match="READY"):
        LambdaFunctions(client, poll_seconds=0, timeout_s=0).publish(
            NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, FunctionConfig())


def test_delete_twice_is_true_then_false(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement; delete
    must remove the alias's config before the alias."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0)
    functions.publish(NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, FunctionConfig())
    assert provisioned.configs

    assert functions.delete_function(NAME) is True
    assert provisioned.configs == {}
    assert client.list_functions()["Functions"] == []
    assert functions.delete_function(NAME) is False


def test_zip_source_is_deterministic_and_leaves_out_bytecode(tmp_path):
    folder = _source(tmp_path)
    (folder / "helpers").mkdir()
    (folder / "helpers" / "util.py").write_text("X = 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "handler.cpython-312.pyc").write_bytes(b"\x00bytecode")
    (folder / "stray.pyc").write_bytes(b"\x00bytecode")
    first = zip_source(str(folder))

    for path in folder.rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))  # other timestamps, same content
    second = zip_source(str(folder))

    assert first == second
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == ["handler.py", "helpers/util.py"]
    assert code_sha256(first) == base64.b64encode(hashlib.sha256(first).digest()).decode()


def test_zip_source_of_the_shipped_handler_has_it_at_the_root():
    archive = zipfile.ZipFile(io.BytesIO(zip_source(str(LAMBDA_SRC))))
    assert "handler.py" in archive.namelist()
    assert not [n for n in archive.namelist() if "__pycache__" in n or n.endswith(".pyc")]
    assert archive.read("handler.py") == (LAMBDA_SRC / "handler.py").read_bytes()


def _lose_the_answer_once(client, operation: str) -> list[str]:
    """After `operation` succeeded, drop its answer once (the connection closes before the response
    arrives); the list records it."""
    lost = []

    def drop(**_):
        if not lost:
            lost.append(operation)
            raise ConnectionClosedError(endpoint_url=f"https://lambda.{REGION}.amazonaws.com/")
    client.meta.events.register(f"after-call.lambda.{operation}", drop)
    return lost


@pytest.mark.parametrize("operation", ["CreateFunction", "PublishVersion", "CreateAlias", "PutFunctionConcurrency",
                                       "PutProvisionedConcurrencyConfig"])
def test_a_step_whose_answer_was_lost_is_not_done_twice(aws, tmp_path, operation):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    provisioned = FakeProvisioned(client.meta.events)
    calls = Calls(client)
    functions = LambdaFunctions(client, poll_seconds=0)
    code = zip_source(str(_source(tmp_path)))
    lost = _lose_the_answer_once(client, operation)
    with pytest.raises(ConnectionClosedError):
        functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())
    assert lost == [operation]

    state = functions.publish(NAME, role, code, ENVIRONMENT, FunctionConfig())  # as the task's retry does

    assert calls.names().count(operation) == 1
    assert [f["FunctionName"] for f in client.list_functions()["Functions"]] == [NAME]
    assert _versions(client) == ["$LATEST", "1"]
    assert [a["Name"] for a in client.list_aliases(FunctionName=NAME)["Aliases"]] == ["live"]
    assert client.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 100
    assert len(provisioned.puts) == 1
    assert (state.version, state.reserved_concurrency, state.provisioned_concurrency) == ("1", 100, 5)


def _refuse_twice(client, operation: str) -> list[int]:
    refusals = []

    def refuse(**_):  # Lambda's answer while IAM has not propagated a new role yet
        if len(refusals) < 2:
            refusals.append(1)
            return answer(400, {"Error": {"Code": "InvalidParameterValueException",
                                          "Message": "The role defined for the function cannot be assumed by Lambda."}})
    client.meta.events.register(f"before-call.lambda.{operation}", refuse)
    return refusals


def test_create_waits_while_lambda_cannot_assume_a_new_role(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    FakeProvisioned(client.meta.events, statuses=("READY",))  # the clock then only sees the role's waits
    refusals = _refuse_twice(client, "CreateFunction")
    clock = FakeClock()

    LambdaFunctions(client, poll_seconds=0, clock=Clock(clock.now, clock.sleep)).publish(
        NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, FunctionConfig())

    assert refusals == [1, 1] and clock.sleeps == [1.0, 2.0]
    assert [f["FunctionName"] for f in client.list_functions()["Functions"]] == [NAME]


def test_a_configuration_update_waits_while_lambda_cannot_assume_a_new_role(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    FakeProvisioned(client.meta.events, statuses=("READY",))  # the clock then only sees the role's waits
    code = zip_source(str(_source(tmp_path)))
    LambdaFunctions(client, poll_seconds=0).publish(NAME, role, code, ENVIRONMENT, FunctionConfig())
    refusals = _refuse_twice(client, "UpdateFunctionConfiguration")
    clock = FakeClock()

    LambdaFunctions(client, poll_seconds=0, clock=Clock(clock.now, clock.sleep)).publish(
        NAME, role, code, ENVIRONMENT, FunctionConfig(memory_mb=1024))

    assert refusals == [1, 1] and clock.sleeps == [1.0, 2.0]
    assert client.get_function_configuration(FunctionName=NAME)["MemorySize"] == 1024


def _report(client, operation: str, **fields):
    """Make every `operation` answer report `fields` in the function's configuration (moto's functions
    are Active and updated at once)."""
    def rewrite(parsed, **_):
        (parsed.get("Configuration") or parsed).update(fields)
    client.meta.events.register(f"after-call.lambda.{operation}", rewrite)


@pytest.mark.parametrize("operation, fields, what", [
    ("GetFunction", {"State": "Pending"}, "to become Active"),
    ("GetFunction", {"LastUpdateStatus": "InProgress"}, "to finish its update"),
    ("GetFunctionConfiguration", {"State": "Pending"}, "version 1 of .* to be Active"),
])
def test_a_function_that_never_settles_times_out_permanently(aws, tmp_path, operation, fields, what):
    client, role = aws
    FakeProvisioned(client.meta.events)
    _report(client, operation, **fields)
    functions = LambdaFunctions(client, poll_seconds=0, timeout_s=0)  # botocore's waiter: one attempt
    with pytest.raises(WaitTimedOutError, match=what) as failure:
        functions.publish(NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, FunctionConfig())
    assert not is_transient(failure.value)


def test_an_inactive_function_is_updated_without_waiting_for_it_to_be_active(aws, tmp_path):
    """Lambda makes a function idle for weeks Inactive; it may be updated then (only a Pending one
    refuses UpdateFunctionCode), and stays Inactive until invoked or updated. moto's functions are
    always Active, so GetFunction is made to say Inactive."""
    client, role = aws
    FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0, timeout_s=2)
    folder = _source(tmp_path)
    functions.publish(NAME, role, zip_source(str(folder)), ENVIRONMENT, FunctionConfig())
    _report(client, "GetFunction", State="Inactive")
    calls = Calls(client)

    (folder / "handler.py").write_text("def lambda_handler(event, context):\n    return 2\n")
    state = functions.publish(NAME, role, zip_source(str(folder)), ENVIRONMENT, FunctionConfig())

    assert calls.names().count("UpdateFunctionCode") == 1 and state.version == "2"
    assert client.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] == "2"


def test_a_failed_function_update_says_why(aws, tmp_path):
    client, role = aws
    FakeProvisioned(client.meta.events)
    _report(client, "GetFunction", LastUpdateStatus="Failed", LastUpdateStatusReason="EniLimitExceeded")
    with pytest.raises(DeploymentFailedError, match="update failed: EniLimitExceeded"):
        LambdaFunctions(client, poll_seconds=0).publish(NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT,
                                                        FunctionConfig())


def _account(client, limit: int, unreserved: int) -> None:
    """GetAccountSettings, which moto does not implement (it answers 404 "Not yet implemented")."""
    settings = {"AccountLimit": {"ConcurrentExecutions": limit, "UnreservedConcurrentExecutions": unreserved,
                                 "TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000,
                                 "CodeSizeZipped": 52428800},
                "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 0}}
    client.meta.events.register("before-call.lambda.GetAccountSettings", lambda **_: answer(200, settings))


def test_concurrency_that_fits_the_account_passes(aws):
    client, _ = aws
    _account(client, limit=1000, unreserved=1000)
    LambdaFunctions(client).check_concurrency(NAME, FunctionConfig())  # reserves 100 of 1000


def test_concurrency_on_a_new_account_limited_to_10_fails_early_saying_what_to_change():
    """A new account's limit of 10, with Stubber: nothing else is called, and no function exists yet
    (moto has no GetAccountSettings, and its default account would not have this limit anyway)."""
    client = boto3.client("lambda", region_name=REGION)
    with Stubber(client) as stub:
        stub.add_response("get_account_settings", {"AccountLimit": {
            "ConcurrentExecutions": 10, "UnreservedConcurrentExecutions": 10}})
        stub.add_client_error("get_function_concurrency", "ResourceNotFoundException",
                              f"Function not found: {NAME}", 404, expected_params={"FunctionName": NAME})
        with pytest.raises(InvalidRequestError) as failure:
            LambdaFunctions(client).check_concurrency(NAME, FunctionConfig(reserved_concurrency=2,
                                                                           provisioned_concurrency=1))
        stub.assert_no_pending_responses()
    message = str(failure.value)
    assert "function.reserved_concurrency=2 does not fit" in message and "limit in the region is 10" in message
    assert "Set function.reserved_concurrency to null" in message and "quota" in message
    assert not is_transient(failure.value)


def test_the_functions_own_reservation_is_counted_back(aws, tmp_path):
    """FakeProvisioned stands in for provisioned concurrency, which moto does not implement."""
    client, role = aws
    FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0)
    functions.publish(NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, FunctionConfig())  # reserves 100
    _account(client, limit=1000, unreserved=800)  # another function reserves 100, this one 100

    functions.check_concurrency(NAME, FunctionConfig(reserved_concurrency=800))  # 800 + its own 100 - 100 kept
    with pytest.raises(InvalidRequestError, match="Lower function.reserved_concurrency to 800 or less"):
        functions.check_concurrency(NAME, FunctionConfig(reserved_concurrency=801))


def test_provisioned_concurrency_without_a_reservation_comes_out_of_the_unreserved_pool(aws):
    client, _ = aws
    _account(client, limit=1000, unreserved=150)
    functions = LambdaFunctions(client)
    functions.check_concurrency(NAME, FunctionConfig(reserved_concurrency=None, provisioned_concurrency=50))
    with pytest.raises(InvalidRequestError, match="Lower function.provisioned_concurrency to 50 or less"):
        functions.check_concurrency(NAME, FunctionConfig(reserved_concurrency=None, provisioned_concurrency=51))


def test_a_rerun_gives_back_the_provisioned_concurrency_the_function_holds_without_a_reservation(aws, tmp_path):
    """Unreserved 100 already excludes this function's provisioned 50 (no reservation): the same setting
    fits again, one more does not."""
    client, role = aws
    FakeProvisioned(client.meta.events)
    functions = LambdaFunctions(client, poll_seconds=0)
    settings = FunctionConfig(reserved_concurrency=None, provisioned_concurrency=50)
    functions.publish(NAME, role, zip_source(str(_source(tmp_path))), ENVIRONMENT, settings)
    _account(client, limit=1000, unreserved=100)

    functions.check_concurrency(NAME, settings)
    with pytest.raises(InvalidRequestError, match="Lower function.provisioned_concurrency to 50 or less"):
        functions.check_concurrency(NAME, FunctionConfig(reserved_concurrency=None, provisioned_concurrency=51))
