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
from moto import mock_aws  # noqa: E402

from backends.aws.functions import LambdaFunctions, code_sha256, zip_source  # noqa: E402
from backends.errors import DeploymentFailedError, WaitTimedOutError  # noqa: E402
from core.config import FunctionConfig  # noqa: E402
from tests.aws.fakes import FakeProvisioned  # noqa: E402

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
