"""The local gateway as something another local user or a web page can reach: one real gateway
process for the module, real clients (httpx as an attacker would send, boto3 as the project does).

What a caller without the secret, from a foreign Host (DNS rebinding), with a cross-site content
type or a foreign Origin can do to the control API (nothing), bodies that would exhaust memory, a
Lambda event that would crash the execution environment, the local S3 a function reads through, and
how Invoke reads qualified names and ARNs."""
import asyncio
import base64
import contextlib
import json
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from backends.errors import InvalidRequestError
from backends.local.gateway.client import GatewayClient
from backends.local.gateway.environments import MAX_LOCAL_PROVISIONED
from backends.local.gateway.functions import MAX_EVENT_BYTES
from backends.local.gateway.guard import BODY_BUDGET_BYTES
from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.gateway.server import MAX_CONNECTIONS, ensure_gateway, running_gateway, stop_gateway
from backends.local.state import DEFAULT_BUCKET, LocalState
from backends.local.store import LocalStore
from backends.waiting import wait_for
from tests.helpers import CLASSES, image_bytes, make_model_artifact, make_special_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OWN_PREFIX = f"s3://{DEFAULT_BUCKET}/pipelines/pets/"
IMAGE_URI = f"{OWN_PREFIX}images/cat.png"
FOREIGN_URI = f"s3://{DEFAULT_BUCKET}/other-team/secret.png"
MB = 1024 * 1024

ECHO = """
import os

def lambda_handler(event, context):
    return {"pid": os.getpid(), "arn": context.invoked_function_arn, "event": event}
"""
S3_PROBE = """
import os

import boto3
from botocore.exceptions import ClientError

def lambda_handler(event, context):
    if event.get("whoami"):
        return {"access_key_id": os.environ["AWS_ACCESS_KEY_ID"], "endpoint": os.environ["AWS_ENDPOINT_URL_S3"]}
    s3 = boto3.client("s3")
    call = s3.head_object if event.get("head") else s3.get_object
    try:
        answer = call(Bucket=event["bucket"], Key=event["key"])
    except ClientError as err:
        return {"code": err.response["Error"]["Code"], "status": err.response["ResponseMetadata"]["HTTPStatusCode"]}
    body = answer["Body"].read() if "Body" in answer else b""
    return {"status": 200, "length": answer["ContentLength"], "read": len(body), "type": answer["ContentType"]}
"""
ATTACK = """
from pathlib import Path

def lambda_handler(event, context):
    Path(__file__).with_name("pwned").write_text("ran")
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-security")
    state = LocalState.resolve(home)
    store = LocalStore(state.store)
    for uri, data in ((IMAGE_URI, image_bytes("PNG")), (FOREIGN_URI, image_bytes("PNG", color=(0, 0, 255)))):
        source = home / "staging.png"
        source.write_bytes(data)
        store.put_file(source, uri)
    info = ensure_gateway(state)
    client = GatewayClient.of(info)
    code = tmp_path_factory.mktemp("code")
    for name, source in (("echo", ECHO), ("s3probe", S3_PROBE)):
        (code / name).mkdir()
        (code / name / "handler.py").write_text(textwrap.dedent(source))
    client.put_endpoint("pets", make_model_artifact(tmp_path_factory.mktemp("model")), instance_count=1,
                        model_version="v1")
    client.put_function("pets-fn", str(ROOT / "lambda_src"), timeout_s=30,
                        environment={"ENDPOINT_NAME": "pets", "ALLOWED_S3_PREFIXES": OWN_PREFIX})
    client.put_function("echo", str(code / "echo"), provisioned_concurrency=1)
    client.put_function("s3probe", str(code / "s3probe"), timeout_s=30,
                        environment={"ALLOWED_S3_PREFIXES": OWN_PREFIX})
    yield info, client, state, tmp_path_factory
    client.close()
    assert stop_gateway(state)


def lambda_client(url):
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=60))


def invoke_json(url, event, **kwargs) -> dict:
    response = lambda_client(url).invoke(Payload=json.dumps(event), **kwargs)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def hosted(client) -> tuple[list[str], list[str]]:
    status = client.status()
    return [e["name"] for e in status["endpoints"]], [f["name"] for f in status["functions"]]


def gateway_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- the control API: who may use it -----------------------------------------------------------
CONTROL_ROUTES = [("GET", "/_local/status"), ("PUT", "/_local/endpoints/pets"), ("DELETE", "/_local/endpoints/pets"),
                  ("POST", "/_local/endpoints/pets/instance-count"), ("PUT", "/_local/endpoints/pets/autoscaling"),
                  ("DELETE", "/_local/endpoints/pets/autoscaling"), ("PUT", "/_local/functions/evil"),
                  ("DELETE", "/_local/functions/echo"), ("POST", "/_local/shutdown")]


def attack(info, kind: str) -> dict:
    """What the request of `kind` sends: no secret, a wrong one, DNS rebinding (a foreign Host), a
    cross-site form/text POST (with the secret even), a foreign Origin (with the secret even)."""
    port = info.url.rsplit(":", 1)[1]
    good = {"Authorization": f"Bearer {info.secret}", "Content-Type": "application/json"}
    return {"no secret": {"Content-Type": "application/json"},
            "wrong secret": {**good, "Authorization": "Bearer " + "A" * len(info.secret)},
            "foreign Host": {**good, "Host": f"attacker.example:{port}"},
            "text/plain": {**good, "Content-Type": "text/plain"},
            "form": {**good, "Content-Type": "application/x-www-form-urlencoded"},
            "foreign Origin": {**good, "Origin": "http://attacker.example"},
            }[kind]


@pytest.mark.parametrize("kind,status", [("no secret", 401), ("wrong secret", 401), ("foreign Host", 421),
                                         ("text/plain", 415), ("form", 415), ("foreign Origin", 403)])
def test_control_routes_refuse_requests_without_the_secret_or_from_elsewhere(gateway, kind, status):
    info, client, _, factory = gateway
    code = factory.mktemp("attacker")
    (code / "handler.py").write_text(textwrap.dedent(ATTACK))
    body = {"code_dir": str(code), "instance_count": 1000, "model_artifact": "/etc/passwd", "min_capacity": 1,
            "max_capacity": 1000, "policy": {}}
    before = hosted(client)
    with httpx.Client(base_url=info.url, timeout=30) as http:
        for method, path in CONTROL_ROUTES:
            response = http.request(method, path, content=json.dumps(body), headers=attack(info, kind))
            expected = 200 if (kind in ("text/plain", "form") and method == "GET") else status  # GET changes nothing
            assert response.status_code == expected, (method, path, response.status_code, response.text)
    assert hosted(client) == before  # nothing created, scaled or deleted; the gateway still answers
    assert not (code / "pwned").exists()
    assert running_gateway(gateway[2]).pid == info.pid


@pytest.mark.parametrize("kind,status", [("foreign Host", 421), ("foreign Origin", 403)])
def test_invocation_and_s3_routes_refuse_foreign_hosts_and_origins(gateway, kind, status):
    info, *_ = gateway
    headers = {k: v for k, v in attack(info, kind).items() if k != "Authorization"}
    with httpx.Client(base_url=info.url, timeout=30) as http:
        for method, path in [("POST", "/2015-03-31/functions/echo/invocations"), ("POST", "/endpoints/pets/invocations"),
                             ("GET", f"/s3/{DEFAULT_BUCKET}/pipelines/pets/images/cat.png")]:
            assert http.request(method, path, content=b"{}", headers=headers).status_code == status, path


def test_the_client_and_the_cli_work_with_the_secret(gateway):
    info, client, state, _ = gateway
    assert client.status()["gateway"]["pid"] == info.pid
    mode = (state.home / "gateway.json").stat().st_mode & 0o777
    assert mode == 0o600
    done = subprocess.run([sys.executable, "-m", "flows.cli", "local", "status", "--json", "--home", str(state.home)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["gateway"]["url"] == info.url and "pets" in [e["name"] for e in status["endpoints"]]


# -- the control API: what it takes --------------------------------------------------------------
@pytest.mark.parametrize("method,path,body,field,words", [
    ("POST", "/_local/endpoints/pets/instance-count", b'{"instance_count": "3"}', "instance_count", "must be int"),
    ("POST", "/_local/endpoints/pets/instance-count", b'{"instance_count": true}', "instance_count", "must be int"),
    ("POST", "/_local/endpoints/pets/instance-count", b"{}", "instance_count", "required"),
    ("POST", "/_local/endpoints/pets/instance-count", b'{"instance_count": 100000}', "instance_count",
     f"1..{MAX_LOCAL_INSTANCES}"),
    ("POST", "/_local/endpoints/pets/instance-count", b'{"instance_count": 2, "extra": 1}', "extra", "unknown field"),
    ("POST", "/_local/endpoints/pets/instance-count", b"[2]", None, "JSON object"),
    ("POST", "/_local/endpoints/pets/instance-count", b'{"instance_count": ', None, "not valid JSON"),
    ("POST", "/_local/endpoints/pets/instance-count", b"[" * 20000 + b"]" * 20000, None, "not valid JSON"),
    ("PUT", "/_local/endpoints/pets", b'{"instance_count": 1}', "model_artifact", "required"),
    ("PUT", "/_local/endpoints/pets", b'{"model_artifact": "x", "environment": {"A": 1}}', "environment", "strings"),
    ("PUT", "/_local/endpoints/pets", b'{"model_artifact": "x", "traffic_shift": {"steps": [50]}}', "traffic_shift",
     "traffic_shift"),
    ("PUT", "/_local/functions/f", b'{"handler": "handler.lambda_handler"}', "code_dir", "required"),
    ("PUT", "/_local/functions/f", b'{"code_dir": "/nonexistent", "memory_mb": "big"}', "memory_mb", "must be int"),
    ("PUT", "/_local/functions/f", b'{"code_dir": "/nonexistent", "reserved_concurrency": 1.5}',
     "reserved_concurrency", "int or null"),
    # what JSON allows but the gateway could not keep or answer: lone surrogates, NaN/Infinity, overflow
    ("PUT", "/_local/functions/f4", b'{"code_dir": "/tmp", "handler": "\\ud800.x"}', "handler", "not valid UTF-8"),
    ("PUT", "/_local/functions/f4", b'{"code_dir": "/tmp", "environment": {"AB": "\\ud800"}}', "environment.AB",
     "not valid UTF-8"),
    ("PUT", "/_local/functions/f4", b'{"code_dir": "\\ud800"}', "code_dir", "not valid UTF-8"),
    ("PUT", "/_local/endpoints/pets", b'{"model_artifact": "x", "traffic_shift": {"steps": [100], "wait_seconds": 0, '
     b'"max_5xx_errors": Infinity, "max_model_latency_ms": 1}}', "traffic_shift.max_5xx_errors", "finite number"),
    ("PUT", "/_local/endpoints/pets", b'{"model_artifact": "x", "traffic_shift": {"steps": [100], "wait_seconds": 1e400, '
     b'"max_5xx_errors": 1, "max_model_latency_ms": 1}}', "traffic_shift.wait_seconds", "finite number"),
    ("PUT", "/_local/endpoints/pets/autoscaling", b'{"min_capacity": 1, "max_capacity": 2, "policy": {}, '
     b'"time_scale": NaN}', "time_scale", "finite number"),
    ("PUT", "/_local/functions/f4", b'{"code_dir": "/tmp", "handler": "' + b"h" * 5000 + b'.x"}', "handler",
     "1-128 characters"),
])
def test_bad_control_input_is_a_400_naming_the_field(gateway, method, path, body, field, words):
    info, client, *_ = gateway
    before = client.status()
    response = httpx.request(method, info.url + path, content=body, timeout=30,
                             headers={"Authorization": f"Bearer {info.secret}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"] and response.json().get("field") == field
    after = client.status()
    assert [e["instance_count"] for e in after["endpoints"]] == [e["instance_count"] for e in before["endpoints"]]


def test_function_spec_errors_and_the_provisioned_cap(gateway):
    info, client, _, factory = gateway
    with pytest.raises(Exception, match="code_dir .* is not a folder"):
        client.put_function("f", "/nonexistent")
    with pytest.raises(Exception, match=f"0..{MAX_LOCAL_PROVISIONED} locally"):
        client.put_function("f", str(ROOT / "lambda_src"), provisioned_concurrency=MAX_LOCAL_PROVISIONED + 1)
    assert "f" not in hosted(client)[1]


def test_an_autoscaling_policy_the_gateway_cannot_follow_is_refused_not_stored(gateway):
    info, client, *_ = gateway
    from core.config import AutoscalingConfig
    from core.scaling import scalable_target, target_tracking_policy

    config = AutoscalingConfig(min_capacity=1, max_capacity=100, target_invocations_per_instance=10)
    target = scalable_target("pets", "AllTraffic", config)
    over_cap = {"min_capacity": target["MinCapacity"], "max_capacity": target["MaxCapacity"],
                "policy": target_tracking_policy("pets", "AllTraffic", config)}
    with pytest.raises(Exception, match=f"max_capacity 100 is over the local cap of {MAX_LOCAL_INSTANCES}"):
        client.set_autoscaling("pets", over_cap)
    no_target = json.loads(json.dumps({**over_cap, "max_capacity": 2}))
    del no_target["policy"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
    with pytest.raises(Exception, match="TargetTrackingScalingPolicyConfiguration.TargetValue is missing"):
        client.set_autoscaling("pets", no_target)
    endpoint = next(e for e in client.status()["endpoints"] if e["name"] == "pets")
    assert endpoint["autoscaling"] is None and endpoint["instance_count"] == 1


# -- bodies: bounded memory ----------------------------------------------------------------------
def test_a_100_mb_body_is_refused_without_the_gateway_holding_it(gateway):
    info, *_ = gateway
    auth = {"Authorization": f"Bearer {info.secret}", "Content-Type": "application/json"}

    def chunked():
        block = b"x" * MB
        for _ in range(100):
            yield block

    before = gateway_rss_mb(info.pid)
    with httpx.Client(base_url=info.url, timeout=120) as http:
        for method, path, headers in [("PUT", "/_local/functions/echo", auth),
                                      ("POST", "/2015-03-31/functions/echo/invocations", {}),
                                      ("POST", "/endpoints/pets/invocations", {"Content-Type": "image/png"})]:
            for content in (b"x" * (100 * MB), chunked()):  # with a Content-Length, and chunked without one
                response = http.request(method, path, content=content, headers=headers)
                assert response.status_code == 413, (path, response.text)
    grown = gateway_rss_mb(info.pid) - before
    print(f"gateway RSS before {before:.0f} MB, after six 100 MB bodies {before + grown:.0f} MB")
    assert grown < 20, f"the gateway's RSS grew by {grown:.0f} MB"
    assert invoke_json(info.url, {"n": 1}, FunctionName="echo")["event"] == {"n": 1}


# -- Lambda: events that are not JSON ------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"[" * 5000 + b"]" * 5000,  # small: the gateway checks it
                                     b"[" * 100_000 + b"]" * 100_000,  # large: the runtime decodes it
                                     b"not json", b'{"a": NaN}', b'{"a": 1} trailing'])
def test_an_event_that_is_not_json_is_invalid_request_content_and_the_environment_lives(gateway, payload):
    info, client, *_ = gateway
    first = invoke_json(info.url, {"n": 1}, FunctionName="echo")
    cold_before = next(f for f in client.status()["functions"] if f["name"] == "echo")["cold_starts"]
    lam = lambda_client(info.url)
    with pytest.raises(lam.exceptions.InvalidRequestContentException, match="Could not parse request body into json"):
        lam.invoke(FunctionName="echo", Payload=payload)
    assert invoke_json(info.url, {"n": 2}, FunctionName="echo")["pid"] == first["pid"]  # the same environment
    after = next(f for f in client.status()["functions"] if f["name"] == "echo")
    assert after["cold_starts"] == cold_before and after["environments"] == 1


# -- Lambda: names, ARNs and qualifiers ----------------------------------------------------------
@pytest.mark.parametrize("function_name,qualifier,arn_suffix", [
    ("echo", None, "echo"), ("echo:$LATEST", None, "echo:$LATEST"), ("echo:live", None, "echo:live"),
    ("echo", "live", "echo:live"), ("echo:live", "live", "echo:live"),
    ("000000000000:function:echo", None, "echo"), ("000000000000:function:echo:$LATEST", None, "echo:$LATEST"),
    ("arn:aws:lambda:{region}:000000000000:function:echo", None, "echo"),
    ("arn:aws:lambda:{region}:000000000000:function:echo:live", None, "echo:live"),
    ("arn:aws:lambda:{region}:000000000000:function:echo", "$LATEST", "echo:$LATEST"),
])
def test_qualified_names_and_arns_reach_the_function(gateway, function_name, qualifier, arn_suffix):
    info, client, *_ = gateway
    region = client.status()["gateway"]["region"]
    extra = {"Qualifier": qualifier} if qualifier else {}
    answer = invoke_json(info.url, {"n": 1}, FunctionName=function_name.format(region=region), **extra)
    assert answer["event"] == {"n": 1}
    assert answer["arn"] == f"arn:aws:lambda:{region}:000000000000:function:{arn_suffix}"


@pytest.mark.parametrize("function_name,qualifier,code,message", [
    ("echo:v7", None, "ResourceNotFoundException",
     "Function not found: arn:aws:lambda:{region}:000000000000:function:echo:v7"),
    ("echo", "7", "ResourceNotFoundException", "function:echo:7"),
    ("nope", None, "ResourceNotFoundException", "function:nope"),
    ("echo:live", "$LATEST", "InvalidParameterValueException",
     "The derived qualifier from the function name does not match the specified qualifier."),
    ("123456789012:function:echo", None, "AccessDeniedException",
     "not authorized to perform: lambda:InvokeFunction on resource: arn:aws:lambda:{region}:123456789012:function:echo"),
    ("arn:aws:lambda:{region}:123456789012:function:echo", None, "AccessDeniedException", "not authorized"),
    ("arn:aws:lambda:eu-north-1:000000000000:function:echo", None, "ResourceNotFoundException",
     "Functions from 'eu-north-1' are not reachable in this region ('{region}')"),
    ("arn:aws:s3:{region}:000000000000:function:echo", None, "ValidationException", "at 'functionName'"),
    ("a:b:c:d:e", None, "ValidationException", "failed to satisfy constraint"),
])
def test_names_lambda_refuses_are_refused_with_its_errors(gateway, function_name, qualifier, code, message):
    info, client, *_ = gateway
    region = client.status()["gateway"]["region"]
    extra = {"Qualifier": qualifier} if qualifier else {}
    with pytest.raises(ClientError) as error:
        lambda_client(info.url).invoke(FunctionName=function_name.format(region=region), **extra)
    assert error.value.response["Error"]["Code"] == code
    assert message.format(region=region) in error.value.response["Error"]["Message"]


def test_names_that_leave_the_route_are_refused(gateway):
    info, client, *_ = gateway
    invocations = next(f for f in client.status()["functions"] if f["name"] == "echo")["invocations"]
    for name in ("../echo", "echo/../../_local/shutdown"):
        with pytest.raises(ClientError) as error:
            lambda_client(info.url).invoke(FunctionName=name)
        assert 400 <= error.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    assert next(f for f in client.status()["functions"] if f["name"] == "echo")["invocations"] == invocations


# -- the local S3 ----------------------------------------------------------------------------------
def test_the_handler_reads_an_s3_uri_from_the_local_store_offline(gateway):
    info, *_ = gateway
    answer = invoke_json(info.url, {"s3_uri": IMAGE_URI}, FunctionName="pets-fn")
    assert answer["statusCode"] == 200, answer
    body = json.loads(answer["body"])
    assert body["model_version"] == "v1" and body["predictions"][0]["label"] in CLASSES
    refused = invoke_json(info.url, {"s3_uri": FOREIGN_URI}, FunctionName="pets-fn")
    # Outside the function's prefixes: refused by the handler itself, before any S3 call.
    assert refused["statusCode"] == 403, refused
    assert json.loads(refused["body"])["error"]["code"] == "S3LocationNotAllowed"


@pytest.mark.parametrize("bucket,key,head,expected", [
    (DEFAULT_BUCKET, "pipelines/pets/images/cat.png", False, {"status": 200, "type": "image/png"}),
    (DEFAULT_BUCKET, "pipelines/pets/images/cat.png", True, {"status": 200, "read": 0}),
    (DEFAULT_BUCKET, "pipelines/pets/images/missing.png", False, {"code": "NoSuchKey", "status": 404}),
    (DEFAULT_BUCKET, "pipelines/pets/images/missing.png", True, {"code": "404", "status": 404}),
    (DEFAULT_BUCKET, "pipelines/pets/../../other-team/secret.png", False, {"code": "NoSuchKey", "status": 404}),
    (DEFAULT_BUCKET, "other-team/secret.png", False, {"code": "AccessDenied", "status": 403}),
    (DEFAULT_BUCKET, "pipelines/petsbutnot/x.png", False, {"code": "AccessDenied", "status": 403}),
    ("someone-elses-bucket", "pipelines/pets/x.png", False, {"code": "AccessDenied", "status": 403}),
])
def test_a_function_reads_only_its_own_prefixes_through_a_real_boto3_client(gateway, bucket, key, head, expected):
    info, *_ = gateway
    answer = invoke_json(info.url, {"bucket": bucket, "key": key, "head": head}, FunctionName="s3probe")
    assert {k: answer.get(k) for k in expected} == expected, answer
    if expected.get("status") == 200:
        assert answer["length"] == len(image_bytes("PNG"))


def test_the_local_s3_is_not_an_open_file_server(gateway):
    info, *_ = gateway
    whoami = invoke_json(info.url, {"whoami": True}, FunctionName="s3probe")
    assert whoami["endpoint"] == f"{info.url}/s3"
    path = f"/s3/{DEFAULT_BUCKET}/pipelines/pets/images/cat.png"
    unsigned = httpx.get(info.url + path)
    assert unsigned.status_code == 403 and "<Code>AccessDenied</Code>" in unsigned.text
    for key_id, code in (("AKIAIOSFODNN7EXAMPLE", "InvalidAccessKeyId"),
                         (whoami["access_key_id"], "SignatureDoesNotMatch")):  # the function's key, a guessed secret
        s3 = boto3.client("s3", endpoint_url=f"{info.url}/s3", region_name="us-east-1", aws_access_key_id=key_id,
                          aws_secret_access_key="guessed", config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(ClientError) as error:
            s3.get_object(Bucket=DEFAULT_BUCKET, Key="pipelines/pets/images/cat.png")
        assert error.value.response["Error"]["Code"] == code


def test_the_runtime_api_still_answers_images(gateway):
    info, *_ = gateway
    runtime = boto3.client("sagemaker-runtime", endpoint_url=info.url, region_name="us-east-1")
    response = runtime.invoke_endpoint(EndpointName="pets", ContentType="image/png", Body=image_bytes("PNG"))
    assert json.loads(response["Body"].read())["model_version"] == "v1"
    encoded = base64.b64encode(image_bytes("PNG")).decode()
    assert invoke_json(info.url, {"image": encoded}, FunctionName="pets-fn")["statusCode"] == 200


def test_a_refused_control_value_is_not_stored_and_the_gateway_keeps_answering(gateway):
    """A lone surrogate stored in a function used to make every later status a 500 (so clients saw no gateway)."""
    info, client, state, factory = gateway
    code = factory.mktemp("f4")
    (code / "handler.py").write_text(textwrap.dedent(ECHO))
    auth = {"Authorization": f"Bearer {info.secret}", "Content-Type": "application/json"}
    for spec in ({"code_dir": str(code), "handler": "\ud800.x"}, {"code_dir": str(code), "environment": {"AB": "\ud800"}}):
        # json.dumps sends the lone surrogate as the escape \ud800 (httpx's json= could not encode it)
        response = httpx.put(f"{info.url}/_local/functions/f4", content=json.dumps(spec), headers=auth, timeout=30)
        assert response.status_code == 400 and "not valid UTF-8" in response.json()["error"], response.text
    assert "f4" not in hosted(client)[1]
    assert running_gateway(state).pid == info.pid
    with pytest.raises(ClientError) as error:
        lambda_client(info.url).invoke(FunctionName="f4", Payload=b"{}")
    assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"


@pytest.mark.parametrize("kind", ["link loop", "link to /", "named pipe"])
def test_a_code_folder_with_links_or_special_files_is_a_400_and_leaves_nothing(gateway, kind):
    info, client, state, factory = gateway
    code = factory.mktemp("linked")
    (code / "handler.py").write_text(textwrap.dedent(ECHO))
    bad = code / "bad"
    make_special_file(bad, kind)
    response = httpx.put(f"{info.url}/_local/functions/f5", json={"code_dir": str(code)}, timeout=30,
                         headers={"Authorization": f"Bearer {info.secret}"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "code_dir" and str(bad) in response.json()["error"]
    assert "f5" not in hosted(client)[1]
    assert not list((state.home / "gateway" / "functions").glob("f5/code/*"))  # no partial copy


# -- model workers: the same Host/Origin guard --------------------------------------------------
def test_a_model_worker_refuses_foreign_hosts_and_origins(gateway):
    """DNS rebinding against a worker's own port: it answers only to its own Host, as the gateway does."""
    info, client, *_ = gateway
    port = next(e for e in client.status()["endpoints"] if e["name"] == "pets")["instances"][0]["port"]
    url = f"http://127.0.0.1:{port}/invocations"
    image = {"content": image_bytes("PNG"), "timeout": 60}
    for headers, status in [({"Host": f"attacker.example:{port}", "Origin": "http://attacker.example"}, 421),
                            ({"Host": f"attacker.example:{port}"}, 421),
                            ({"Origin": "http://attacker.example"}, 403),
                            ({"Host": f"localhost:{port}"}, 200), ({}, 200)]:
        response = httpx.post(url, headers={"Content-Type": "image/png", **headers}, **image)
        assert response.status_code == status, (headers, response.text)
        assert ("predictions" in response.json()) == (status == 200)


# -- Lambda: Event invocations, versions -----------------------------------------------------------
def test_event_invocations_are_queued_and_bounded_to_lambdas_async_payload_limit(gateway):
    info, client, *_ = gateway
    lam = lambda_client(info.url)
    received = next(f for f in client.status()["functions"] if f["name"] == "echo")["async_events_received"]
    for n in range(16):
        answer = lam.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"n": n}))
        assert answer["StatusCode"] == 202
    padding = "x" * (MAX_EVENT_BYTES - 20)
    with pytest.raises(lam.exceptions.RequestTooLargeException, match="too large for the Event invocation type"):
        lam.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"pad": padding + "x" * 40}))
    assert lam.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"pad": padding[:-20]}))[
        "StatusCode"] == 202  # just under 1 MB: taken
    assert len(json.loads(lam.invoke(FunctionName="echo", Payload=json.dumps({"pad": padding * 2}))["Payload"]
                          .read())["event"]["pad"]) == len(padding) * 2  # 2 MB: synchronous invocations take 6 MB
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{nope")
    echo = next(f for f in client.status()["functions"] if f["name"] == "echo")
    assert echo["async_events_received"] == received + 17


@pytest.mark.parametrize("extra", [{}, {"Qualifier": "live"}, {"Qualifier": "$LATEST"}])
def test_the_executed_version_is_latest_even_through_the_alias(gateway, extra):
    """Locally a function has one version, $LATEST, and `live` is an alias pointing at it (Lambda lets
    an alias point at $LATEST): Lambda then answers the version the alias resolved to, $LATEST."""
    info, *_ = gateway
    response = lambda_client(info.url).invoke(FunctionName="echo", Payload=b"{}", **extra)
    body = json.loads(response["Payload"].read())
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["arn"].endswith(":function:echo" + (f":{extra['Qualifier']}" if extra else ""))


# -- bodies held open: a gateway-wide budget, a deadline, a connection limit -----------------------
def open_invocation(info, declared: int, sent: int) -> socket.socket:
    """A connection that declares a `declared`-byte Lambda payload, sends `sent` bytes of it, and waits."""
    sock = socket.create_connection(("127.0.0.1", info.port), timeout=30)
    sock.sendall(f"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1:{info.port}\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode())
    sock.sendall(b"x" * sent)
    return sock


def answered(socks: list[socket.socket], wanted: int, timeout_s: float = 30) -> dict[socket.socket, bytes]:
    """The first bytes each connection answered, waiting until `wanted` of them have (or the timeout)."""
    answers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout_s
    while len(answers) < wanted and time.monotonic() < deadline:
        ready, _, _ = select.select([s for s in socks if s not in answers], [], [], 0.2)
        for sock in ready:
            answers[sock] = sock.recv(65536)
    return answers


def test_bodies_held_open_are_bounded_by_the_gateways_budget(gateway):
    """12 connections each declaring a 6 MB payload and sending all but its last byte (the tester's
    repro: +74 MB, linear in connections): only what fits the budget is read, the rest is a 503."""
    info, *_ = gateway
    size = 6 * MB
    fits = BODY_BUDGET_BYTES // size
    before = gateway_rss_mb(info.pid)
    socks = [open_invocation(info, size, size - 1) for _ in range(12)]
    try:
        refusals = answered(socks, 12 - fits)
        during = gateway_rss_mb(info.pid)
        held = [s for s in socks if s not in refusals]
        assert len(refusals) == 12 - fits and len(held) == fits
        assert all(a.startswith(b"HTTP/1.1 503") and b"at most 33554432 bytes at once" in a for a in refusals.values())
    finally:
        for sock in socks:
            sock.close()
    print(f"gateway RSS before {before:.0f} MB, with 12 x 6 MB bodies held open {during:.0f} MB "
          f"(+{during - before:.0f}), after they closed {gateway_rss_mb(info.pid):.0f} MB")
    assert during - before < BODY_BUDGET_BYTES / MB + 16
    assert_invocations_recover(info)  # the held reads end with their connections; invocations go on


def assert_invocations_recover(info) -> None:
    """Once the connections held open are gone, the gateway answers invocations again (within 30 s)."""
    def answers() -> bool | None:
        with contextlib.suppress(ClientError):
            if invoke_json(info.url, {"n": 1}, FunctionName="echo")["event"] == {"n": 1}:
                return True
        return None
    wait_for(answers, what="the gateway to answer invocations again", timeout_s=30, interval_s=0.2)
    assert invoke_json(info.url, {"n": 2}, FunctionName="echo")["event"] == {"n": 2}


def test_past_its_connection_limit_the_gateway_answers_503_and_recovers(gateway):
    info, *_ = gateway
    idle = [socket.create_connection(("127.0.0.1", info.port), timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = open_invocation(info, 2, 2)
        answer = answered([extra], 1)
        assert answer and next(iter(answer.values())).startswith(b"HTTP/1.1 503"), answer
        extra.close()
    finally:
        for sock in idle:
            sock.close()
    assert_invocations_recover(info)


# -- the real app in this process, with its limits made small --------------------------------------
@contextlib.contextmanager
def served_app(home: Path, tune):
    """The gateway's app (create_app) served by uvicorn as server.py serves it, in a thread, after
    `tune(gateway)` set its limits; yields (url, secret)."""
    import uvicorn

    from backends.local.gateway.app import create_app
    from backends.local.gateway.server import loopback_socket, server_config

    sock = loopback_socket()
    url, secret = f"http://127.0.0.1:{sock.getsockname()[1]}", "test-secret"
    app, gateway_app = create_app(str(home), url, secret)
    tune(gateway_app)
    server = uvicorn.Server(server_config(app))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield url, secret
    finally:
        server.should_exit = True
        thread.join(60)


def test_past_the_cap_of_environments_an_invocation_is_throttled_as_lambda_throttles(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text("import time\n\ndef lambda_handler(event, context):\n"
                                     "    time.sleep(event.get('sleep', 0))\n    return 'done'\n")

    def one_environment(gateway_app):
        gateway_app.functions.max_environments = 1

    with served_app(tmp_path / "home", one_environment) as (url, secret):
        client = GatewayClient(url, secret)
        client.put_function("slow", str(code))
        client.put_function("other", str(code))
        with pytest.raises(InvalidRequestError, match="local cap of 1 execution environments") as refused:
            client.put_function("warm", str(code), provisioned_concurrency=2)
        assert "provisioned_concurrency" in str(refused.value)
        lam = lambda_client(url)
        assert lam.invoke(FunctionName="slow", InvocationType="Event", Payload=b'{"sleep": 3}')["StatusCode"] == 202
        deadline = time.monotonic() + 30
        while next(f for f in client.status()["functions"] if f["name"] == "slow")["busy"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(lam.exceptions.TooManyRequestsException) as throttled:
            lam.invoke(FunctionName="other", Payload=b"{}")
        assert throttled.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
        assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        other = next(f for f in client.status()["functions"] if f["name"] == "other")
        assert (other["throttles"], other["environments"]) == (1, 0)
        client.close()


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_its_connection_closed(tmp_path):
    def short_deadline(gateway_app):
        gateway_app.bodies.read_timeout_s = 0.5

    with served_app(tmp_path / "home", short_deadline) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Content-Length: 100\r\n\r\n{".encode())
        answer = b""
        while chunk := sock.recv(65536):  # until the gateway closes the connection
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s (1 bytes came)" in answer
