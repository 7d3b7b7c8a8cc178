"""lambda_src/ (handler.py, s3_source.py, url_source.py): event parsing, S3 locations, SSRF guard,
endpoint retries and error mapping.

Fast and offline: sagemaker-runtime is a real boto3 client behind botocore's Stubber,
S3 is moto's mock_aws, DNS is monkeypatched, and URL fetches go to local servers on 127.0.0.1.
"""
import base64
import http.server
import io
import json
import queue
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws
from moto.core import enable_iam_authentication

LAMBDA_SOURCE = Path(__file__).resolve().parents[2] / "lambda_src"
if str(LAMBDA_SOURCE) not in sys.path:  # as Lambda imports the function: its modules at the root
    sys.path.append(str(LAMBDA_SOURCE))
import handler  # noqa: E402
import payload  # noqa: E402
import url_source  # noqa: E402

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
    for key in ("ALLOWED_URL_HOSTS", "ALLOWED_S3_PREFIXES", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_PROFILE"):
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


# ---------------------------------------------------------------- s3_uri inputs
ALLOWED = "s3://uploads/in/,s3://shared.example/images/"


class NoS3:
    """An S3 client that must not be called: the request is refused before any read."""
    def get_object(self, **kwargs):
        raise AssertionError(f"S3 must not be read: {kwargs}")


@pytest.fixture
def s3(monkeypatch, runtime):
    monkeypatch.setenv("ALLOWED_S3_PREFIXES", ALLOWED)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="uploads")
        for key in ("in/daisy.png", "in/what?#%20.png", "in-other/daisy.png", "in", "other/daisy.png"):
            client.put_object(Bucket="uploads", Key=key, Body=PNG, ContentType="image/png")
        handler.set_clients(runtime=handler._CLIENTS["runtime"], s3=client)
        yield client


def test_s3_uri_read_with_moto(runtime, s3):
    answer(runtime, content_type="image/png")
    assert call({"s3_uri": "s3://uploads/in/daisy.png"})[0] == 200
    answer(runtime, content_type="image/png")  # "?", "#" and "%" are part of an S3 key, not URL syntax
    assert call({"s3_uri": "s3://uploads/in/what?#%20.png"})[0] == 200
    s3.put_object(Bucket="uploads", Key="in/big.png", Body=b"\x00" * (payload.MAX_BYTES + 1))
    assert_error({"s3_uri": "s3://uploads/in/big.png"}, 413, "PayloadTooLarge")


def test_s3_missing_object_or_bucket_is_404(s3):
    assert "s3://uploads/in/missing.png" in assert_error({"s3_uri": "s3://uploads/in/missing.png"}, 404, "NoSuchKey")
    assert_error({"s3_uri": "s3://shared.example/images/a.png"}, 404, "NoSuchBucket")  # allowed, never created


def test_s3_access_denied_is_403(monkeypatch, runtime):
    monkeypatch.setenv("ALLOWED_S3_PREFIXES", ALLOWED)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="uploads")
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="no-rights")
        key = iam.create_access_key(UserName="no-rights")["AccessKey"]
        handler.set_clients(runtime=handler._CLIENTS["runtime"], s3=boto3.client(
            "s3", region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"], aws_session_token=None))
        with enable_iam_authentication():  # moto checks IAM policies: this user has none
            assert_error({"s3_uri": "s3://uploads/in/daisy.png"}, 403, "AccessDenied")


@pytest.mark.parametrize("uri", [
    "s3://uploads/other/daisy.png",
    "s3://uploads/in-other/daisy.png",  # shares the characters of "in", not the folder "in/"
    "s3://uploads/in",  # the key "in" itself is not under "in/"
    "s3://uploads-x/in/daisy.png",
    "s3://shared.example/daisy.png",
])
def test_s3_uri_outside_the_allowed_prefixes_is_403(s3, uri):
    message = assert_error({"s3_uri": uri}, 403, "S3LocationNotAllowed")
    assert "s3://uploads/in/" in message and "s3://shared.example/images/" in message


@pytest.mark.parametrize("allowed", [None, "", " , "])
def test_no_allowed_prefixes_refuses_every_s3_uri(monkeypatch, allowed):
    if allowed is None:
        monkeypatch.delenv("ALLOWED_S3_PREFIXES", raising=False)
    else:
        monkeypatch.setenv("ALLOWED_S3_PREFIXES", allowed)
    handler.set_clients(s3=NoS3())
    assert "ALLOWED_S3_PREFIXES is empty" in assert_error({"s3_uri": "s3://uploads/in/a.png"}, 403,
                                                          "S3LocationNotAllowed")


def test_a_malformed_allowed_entry_allows_nothing(monkeypatch):
    monkeypatch.setenv("ALLOWED_S3_PREFIXES", "uploads/in/,s3://Up_Loads/in/")
    handler.set_clients(s3=NoS3())
    assert_error({"s3_uri": "s3://uploads/in/a.png"}, 403, "S3LocationNotAllowed")


@pytest.mark.parametrize("uri, reason", [
    ("uploads/key.png", "like s3://bucket/key"),
    ("https://uploads/k", "like s3://bucket/key"),
    (42, "like s3://bucket/key"),
    ("s3://", "3-63 lowercase"),
    ("s3://uploads", "no object key"),
    ("s3://uploads/", "no object key"),
    ("s3://Uploads/in/a.png", "3-63 lowercase"),
    ("s3://up_loads/in/a.png", "3-63 lowercase"),
    ("s3://ab/in/a.png", "3-63 lowercase"),
    ("s3://" + "a" * 64 + "/in/a.png", "3-63 lowercase"),
    ("s3://-uploads/in/a.png", "starting and ending"),
    ("s3://uploads./in/a.png", "starting and ending"),
    ("s3://up..loads/in/a.png", "two adjacent dots"),
    ("s3://192.168.5.4/in/a.png", "IP address"),
    ("s3://uploads//in/a.png", "must not start with '/'"),
    ("s3://uploads/in/../secret/a.png", "'..' path segments"),
    ("s3://uploads/in/./a.png", "'..' path segments"),
    ("s3://uploads/in/..", "'..' path segments"),
    ("s3://uploads/in/" + "k" * 1022, "1024 bytes"),
    ("s3://uploads/in/" + "\u00e9" * 511, "1024 bytes"),  # 514 characters, 1025 bytes
    ("s3://uploads/in/\ud800.png", "not valid UTF-8"),
    ("s3://uploads/in/" + "k" * 5000, "longer than 2048 characters"),
])
def test_malformed_s3_uri_is_400_saying_what_is_wrong(monkeypatch, uri, reason):
    monkeypatch.setenv("ALLOWED_S3_PREFIXES", ALLOWED)
    handler.set_clients(s3=NoS3())
    assert reason in assert_error({"s3_uri": uri}, 400, "InvalidS3Uri")


def test_the_longest_valid_key_is_read(runtime, s3):
    key = "in/" + "k" * 1021  # 1024 bytes
    s3.put_object(Bucket="uploads", Key=key, Body=PNG, ContentType="image/png")
    answer(runtime, content_type="image/png")
    assert call({"s3_uri": f"s3://uploads/{key}"})[0] == 200


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
            redirects = {"/redirect": "http://169.254.169.254/latest/",  # another host
                         "/hop": "/a.png",  # the same host
                         "/other-port": f"http://images.example.com:{self.server.server_address[1] + 1}/a.png"}
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
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

    monkeypatch.setattr(url_source, "resolve_public", resolve_public)
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com")
    answer(runtime, content_type="image/png")
    assert call({"url": "http://images.example.com/a.png"})[0] == 200
    assert vetted == [("images.example.com", 80)]
    answer(runtime, content_type="image/png")
    assert call({"url": "http://images.example.com/hop"})[0] == 200  # same-host redirect: followed, re-vetted
    assert len(vetted) == 3
    assert_error({"url": "http://images.example.com/redirect"}, 400, "UrlRedirectNotAllowed")
    assert "port" in assert_error({"url": "http://images.example.com/other-port"}, 400, "UrlRedirectNotAllowed")
    assert len(vetted) == 5  # neither refused redirect was connected to


def redirect(old, new):
    return url_source.SameHostRedirects().redirect_request(urllib.request.Request(old), None, 302, "Found", {}, new)


def test_redirects_never_downgrade_https_nor_change_the_port():
    # The rule itself, called directly: an https test server would need a certificate the fetch trusts.
    with pytest.raises(payload.RequestError, match="https to http"):
        redirect("https://images.example.com:8443/a.png", "http://images.example.com:8443/b.png")
    with pytest.raises(payload.RequestError, match=r"port \(80 -> 443\)"):
        redirect("http://images.example.com/a.png", "https://images.example.com/a.png")
    with pytest.raises(payload.RequestError, match=r"port \(443 -> 8443\)"):
        redirect("https://images.example.com/a.png", "https://images.example.com:8443/a.png")
    assert redirect("https://images.example.com/a.png", "https://images.example.com:443/b.png").full_url \
        == "https://images.example.com:443/b.png"


TRICKLE_BYTES, TRICKLE_GAP_S = 300, 0.05  # 15 s, each byte well within the per-operation timeout


@pytest.fixture
def slow_server(monkeypatch, runtime):
    """Answers that keep a fetch waiting, then complete: without a deadline the fetch would succeed.
    Yields how each answer ended: "hung up" (the fetch gave up on it) or "finished"."""
    outcomes = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            head, tail = {
                "/trickle-body": (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
                                  % TRICKLE_BYTES, b""),
                "/trickle-body-no-length": (b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n", b""),
                "/trickle-headers": (b"HTTP/1.0 200 OK\r\nX-Padding: ", b"\r\nContent-Type: image/png\r\n\r\n" + PNG),
            }.get(self.path, (None, None))
            try:
                if head is None:  # "/silent": says nothing until the client goes away
                    self.rfile.read(1)
                    outcomes.put("hung up")
                    return
                self.wfile.write(head)
                for _ in range(TRICKLE_BYTES):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(TRICKLE_GAP_S)
                self.wfile.write(tail)
                self.wfile.flush()
                outcomes.put("finished")
            except OSError:  # the fetch gave up and closed its socket
                outcomes.put("hung up")
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setattr(url_source, "resolve_public", lambda host, port: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.server_address[1]))])
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com")
    yield outcomes
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-body-no-length", "/trickle-headers"])
def test_url_fetch_has_an_overall_deadline(monkeypatch, slow_server, path):
    monkeypatch.setattr(url_source, "URL_DEADLINE_S", 0.5)  # the server trickles for 15 s
    assert_error({"url": f"http://images.example.com{path}"}, 504, "UrlFetchTimeout")
    assert slow_server.get(timeout=60) == "hung up"  # the fetch stopped reading; it did not wait the answer out


def test_url_fetch_deadline_is_cut_to_the_functions_remaining_time(monkeypatch, slow_server):
    monkeypatch.setattr(url_source, "URL_DEADLINE_S", 60.0)  # longer than the trickle: only the context limits it
    context = FakeContext(remaining_ms=payload.SAFETY_MARGIN_MS + 500)
    assert_error({"url": "http://images.example.com/trickle-body"}, 504, "UrlFetchTimeout", context)
    assert slow_server.get(timeout=60) == "hung up"


def test_url_fetch_is_not_started_without_time_left(monkeypatch, no_dns):
    monkeypatch.setenv("ALLOWED_URL_HOSTS", "images.example.com")
    context = FakeContext(remaining_ms=payload.SAFETY_MARGIN_MS)
    assert_error({"url": "http://images.example.com/a.png"}, 504, "UrlFetchTimeout", context)


def test_a_silent_url_host_times_out(monkeypatch, slow_server):
    monkeypatch.setattr(url_source, "URL_TIMEOUT_S", 0.3)  # one socket operation's limit, not the deadline
    assert_error({"url": "http://images.example.com/silent"}, 504, "UrlFetchTimeout")
    assert slow_server.get(timeout=60) == "hung up"


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
    assert_error({"image": b64(b"\x00" * (payload.MAX_BYTES + 1))}, 413, "PayloadTooLarge")


@pytest.mark.parametrize("content_type", ["text/plain", "image/gif", "multipart/form-data; boundary=x"])
def test_unsupported_content_type(content_type):
    event = {"httpMethod": "POST", "headers": {"Content-Type": content_type}, "body": b64(PNG), "isBase64Encoded": True}
    assert_error(event, 415, "UnsupportedMediaType")


# ---------------------------------------------------------------- malformed events: 400, never 502
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it, not ValueError


def deeply_nested(depth=100_000):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def proxy(body, **fields):
    return {"httpMethod": "POST", "headers": {"Content-Type": "application/json"}, "body": body,
            "isBase64Encoded": False, **fields}


@pytest.mark.parametrize("event", [
    proxy(DEEP_JSON),
    proxy(b64(DEEP_JSON.encode()), isBase64Encoded=True),
    proxy(json.dumps({"image": b64(PNG)})[:-1] + ', "x": ' + DEEP_JSON + "}"),
])
def test_deeply_nested_json_body_is_400_and_the_handler_keeps_working(runtime, event):
    assert "nested too deeply" in assert_error(event, 400, "InvalidJSON")
    answer(runtime)
    assert call(proxy(json.dumps({"image": b64(PNG)})))[0] == 200


@pytest.mark.parametrize("field, code", [("instances", "InvalidInstances"), ("image", "InvalidBase64"),
                                         ("s3_uri", "InvalidS3Uri"), ("url", "InvalidUrl")])
def test_deeply_nested_direct_field_is_400(field, code):
    assert_error({field: deeply_nested()}, 400, code)


@pytest.mark.parametrize("headers", [["content-type", "application/json"], "application/json", 5,
                                     {"Content-Type": ["application/json"]}, {"content-type": None},
                                     {f"x-h{i}": "v" for i in range(handler.MAX_HEADERS + 1)}])
def test_malformed_proxy_headers_are_400(headers):
    assert_error(proxy(json.dumps({"image": b64(PNG)}), headers=headers), 400, "InvalidHeaders")


@pytest.mark.parametrize("body", [{"image": b64(PNG)}, 123, ["x"], True])
def test_proxy_body_that_is_not_a_string_is_400(body):
    assert_error(proxy(body), 400, "InvalidBody")


@pytest.mark.parametrize("flag", ["true", 1, "false", [], {}])
def test_is_base64_encoded_must_be_a_bool(flag):
    assert "isBase64Encoded" in assert_error(proxy(json.dumps({"image": b64(PNG)}), isBase64Encoded=flag), 400,
                                             "InvalidRequest")


@pytest.mark.parametrize("event", [["image"], "image", 42, None, 1.5, True])
def test_event_that_is_not_an_object_is_400_even_unconfigured(monkeypatch, event):
    monkeypatch.delenv("ENDPOINT_NAME")  # the request is wrong whatever the function's configuration
    assert_error(event, 400, "InvalidRequest")


def test_huge_numbers_of_keys(runtime):
    junk = {f"k{i}": i for i in range(200_000)}
    assert_error(junk, 400, "MissingField")
    assert_error(proxy(json.dumps(junk)), 400, "MissingField")
    answer(runtime)
    assert call({**junk, "image": b64(PNG)})[0] == 200
    answer(runtime)
    assert call(proxy(json.dumps({**junk, "image": b64(PNG)})))[0] == 200


def test_proxy_body_over_the_size_limit_is_413():
    assert_error(proxy(" " * (handler.MAX_TEXT_CHARS + 1)), 413, "PayloadTooLarge")


def test_endpoint_answer_nested_too_deeply_is_invalid_response(runtime):
    answer(runtime, body=DEEP_JSON.encode())
    assert_error({"image": b64(PNG)}, 502, "InvalidEndpointResponse")


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
    assert_error({"image": b64(PNG)}, 429, "Throttled", FakeContext(remaining_ms=payload.SAFETY_MARGIN_MS))
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


@pytest.mark.parametrize("code", ["ValidationError", "ValidationException"])
def test_endpoint_not_found_is_503(runtime, code):
    """SageMaker Runtime answers a missing endpoint with ValidationError (its model's error shape); the
    ValidationException spelling other services use is taken too."""
    fail(runtime, code, f"Endpoint {ENDPOINT} of account 123456789012 not found.")
    message = assert_error({"image": b64(PNG)}, 503, "EndpointNotFound")
    assert "123456789012" not in message


def test_a_multi_model_endpoint_still_loading_is_retried(runtime, sleeps):
    fail(runtime, "ModelNotReadyException", "Model is not ready yet", 429)
    answer(runtime)
    status, body = call({"image": b64(PNG)})
    assert (status, body["predictions"], len(sleeps)) == (200, ANSWER["predictions"], 1)


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
    elapsed_ms = []
    for event in ({"image": b64(PNG)}, {"image": "!!"}):
        started = time.perf_counter()
        call(event)
        elapsed_ms.append((time.perf_counter() - started) * 1000)
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logs and all(log["request_id"] == "req-123" and log["endpoint"] == ENDPOINT for log in logs)
    done = [log for log in logs if log["message"] == "request completed"]
    assert [log["status"] for log in done] == [200, 400]
    assert all(log["level"] == "INFO" for log in done)
    # The logged latency is the request's own time in milliseconds: within what the caller measured.
    assert all(isinstance(log["latency_ms"], float) and log["latency_ms"] <= spent + 1
               for log, spent in zip(done, elapsed_ms))
    assert any(log["level"] == "WARNING" and log["attempt"] == 1 for log in logs)


def test_default_clients_are_lazy_cached_and_configured(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "http://127.0.0.1:8080")
    handler.set_clients()
    client = handler._client("runtime", FakeContext(remaining_ms=10_000))
    assert handler._client("runtime", FakeContext()) is client
    assert client.meta.endpoint_url == "http://127.0.0.1:8080"
    assert client.meta.config.retries["total_max_attempts"] == 1 and client.meta.config.read_timeout == 9.0


def test_default_s3_client_is_lazy_and_follows_boto3s_endpoint_setting(monkeypatch):
    # The local gateway's S3 is reached the way the runtime is: AWS_ENDPOINT_URL_S3 in the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    handler.set_clients()
    assert handler._CLIENTS["s3"] is None
    client = handler._client("s3", FakeContext(remaining_ms=10_000))
    assert handler._client("s3", FakeContext()) is client
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"
    assert client.meta.config.retries["total_max_attempts"] == 3
    url = client.generate_presigned_url("get_object", Params={"Bucket": "uploads", "Key": "in/a.png"})
    assert url.startswith("http://127.0.0.1:9000/uploads/in/a.png?")  # path-style on a local address
    assert handler._client("runtime", FakeContext()).meta.endpoint_url.startswith("https://runtime.sagemaker.")
