"""What a request must be to reach the local gateway, and the one way its bodies are read.

Loopback is not a trust boundary: other local users can connect, and so can any web page the
developer opens (a cross-site form or fetch, or DNS rebinding, which points a foreign name at
127.0.0.1). So, before any route runs, `RequestGuard` refuses:
  - a `Host` that is not 127.0.0.1:PORT or localhost:PORT (421; defeats DNS rebinding), every route;
  - an `Origin` that is not the gateway's own (403; a browser sends one on cross-site requests), every route;
  - on the control API (/_local/...): a request without the gateway's secret (`Authorization: Bearer
    <secret>`, the secret gateway.json holds, mode 0600; 401), and a request that may change
    something (anything but GET) without `Content-Type: application/json` (415), which no plain
    cross-site form or text POST can send.
`read_body` reads a body with a size limit: a Content-Length over it is refused before anything is
read, a chunked body is read in chunks and refused once it passes the limit.
"""
from __future__ import annotations

import hmac
import json

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL_PREFIX = "/_local/"
CONTROL_BODY_LIMIT = 64 * 1024  # a control request is a small JSON document
SECRET_HEADER = "authorization"  # Authorization: Bearer <secret>


class BodyTooLargeError(Exception):
    """The body is over `limit` bytes (`size` when the request said how big it is)."""

    def __init__(self, limit: int, size: int | None = None):
        super().__init__(f"the body is {'over ' + str(limit) if size is None else size} bytes; the limit is {limit}")
        self.limit, self.size = limit, size


class ControlInputError(ValueError):
    """A control request's body is not what the route takes; `field` names what is wrong."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


def bearer(secret: str) -> dict[str, str]:
    """The headers a control request carries: the secret, and the JSON content type."""
    return {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes; BodyTooLargeError past it (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyTooLargeError(limit) from None  # unreadable: refused like an oversized one
        if size > limit:
            raise BodyTooLargeError(limit, size)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise BodyTooLargeError(limit)
        body += chunk
    return bytes(body)


async def read_json_object(request: Request) -> dict:
    """A control request's JSON object body ({} when it has none); ControlInputError otherwise."""
    body = await read_body(request, CONTROL_BODY_LIMIT)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested
        raise ControlInputError(None, f"the body is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ControlInputError(None, f"the body must be a JSON object, not {type(value).__name__}")
    return value


class RequestGuard:
    """ASGI middleware: Host, Origin, the control API's secret and content type (see the module docstring)."""

    def __init__(self, app: ASGIApp, port: int, secret: str):
        self.app = app
        self.secret = secret.encode()
        self.hosts = {f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()}
        self.origins = {b"http://" + host for host in self.hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                status, message = refusal
                headers = {"WWW-Authenticate": 'Bearer realm="local gateway"'} if status == 401 else None
                await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, why) when the request may not go on, else None."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers and name in (b"host", b"origin", b"authorization", b"content-type"):
                return 400, f"more than one {name.decode()} header"
            headers[name] = value
        if headers.get(b"host", b"").lower() not in self.hosts:
            return 421, "the gateway answers only to Host 127.0.0.1:PORT or localhost:PORT"
        origin = headers.get(b"origin")
        if origin is not None and origin.lower() not in self.origins:
            return 403, "cross-origin requests are not accepted"
        if not (scope["path"] + "/").startswith(CONTROL_PREFIX):
            return None
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.secret):
            return 401, "the control API needs the gateway's secret (Authorization: Bearer <secret from gateway.json>)"
        if scope["method"] != "GET":
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return 415, "control requests must be Content-Type: application/json"
        return None


async def discard_disconnects(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client went away while its body was being read: nobody will read this answer."""
    return JSONResponse({"error": "client disconnected"}, status_code=400)
