"""lambda_src/handler.py: event parsing, SSRF guard, endpoint retries and error mapping.

Fast and offline: sagemaker-runtime is a real boto3 client behind botocore's Stubber,
S3 is moto's mock_aws, DNS is monkeypatched, and the one URL fetch goes to a local server.
"""
import base64
import http.server
import io
import json
import socket
import threading
from dataclasses import dataclass

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from lambda_src import handler

ENDPOINT = "flowers-endpoint"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # the handler never decodes images
ANSWER = {"predictions": [{"label": "daisy", "score": 0.9}], "model_version": "v3"}


@dataclass
class FakeContext:
    remaining_ms: int = 30_000
    aws_request_id: str = "req-123"
    function_name: str = "classifier-front"
    memory_limit_in_mb: int = 512

    def get_remaining_time_in_millis(self):
        return self.remaining_ms


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "ENDPOINT_NAME": ENDPOINT}.items():
        monkeypatch.setenv(key, value)
    for key in ("ALLOWED_URL_HOSTS", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    yield
    handler.set_clients()


@pytest.fixture
def sleeps(monkeypatch):
    delays = []
    monkeypatch.setattr(handler.time, "sleep", delays.append)
    return delays


@pytest.fixture
def runtime():
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        handler.set_clients(runtime=client)
        yield stub
        stub.assert_no_pending_responses()


def answer(stub, body=ANSWER, content_type="application/x-image", payload=PNG):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json"},
        {"EndpointName": ENDPOINT, "ContentType": content_type, "Accept": "application/json", "Body": payload},
    )


def fail(stub, code, message="", status=400, **modeled):
    stub.add_client_error("invoke_endpoint", code, message, http_status_code=status, modeled_fields=modeled or None)


def call(event, context=None):
    result = handler.lambda_handler(event, context or FakeContext())
    assert result["headers"] == {"Content-Type": "application/json"}
    return result["statusCode"], json.loads(result["body"])


def assert_error(event, status, code, context=None):
    got_status, body = call(event, context)
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert body["request_id"] == "req-123" and body["error"]["message"]
    return body["error"]["message"]


def b64(data):
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- accepted inputs
def test_direct_base64_image(runtime):
    answer(runtime)
    assert call({"image": b64(PNG)}) == (200, {**ANSWER, "request_id": "req-123"})


def test_api_gateway_v1_proxy_with_json_body(runtime):
    answer(runtime)
    event = {"resource": "/predict", "path": "/predict", "httpMethod": "POST",
             "headers": {"Content-Type": "application/json; charset=utf-8"}, "multiValueHeaders": {},
             "requestContext": {"requestId": "apigw-1", "stage": "prod"},
             "body": json.dumps({"image": b64(PNG)}), "isBase64Encoded": False}
    status, body = call(event)
    assert status == 200 and body["predictions"] == ANSWER["predictions"] and body["model_version"] == "v3"


def test_function_url_v2_raw_image_body(runtime):
    answer(runtime, content_type="image/png")
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/",
             "headers": {"content-type": "image/png", "host": "abc.lambda-url.us-east-1.on.aws"},
             "requestContext": {"http": {"method": "POST", "path": "/"}},
             "body": b64(PNG), "isBase64Encoded": True}
    assert call(event)[0] == 200


def test_instances_batch_passes_through_as_json(runtime):
    instances = [b64(PNG), {"image": b64(PNG)}]
    answer(runtime, content_type="application/json", payload=json.dumps({"instances": instances}).encode())
    assert call({"instances": instances})[0] == 200


def test_s3_uri_read_with_moto(runtime):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="uploads")
        s3.put_object(Bucket="uploads", Key="in/daisy.png", Body=PNG, ContentType="image/png")
        handler.set_clients(runtime=handler._CLIENTS["runtime"], s3=s3)
        answer(runtime, content_type="image/png")
        assert call({"s3_uri": "s3://uploads/in/daisy.png"})[0] == 200
        assert_error({"s3_uri": "s3://uploads/missing.png"}, 400, "S3ObjectUnavailable")
        s3.put_object(Bucket="uploads", Key="big.png", Body=b"\x00" * (handler.MAX_BYTES + 1))
        assert_error({"s3_uri": "s3://uploads/big.png"}, 413, "PayloadTooLarge")


@pytest.mark.parametrize("uri", ["uploads/key.png", "s3://uploads", "s3://uploads/", "https://uploads/k", 42])
def test_bad_s3_uri(uri):
    assert_error({"s3_uri": uri}, 400, "InvalidS3Uri")


# ---------------------------------------------------------------- URL inputs (SSRF guard)
@pytest.fixture
def no_dns(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("DNS must not be queried")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def fake_dns(monkeypatch, *addresses):
    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]
    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize("url", ["https://evil.example.net/a.png", "https://images.example.com.evil.net/a.png",
                                 "ftp://images.example.com/a.png", "file:///etc/passwd", "not a url"])
def test_url_host_not_allowed(monkeypatch, no_dns, url):
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com, cdn.example.org")
    assert_error({"url": url}, 400, "UrlHostNotAllowed" if url.startswith("https") else "InvalidUrl")


def test_url_refused_without_allow_list(no_dns):
    assert_error({"url": "https://images.example.com/a.png"}, 400, "UrlHostNotAllowed")


@pytest.mark.parametrize("addresses", [("127.0.0.1",), ("10.1.2.3",), ("169.254.169.254",), ("::1",),
                                       ("192.168.0.7",), ("0.0.0.0",), ("::ffff:10.0.0.1",),
                                       ("93.184.216.34", "10.0.0.5")])  # one private answer is enough
def test_allowed_host_resolving_to_private_address(monkeypatch, addresses):
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com")
    fake_dns(monkeypatch, *addresses)
    assert_error({"url": "https://images.example.com/a.png"}, 400, "UrlAddressNotAllowed")


@pytest.fixture
def image_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in ("/redirect", "/hop"):  # to another host / to the same host
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/" if self.path == "/redirect" else "/a.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_url_fetch_connects_only_to_vetted_address(monkeypatch, runtime, image_server):
    # "images.example.com" is never resolved for real: the connection goes to what _resolve_public vetted
    # (a loopback test server here, so the vetting itself is replaced for this one test).
    vetted = []

    def resolve_public(host, port):
        vetted.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", image_server))]

    monkeypatch.setattr(handler, "_resolve_public", resolve_public)
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com")
    answer(runtime, content_type="image/png")
    assert call({"url": "http://images.example.com/a.png"})[0] == 200
    assert vetted == [("images.example.com", 80)]
    answer(runtime, content_type="image/png")
    assert call({"url": "http://images.example.com/hop"})[0] == 200  # same-host redirect: followed, re-vetted
    assert len(vetted) == 3
    assert_error({"url": "http://images.example.com/redirect"}, 400, "UrlRedirectNotAllowed")


# ---------------------------------------------------------------- bad requests
def test_invalid_json_body():
    event = {"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": "{not json",
             "isBase64Encoded": False}
    assert_error(event, 400, "InvalidJSON")


@pytest.mark.parametrize("event", [
    {"image": "this is not base64!"},
    {"image": ""},
    {"image": 12},
    {"version": "2.0", "headers": {"content-type": "image/jpeg"}, "body": "%%%", "isBase64Encoded": True},
])
def test_invalid_base64(event):
    assert_error(event, 400, "InvalidBase64")


@pytest.mark.parametrize("event", [{}, {"picture": "x"}, {"image": b64(PNG), "url": "https://a/b"}, ["image"],
                                   {"httpMethod": "POST", "headers": {}, "body": "[1, 2]"}])
def test_missing_or_ambiguous_fields(event):
    status, body = call(event)
    assert status == 400 and body["error"]["code"] in ("MissingField", "InvalidRequest")


def test_empty_proxy_body():
    assert_error({"httpMethod": "GET", "headers": None, "body": None}, 400, "MissingBody")


def test_oversized_payload():
    assert_error({"image": b64(b"\x00" * (handler.MAX_BYTES + 1))}, 413, "PayloadTooLarge")


@pytest.mark.parametrize("content_type", ["text/plain", "image/gif", "multipart/form-data; boundary=x"])
def test_unsupported_content_type(content_type):
    event = {"httpMethod": "POST", "headers": {"Content-Type": content_type}, "body": b64(PNG), "isBase64Encoded": True}
    assert_error(event, 415, "UnsupportedMediaType")


# ---------------------------------------------------------------- endpoint errors and retries
def test_throttled_twice_then_success(runtime, sleeps):
    fail(runtime, "ThrottlingException", "Rate exceeded")
    fail(runtime, "ModelError", "Received client error (429)", 424, OriginalStatusCode=429, OriginalMessage="busy")
    answer(runtime)
    assert call({"image": b64(PNG)})[0] == 200
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.05 and 0 <= sleeps[1] <= 0.1


def test_throttled_always(runtime, sleeps):
    for _ in range(handler.MAX_ATTEMPTS):
        fail(runtime, "ThrottlingException", "Rate exceeded")
    assert_error({"image": b64(PNG)}, 429, "Throttled")
    assert len(sleeps) == handler.MAX_ATTEMPTS - 1 and all(0 <= d <= handler.BACKOFF_CAP_S for d in sleeps)


def test_no_retry_past_remaining_time(runtime, sleeps):
    fail(runtime, "ThrottlingException", "Rate exceeded")
    assert_error({"image": b64(PNG)}, 429, "Throttled", FakeContext(remaining_ms=handler.SAFETY_MARGIN_MS))
    assert sleeps == []


def test_service_unavailable_retried_then_503(runtime, sleeps):
    for _ in range(handler.MAX_ATTEMPTS):
        fail(runtime, "ServiceUnavailable", "unavailable", 503)
    assert_error({"image": b64(PNG)}, 503, "EndpointUnavailable")


def test_model_error_4xx_is_a_bad_request(runtime):
    container = json.dumps({"error": "InvalidImage", "message": "the request body is not an image"})
    fail(runtime, "ModelError", "Received client error (400) from primary", 424,
         OriginalStatusCode=400, OriginalMessage=container)
    assert assert_error({"image": b64(PNG)}, 400, "InvalidImage") == "the request body is not an image"


def test_model_error_4xx_plain_message(runtime):
    fail(runtime, "ModelError", "Received client error (400)", 424,
         OriginalStatusCode=400, OriginalMessage="bad pixels")
    assert assert_error({"image": b64(PNG)}, 400, "InvalidInput") == "bad pixels"


def test_model_error_5xx_is_502_without_internals(runtime):
    fail(runtime, "ModelError", "Received server error (500)", 424, OriginalStatusCode=500,
         OriginalMessage="Traceback: CUDA out of memory at /opt/ml/model/code/inference.py")
    message = assert_error({"image": b64(PNG)}, 502, "ModelError")
    assert "CUDA" not in message and "/opt/ml" not in message


def test_endpoint_not_found_is_503(runtime):
    fail(runtime, "ValidationException", f"Endpoint {ENDPOINT} of account 123456789012 not found.")
    message = assert_error({"image": b64(PNG)}, 503, "EndpointNotFound")
    assert "123456789012" not in message


def test_endpoint_invalid_json_answer(runtime):
    answer(runtime, body=b"<html>oops</html>")
    assert_error({"image": b64(PNG)}, 502, "InvalidEndpointResponse")


def test_missing_endpoint_name(monkeypatch):
    monkeypatch.delenv("ENDPOINT_NAME")
    assert "ENDPOINT_NAME" in assert_error({"image": b64(PNG)}, 502, "ConfigurationError")


def test_unexpected_exception_is_generic_502_and_logged(capsys):
    class Broken:
        def invoke_endpoint(self, **kwargs):
            raise RuntimeError("secret internals")

    handler.set_clients(runtime=Broken())
    message = assert_error({"image": b64(PNG)}, 502, "InternalError")
    assert "secret" not in message
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    error = next(log for log in logs if log["message"] == "unexpected error")
    assert "RuntimeError: secret internals" in error["exception"] and error["request_id"] == "req-123"


# ---------------------------------------------------------------- logs and clients
def test_logs_are_json_lines_with_request_id(runtime, sleeps, capsys):
    fail(runtime, "ThrottlingException", "Rate exceeded")
    answer(runtime)
    call({"image": b64(PNG)})
    call({"image": "!!"})
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logs and all(log["request_id"] == "req-123" and log["endpoint"] == ENDPOINT for log in logs)
    done = [log for log in logs if log["message"] == "request completed"]
    assert [log["status"] for log in done] == [200, 400]
    assert all(log["level"] == "INFO" and log["latency_ms"] >= 0 for log in done)
    assert any(log["level"] == "WARNING" and log["attempt"] == 1 for log in logs)


def test_default_clients_are_lazy_cached_and_configured(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "http://127.0.0.1:8080")
    handler.set_clients()
    client = handler._client("runtime", FakeContext(remaining_ms=10_000))
    assert handler._client("runtime", FakeContext()) is client
    assert client.meta.endpoint_url == "http://127.0.0.1:8080"
    assert client.meta.config.retries["total_max_attempts"] == 1 and client.meta.config.read_timeout == 9.0
