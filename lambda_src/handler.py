"""Lambda front for a SageMaker image-classifier endpoint (stdlib + boto3 only): direct invocations
({"image"|"s3_uri"|"url"|"instances": ...}) and API Gateway v1/v2 / Function URL proxy events."""
import base64
import binascii
import http.client
import ipaddress
import json
import os
import random
import re
import socket
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

MAX_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
MAX_TEXT_CHARS = MAX_BYTES * 3 // 2  # a base64 or JSON body of MAX_BYTES, with room for line breaks
MAX_HEADERS = 1000  # API Gateway allows 10 KB of headers: more entries than this is not a real request
IMAGE_TYPES = {"image/jpeg", "image/png", "application/x-image"}
JSON_TYPES = {"", "application/json", "text/json"}
INPUT_KEYS = ("image", "s3_uri", "url", "instances")
PROXY_KEYS = ("requestContext", "httpMethod", "routeKey", "isBase64Encoded", "headers")
MAX_ATTEMPTS, BACKOFF_BASE_S, BACKOFF_CAP_S = 4, 0.05, 1.0
SAFETY_MARGIN_MS = 1000  # never sleep or wait into the function's last second
URL_TIMEOUT_S = 5.0  # each socket operation of a {"url": ...} fetch
URL_DEADLINE_S = 10.0  # the whole fetch (connect, redirects, headers, body), or less when the function has less
MAX_URL_CHARS = 2048
MAX_S3_URI_CHARS = 2048  # "s3://" + a 63-character bucket + "/" + a 1024-byte key fits easily
MAX_S3_KEY_BYTES = 1024  # S3's own limit, in UTF-8
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
THROTTLE_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException"}
UNAVAILABLE_CODES = {"ServiceUnavailable", "ServiceUnavailableException", "ModelNotReadyException"}
VALIDATION_CODES = {"ValidationError", "ValidationException"}  # SageMaker Runtime's is ValidationError

_CLIENTS = {"runtime": None, "s3": None}


class RequestError(Exception):
    """An error answered to the caller as ``status`` with ``{"error": {code, message}}``."""
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def set_clients(runtime=None, s3=None):
    """Inject boto3 clients (tests); None means a default client created lazily on first use."""
    _CLIENTS["runtime"], _CLIENTS["s3"] = runtime, s3


def _client(name, context):
    if _CLIENTS[name] is None:  # created once per execution environment
        budget_s = max(1.0, (_remaining_ms(context) - SAFETY_MARGIN_MS) / 1000)
        config = Config(connect_timeout=min(5.0, budget_s), read_timeout=budget_s,  # _invoke retries throttling
                        retries={"mode": "standard", "total_max_attempts": 1 if name == "runtime" else 3})
        _CLIENTS[name] = boto3.client("sagemaker-runtime" if name == "runtime" else "s3", config=config)
    return _CLIENTS[name]


def _remaining_ms(context):
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return getter() if callable(getter) else 30_000


def _log(level, message, **fields):
    """One JSON object per line on stdout: CloudWatch Logs keeps each line as one event."""
    print(json.dumps({"level": level, "message": message, **fields}, default=str), flush=True)


def _check_size(data, what):
    if len(data) > MAX_BYTES:
        raise RequestError(413, "PayloadTooLarge", f"{what} exceeds {MAX_BYTES} bytes")
    return data


def _b64decode(text, what):
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "InvalidBase64", f"{what} must be a non-empty base64 string")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(413, "PayloadTooLarge", f"{what} exceeds {MAX_TEXT_CHARS} characters")
    try:
        return _check_size(base64.b64decode("".join(text.split()), validate=True), what)
    except (binascii.Error, ValueError):
        raise RequestError(400, "InvalidBase64", f"{what} is not valid base64") from None


def _image_type(content_type):
    content_type = (content_type or "").split(";")[0].strip().lower()
    return content_type if content_type in IMAGE_TYPES else "application/x-image"


def _content_type(headers):
    """The Content-Type of a proxy event's headers (any case), checked to be what API Gateway sends."""
    if headers is None:
        return ""
    if not isinstance(headers, dict):
        raise RequestError(400, "InvalidHeaders", "headers must be a JSON object of strings")
    if len(headers) > MAX_HEADERS:
        raise RequestError(400, "InvalidHeaders", f"more than {MAX_HEADERS} headers")
    content_type = ""
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "content-type":
            if not isinstance(value, str):
                raise RequestError(400, "InvalidHeaders", "the content-type header must be a string")
            content_type = value
    return content_type.split(";")[0].strip().lower()


def _from_proxy(event, context):
    """API Gateway REST (v1) / HTTP (v2) and Function URL events."""
    content_type = _content_type(event.get("headers"))
    body, encoded = event.get("body"), event.get("isBase64Encoded")
    if encoded is None:
        encoded = False
    if not isinstance(encoded, bool):
        raise RequestError(400, "InvalidRequest", "isBase64Encoded must be true or false")
    if body is None or body == "":
        raise RequestError(400, "MissingBody", "request body is required")
    if not isinstance(body, str):
        raise RequestError(400, "InvalidBody", "body must be a string (base64 when isBase64Encoded is true)")
    if len(body) > MAX_TEXT_CHARS:
        raise RequestError(413, "PayloadTooLarge", f"body exceeds {MAX_TEXT_CHARS} characters")
    if content_type in IMAGE_TYPES:
        if not encoded:
            raise RequestError(400, "BodyNotBase64", "raw image bodies must be base64-encoded (binary media types)")
        return _b64decode(body, "body"), content_type, "raw"
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise RequestError(415, "UnsupportedMediaType", f"unsupported content type {content_type!r}")
    try:
        payload = json.loads(_b64decode(body, "body") if encoded else body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "InvalidJSON", "request body is not valid JSON") from None
    except RecursionError:  # json's own limit on nesting, not a ValueError
        raise RequestError(400, "InvalidJSON", "request body is nested too deeply") from None
    return _from_payload(payload, context)


def _from_payload(payload, context):
    """A JSON object with exactly one of INPUT_KEYS -> (body bytes, content type, source)."""
    keys = [key for key in INPUT_KEYS if isinstance(payload, dict) and key in payload]
    if len(keys) != 1:
        raise RequestError(400, "MissingField", "send a JSON object with exactly one of: " + ", ".join(INPUT_KEYS))
    key, value = keys[0], payload[keys[0]]
    if key == "image":
        return _b64decode(value, "image"), "application/x-image", key
    if key == "s3_uri":
        return (*_read_s3(value, context), key)
    if key == "url":
        return (*_fetch_url(value, context), key)
    if not isinstance(value, list) or not value:
        raise RequestError(400, "InvalidInstances", "instances must be a non-empty list")
    try:
        body = json.dumps({"instances": value}).encode()
    except (RecursionError, ValueError, TypeError):  # too deep, circular, or not JSON (direct Python callers)
        raise RequestError(400, "InvalidInstances", "instances must be plain JSON, not nested too deeply") from None
    return _check_size(body, "instances"), "application/json", key


def _bucket_problem(bucket):
    """Why ``bucket`` breaks S3's bucket naming rules, or None."""
    if not 3 <= len(bucket) <= 63 or not BUCKET_NAME.fullmatch(bucket):
        return ("must be 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter "
                "or digit")
    if ".." in bucket:
        return "must not contain two adjacent dots"
    if IP_LIKE.fullmatch(bucket):
        return "must not be formatted as an IP address"
    return None


def _parse_s3_uri(uri):
    """(bucket, key) of ``s3://bucket/key``; RequestError 400 saying what is wrong. Keys are taken as
    they are (S3 does not normalize them), so "?", "#" and "%" are part of the key, not URL syntax."""
    def invalid(reason):
        return RequestError(400, "InvalidS3Uri", f"s3_uri {reason}")
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise invalid("must be a string like s3://bucket/key")
    if len(uri) > MAX_S3_URI_CHARS:
        raise invalid(f"is longer than {MAX_S3_URI_CHARS} characters")
    bucket, _, key = uri[len("s3://"):].partition("/")
    problem = _bucket_problem(bucket)
    if problem:
        raise invalid(f"bucket name {bucket[:63]!r} {problem}")
    if not key:
        raise invalid("has no object key after the bucket (s3://bucket/key)")
    if key.startswith("/"):
        raise invalid("key must not start with '/'")
    if any(part in (".", "..") for part in key.split("/")):
        # S3 keeps them literally, but HTTP layers may resolve them: the object read would not be the one checked
        raise invalid("key must not contain '.' or '..' path segments")
    try:
        key_bytes = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, which JSON can carry
        raise invalid("key is not valid UTF-8 text") from None
    if key_bytes > MAX_S3_KEY_BYTES:
        raise invalid(f"key is longer than {MAX_S3_KEY_BYTES} bytes (UTF-8)")
    return bucket, key


def _allowed_s3_prefixes():
    """ALLOWED_S3_PREFIXES as (entry, bucket, key prefix ending in "/" or empty for the whole bucket).
    A malformed entry allows nothing (core.config validates them before they get here)."""
    allowed = []
    for entry in os.environ.get("ALLOWED_S3_PREFIXES", "").split(","):
        entry = entry.strip()
        bucket, _, prefix = entry[len("s3://"):].partition("/")
        if not entry.startswith("s3://") or _bucket_problem(bucket):
            continue
        allowed.append((entry, bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"))
    return allowed


def _check_s3_allowed(uri, bucket, key):
    allowed = _allowed_s3_prefixes()
    if any(bucket == b and key.startswith(prefix) for _, b, prefix in allowed):
        return
    where = ", ".join(entry for entry, _, _ in allowed)
    raise RequestError(403, "S3LocationNotAllowed",
                       f"{uri[:200]} is outside the locations this function reads: {where}" if where
                       else "this function reads no s3:// locations (ALLOWED_S3_PREFIXES is empty)")


def _read_s3(uri, context):
    bucket, key = _parse_s3_uri(uri)
    _check_s3_allowed(uri, bucket, key)
    try:
        obj = _client("s3", context).get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise RequestError(404, "NoSuchKey", f"{uri} does not exist") from None
        if code == "NoSuchBucket":
            raise RequestError(404, "NoSuchBucket", f"the bucket of {uri} does not exist") from None
        if code in ("AccessDenied", "403"):  # without s3:ListBucket, S3 answers a missing key with AccessDenied
            raise RequestError(403, "AccessDenied",
                               f"this function may not read {uri} (or it does not exist)") from None
        raise
    return _check_size(obj["Body"].read(MAX_BYTES + 1), "object"), _image_type(obj.get("ContentType"))


def _resolve_public(host, port):
    """Resolve ``host``; refuse it unless every address it resolves to is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RequestError(400, "UrlUnresolvable", f"cannot resolve host {host!r}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        addr = getattr(addr, "ipv4_mapped", None) or addr
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
                or addr.is_multicast or addr.is_unspecified or not addr.is_global):
            raise RequestError(400, "UrlAddressNotAllowed", f"host {host!r} resolves to a non-public address")
    return infos


class _Deadline:
    """The whole fetch's time limit. Per-operation timeouts do not bound a server that trickles a byte
    now and then, so when the limit passes a watchdog shuts the fetch's sockets down, which wakes any
    read blocked on them. (Name resolution is bounded by the resolver's own timeouts.)"""
    def __init__(self, seconds):
        self.at, self.expired = time.monotonic() + seconds, False
        self._sockets, self._lock = [], threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining_s(self):
        return self.at - time.monotonic()

    def watch(self, sock):
        with self._lock:
            if self.expired:
                sock.close()
                raise TimeoutError("url fetch deadline passed")
            self._sockets.append(sock.dup())  # a duplicate outlives TLS wrapping, which detaches ``sock``

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _pinned_connection(address, source_address, deadline):
    """Connect only to vetted addresses: no DNS-rebinding gap between the check and the use. Each socket
    operation waits URL_TIMEOUT_S at most, and never past the deadline."""
    last_error = OSError("no address to connect to")
    for *_, sockaddr in _resolve_public(*address):
        budget_s = deadline.remaining_s()
        if budget_s <= 0:
            raise TimeoutError("url fetch deadline passed")
        try:
            sock = socket.create_connection(sockaddr[:2], min(URL_TIMEOUT_S, budget_s), source_address)
        except OSError as err:
            last_error = err
            continue
        deadline.watch(sock)
        return sock
    raise last_error


class _PinnedHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """Replaces urllib's http and https handlers: every connection goes through _pinned_connection."""
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def _pinned(self, connection_class):
        def make(*args, **kwargs):
            connection = connection_class(*args, **kwargs)
            connection._create_connection = lambda address, timeout=None, source_address=None: _pinned_connection(
                address, source_address, self.deadline)
            return connection
        return make

    def http_open(self, req):
        return self.do_open(self._pinned(http.client.HTTPConnection), req)

    def https_open(self, req):
        return self.do_open(self._pinned(http.client.HTTPSConnection), req, context=self._context)


def _effective_port(parsed):
    return parsed.port or (443 if parsed.scheme == "https" else 80)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same host and port, and never from https to http."""
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlparse(req.full_url), urllib.parse.urlparse(newurl)
        if new.scheme not in ("http", "https") or new.hostname != old.hostname:
            raise RequestError(400, "UrlRedirectNotAllowed", "redirects to other hosts are not followed")
        if old.scheme == "https" and new.scheme == "http":
            raise RequestError(400, "UrlRedirectNotAllowed", "redirects from https to http are not followed")
        try:
            ports = _effective_port(old), _effective_port(new)
        except ValueError:
            raise RequestError(400, "UrlRedirectNotAllowed", "the redirect's port is not valid") from None
        if ports[0] != ports[1]:
            raise RequestError(400, "UrlRedirectNotAllowed",
                               f"redirects to another port ({ports[0]} -> {ports[1]}) are not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _is_timeout(err):
    return isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError)


def _fetch_url(url, context):
    parsed = urllib.parse.urlparse(url if isinstance(url, str) and len(url) <= MAX_URL_CHARS else "")
    host = (parsed.hostname or "").rstrip(".").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise RequestError(400, "InvalidUrl", f"url must be an http(s) URL with a host, at most {MAX_URL_CHARS} "
                                              "characters")
    allowed = {h.strip().rstrip(".").lower() for h in os.environ.get("ALLOWED_URL_HOSTS", "").split(",")}
    if host not in allowed - {""}:
        raise RequestError(400, "UrlHostNotAllowed", f"host {host!r} is not in the allow-list")
    # 504, not 408: the caller's request arrived in time; the image host it named (upstream of this
    # function) did not answer in time, which is what API Gateway itself answers 504 for.
    too_slow = RequestError(504, "UrlFetchTimeout", "the url's host did not answer in time")
    budget_s = min(URL_DEADLINE_S, (_remaining_ms(context) - SAFETY_MARGIN_MS) / 1000)
    if budget_s <= 0:
        raise too_slow
    with _Deadline(budget_s) as deadline:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PinnedHandler(deadline),
                                             _SameHostRedirects)
        try:
            with opener.open(urllib.request.Request(url, headers={"Accept": "image/*"}),
                             timeout=URL_TIMEOUT_S) as resp:
                data, content_type = resp.read(MAX_BYTES + 1), resp.headers.get("Content-Type")
        except urllib.error.HTTPError as err:
            raise RequestError(400, "UrlFetchFailed", f"url answered HTTP {err.code}") from None
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            if deadline.expired or _is_timeout(err):
                raise too_slow from None
            raise RequestError(400, "UrlFetchFailed", "could not fetch url") from None
        if deadline.expired:  # a body without Content-Length ends where the watchdog cut it
            raise too_slow
    return _check_size(data, "url content"), _image_type(content_type)


def _error_kind(err):
    """'throttled', 'unavailable' (both retried) or None for an invoke_endpoint ClientError."""
    code = err.response.get("Error", {}).get("Code", "")
    statuses = {err.response.get("ResponseMetadata", {}).get("HTTPStatusCode"), err.response.get("OriginalStatusCode")}
    return ("throttled" if code in THROTTLE_CODES or 429 in statuses
            else "unavailable" if code in UNAVAILABLE_CODES or 503 in statuses else None)


def _invoke(endpoint, body, content_type, context, log_fields):
    """invoke_endpoint with full-jitter exponential backoff on throttling, within the time left."""
    runtime = _client("runtime", context)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return runtime.invoke_endpoint(EndpointName=endpoint, ContentType=content_type,
                                           Accept="application/json", Body=body)
        except ClientError as err:
            kind = _error_kind(err)
            delay_s = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
            if kind is None or attempt == MAX_ATTEMPTS or delay_s * 1000 >= _remaining_ms(context) - SAFETY_MARGIN_MS:
                raise
            _log("WARNING", f"endpoint {kind}; retrying", attempt=attempt, delay_ms=round(delay_s * 1000, 1),
                 **log_fields)
            time.sleep(delay_s)


def _endpoint_error(err):
    """Map the final invoke_endpoint ClientError to the caller's RequestError."""
    response, kind = err.response, _error_kind(err)
    code, message = response.get("Error", {}).get("Code", ""), response.get("Error", {}).get("Message", "")
    if kind == "throttled":
        return RequestError(429, "Throttled", "the model endpoint is throttling requests; retry later")
    if kind == "unavailable":
        return RequestError(503, "EndpointUnavailable", "the model endpoint is temporarily unavailable")
    if code in VALIDATION_CODES and "not found" in message.lower():
        return RequestError(503, "EndpointNotFound", "the model endpoint does not exist or is not ready")
    if code != "ModelError":
        return RequestError(502, "EndpointError", "the model endpoint call failed")
    original = int(response.get("OriginalStatusCode") or 500)
    if not 400 <= original < 500:
        return RequestError(502, "ModelError", "the model failed to process the request")
    detail = response.get("OriginalMessage") or message  # the container's {"error": code, "message": ...}
    try:
        parsed = json.loads(detail)
    except (TypeError, ValueError):
        parsed = None
    parsed = parsed if isinstance(parsed, dict) else {"message": detail}
    code = parsed.get("error") if isinstance(parsed.get("error"), str) else "InvalidInput"
    return RequestError(original if original in (413, 415) else 400, code,
                        str(parsed.get("message") or detail or "the model rejected the input")[:500])


def _predict(event, context, endpoint, fields):
    if not isinstance(event, dict):
        raise RequestError(400, "InvalidRequest", "event must be a JSON object")
    if not endpoint:
        raise RequestError(502, "ConfigurationError", "ENDPOINT_NAME is not configured for this function")
    is_proxy = any(key in event for key in PROXY_KEYS)
    body, content_type, source = (_from_proxy if is_proxy else _from_payload)(event, context)
    fields.update(source=source, content_type=content_type, bytes=len(body))
    try:
        answer = _invoke(endpoint, body, content_type, context, fields)["Body"].read()
    except ClientError as err:
        _log("WARNING", "endpoint call failed", error=err.response.get("Error", {}), **fields)
        raise _endpoint_error(err) from None
    except (ConnectTimeoutError, EndpointConnectionError):
        raise RequestError(503, "EndpointUnavailable", "the model endpoint could not be reached") from None
    except ReadTimeoutError:
        raise RequestError(502, "EndpointTimeout", "the model endpoint did not answer in time") from None
    try:
        predictions = json.loads(answer)
    except (ValueError, RecursionError):
        predictions = None
    if not isinstance(predictions, dict):
        raise RequestError(502, "InvalidEndpointResponse", "the model endpoint answered invalid JSON")
    return predictions


def lambda_handler(event, context):
    started = time.monotonic()
    request_id = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
    endpoint = os.environ.get("ENDPOINT_NAME", "").strip()
    fields = {"request_id": request_id, "endpoint": endpoint or None}
    try:
        status, payload = 200, {**_predict(event, context, endpoint, fields), "request_id": request_id}
    except RequestError as err:
        status, payload = err.status, {"error": {"code": err.code, "message": err.message}, "request_id": request_id}
        fields["error_code"] = err.code
    except Exception:  # never leak internals to the caller
        _log("ERROR", "unexpected error", exception=traceback.format_exc(), **fields)
        error = {"code": "InternalError", "message": "internal error"}
        status, payload = 502, {"error": error, "request_id": request_id}
    _log("INFO" if status < 500 else "ERROR", "request completed", status=status,
         latency_ms=round((time.monotonic() - started) * 1000, 1), **fields)
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(payload)}
