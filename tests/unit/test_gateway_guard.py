"""What gets past the local gateway's RequestGuard, and how bodies are read (guard.py), on a tiny
Starlette app in process (the real gateway is tested in tests/integration/test_gateway_security.py)."""
import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from backends.local.gateway.guard import (
    BodyBudget, BodyBudgetError, BodyReadTimeoutError, BodyTooLargeError, ControlInputError, RequestGuard, bearer,
    read_body, read_json_object,
)

PORT, SECRET = 8123, "s3cr3t-token"


async def echo_json(request):
    return JSONResponse({"body": await read_json_object(request)})


async def echo_size(request):
    try:
        return JSONResponse({"size": len(await read_body(request, 1000))})
    except BodyTooLargeError as exc:
        return JSONResponse({"limit": exc.limit, "size": exc.size}, status_code=413)


class Client:
    """Requests to an ASGI app in process (httpx's ASGITransport), one event loop per request."""

    def __init__(self, app):
        self.app = app

    def request(self, method, path, **kwargs) -> httpx.Response:
        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{PORT}") as http:
                return await http.request(method, path, **kwargs)
        return asyncio.run(send())

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)


@pytest.fixture
def client():
    app = Starlette(routes=[Route("/_local/thing", echo_json, methods=["GET", "POST"]),
                            Route("/invoke", echo_size, methods=["POST"])])
    return Client(RequestGuard(app, PORT, SECRET))


@pytest.mark.parametrize("headers,status", [
    (bearer(SECRET), 200),
    ({**bearer(SECRET), "Host": f"localhost:{PORT}"}, 200),
    ({**bearer(SECRET), "Content-Type": "application/json; charset=utf-8"}, 200),
    ({**bearer(SECRET), "Origin": f"http://127.0.0.1:{PORT}"}, 200),
    ({"Content-Type": "application/json"}, 401),
    ({**bearer(SECRET), "Authorization": "Bearer s3cr3t-tokeN"}, 401),
    ({**bearer(SECRET), "Authorization": f"Basic {SECRET}"}, 401),
    ({**bearer(SECRET), "Host": f"127.0.0.1.attacker.example:{PORT}"}, 421),
    ({**bearer(SECRET), "Host": "127.0.0.1"}, 421),
    ({**bearer(SECRET), "Host": f"127.0.0.1:{PORT + 1}"}, 421),
    ({**bearer(SECRET), "Origin": "http://attacker.example"}, 403),
    ({**bearer(SECRET), "Origin": "null"}, 403),
    ({**bearer(SECRET), "Origin": f"http://127.0.0.1:{PORT}.attacker.example"}, 403),
    ({**bearer(SECRET), "Content-Type": "text/plain"}, 415),
    ({**bearer(SECRET), "Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Authorization": f"Bearer {SECRET}"}, 415),
])
def test_control_requests(client, headers, status):
    response = client.post("/_local/thing", content=b'{"a": 1}', headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"body": {"a": 1}}


def test_a_control_get_needs_the_secret_but_no_content_type(client):
    assert client.get("/_local/thing", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
    assert client.get("/_local/thing").status_code == 401


def test_invocations_need_no_secret_but_the_right_host_and_origin(client):
    assert client.post("/invoke", content=b"{}").json() == {"size": 2}
    assert client.post("/invoke", content=b"{}", headers={"Host": f"evil.example:{PORT}"}).status_code == 421
    assert client.post("/invoke", content=b"{}", headers={"Origin": "https://evil.example"}).status_code == 403


def test_bodies_are_bounded_with_and_without_a_content_length(client):
    assert client.post("/invoke", content=b"x" * 1000).json() == {"size": 1000}
    assert client.post("/invoke", content=b"x" * 1001).json() == {"limit": 1000, "size": 1001}
    async def chunks():  # no Content-Length: refused once past the limit
        for _ in range(2):
            yield b"x" * 600

    assert client.post("/invoke", content=chunks()).json() == {"limit": 1000, "size": None}


@pytest.mark.parametrize("body", [b"[1]", b"{", b'"text"', b"[" * 5000 + b"]" * 5000])
def test_a_control_body_must_be_a_json_object(body):
    app = Starlette(routes=[Route("/_local/thing", echo_json, methods=["POST"])])

    async def handler(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=400)

    app.add_exception_handler(ValueError, handler)
    response = Client(RequestGuard(app, PORT, SECRET)).post("/_local/thing", content=body, headers=bearer(SECRET))
    assert response.status_code == 400 and "JSON" in response.json()["error"]


@pytest.mark.parametrize("body,field,words", [
    (b'{"handler": "\\ud800.x"}', "handler", "not valid UTF-8"),
    (b'{"environment": {"AB": "\\udfff"}}', "environment.AB", "not valid UTF-8"),
    (b'{"environment": {"\\ud800": "x"}}', "environment", "a key in environment is not valid UTF-8"),
    (b'{"policy": {"Steps": [{"a": 1}, {"b": ["ok", "\\ud83d"]}]}}', "policy.Steps[1].b[1]", "not valid UTF-8"),
    (b'{"traffic_shift": {"max_5xx_errors": Infinity}}', "traffic_shift.max_5xx_errors", "finite number"),
    (b'{"time_scale": -Infinity}', "time_scale", "finite number"),
    (b'{"time_scale": NaN}', "time_scale", "finite number"),
    (b'{"wait_seconds": 1e400}', "wait_seconds", "finite number"),
    (b'{"instance_count": 9223372036854775808}', "instance_count", "out of range"),
])
def test_a_control_body_holds_only_text_and_finite_numbers_naming_the_field(body, field, words):
    async def echo(request):
        try:
            return JSONResponse({"body": await read_json_object(request)})
        except ControlInputError as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    app = Starlette(routes=[Route("/_local/thing", echo, methods=["POST"])])
    response = Client(RequestGuard(app, PORT, SECRET)).post("/_local/thing", content=body, headers=bearer(SECRET))
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and words in response.json()["error"]


def test_text_and_numbers_json_can_hold_are_kept():
    body = '{"a": "caf\\u00e9 \\ud83d\\ude00", "b": [1.5, -2, 9223372036854775807, 1e300]}'.encode()
    response = Client(RequestGuard(Starlette(routes=[Route("/_local/thing", echo_json, methods=["POST"])]), PORT,
                                   SECRET)).post("/_local/thing", content=body, headers=bearer(SECRET))
    assert response.json() == {"body": {"a": "caf\u00e9 \U0001f600", "b": [1.5, -2, 9223372036854775807, 1e300]}}


def budget_app(budget: BodyBudget, seen: list):
    async def read(request):
        try:
            body = await read_body(request, 1000, budget)
        except (BodyBudgetError, BodyReadTimeoutError) as exc:
            seen.append(budget.in_use)
            return JSONResponse({"error": str(exc)}, status_code=503 if isinstance(exc, BodyBudgetError) else 408)
        seen.append(budget.in_use)  # what this request still holds while the handler runs: nothing
        return JSONResponse({"size": len(body)})

    return Client(RequestGuard(Starlette(routes=[Route("/invoke", read, methods=["POST"])]), PORT, SECRET))


def test_a_body_that_does_not_fit_the_budget_is_refused_before_it_is_read():
    budget, seen = BodyBudget(total_bytes=1500, read_timeout_s=30), []
    client = budget_app(budget, seen)
    assert client.post("/invoke", content=b"x" * 1000).json() == {"size": 1000}
    budget.reserve(1000)  # another request is reading 1000 bytes
    refused = client.post("/invoke", content=b"x" * 600)
    assert refused.status_code == 503 and "at most 1500 bytes at once" in refused.json()["error"]

    async def chunks():  # no Content-Length: reserved as it grows
        for _ in range(3):
            yield b"x" * 200

    assert client.post("/invoke", content=chunks()).status_code == 503
    budget.release(1000)
    assert client.post("/invoke", content=chunks()).json() == {"size": 600}
    assert seen == [0, 1000, 1000, 0] and budget.in_use == 0  # each request gave back what it held


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_frees_its_share():
    budget, seen = BodyBudget(total_bytes=10_000, read_timeout_s=0.2), []

    async def slow():
        yield b"x" * 10
        await asyncio.sleep(30)  # never comes: the deadline ends the read first
        yield b"x" * 10

    response = budget_app(budget, seen).post("/invoke", content=slow(), headers={"Content-Length": "20"})
    assert response.status_code == 408 and "did not arrive within 0.2 s (10 bytes came)" in response.json()["error"]
    assert budget.in_use == 0


def test_a_guard_without_a_port_answers_to_the_port_each_connection_came_in_on():
    """A model worker listens on a port the system picks: its guard takes scope["server"]."""
    client = Client(RequestGuard(Starlette(routes=[Route("/invoke", echo_size, methods=["POST"]),
                                                   Route("/_local/thing", echo_json, methods=["GET"])])))
    assert client.post("/invoke", content=b"{}").json() == {"size": 2}  # Host 127.0.0.1:PORT, the server's port
    assert client.post("/invoke", content=b"{}", headers={"Host": f"localhost:{PORT}"}).status_code == 200
    assert client.post("/invoke", content=b"{}", headers={"Host": f"127.0.0.1:{PORT + 1}"}).status_code == 421
    assert client.post("/invoke", content=b"{}", headers={"Host": f"attacker.example:{PORT}"}).status_code == 421
    assert client.post("/invoke", content=b"{}", headers={"Origin": "http://attacker.example"}).status_code == 403
    assert client.get("/_local/thing", headers=bearer("anything")).status_code == 401  # no control API: no secret
