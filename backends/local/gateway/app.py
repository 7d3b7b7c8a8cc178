"""The local gateway's HTTP face: the SageMaker Runtime and Lambda Invoke APIs, as AWS answers them
(so boto3 clients work unchanged with endpoint_url=<gateway url>), plus a small control API
under /_local/ that the local backend and the CLI use to create, update and list resources."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from dataclasses import asdict, is_dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.local.gateway.endpoints import (
    EndpointManager, EndpointNotFoundError, EndpointUnavailableError, EndpointUpdateError,
)
from backends.local.gateway.functions import FunctionManager, FunctionNotFoundError, TooManyRequestsError
from backends.local.gateway.lambda_runtime import ACCOUNT_ID
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
MAX_INVOKE_BYTES = 6 * 1024 * 1024  # both APIs refuse synchronous payloads over 6 MB


def _aws_error(status: int, error_type: str, message: str, **extra) -> Response:
    body = {"message": message, "Message": message, **extra}
    return JSONResponse(body, status_code=status, headers={"x-amzn-ErrorType": error_type,
                                                           "x-amzn-RequestId": str(uuid.uuid4())})


def _traffic_shift(value) -> dict | None:
    """An update's traffic shift as core.traffic.gateway_shift makes it; ValueError naming what is wrong."""
    if value is None:
        return None
    try:
        steps = [int(p) for p in value["steps"]]
        shift = {"steps": steps, "wait_seconds": float(value["wait_seconds"]),
                 "max_5xx_errors": int(value["max_5xx_errors"]), "max_model_latency_ms": float(value["max_model_latency_ms"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"traffic_shift needs steps, wait_seconds, max_5xx_errors and max_model_latency_ms ({exc})") from None
    if not steps or steps[-1] != 100 or any(not 0 < p <= 100 for p in steps) or steps != sorted(steps):
        raise ValueError(f"traffic_shift.steps must rise to 100, got {steps}")
    if not 0 <= shift["wait_seconds"] <= 3600:
        raise ValueError("traffic_shift.wait_seconds must be within 0..3600")
    return shift


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


class Gateway:
    def __init__(self, home: str, url_holder: dict):
        from pathlib import Path

        root = Path(home) / "gateway"
        self.endpoints = EndpointManager(root / "endpoints")
        self.functions = FunctionManager(root / "functions")
        self.url_holder = url_holder  # filled in by the server once the port is known
        self.shutdown_event = asyncio.Event()

    # -- SageMaker Runtime ------------------------------------------------------------
    async def invoke_endpoint(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        if len(body) > MAX_INVOKE_BYTES:
            return _aws_error(413, "ValidationError", f"Request body is {len(body)} bytes; the limit is {MAX_INVOKE_BYTES}")
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
        name = request.path_params["name"].split(":")[-1] if request.path_params["name"].startswith("arn:") \
            else request.path_params["name"]
        payload = await request.body()
        if len(payload) > MAX_INVOKE_BYTES:
            return _aws_error(413, "RequestTooLargeException",
                              f"{len(payload)} byte payload is too large for the RequestResponse invocation type "
                              f"(limit {MAX_INVOKE_BYTES} bytes)")
        invocation_type = request.headers.get("x-amz-invocation-type", "RequestResponse")
        try:
            if invocation_type == "DryRun":
                self.functions.describe(name)
                return Response(status_code=204)
            if invocation_type == "Event":
                self.functions.describe(name)
                asyncio.get_running_loop().create_task(self._invoke_quietly(name, payload))
                return Response(status_code=202, headers={"x-amzn-RequestId": str(uuid.uuid4())})
            result = await self.functions.invoke(name, payload)
        except FunctionNotFoundError as exc:
            return _aws_error(exc.status_code, exc.error_type,
                              f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}", Type="User")
        except TooManyRequestsError as exc:
            return _aws_error(exc.status_code, exc.error_type, "Rate Exceeded.", Type="User", Reason=exc.reason)
        headers = {"X-Amz-Executed-Version": result.executed_version, "x-amzn-RequestId": str(uuid.uuid4())}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        if request.headers.get("x-amz-log-type") == "Tail":
            tail = (getattr(result, "log_result", "") or "").encode()[-4096:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        return Response(result.payload, status_code=result.status_code, media_type="application/json", headers=headers)

    async def _invoke_quietly(self, name: str, payload: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.functions.invoke(name, payload)

    # -- control API ------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        url = self.url_holder.get("url", "")
        endpoints = [{**_plain(e), "invoke_url": f"{url}/endpoints/{e.name}/invocations"} for e in self.endpoints.list()]
        functions = [{**_plain(f), "invoke_url": f"{url}/2015-03-31/functions/{f.name}/invocations"}
                     for f in self.functions.list()]
        return JSONResponse({"gateway": {"url": url, "pid": os.getpid()}, "endpoints": endpoints, "functions": functions})

    async def put_endpoint(self, request: Request) -> Response:
        spec = await request.json()
        try:
            info = await self.endpoints.create_or_update(
                request.path_params["name"], spec["model_artifact"], int(spec.get("instance_count", 1)),
                str(spec.get("model_version", "")), spec.get("environment") or None,
                _traffic_shift(spec.get("traffic_shift")))
        except EndpointUpdateError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except (KeyError, ValueError, FileNotFoundError) as exc:
            return JSONResponse({"error": f"bad endpoint spec: {exc}"}, status_code=400)
        return JSONResponse(_plain(info))

    async def scale_endpoint(self, request: Request) -> Response:
        spec = await request.json()
        try:
            info = await self.endpoints.set_instance_count(request.path_params["name"], int(spec["instance_count"]))
        except EndpointNotFoundError:
            return JSONResponse({"error": f"no endpoint {request.path_params['name']}"}, status_code=404)
        except EndpointUpdateError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(_plain(info))

    async def put_autoscaling(self, request: Request) -> Response:
        policy = await request.json() if request.method == "PUT" else None
        try:
            self.endpoints.set_autoscaling(request.path_params["name"], policy)
            return JSONResponse(_plain(self.endpoints.describe(request.path_params["name"])))
        except EndpointNotFoundError:
            return JSONResponse({"error": f"no endpoint {request.path_params['name']}"}, status_code=404)

    async def delete_endpoint(self, request: Request) -> Response:
        try:
            await self.endpoints.delete(request.path_params["name"])
        except EndpointNotFoundError:
            return JSONResponse({"error": f"no endpoint {request.path_params['name']}"}, status_code=404)
        return Response(status_code=204)

    async def put_function(self, request: Request) -> Response:
        spec = await request.json()
        environment = {
            **(spec.get("environment") or {}),
            # The handler finds the local endpoint through boto3's own configuration, as on AWS.
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.url_holder.get("url", ""),
        }
        try:
            info = await self.functions.create_or_update(
                request.path_params["name"], spec["code_dir"], spec.get("handler", "handler.lambda_handler"),
                environment, int(spec.get("memory_mb", 512)), int(spec.get("timeout_s", 30)),
                spec.get("reserved_concurrency"), int(spec.get("provisioned_concurrency", 0)))
        except (KeyError, ValueError, FileNotFoundError) as exc:
            return JSONResponse({"error": f"bad function spec: {exc}"}, status_code=400)
        return JSONResponse(_plain(info))

    async def delete_function(self, request: Request) -> Response:
        try:
            await self.functions.delete(request.path_params["name"])
        except FunctionNotFoundError:
            return JSONResponse({"error": f"no function {request.path_params['name']}"}, status_code=404)
        return Response(status_code=204)

    async def shutdown(self, request: Request) -> Response:
        self.shutdown_event.set()
        return Response(status_code=202)

    def routes(self) -> list[Route]:
        return [
            Route("/endpoints/{name}/invocations", self.invoke_endpoint, methods=["POST"]),
            Route("/2015-03-31/functions/{name}/invocations", self.invoke_function, methods=["POST"]),
            Route("/_local/status", self.status, methods=["GET"]),
            Route("/_local/endpoints/{name}", self.put_endpoint, methods=["PUT"]),
            Route("/_local/endpoints/{name}", self.delete_endpoint, methods=["DELETE"]),
            Route("/_local/endpoints/{name}/instance-count", self.scale_endpoint, methods=["POST"]),
            Route("/_local/endpoints/{name}/autoscaling", self.put_autoscaling, methods=["PUT", "DELETE"]),
            Route("/_local/functions/{name}", self.put_function, methods=["PUT"]),
            Route("/_local/functions/{name}", self.delete_function, methods=["DELETE"]),
            Route("/_local/shutdown", self.shutdown, methods=["POST"]),
        ]


def create_app(home: str, url_holder: dict) -> tuple[Starlette, Gateway]:
    gateway = Gateway(home, url_holder)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gateway.endpoints.start()
        await gateway.functions.start()
        try:
            yield
        finally:
            await gateway.functions.close()
            await gateway.endpoints.close()

    return Starlette(routes=gateway.routes(), lifespan=lifespan), gateway
