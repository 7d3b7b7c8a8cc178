"""Lambda front for a SageMaker image-classifier endpoint (stdlib + boto3 only): direct invocations
({"image"|"s3_uri"|"url"|"instances": ...}) and API Gateway v1/v2 / Function URL proxy events."""
import base64
import binascii
import json
import os
import random
import time
import traceback
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

# The function's own modules, at the root of its code as Lambda imports them.
from payload import IMAGE_TYPES, MAX_BYTES, SAFETY_MARGIN_MS, RequestError, check_size, remaining_ms
from s3_source import read_s3
from url_source import fetch_url

MAX_TEXT_CHARS = MAX_BYTES * 3 // 2  # a base64 or JSON body of MAX_BYTES, with room for line breaks
MAX_HEADERS = 1000  # API Gateway allows 10 KB of headers: more entries than this is not a real request
JSON_TYPES = {"", "application/json", "text/json"}
INPUT_KEYS = ("image", "s3_uri", "url", "instances")
PROXY_KEYS = ("requestContext", "httpMethod", "routeKey", "isBase64Encoded", "headers")
MAX_ATTEMPTS, BACKOFF_BASE_S, BACKOFF_CAP_S = 4, 0.05, 1.0
THROTTLE_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException"}
UNAVAILABLE_CODES = {"ServiceUnavailable", "ServiceUnavailableException", "ModelNotReadyException"}
VALIDATION_CODES = {"ValidationError", "ValidationException"}  # SageMaker Runtime's is ValidationError

_CLIENTS = {"runtime": None, "s3": None}


def set_clients(runtime=None, s3=None):
    """Inject boto3 clients (tests); None means a default client created lazily on first use."""
    _CLIENTS["runtime"], _CLIENTS["s3"] = runtime, s3


def _client(name, context):
    if _CLIENTS[name] is None:  # created once per execution environment
        budget_s = max(1.0, (remaining_ms(context) - SAFETY_MARGIN_MS) / 1000)
        config = Config(connect_timeout=min(5.0, budget_s), read_timeout=budget_s,  # _invoke retries throttling
                        retries={"mode": "standard", "total_max_attempts": 1 if name == "runtime" else 3})
        _CLIENTS[name] = boto3.client("sagemaker-runtime" if name == "runtime" else "s3", config=config)
    return _CLIENTS[name]


def _log(level, message, **fields):
    """One JSON object per line on stdout: CloudWatch Logs keeps each line as one event."""
    print(json.dumps({"level": level, "message": message, **fields}, default=str), flush=True)


def _b64decode(text, what):
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "InvalidBase64", f"{what} must be a non-empty base64 string")
    if len(text) > MAX_TEXT_CHARS:
        raise RequestError(413, "PayloadTooLarge", f"{what} exceeds {MAX_TEXT_CHARS} characters")
    try:
        return check_size(base64.b64decode("".join(text.split()), validate=True), what)
    except (binascii.Error, ValueError):
        raise RequestError(400, "InvalidBase64", f"{what} is not valid base64") from None


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
        return (*read_s3(value, _client("s3", context)), key)
    if key == "url":
        return (*fetch_url(value, remaining_ms(context)), key)
    if not isinstance(value, list) or not value:
        raise RequestError(400, "InvalidInstances", "instances must be a non-empty list")
    try:
        body = json.dumps({"instances": value}).encode()
    except (RecursionError, ValueError, TypeError):  # too deep, circular, or not JSON (direct Python callers)
        raise RequestError(400, "InvalidInstances", "instances must be plain JSON, not nested too deeply") from None
    return check_size(body, "instances"), "application/json", key


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
            if kind is None or attempt == MAX_ATTEMPTS or delay_s * 1000 >= remaining_ms(context) - SAFETY_MARGIN_MS:
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
