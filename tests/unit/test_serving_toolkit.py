"""training/inference.py inside the real SageMaker PyTorch serving toolkit (HandlerService, as
TorchServe drives it), and the local model worker answering every request exactly as it does."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

import httpx
import pytest
import torch

from backends.local.gateway.model_worker import build_app
from tests.unit.test_inference import BAD_REQUESTS, CLASSES, IMAGE_SIZE, assert_top_k, b64, image_bytes
from training.model import ModelConfig, build_model, save_model
from training.train import copy_serving_code

JSON = "application/json"
SERVING_MODULES = ("inference", "model", "data")  # code/ on sys.path, as in the container


class RequestProcessor:
    """TorchServe's ts.context.RequestProcessor: one request's headers and its response status."""

    def __init__(self, headers: dict):
        self.headers, self.status, self.phrase, self.response_headers = headers, 200, None, {}

    def get_request_properties(self) -> dict:
        return self.headers

    def get_request_property(self, key):
        return self.headers.get(key)

    def report_status(self, code, reason_phrase=None):
        self.status, self.phrase = code, reason_phrase

    def add_response_property(self, key, value):
        self.response_headers[key] = value


class TorchServeContext:
    """TorchServe's ts.context.Context, as far as the toolkit uses it. TorchServe keeps ONE context per
    model and swaps request_processor per batch; the toolkit hands transform_fn the context it was
    initialized with, so the test must do the same."""

    def __init__(self, model_dir: str):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None, "batch_size": 1,
                                  "server_name": "MMS", "server_version": "0.12", "limit_max_image_pixels": True}
        self.request_processor = [RequestProcessor({})]

    def set_response_status(self, code=200, phrase="", idx=0):
        self.request_processor[idx].report_status(code, phrase)

    def set_response_content_type(self, idx, value):
        self.request_processor[idx].add_response_property("content-type", value)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as training/train.py leaves it: weights, config, and code/inference.py & co."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("model"))
    save_model(build_model("resnet18", len(CLASSES)), ModelConfig("resnet18", CLASSES, image_size=IMAGE_SIZE), path)
    copy_serving_code(path)
    return path


@pytest.fixture(scope="module")
def weights_hash(model_dir):
    with open(f"{model_dir}/model.pth", "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


@pytest.fixture(scope="module")
def served(model_dir):
    """(HandlerService initialized on model_dir, its context, the code/inference module it imported)."""
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    with pytest.MonkeyPatch.context() as mp:
        for name in SERVING_MODULES:
            mp.delitem(sys.modules, name, raising=False)
        for name in ("TOP_K", "MODEL_VERSION", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"):
            mp.delenv(name, raising=False)
        mp.setenv("SAGEMAKER_PROGRAM", "inference.py")  # what our SageMaker models set
        mp.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # initialize() prepends code/: undone after
        mp.syspath_prepend(f"{model_dir}/code")  # TorchServe starts with code/ on PYTHONPATH
        service = HandlerService()
        context = TorchServeContext(model_dir)
        service.initialize(context)
        module = sys.modules["inference"]
        assert module.__file__ == f"{model_dir}/code/inference.py"
        yield service, context, module
        for name in SERVING_MODULES:
            sys.modules.pop(name, None)


def invoke_toolkit(served, body, content_type, accept=None) -> tuple[int, str, object]:
    """One request as TorchServe hands it over (decode_input_request=false: the body as a bytearray)."""
    service, context, _ = served
    headers = {"body": {"content-type": content_type or ""}}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    context.request_processor = [RequestProcessor(headers)]
    raw = body.encode() if isinstance(body, str) else body
    [answer] = service.handle([{"body": bytearray(raw)}], context)
    processor = context.request_processor[0]
    return processor.status, processor.response_headers.get("content-type"), answer


class WorkerClient:
    """POSTs to a model worker's app in this process (one event loop, like the worker's)."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def worker(served, model_dir):
    """The local model worker's app on the same code/inference.py module."""
    module = served[2]
    client = WorkerClient(build_app(module, module.model_fn(model_dir)))
    yield client
    client.close()


def invoke_worker(worker, body, content_type, accept=None) -> tuple[int, str, object]:
    headers = {k: v for k, v in (("content-type", content_type), ("accept", accept)) if v is not None}
    response = worker.post("/invocations", content=body.encode() if isinstance(body, str) else body,
                           headers=headers)
    return response.status_code, response.headers.get("content-type"), response.text


GOOD_REQUESTS = [
    ("jpeg", "image/jpeg", image_bytes("RGB", "JPEG"), None),
    ("png", "image/png", image_bytes("RGBA"), "*/*"),
    ("x-image", "application/x-image", image_bytes("L", "JPEG"), JSON),
    ("json", JSON, json.dumps({"image": b64(image_bytes("P"))}), None),  # the toolkit decodes it to str
    ("json-charset", "application/json; charset=utf-8", json.dumps({"image": b64(image_bytes())}), None),  # bytes
]


@pytest.mark.parametrize("content_type, body, accept", [r[1:] for r in GOOD_REQUESTS],
                         ids=[r[0] for r in GOOD_REQUESTS])
def test_images_are_served_through_the_toolkit_and_the_worker(served, worker, weights_hash, content_type, body,
                                                              accept):
    status, answer_type, answer = invoke_toolkit(served, body, content_type, accept)
    assert (status, answer_type) == (200, JSON), answer
    payload = json.loads(answer)
    assert_top_k(payload["predictions"])
    assert payload["model_version"] == weights_hash
    assert invoke_worker(worker, body, content_type, accept) == (200, JSON, answer)


def test_a_json_batch_through_the_toolkit_and_the_worker(served, worker):
    body = json.dumps({"instances": [b64(image_bytes("RGB", "JPEG")), {"image": b64(image_bytes("RGBA"))}]})
    status, answer_type, answer = invoke_toolkit(served, body, JSON)
    assert (status, answer_type) == (200, JSON), answer
    predictions = json.loads(answer)["predictions"]
    assert len(predictions) == 2
    for ranked in predictions:
        assert_top_k(ranked)
    assert invoke_worker(worker, body, JSON) == (200, JSON, answer)


# Not over HTTP: a body that is not bytes; and non-UTF-8 bytes sent as exactly application/json, which
# the toolkit decodes to str before our code runs (test_non_utf8_json_is_the_toolkits_500).
WIRE_BAD_REQUESTS = [r for r in BAD_REQUESTS if r[0] not in ("body-type", "json-utf8")]


@pytest.mark.parametrize("content_type, body, accept, status, code, fragment", [r[1:] for r in WIRE_BAD_REQUESTS],
                         ids=[r[0] for r in WIRE_BAD_REQUESTS])
def test_bad_requests_answer_their_4xx_through_the_toolkit_and_the_worker(served, worker, content_type, body, accept,
                                                                          status, code, fragment):
    got_status, answer_type, answer = invoke_toolkit(served, body, content_type, accept)
    assert (got_status, answer_type) == (status, JSON), answer
    error = json.loads(answer)
    assert error["error"] == code and fragment.lower() in error["message"].lower()
    assert invoke_worker(worker, body, content_type, accept) == (status, JSON, answer)


def test_non_utf8_json_is_the_toolkits_500(served, worker):
    # The toolkit decodes an application/json body to str itself, outside transform_fn: this bad
    # request is its 500 on SageMaker (the one we cannot answer 4xx), and 400 locally.
    body = b'{"image": "\xff\xfe"}'
    status, _, answer = invoke_toolkit(served, body, JSON)
    assert status == 500 and "UnicodeDecodeError" in answer
    status, _, answer = invoke_worker(worker, body, JSON)
    assert (status, json.loads(answer)["error"]) == (400, "InvalidJSON")


def test_a_bug_in_the_serving_code_is_a_500_and_the_next_request_is_served(served, worker, monkeypatch):
    module = served[2]

    def broken(*args):
        raise RuntimeError("a bug in the serving code")

    monkeypatch.setattr(module, "handle", broken)  # transform_fn calls the module's handle
    status, _, answer = invoke_toolkit(served, image_bytes(), "image/png")
    assert status == 500 and "a bug in the serving code" in answer
    status, _, answer = invoke_worker(worker, image_bytes(), "image/png")
    assert (status, json.loads(answer)["error"]) == (500, "InternalServerError")
    monkeypatch.undo()
    assert invoke_toolkit(served, image_bytes(), "image/png")[0] == 200


def test_the_worker_refuses_a_large_content_length(worker, served):
    limit = served[2].MAX_REQUEST_BYTES  # (that it answers before reading: tests/integration/test_serving_memory.py)
    response = worker.post("/invocations", content=image_bytes(),
                           headers={"content-type": "image/png", "content-length": str(limit + 1)})
    assert response.status_code == 413 and response.json()["error"] == "PayloadTooLarge"
    assert f"{limit + 1} bytes" in response.json()["message"]


def test_the_worker_serves_an_artifact_from_before_transform_fn(served, model_dir):
    module = served[2]
    legacy = type(sys)("inference")  # handle() and InferenceError only, as artifacts had them
    legacy.handle, legacy.InferenceError, legacy.MAX_REQUEST_BYTES = (module.handle, module.InferenceError,
                                                                       module.MAX_REQUEST_BYTES)
    client = WorkerClient(build_app(legacy, module.model_fn(model_dir)))
    try:
        served_ = client.post("/invocations", content=image_bytes(), headers={"content-type": "image/png"})
        assert served_.status_code == 200
        assert_top_k(served_.json()["predictions"])
        refused = client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
        assert (refused.status_code, refused.json()["error"]) == (415, "UnsupportedMediaType")
    finally:
        client.close()
