"""Lambda front for a SageMaker image-classifier endpoint (stdlib + boto3 only): direct invocations
({"image"|"s3_uri"|"url"|"instances": ...}) and API Gateway v1/v2 / Function URL proxy events."""
import base64
import binascii
import http.client
import ipaddress
import json
import os
import random
import socket
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
IMAGE_TYPES = {"image/jpeg", "image/png", "application/x-image"}
JSON_TYPES = {"", "application/json", "text/json"}
INPUT_KEYS = ("image", "s3_uri", "url", "instances")
PROXY_KEYS = ("requestContext", "httpMethod", "routeKey", "isBase64Encoded", "headers")
MAX_ATTEMPTS, BACKOFF_BASE_S, BACKOFF_CAP_S = 4, 0.05, 1.0
SAFETY_MARGIN_MS = 1000  # never sleep or wait into the function's last second
URL_TIMEOUT_S = 5.0
THROTTLE_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException"}
UNAVAILABLE_CODES = {"ServiceUnavailable", "ServiceUnavailableException"}

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
    try:
        return _check_size(base64.b64decode("".join(text.split()), validate=True), what)
    except (binascii.Error, ValueError):
        raise RequestError(400, "InvalidBase64", f"{what} is not valid base64") from None


def _image_type(content_type):
    content_type = (content_type or "").split(";")[0].strip().lower()
    return content_type if content_type in IMAGE_TYPES else "application/x-image"


def _from_proxy(event, context):
    """API Gateway REST (v1) / HTTP (v2) and Function URL events."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    body, encoded = event.get("body"), bool(event.get("isBase64Encoded"))
    if body is None or body == "":
        raise RequestError(400, "MissingBody", "request body is required")
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
        return (*_fetch_url(value), key)
    if not isinstance(value, list) or not value:
        raise RequestError(400, "InvalidInstances", "instances must be a non-empty list")
    return _check_size(json.dumps({"instances": value}).encode(), "instances"), "application/json", key


def _read_s3(uri, context):
    parsed = urllib.parse.urlparse(uri if isinstance(uri, str) else "")
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not bucket or not key:
        raise RequestError(400, "InvalidS3Uri", "s3_uri must look like s3://bucket/key")
    try:
        obj = _client("s3", context).get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403"):
            raise RequestError(400, "S3ObjectUnavailable", f"cannot read {uri}: {code}") from None
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


def _pinned_connection(address, timeout=None, source_address=None):
    """Connect only to vetted addresses: no DNS-rebinding gap between the check and the use."""
    last_error = OSError("no address to connect to")
    for *_, sockaddr in _resolve_public(*address):
        try:
            return socket.create_connection(sockaddr[:2], timeout, source_address)
        except OSError as err:
            last_error = err
    raise last_error


def _pinned(connection_class):
    def make(*args, **kwargs):
        connection = connection_class(*args, **kwargs)
        connection._create_connection = _pinned_connection
        return connection
    return make


class _PinnedHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """Replaces urllib's http and https handlers: every connection goes through _pinned_connection."""
    def http_open(self, req):
        return self.do_open(_pinned(http.client.HTTPConnection), req)

    def https_open(self, req):
        return self.do_open(_pinned(http.client.HTTPSConnection), req, context=self._context)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlparse(newurl)
        if new.scheme not in ("http", "https") or new.hostname != urllib.parse.urlparse(req.full_url).hostname:
            raise RequestError(400, "UrlRedirectNotAllowed", "redirects to other hosts are not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch_url(url):
    parsed = urllib.parse.urlparse(url if isinstance(url, str) else "")
    host = (parsed.hostname or "").rstrip(".").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise RequestError(400, "InvalidUrl", "url must be an http(s) URL with a host")
    allowed = {h.strip().rstrip(".").lower() for h in os.environ.get("ALLOWED_URL_HOSTS", "").split(",")}
    if host not in allowed - {""}:
        raise RequestError(400, "UrlHostNotAllowed", f"host {host!r} is not in the allow-list")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PinnedHandler, _SameHostRedirects)
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "image/*"}), timeout=URL_TIMEOUT_S) as resp:
            data = _check_size(resp.read(MAX_BYTES + 1), "url content")
            return data, _image_type(resp.headers.get("Content-Type"))
    except urllib.error.HTTPError as err:
        raise RequestError(400, "UrlFetchFailed", f"url answered HTTP {err.code}") from None
    except (OSError, http.client.HTTPException, ValueError):  # URLError is an OSError
        raise RequestError(400, "UrlFetchFailed", "could not fetch url") from None


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
    if code == "ValidationException" and "not found" in message.lower():
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
    if not endpoint:
        raise RequestError(502, "ConfigurationError", "ENDPOINT_NAME is not configured for this function")
    if not isinstance(event, dict):
        raise RequestError(400, "InvalidRequest", "event must be a JSON object")
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
    except ValueError:
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
