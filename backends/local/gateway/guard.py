"""What a request must be to reach the local gateway (or one of its model workers), and the one way
their bodies are read.

Loopback is not a trust boundary: other local users can connect, and so can any web page the
developer opens (a cross-site form or fetch, or DNS rebinding, which points a foreign name at
127.0.0.1). So, before any route runs, `RequestGuard` refuses:
  - a `Host` that is not 127.0.0.1:PORT or localhost:PORT (421; defeats DNS rebinding), every route;
    PORT is the one the guard is given, else the port the connection came in on (a model worker
    listens on a port the system picks);
  - an `Origin` that is not the server's own (403; a browser sends one on cross-site requests), every route;
  - on the control API (/_local/...): a request without the gateway's secret (`Authorization: Bearer
    <secret>`, the secret gateway.json holds, mode 0600; 401), and a request that may change
    something (anything but GET) without `Content-Type: application/json` (415), which no plain
    cross-site form or text POST can send.

`read_body` reads a body with a size limit: a Content-Length over it is refused before anything is
read, a chunked body is read in chunks and refused once it passes the limit. With the gateway's
`BodyBudget` it also bounds what all requests hold at once, whoever sends them:
  - at most BODY_BUDGET_BYTES (32 MiB) of bodies are being read at once, gateway-wide: a request's
    declared Content-Length is reserved before its first byte is read, a chunked body reserves as it
    grows; a request that does not fit is answered 503 at once (nothing of it is kept);
  - one body must arrive within BODY_READ_TIMEOUT_S (10 s) of the handler starting to read it: 408
    past it, and the connection is closed.
`read_json_object` also refuses what JSON allows but the gateway cannot keep or answer: text that
is not valid UTF-8 (a lone surrogate such as "\\ud800"), NaN/Infinity and numbers out of range
(1e400, 2**63), each a 400 naming the field's path.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

CONTROL_PREFIX = "/_local/"
CONTROL_BODY_LIMIT = 64 * 1024  # a control request is a small JSON document
SECRET_HEADER = "authorization"  # Authorization: Bearer <secret>
# Bodies being read at once, all requests together: five 6 MB invocations, or hundreds of images.
BODY_BUDGET_BYTES = 32 * 1024 * 1024
BODY_READ_TIMEOUT_S = 10.0  # loopback moves 6 MB in milliseconds; a body slower than this is held open
MAX_JSON_INT = 2 ** 63  # every count and size fits; any float() of it is finite


class BodyTooLargeError(Exception):
    """The body is over `limit` bytes (`size` when the request said how big it is)."""

    def __init__(self, limit: int, size: int | None = None):
        super().__init__(f"the body is {'over ' + str(limit) if size is None else size} bytes; the limit is {limit}")
        self.limit, self.size = limit, size


class BodyBudgetError(Exception):
    """Reading this body would pass the gateway's budget of bodies being read at once (answer 503)."""

    def __init__(self, wanted: int, in_use: int, total: int):
        super().__init__(f"the gateway is busy reading {in_use} bytes of request bodies and this request needs "
                         f"{wanted} more (at most {total} bytes at once); try again")


class BodyReadTimeoutError(Exception):
    """The body did not arrive within the read deadline (answer 408)."""

    def __init__(self, timeout_s: float, received: int):
        super().__init__(f"the request body did not arrive within {timeout_s:g} s ({received} bytes came)")


class ControlInputError(ValueError):
    """A control request's body is not what the route takes; `field` names what is wrong."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


class BodyBudget:
    """The bytes of request bodies being read at once, gateway-wide, and how long one may take."""

    def __init__(self, total_bytes: int = BODY_BUDGET_BYTES, read_timeout_s: float = BODY_READ_TIMEOUT_S):
        self.total_bytes, self.read_timeout_s = total_bytes, read_timeout_s
        self.in_use = 0

    def reserve(self, size: int) -> None:
        if self.in_use + size > self.total_bytes:
            raise BodyBudgetError(size, self.in_use, self.total_bytes)
        self.in_use += size

    def release(self, size: int) -> None:
        self.in_use -= size


def bearer(secret: str) -> dict[str, str]:
    """The headers a control request carries: the secret, and the JSON content type."""
    return {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}


class _Hold:
    """What one body being read holds of a budget (nothing without one)."""

    def __init__(self, budget: BodyBudget | None):
        self.budget, self.bytes = budget, 0

    def cover(self, size: int) -> None:
        if self.budget is not None and size > self.bytes:
            self.budget.reserve(size - self.bytes)
            self.bytes = size

    def release(self) -> None:
        if self.budget is not None:
            self.budget.release(self.bytes)
        self.bytes = 0


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The request body, at most `limit` bytes; BodyTooLargeError past it (nothing more is read).
    With the gateway's `budget`: BodyBudgetError when it has no room for the body, BodyReadTimeoutError
    when the body has not arrived within its deadline."""
    declared = request.headers.get("content-length")
    size = 0
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyTooLargeError(limit) from None  # unreadable: refused like an oversized one
        if size > limit:
            raise BodyTooLargeError(limit, size)
    body, hold = bytearray(), _Hold(budget)
    try:
        hold.cover(size)  # before the first byte: a declared body that does not fit is not read at all
        async with asyncio.timeout(budget.read_timeout_s if budget is not None else None):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise BodyTooLargeError(limit)
                hold.cover(len(body) + len(chunk))
                body += chunk
    except TimeoutError:
        raise BodyReadTimeoutError(budget.read_timeout_s, len(body)) from None
    finally:
        hold.release()
    return bytes(body)


class _NotFinite:
    """NaN, Infinity, -Infinity or a number that overflows a float, as read: refused with its path."""

    def __init__(self, text: str):
        self.text = text


def _finite_float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _field_path(path: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else (f".{part}" if i else part)
                   for i, part in enumerate(path))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800 escape): no UTF-8 text holds one
        return False
    return True


def _check_values(document: dict) -> None:
    """ControlInputError naming the path of the first value the gateway cannot keep or answer."""
    stack: list[tuple[tuple, object]] = [((), document)]
    while stack:  # not recursive: a document may nest as deep as the JSON parser allows
        path, value = stack.pop()
        field = _field_path(path) or None
        if isinstance(value, _NotFinite):
            raise ControlInputError(field, f"{field} must be a finite number, not {value.text[:40]}")
        if isinstance(value, str) and not _is_text(value):
            raise ControlInputError(field, f"{field} is not valid UTF-8 text (it holds a lone surrogate: "
                                           f"{ascii(value)[:80]})")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_JSON_INT:
            raise ControlInputError(field, f"{field} is out of range ({str(value)[:40]}...; at most 2**63 - 1)")
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    raise ControlInputError(field, f"a key in {field or 'the body'} is not valid UTF-8 text "
                                                   f"(it holds a lone surrogate: {ascii(key)[:80]})")
                stack.append((path + (key,), item))
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in enumerate(value))


async def read_json_object(request: Request, budget: BodyBudget | None = None) -> dict:
    """A control request's JSON object body ({} when it has none); ControlInputError otherwise,
    naming the field for a value that is not valid UTF-8 text or not a finite number in range."""
    body = await read_body(request, CONTROL_BODY_LIMIT, budget)
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_NotFinite, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested
        raise ControlInputError(None, f"the body is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ControlInputError(None, f"the body must be a JSON object, not {type(value).__name__}")
    _check_values(value)
    return value


@functools.lru_cache(maxsize=64)
def _own_hosts(port: int) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The Host values and Origins a server listening on `port` of 127.0.0.1 answers to."""
    hosts = frozenset({f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()})
    return hosts, frozenset(b"http://" + host for host in hosts)


class RequestGuard:
    """ASGI middleware: Host, Origin, the control API's secret and content type (see the module docstring).

    `port`: the port the server answers on; None: the one each connection came in on (ASGI's
    scope["server"]), for a server on a port the system picked. `secret`: None for a server with no
    control API (every /_local/ request is then refused)."""

    def __init__(self, app: ASGIApp, port: int | None = None, secret: str | None = None):
        self.app = app
        self.secret = secret.encode() if secret else None
        self.port = port

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
        port = self.port if self.port is not None else (scope.get("server") or (None, None))[1]
        hosts, origins = _own_hosts(port) if port else (frozenset(), frozenset())
        if headers.get(b"host", b"").lower() not in hosts:
            return 421, "the server answers only to Host 127.0.0.1:PORT or localhost:PORT"
        origin = headers.get(b"origin")
        if origin is not None and origin.lower() not in origins:
            return 403, "cross-origin requests are not accepted"
        if not (scope["path"] + "/").startswith(CONTROL_PREFIX):
            return None
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if self.secret is None or scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.secret):
            return 401, "the control API needs the gateway's secret (Authorization: Bearer <secret from gateway.json>)"
        if scope["method"] != "GET":
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return 415, "control requests must be Content-Type: application/json"
        return None


async def discard_disconnects(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client went away while its body was being read: nobody will read this answer."""
    return JSONResponse({"error": "client disconnected"}, status_code=400)
