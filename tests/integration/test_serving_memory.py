"""A real model worker's memory per request: images refused from their headers decode nothing, an
allowed request decodes one image at a time, and the worker's RSS goes back to its baseline."""
import asyncio
import base64
import functools
import io
import json

import httpx
import pytest
from PIL import Image

from backends.local.gateway.instances import Deployment, start_instance, stop
from training import inference
from training.model import ModelConfig, build_model, save_model
from training.train import copy_serving_code

pytestmark = pytest.mark.integration
MB = 2**20
# The figure inference.py states for one request: its images, plus the model input (uint8, then float).
IMAGE_SIZE = 32


def request_bound_mb(images: int) -> float:
    return inference.MAX_IMAGE_MEMORY_MB * 10**6 / MB + images * 3 * IMAGE_SIZE**2 * 5 / MB


@functools.cache
def png(mode: str, side: int) -> str:
    """A solid colour: a few dozen KB that decode to side x side pixels."""
    buffer = io.BytesIO()
    Image.new(mode, (side, side), {"L": 7, "RGB": (200, 30, 60)}[mode]).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Memory:
    """The worker's resident memory (MB) from /proc: now, and the peak since the last reset."""

    def __init__(self, pid: int):
        self.pid = pid

    def _status(self, key: str) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))

    def rss(self) -> float:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> float:
        return self._status("VmHWM")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    save_model(build_model("resnet18", 3), ModelConfig("resnet18", ["cat", "dog", "fox"], IMAGE_SIZE), str(path))
    copy_serving_code(str(path))
    return path


def test_big_pixel_requests_take_bounded_memory_and_give_it_back(model_dir, tmp_path):
    async def scenario():
        deployment = Deployment("d-memory", "memory", "", "", model_dir, "", {})
        async with httpx.AsyncClient(timeout=120) as http:
            worker = await start_instance(deployment, tmp_path / "instances", http, threads=1, timeout=180)
            try:
                await check(worker, http)
            finally:
                await stop(worker)

    async def check(worker, http):
        memory = Memory(worker.pid)
        url = f"{worker.url}/invocations"

        async def post_json(instances: list[str]) -> httpx.Response:
            memory.reset_peak()
            return await http.post(url, content=json.dumps({"instances": instances}),
                                   headers={"content-type": "application/json"})

        warm = await post_json([png("RGB", 64)])
        assert warm.status_code == 200, warm.text
        baseline = memory.rss()

        # Refused from its Content-Length before the body is read: none is sent.
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
        writer.write(f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {inference.MAX_REQUEST_BYTES + 1}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413 ")

        # 64 PNGs of 6320x6320 (4.5 MB of JSON; 2.5 G pixels): refused before anything is decoded.
        refused = await post_json([png("L", 6320)] * 64)
        assert (refused.status_code, refused.json()["error"]) == (413, "ImageTooLarge"), refused.text
        assert "6320x6320" in refused.json()["message"]
        refused_peak = memory.peak() - baseline
        assert refused_peak < request_bound_mb(64)
        # Each within the image limit, together over the request's: refused before the first is decoded,
        # which alone would be 100 MB (5000x5000 RGB, 4 bytes a pixel).
        refused = await post_json([png("RGB", 5000)] * 5)
        assert (refused.status_code, refused.json()["error"]) == (413, "TooManyPixels"), refused.text
        assert f"{inference.MAX_REQUEST_PIXELS:,}" in refused.json()["message"]
        assert memory.peak() - baseline < 50

        # As much as a request may decode, served one image at a time: at most one 100 MB original and
        # its resized copy alive at once (all four held would be 400 MB), then handed back to the OS.
        served = await post_json([png("RGB", 5000)] * 4)
        assert served.status_code == 200, served.text
        assert len(served.json()["predictions"]) == 4
        peak = memory.peak() - baseline
        assert peak < request_bound_mb(4) and peak < 2 * 4 * inference.MAX_IMAGE_PIXELS / MB
        print(f"worker RSS {baseline:.0f} MB; peak +{refused_peak:.0f} MB refusing 64 PNGs of 6320x6320, "
              f"+{peak:.0f} MB serving 4 of 5000x5000 (bound {request_bound_mb(4):.0f} MB), "
              f"{memory.rss() - baseline:+.0f} MB after")
        assert memory.rss() - baseline < 64

        answer = await post_json([png("RGB", 64)])
        assert answer.status_code == 200, answer.text

    asyncio.run(scenario())
