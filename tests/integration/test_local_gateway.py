"""The local gateway end to end, with real processes and the real AWS clients:
boto3's sagemaker-runtime and lambda clients pointed at the gateway's URL."""
import base64
import json
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from backends.errors import DeploymentFailedError
from backends.local.gateway.client import GatewayClient
from backends.local.gateway.server import ensure_gateway, running_gateway, stop_gateway
from backends.local.state import LocalState
from tests.helpers import CLASSES, image_bytes, make_model_artifact

pytestmark = pytest.mark.integration
LAMBDA_SOURCE = Path(__file__).resolve().parents[2] / "lambda_src"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-home")
    state = LocalState.resolve(home)
    info = ensure_gateway(state)
    client = GatewayClient.of(info)
    artifact = make_model_artifact(tmp_path_factory.mktemp("model"))
    client.put_endpoint("pets", artifact, instance_count=2, model_version="v1")
    client.put_function("pets-fn", str(LAMBDA_SOURCE), environment={"ENDPOINT_NAME": "pets"},
                        timeout_s=30, reserved_concurrency=2, provisioned_concurrency=1)
    yield info, client, state, tmp_path_factory
    assert stop_gateway(state)
    assert running_gateway(state) is None


def runtime(url):
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1")


def lambda_client(url):
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=60))


@pytest.mark.parametrize("content_type,fmt", [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("application/x-image", "PNG")])
def test_runtime_invoke_with_images(gateway, content_type, fmt):
    info, *_ = gateway
    response = runtime(info.url).invoke_endpoint(EndpointName="pets", ContentType=content_type,
                                                 Accept="application/json", Body=image_bytes(fmt))
    answer = json.loads(response["Body"].read())
    assert answer["model_version"] == "v1"
    assert [p["label"] in CLASSES for p in answer["predictions"]] == [True] * 3
    assert response["InvokedProductionVariant"] == "AllTraffic"


def test_runtime_invoke_with_json_batch(gateway):
    info, *_ = gateway
    encoded = base64.b64encode(image_bytes("PNG")).decode()
    response = runtime(info.url).invoke_endpoint(EndpointName="pets", ContentType="application/json",
                                                 Body=json.dumps({"instances": [encoded, {"image": encoded}]}))
    predictions = json.loads(response["Body"].read())["predictions"]
    assert len(predictions) == 2 and len(predictions[0]) == 3


@pytest.mark.parametrize("body,content_type,status", [
    (b"\xff\xd8\xff garbage", "image/jpeg", 400),
    (b"hello", "text/plain", 415),
    (b'{"image": "***"}', "application/json", 400),
    (b"{not json", "application/json", 400),
])
def test_bad_input_is_a_model_error_and_the_endpoint_keeps_serving(gateway, body, content_type, status):
    info, *_ = gateway
    client = runtime(info.url)
    with pytest.raises(client.exceptions.ModelError) as error:
        client.invoke_endpoint(EndpointName="pets", ContentType=content_type, Body=body)
    assert error.value.response["OriginalStatusCode"] == status
    assert json.loads(error.value.response["OriginalMessage"])["message"]
    ok = client.invoke_endpoint(EndpointName="pets", ContentType="image/png", Body=image_bytes("PNG"))
    assert json.loads(ok["Body"].read())["predictions"]


def test_unknown_endpoint_is_a_validation_error(gateway):
    info, *_ = gateway
    client = runtime(info.url)
    with pytest.raises(client.exceptions.ValidationError, match="Endpoint nope of account .* not found"):
        client.invoke_endpoint(EndpointName="nope", ContentType="image/png", Body=image_bytes("PNG"))


def test_lambda_invoke_end_to_end(gateway):
    info, *_ = gateway
    event = {"image": base64.b64encode(image_bytes("JPEG")).decode()}
    response = lambda_client(info.url).invoke(FunctionName="pets-fn", Payload=json.dumps(event))
    assert "FunctionError" not in response
    answer = json.loads(response["Payload"].read())
    assert answer["statusCode"] == 200
    body = json.loads(answer["body"])
    assert body["model_version"] == "v1" and body["predictions"][0]["label"] in CLASSES


def test_lambda_passes_bad_input_back_as_400(gateway):
    info, *_ = gateway
    response = lambda_client(info.url).invoke(FunctionName="pets-fn", Payload=json.dumps({"image": "%%%"}))
    answer = json.loads(response["Payload"].read())
    assert answer["statusCode"] == 400 and json.loads(answer["body"])["error"]["code"]


def test_throttling_beyond_reserved_concurrency(gateway):
    info, client, _, tmp_factory = gateway
    code = tmp_factory.mktemp("slow-fn")
    (code / "handler.py").write_text("import time\ndef lambda_handler(event, context):\n    time.sleep(2)\n    return 'done'\n")
    client.put_function("slow-fn", str(code), reserved_concurrency=2, provisioned_concurrency=2)
    results, errors = [], []

    def call():
        lam = lambda_client(info.url)
        try:
            results.append(json.loads(lam.invoke(FunctionName="slow-fn")["Payload"].read()))
        except lam.exceptions.TooManyRequestsException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert results == ["done", "done"] and len(errors) == 2
    status = {f["name"]: f for f in client.status()["functions"]}
    assert status["slow-fn"]["throttles"] == 2


def test_unknown_function_is_resource_not_found(gateway):
    info, *_ = gateway
    lam = lambda_client(info.url)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="nope")


def test_killed_instance_is_replaced(gateway):
    import os
    import signal

    info, client, *_ = gateway
    before = next(e for e in client.status()["endpoints"] if e["name"] == "pets")
    os.kill(before["instances"][0]["pid"], signal.SIGKILL)
    rt = runtime(info.url)
    for _ in range(4):  # traffic keeps flowing to the survivor meanwhile
        rt.invoke_endpoint(EndpointName="pets", ContentType="image/png", Body=image_bytes("PNG"))
    deadline = time.time() + 60
    while time.time() < deadline:
        now = next(e for e in client.status()["endpoints"] if e["name"] == "pets")
        alive = [i for i in now["instances"] if i["state"] == "InService"]
        if now["replacements"] >= 1 and len(alive) == 2:
            break
        time.sleep(0.5)
    assert now["replacements"] >= 1 and len(alive) == 2
    assert before["instances"][0]["pid"] not in [i["pid"] for i in now["instances"]]


def test_broken_update_leaves_the_old_model_serving(gateway):
    info, client, _, tmp_factory = gateway
    broken = make_model_artifact(tmp_factory.mktemp("broken"), broken=True)
    with pytest.raises(DeploymentFailedError, match="deploying .* failed"):
        client.put_endpoint("pets", broken, instance_count=2, model_version="v2-broken")
    response = runtime(info.url).invoke_endpoint(EndpointName="pets", ContentType="image/png", Body=image_bytes("PNG"))
    assert json.loads(response["Body"].read())["model_version"] == "v1"


def test_status_lists_endpoints_and_functions(gateway):
    info, client, *_ = gateway
    status = client.status()
    assert status["gateway"]["url"] == info.url
    endpoint = next(e for e in status["endpoints"] if e["name"] == "pets")
    assert endpoint["invoke_url"] == f"{info.url}/endpoints/pets/invocations"
    function = next(f for f in status["functions"] if f["name"] == "pets-fn")
    assert function["reserved_concurrency"] == 2 and function["provisioned_concurrency"] == 1
