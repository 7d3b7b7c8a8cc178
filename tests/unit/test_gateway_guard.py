"""What gets past the local gateway's RequestGuard, and how bodies are read (guard.py), on a tiny
Starlette app in process (the real gateway is tested in tests/integration/test_gateway_security.py)."""
import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from backends.local.gateway.guard import (
    BodyTooLargeError, RequestGuard, bearer, read_body, read_json_object,
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
