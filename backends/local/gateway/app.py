"""The local gateway's HTTP face: the SageMaker Runtime and Lambda Invoke APIs, as AWS answers them
(so boto3 clients work unchanged with endpoint_url=<gateway url>), the part of S3 a local function
reads (s3.py, under /s3), plus a small control API under /_local/ that the local backend and the CLI
use to create, update and list resources. guard.py decides which requests get in at all (Host,
Origin, the control API's secret and content type) and reads every body with a size limit, within
the gateway's budget of bodies being read at once (503 past it) and a read deadline (408); a bad
control request is a 400 naming the field, never a 500. Event invocations are queued by the
FunctionManager (functions.py), which bounds their queue and the environments they start."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.local.gateway.autoscaler import parse_policy
from backends.local.gateway.endpoints import (
    EndpointManager, EndpointNotFoundError, EndpointUnavailableError, EndpointUpdateError,
)
from backends.local.gateway.function_types import FunctionNotFoundError, InvalidPayloadError, TooManyRequestsError
from backends.local.gateway.functions import MAX_EVENT_BYTES, FunctionManager
from backends.local.gateway.guard import (
    BodyBudget, BodyBudgetError, BodyReadTimeoutError, BodyTooLargeError, ControlInputError, RequestGuard,
    discard_disconnects, read_body, read_json_object,
)
from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.gateway.lambda_names import LambdaRequestError, resolve_function_name
from backends.local.gateway.lambda_runtime import ACCOUNT_ID
from backends.local.gateway.s3 import S3_PATH, LocalS3
from backends.local.state import LocalState
from backends.local.store import LocalStore
from core.target_tracking import check_time_scale

REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
MAX_INVOKE_BYTES = 6 * 1024 * 1024  # both APIs refuse synchronous payloads over 6 MB
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
_REQUIRED = object()


class JSON(JSONResponse):
    """JSON rendered in ASCII (\\u escapes): an answer can hold any string, never fail to encode."""

    def render(self, content) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _aws_error(status: int, error_type: str, message: str, **extra) -> Response:
    body = {"message": message, "Message": message, **extra}
    return JSON(body, status_code=status, headers={"x-amzn-ErrorType": error_type,
                                                   "x-amzn-RequestId": str(uuid.uuid4())})


def _take(spec: dict, name: str, kinds: type | tuple[type, ...], default=_REQUIRED, nullable: bool = False):
    """spec[name], checked to be of `kinds` (a bool is not an int); ControlInputError naming the field."""
    value = spec.get(name, default)
    if value is _REQUIRED:
        raise ControlInputError(name, f"{name} is required")
    if value is None and nullable:
        return None
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
        raise ControlInputError(name, f"{name} must be {wanted}, not {value!r}")
    return value


def _string_map(spec: dict, name: str) -> dict[str, str]:
    value = _take(spec, name, dict, {}, nullable=True) or {}
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise ControlInputError(name, f"{name} must map names to strings; not: {', '.join(sorted(bad))}")
    return value


def _only(spec: dict, *names: str) -> dict:
    unknown = sorted(set(spec) - set(names))
    if unknown:
        raise ControlInputError(unknown[0], f"unknown field {unknown[0]!r} (this request takes {', '.join(names)})")
    return spec


def _instance_count(spec: dict, default=_REQUIRED) -> int:
    count = _take(spec, "instance_count", int, default)
    if not 1 <= count <= MAX_LOCAL_INSTANCES:
        raise ControlInputError("instance_count", f"instance_count must be 1..{MAX_LOCAL_INSTANCES} (the local cap of "
                                                  f"instances per endpoint, MAX_LOCAL_INSTANCES), not {count}")
    return count


def _traffic_shift(value) -> dict | None:
    """An update's traffic shift as core.traffic.gateway_shift makes it; ControlInputError naming what is wrong."""
    if value is None:
        return None
    try:
        steps = [int(p) for p in value["steps"]]
        shift = {"steps": steps, "wait_seconds": float(value["wait_seconds"]),
                 "max_5xx_errors": int(value["max_5xx_errors"]), "max_model_latency_ms": float(value["max_model_latency_ms"])}
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ControlInputError("traffic_shift", "traffic_shift needs steps, wait_seconds, max_5xx_errors and "
                                                 f"max_model_latency_ms ({type(exc).__name__}: {exc})") from None
    if not steps or steps[-1] != 100 or any(not 0 < p <= 100 for p in steps) or steps != sorted(steps):
        raise ControlInputError("traffic_shift", f"traffic_shift.steps must rise to 100, got {steps}")
    if not 0 <= shift["wait_seconds"] <= 3600:
        raise ControlInputError("traffic_shift", "traffic_shift.wait_seconds must be within 0..3600")
    return shift


def _control_error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSON({"error": message, **({"field": field} if field else {})}, status_code=status)


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


class Gateway:
    def __init__(self, home: str, url: str):
        root = Path(home) / "gateway"
        self.url = url
        self.endpoints = EndpointManager(root / "endpoints")
        # The handler finds the local endpoint and the local S3 through boto3's own configuration, as on AWS.
        self.functions = FunctionManager(root / "functions", base_env={
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": url, "AWS_ENDPOINT_URL_S3": url + S3_PATH})
        self.s3 = LocalS3(LocalStore(LocalState(Path(home)).store), self.functions.s3_grant)
        self.bodies = BodyBudget()  # every body this gateway reads, whatever the route
        self.shutdown_event = asyncio.Event()

    # -- SageMaker Runtime ------------------------------------------------------------
    async def invoke_endpoint(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await read_body(request, MAX_INVOKE_BYTES, self.bodies)
        except BodyTooLargeError as exc:
            return _aws_error(413, "ValidationError", f"Request body is {'over ' if exc.size is None else ''}"
                              f"{exc.size or exc.limit} bytes; the limit is {MAX_INVOKE_BYTES}")
        content_type = request.headers.get("content-type", "application/octet-stream")
        accept = request.headers.get("accept", "application/json")
        try:
            result = await self.endpoints.invoke(name, body, content_type, accept)
        except EndpointNotFoundError:
            return _aws_error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.")
        except EndpointUnavailableError as exc:
            return _aws_error(503, "ServiceUnavailable", str(exc))
        request_id = str(uuid.uuid4())
        if result.status_code >= 400:
            original = result.body.decode("utf-8", "replace")
            message = f"Received client error ({result.status_code}) from primary with message \"{original}\"."
            if result.status_code >= 500:
                message = f"Received server error ({result.status_code}) from primary with message \"{original}\"."
            return _aws_error(424, "ModelError", message, OriginalStatusCode=result.status_code,
                              OriginalMessage=original,
                              LogStreamArn=f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{name}")
        return Response(result.body, media_type=result.content_type, headers={
            "x-Amzn-Invoked-Production-Variant": "AllTraffic", "x-amzn-RequestId": request_id})

    # -- Lambda -----------------------------------------------------------------------
    async def invoke_function(self, request: Request) -> Response:
        region = self.functions.region
        try:
            ref = resolve_function_name(request.path_params["name"], request.query_params.get("Qualifier"),
                                        region, ACCOUNT_ID)
        except LambdaRequestError as exc:
            return _aws_error(exc.status, exc.error_type, exc.message, Type="User")
        invocation_type = request.headers.get("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            return _aws_error(400, "ValidationException",
                              f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed to "
                              f"satisfy constraint: Member must satisfy enum value set: [{', '.join(INVOCATION_TYPES)}]")
        limit = MAX_EVENT_BYTES if invocation_type == "Event" else MAX_INVOKE_BYTES
        try:
            payload = await read_body(request, limit, self.bodies)
        except BodyTooLargeError as exc:
            return _aws_error(413, "RequestTooLargeException",
                              f"{'over ' if exc.size is None else ''}{exc.size or exc.limit} byte payload is too large "
                              f"for the {invocation_type} invocation type (limit {limit} bytes)", Type="User")
        try:
            if invocation_type == "DryRun":
                self.functions.resolve(ref.name, ref.qualifier)
                return Response(status_code=204)
            if invocation_type == "Event":
                self.functions.submit_event(ref.name, payload, ref.qualifier)
                return Response(status_code=202, headers={"x-amzn-RequestId": str(uuid.uuid4())})
            result = await self.functions.invoke(ref.name, payload, ref.qualifier)
        except FunctionNotFoundError as exc:
            return _aws_error(exc.status_code, exc.error_type, f"Function not found: {ref.arn(region, ACCOUNT_ID)}",
                              Type="User")
        except InvalidPayloadError as exc:
            return _aws_error(exc.status_code, exc.error_type, str(exc), Type="User")
        except TooManyRequestsError as exc:
            return _aws_error(exc.status_code, exc.error_type, "Rate Exceeded.", Type="User", Reason=exc.reason)
        headers = {"X-Amz-Executed-Version": result.executed_version, "x-amzn-RequestId": str(uuid.uuid4())}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        if request.headers.get("x-amz-log-type") == "Tail":
            tail = (getattr(result, "log_result", "") or "").encode()[-4096:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        return Response(result.payload, status_code=result.status_code, media_type="application/json", headers=headers)

    # -- control API ------------------------------------------------------------------
    async def _spec(self, request: Request, *fields: str) -> dict:
        """A control request's JSON object (read within the gateway's budget), with only these fields."""
        return _only(await read_json_object(request, self.bodies), *fields)

    async def status(self, request: Request) -> Response:
        url = self.url
        endpoints = [{**_plain(e), "invoke_url": f"{url}/endpoints/{e.name}/invocations"} for e in self.endpoints.list()]
        functions = [{**_plain(f), "invoke_url": f"{url}/2015-03-31/functions/{f.name}/invocations"}
                     for f in self.functions.list()]
        return JSON({"gateway": {"url": url, "pid": os.getpid(), "account_id": ACCOUNT_ID,
                                 "region": self.functions.region},
                     "endpoints": endpoints, "functions": functions})

    async def put_endpoint(self, request: Request) -> Response:
        spec = await self._spec(request, "model_artifact", "instance_count", "model_version", "environment",
                                "traffic_shift")
        arguments = (_take(spec, "model_artifact", str), _instance_count(spec, 1), _take(spec, "model_version", str, ""),
                     _string_map(spec, "environment") or None,
                     _traffic_shift(_take(spec, "traffic_shift", dict, None, nullable=True)))
        try:
            info = await self.endpoints.create_or_update(request.path_params["name"], *arguments)
        except EndpointUpdateError as exc:
            return _control_error(422, str(exc))
        except (ValueError, FileNotFoundError) as exc:
            return _control_error(400, f"bad endpoint spec: {exc}")
        return JSON(_plain(info))

    async def scale_endpoint(self, request: Request) -> Response:
        count = _instance_count(await self._spec(request, "instance_count"))
        try:
            info = await self.endpoints.set_instance_count(request.path_params["name"], count)
        except EndpointNotFoundError:
            return _control_error(404, f"no endpoint {request.path_params['name']}")
        except EndpointUpdateError as exc:
            return _control_error(422, str(exc))
        except ValueError as exc:
            return _control_error(400, str(exc))
        return JSON(_plain(info))

    async def put_autoscaling(self, request: Request) -> Response:
        policy = None
        if request.method == "PUT":
            policy = await self._spec(request, "min_capacity", "max_capacity", "policy", "time_scale")
            try:
                check_time_scale(_take(policy, "time_scale", (int, float), 1))
            except ValueError as exc:
                raise ControlInputError("time_scale", str(exc)) from None
            try:
                parse_policy(policy)  # stored only if the autoscaler can follow it
            except ValueError as exc:
                return _control_error(400, f"bad autoscaling policy: {exc}")
        try:
            self.endpoints.set_autoscaling(request.path_params["name"], policy)
            return JSON(_plain(self.endpoints.describe(request.path_params["name"])))
        except EndpointNotFoundError:
            return _control_error(404, f"no endpoint {request.path_params['name']}")

    async def delete_endpoint(self, request: Request) -> Response:
        try:
            await self.endpoints.delete(request.path_params["name"])
        except EndpointNotFoundError:
            return _control_error(404, f"no endpoint {request.path_params['name']}")
        return Response(status_code=204)

    async def put_function(self, request: Request) -> Response:
        spec = await self._spec(request, "code_dir", "handler", "environment", "memory_mb", "timeout_s",
                                "reserved_concurrency", "provisioned_concurrency")
        arguments = (_take(spec, "code_dir", str), _take(spec, "handler", str, "handler.lambda_handler"),
                     _string_map(spec, "environment"), _take(spec, "memory_mb", int, 512),
                     _take(spec, "timeout_s", int, 30), _take(spec, "reserved_concurrency", int, None, nullable=True),
                     _take(spec, "provisioned_concurrency", int, 0))
        try:
            info = await self.functions.create_or_update(request.path_params["name"], *arguments)
        except (ValueError, FileNotFoundError) as exc:
            return _control_error(400, f"bad function spec: {exc}", getattr(exc, "field", None))
        except TooManyRequestsError as exc:  # its provisioned environments do not fit now: others are busy
            return _control_error(503, f"cannot start the function's provisioned environments now: {exc}")
        return JSON(_plain(info))

    async def delete_function(self, request: Request) -> Response:
        try:
            await self.functions.delete(request.path_params["name"])
        except FunctionNotFoundError:
            return _control_error(404, f"no function {request.path_params['name']}")
        return Response(status_code=204)

    async def shutdown(self, request: Request) -> Response:
        self.shutdown_event.set()
        return Response(status_code=202)

    def routes(self) -> list[Route]:
        return [
            Route("/endpoints/{name}/invocations", self.invoke_endpoint, methods=["POST"]),
            Route("/2015-03-31/functions/{name}/invocations", self.invoke_function, methods=["POST"]),
            Route(S3_PATH + "/{bucket}/{key:path}", self.s3.get_object, methods=["GET", "HEAD"]),
            Route("/_local/status", self.status, methods=["GET"]),
            Route("/_local/endpoints/{name}", self.put_endpoint, methods=["PUT"]),
            Route("/_local/endpoints/{name}", self.delete_endpoint, methods=["DELETE"]),
            Route("/_local/endpoints/{name}/instance-count", self.scale_endpoint, methods=["POST"]),
            Route("/_local/endpoints/{name}/autoscaling", self.put_autoscaling, methods=["PUT", "DELETE"]),
            Route("/_local/functions/{name}", self.put_function, methods=["PUT"]),
            Route("/_local/functions/{name}", self.delete_function, methods=["DELETE"]),
            Route("/_local/shutdown", self.shutdown, methods=["POST"]),
        ]


async def _bad_control_input(request: Request, exc: ControlInputError) -> Response:
    return _control_error(400, str(exc), exc.field)


async def _body_too_large(request: Request, exc: BodyTooLargeError) -> Response:
    return _control_error(413, str(exc))


async def _bodies_busy(request: Request, exc: BodyBudgetError) -> Response:
    """Any route: the gateway's budget of bodies being read is spent (boto3 retries a 503)."""
    return JSON({"error": str(exc), "message": str(exc), "Message": str(exc)}, status_code=503,
                headers={"x-amzn-ErrorType": "ServiceUnavailableException", "Retry-After": "1"})


async def _body_too_slow(request: Request, exc: BodyReadTimeoutError) -> Response:
    """Any route: the body was not sent in time; the connection is closed with the answer."""
    return JSON({"error": str(exc), "message": str(exc), "Message": str(exc)}, status_code=408,
                headers={"x-amzn-ErrorType": "RequestTimeoutException", "Connection": "close"})


def create_app(home: str, url: str, secret: str) -> tuple[Starlette, Gateway]:
    """The gateway's app for `url` (http://127.0.0.1:PORT); control requests must carry `secret`."""
    gateway = Gateway(home, url)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gateway.endpoints.start()
        await gateway.functions.start()
        try:
            yield
        finally:
            await gateway.functions.close()
            await gateway.endpoints.close()

    app = Starlette(routes=gateway.routes(), lifespan=lifespan,
                    middleware=[Middleware(RequestGuard, port=urlsplit(url).port, secret=secret)],
                    exception_handlers={ControlInputError: _bad_control_input, BodyTooLargeError: _body_too_large,
                                        BodyBudgetError: _bodies_busy, BodyReadTimeoutError: _body_too_slow,
                                        ClientDisconnect: discard_disconnects})
    return app, gateway
