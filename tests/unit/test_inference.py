"""The serving handlers (training/inference.py) on a tiny untrained resnet18."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import warnings
import zlib

import pytest
import torch
from PIL import Image

from training import data as data_lib
from training import inference
from training.inference import InferenceError
from training.model import ModelConfig, build_model, save_model

CLASSES = ["cat", "dog", "fox"]
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    config = ModelConfig(architecture="resnet18", class_names=CLASSES, image_size=IMAGE_SIZE)
    save_model(build_model("resnet18", 3), config, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(model_dir):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TOP_K", "MODEL_VERSION"):
            mp.delenv(name, raising=False)
        return inference.model_fn(model_dir)


def image_bytes(mode="RGB", fmt="PNG", size=(40, 30), **save_kwargs) -> bytes:
    colour = {"RGB": (200, 30, 60), "L": 128, "RGBA": (10, 200, 30, 100), "P": 3}[mode]
    img = Image.new(mode, size, colour)
    if mode == "P":
        img.putpalette([i % 256 for i in range(768)])
        save_kwargs.setdefault("transparency", 3)
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims width x height (valid CRC): only the header is ever read."""
    png = bytearray(image_bytes(size=(8, 8)))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def assert_top_k(predictions, k=3):
    assert len(predictions) == k
    labels = [p["label"] for p in predictions]
    scores = [p["score"] for p in predictions]
    assert set(labels) <= set(CLASSES) and len(set(labels)) == k
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-5


def test_model_fn_loads_eval_model_with_version(model, model_dir):
    assert not model.model.training
    assert model.config.class_names == CLASSES and model.config.image_size == IMAGE_SIZE
    assert model.top_k == 3
    with open(os.path.join(model_dir, "model.pth"), "rb") as f:
        assert model.model_version == hashlib.sha256(f.read()).hexdigest()[:12]


def test_model_fn_reads_environment(model_dir, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # don't change this process's threads
    monkeypatch.setenv("TOP_K", "10")
    monkeypatch.setenv("MODEL_VERSION", "v7")
    monkeypatch.setenv("SM_NUM_CPUS", "2")
    loaded = inference.model_fn(model_dir)
    assert (loaded.top_k, loaded.model_version, threads) == (3, "v7", [2])  # top_k clipped to 3 classes
    monkeypatch.setenv("TOP_K", "1")
    body = json.loads(inference.handle(image_bytes(), "image/png", None, inference.model_fn(model_dir)))
    assert_top_k(body["predictions"], k=1)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("image/jpeg", image_bytes("RGB", "JPEG")),
        ("image/jpeg", image_bytes("L", "JPEG")),
        ("image/png", image_bytes("RGB")),
        ("image/png", image_bytes("L")),
        ("image/png", image_bytes("RGBA")),
        ("image/png", image_bytes("P")),
        ("application/x-image", image_bytes("RGB", "JPEG")),
        ("Image/PNG; charset=utf-8", bytearray(image_bytes("RGB"))),
        ("application/json", json.dumps({"image": b64(image_bytes("RGB", "JPEG"))})),
        ("application/json; charset=utf-8", json.dumps({"image": b64(image_bytes("P"))}).encode()),
    ],
    ids=["jpeg", "jpeg-L", "png", "png-L", "png-RGBA", "png-P-transparent", "x-image", "params", "json", "json-bytes"],
)
def test_single_image_requests(model, content_type, body):
    answer = json.loads(inference.handle(body, content_type, "application/json", model))
    assert answer["model_version"] == model.model_version
    assert_top_k(answer["predictions"])


def test_json_batch(model):
    instances = [b64(image_bytes("RGB", "JPEG")), {"image": b64(image_bytes("RGBA"))}, b64(image_bytes("L"))]
    answer = json.loads(inference.handle(json.dumps({"instances": instances}), "application/json", "*/*", model))
    assert answer["model_version"] == model.model_version
    assert len(answer["predictions"]) == 3
    for predictions in answer["predictions"]:
        assert_top_k(predictions)


def test_matches_training_evaluation_preprocessing(model, tmp_path):
    # A rotated (EXIF orientation 6) JPEG big enough for draft() to downscale, as training reads it.
    torch.manual_seed(1)
    pixels = (torch.rand(150, 200, 3) * 255).to(torch.uint8).numpy()
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "x.jpg"
    Image.fromarray(pixels).save(path, "JPEG", exif=exif)
    expected_input = data_lib.pil_to_uint8(data_lib.load_image(str(path), IMAGE_SIZE)).unsqueeze(0)
    batch = data_lib.normalize_batch(expected_input, model.config.mean, model.config.std, model.device, False)
    with torch.inference_mode():
        expected = torch.softmax(model.model(batch), dim=1)[0]
    prediction = inference.predict(inference.parse_request(path.read_bytes(), "image/jpeg"), model)
    for p in prediction.results[0]:
        assert p["score"] == pytest.approx(expected[CLASSES.index(p["label"])].item(), abs=1e-6)


JSON = "application/json"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # PIL could open it: must be refused
BAD_REQUESTS = [
    # (id, content_type, body, accept, status, code, message fragment)
    ("corrupt", "image/jpeg", b"definitely not an image", None, 400, "InvalidImage", "the request body: not a JPEG"),
    ("truncated", "image/png", image_bytes(size=(64, 64))[:60], None, 400, "InvalidImage", "the image: OSError"),
    ("eps", "application/x-image", EPS, None, 400, "InvalidImage", "could not decode"),
    ("bad-instance", JSON, json.dumps({"instances": [b64(image_bytes()), b64(b"x")]}), None, 400, "InvalidImage", "instance 1"),
    ("content-type", "text/plain", b"hello", None, 415, "UnsupportedMediaType", "image/jpeg"),
    ("no-content-type", None, b"hello", None, 415, "UnsupportedMediaType", "application/json"),
    ("json", JSON, b"{not json", None, 400, "InvalidJSON", "not valid JSON"),
    ("json-utf8", JSON, b'{"image": "\xff\xfe"}', None, 400, "InvalidJSON", "not valid JSON"),
    ("json-nested", JSON, b"[" * 200_000, None, 400, "InvalidJSON", "not valid JSON"),
    ("json-no-image", JSON, json.dumps({"picture": "x"}), None, 400, "InvalidRequest", '"image"'),
    ("json-both", JSON, json.dumps({"image": "x", "instances": []}), None, 400, "InvalidRequest", '"instances"'),
    ("json-list", JSON, json.dumps([b64(image_bytes())]), None, 400, "InvalidRequest", "object"),
    ("json-image-type", JSON, json.dumps({"image": 5}), None, 400, "InvalidRequest", "base64 string"),
    ("instances-type", JSON, json.dumps({"instances": "abc"}), None, 400, "InvalidRequest", "list"),
    ("instances-empty", JSON, json.dumps({"instances": []}), None, 400, "InvalidRequest", "non-empty"),
    ("instance-type", JSON, json.dumps({"instances": [b64(image_bytes()), 7]}), None, 400, "InvalidRequest", "instance 1 "),
    ("base64", JSON, json.dumps({"image": "abc$%^"}), None, 400, "InvalidBase64", "not valid base64"),
    ("base64-batch", JSON, json.dumps({"instances": ["@@@@"]}), None, 400, "InvalidBase64", "instance 0"),
    ("base64-non-ascii", JSON, json.dumps({"image": "ééé"}), None, 400, "InvalidBase64", "not valid base64"),
    ("empty", "image/png", b"", None, 400, "EmptyBody", "empty"),
    ("empty-str", "application/json", "", None, 400, "EmptyBody", "empty"),
    ("body-type", "image/png", 12345, None, 400, "InvalidRequest", "bytes or str"),
    ("payload", "image/png", b"\0" * (inference.MAX_REQUEST_BYTES + 1), None, 413, "PayloadTooLarge", "more than"),
    ("pixels", "image/png", png_declaring(7000, 7000), None, 413, "ImageTooLarge", "7000x7000"),
    ("pixels-batch", JSON, json.dumps({"instances": [b64(png_declaring(5000, 5000))] * 4 + [b64(image_bytes())]}),
     None, 413, "TooManyPixels", "instance 4 (40x30) come to 100,001,200 pixels, more than the 100,000,000"),
    ("bomb-warning", "image/png", png_declaring(10_000, 10_000), None, 413, "ImageTooLarge", "decompression bomb"),
    ("bomb-error", "image/png", png_declaring(20_000, 20_000), None, 413, "ImageTooLarge", "decompression bomb"),
    ("batch", JSON, json.dumps({"instances": ["x"] * 65}), None, 413, "BatchTooLarge", "at most 64"),
    ("accept", "image/png", image_bytes(), "text/csv", 406, "NotAcceptable", "application/json"),
]


@pytest.mark.parametrize(
    "content_type, body, accept, status, code, fragment",
    [r[1:] for r in BAD_REQUESTS],
    ids=[r[0] for r in BAD_REQUESTS],
)
def test_bad_requests_raise_inference_error(model, content_type, body, accept, status, code, fragment):
    with pytest.raises(InferenceError) as info:
        inference.handle(body, content_type, accept, model)
    err = info.value
    assert (err.status_code, err.code) == (status, code), str(err)
    assert fragment.lower() in str(err).lower()
    assert json.loads(err.to_json()) == {"error": code, "message": str(err)}


def test_pil_bomb_limits_are_the_ones_tested():
    # The bomb cases above rely on PIL's defaults: 10_000^2 only warns, 20_000^2 is an error.
    assert inference.MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS < 10_000**2 < 2 * Image.MAX_IMAGE_PIXELS < 20_000**2


def test_format_response_accept(model):
    prediction = inference.predict(inference.parse_request(image_bytes(), "image/png"), model)
    for accept in (None, "", "*/*", "application/json; charset=utf-8", "text/html, application/json;q=0.9"):
        assert_top_k(json.loads(inference.format_response(prediction, accept))["predictions"])
    with pytest.raises(InferenceError) as info:
        inference.format_response(prediction, "image/png")
    assert info.value.status_code == 406


def test_good_request_after_bad_ones(model):
    filters = list(warnings.filters)
    for _, content_type, body, accept, *_ in BAD_REQUESTS:
        with pytest.raises(InferenceError):
            inference.handle(body, content_type, accept, model)
    assert warnings.filters == filters  # the bomb-as-error filter does not leak out of a request
    assert_top_k(json.loads(inference.handle(image_bytes("RGB", "JPEG"), "image/jpeg", None, model))["predictions"])
