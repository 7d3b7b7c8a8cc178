"""The serving handlers (training/inference.py) on a tiny untrained resnet18; the forms it serves
(TorchScript, eager, bf16) on a tiny trained one and the demo test set."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import logging
import struct
import threading
import time
import warnings
import zlib

import pytest
import torch
from PIL import Image

from core.config import HostingConfig
from core.demo_data import write_demo_dataset
from training import data as data_lib
from training import inference
from training import train
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


SETTINGS = ("TOP_K", "MODEL_VERSION", "INFERENCE_GRAPH", "INFERENCE_PRECISION")


@pytest.fixture(scope="module")
def model(model_dir):
    with pytest.MonkeyPatch.context() as mp:
        for name in SETTINGS:
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
    assert (model.graph, model.precision) == ("torchscript", "fp32")  # the defaults
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
    monkeypatch.setenv("INFERENCE_GRAPH", "eager")  # the forms: below
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


# -- the forms the model is served in ------------------------------------------------------------
DEMO_IMAGE_SIZE = 16  # the digits are 8x8: small enough to serve the whole test set in seconds


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A resnet18 really trained (head only, a few epochs) on the demo digits, and the demo test set's
    PNGs. One torch thread here: the machine's cores are shared, and torch's default threads waste most
    of their time waiting for each other when other processes hold a core."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(str(root / "digits"), seed=0, image_size=32)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"SM_CHANNEL_TRAINING": root / "digits", "SM_MODEL_DIR": root / "model",
                            "SM_OUTPUT_DIR": root / "output", "SM_NUM_GPUS": "0", "SM_NUM_CPUS": "1"}.items():
            mp.setenv(name, str(value))
        assert train.main(["--architecture", "resnet18", "--image-size", str(DEMO_IMAGE_SIZE), "--epochs", "6",
                           "--learning-rate", "0.01", "--augmentation", "none", "--workers", "0"]) == 0
    torch.set_num_threads(threads)  # training set them from SM_NUM_CPUS
    test_split = data_lib.scan_splits(str(root / "digits")).test
    return str(root / "model"), [open(path, "rb").read() for path in test_split.paths]


@pytest.fixture
def serving_env(monkeypatch):
    """set(**settings): the serving environment with exactly these settings, on one torch thread."""
    threads = torch.get_num_threads()

    def set_(**settings) -> None:
        for name in SETTINGS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("SM_NUM_CPUS", "1")
        for name, value in settings.items():
            monkeypatch.setenv(name, value)

    yield set_
    torch.set_num_threads(threads)


def top1(loaded, images: list[bytes], batched: bool) -> list[tuple[str, float]]:
    """(label, score) of each image's best class: one request per image, or `instances` of 64."""
    if not batched:
        return [_best(inference.handle(body, "image/png", None, loaded)) for body in images]
    found = []
    for start in range(0, len(images), inference.MAX_BATCH):
        body = json.dumps({"instances": [b64(x) for x in images[start:start + inference.MAX_BATCH]]})
        found += [(ranked[0]["label"], ranked[0]["score"])
                  for ranked in json.loads(inference.handle(body, JSON, None, loaded))["predictions"]]
    return found


def _best(answer: str) -> tuple[str, float]:
    best = json.loads(answer)["predictions"][0]
    return best["label"], best["score"]


def agreement(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> float:
    return sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) / len(a)


def test_torchscript_answers_the_demo_test_set_as_eager_does(demo, serving_env):
    model_dir, images = demo
    serving_env(INFERENCE_GRAPH="eager")
    eager = inference.model_fn(model_dir)
    serving_env()  # the default
    fast = inference.model_fn(model_dir)
    assert (eager.graph, fast.graph, fast.precision) == ("eager", "torchscript", "fp32")
    assert isinstance(fast.model, torch.jit.ScriptModule)
    want = top1(eager, images, batched=True)
    assert len({label for label, _ in want}) == 10  # a trained model: every digit is somebody's answer
    for batched in (False, True):  # one image: the fused graph; batches: the frozen graph unfused
        got = top1(fast, images, batched)
        assert [label for label, _ in got] == [label for label, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-4)


def test_bf16_is_served_only_when_asked_and_agrees_on_99_percent(demo, serving_env, monkeypatch):
    model_dir, images = demo
    monkeypatch.setattr(inference, "bf16_is_native", lambda device: True)  # this CPU may emulate it (slowly)
    serving_env()
    fp32 = inference.model_fn(model_dir)
    serving_env(INFERENCE_PRECISION="bf16")
    bf16 = inference.model_fn(model_dir)
    assert (fp32.precision, bf16.precision, bf16.graph) == ("fp32", "bf16", "eager")
    assert isinstance(bf16.model, inference.Autocast)
    want, got = top1(fp32, images, batched=True), top1(bf16, images, batched=True)
    assert agreement(got, want) >= 0.99
    assert [score for _, score in got] != [score for _, score in want]  # it really computed in bf16


def test_bf16_on_a_cpu_that_would_emulate_it_serves_fp32(model_dir, serving_env, monkeypatch, caplog):
    monkeypatch.setattr(inference, "bf16_is_native", lambda device: False)
    serving_env(INFERENCE_PRECISION="bf16")
    with caplog.at_level(logging.WARNING, logger="inference"):
        loaded = inference.model_fn(model_dir)
    assert (loaded.precision, loaded.graph) == ("fp32", "torchscript")
    assert "no native bf16" in caplog.text


def test_a_fast_form_that_fails_to_build_serves_eager(demo, serving_env, monkeypatch, caplog):
    model_dir, images = demo

    def no_trace(model, example):
        raise RuntimeError("Tracer cannot infer type of output")

    monkeypatch.setattr(inference, "_torchscript", no_trace)
    serving_env()
    with caplog.at_level(logging.WARNING, logger="inference"):
        loaded = inference.model_fn(model_dir)
    assert loaded.graph == "eager" and not isinstance(loaded.model, torch.jit.ScriptModule)
    assert "TorchScript form of the model failed (RuntimeError: Tracer cannot infer" in caplog.text
    assert len(top1(loaded, images[:5], batched=False)) == 5


class BatchOneOnly(torch.nn.Module):
    """What a trace that does not generalize over the batch size looks like: right at batch 1 only."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images[:1]).expand(len(images), -1)


def test_a_fast_form_that_answers_differently_serves_eager(demo, serving_env, monkeypatch, caplog):
    model_dir, images = demo
    monkeypatch.setattr(inference, "_torchscript", lambda model, example: BatchOneOnly(model))
    serving_env()
    with caplog.at_level(logging.WARNING, logger="inference"):
        loaded = inference.model_fn(model_dir)
    assert loaded.graph == "eager" and not isinstance(loaded.model, BatchOneOnly)
    assert "answers differ from eager's" in caplog.text and "at batch 3" in caplog.text
    serving_env(INFERENCE_GRAPH="eager")
    assert top1(loaded, images[:8], batched=True) == top1(inference.model_fn(model_dir), images[:8], batched=True)


@pytest.mark.parametrize("name, value", [("INFERENCE_GRAPH", "onnx"), ("INFERENCE_PRECISION", "fp16")])
def test_unknown_settings_fail_the_model_load(model_dir, serving_env, name, value):
    serving_env(**{name: value})
    with pytest.raises(inference.model_lib.ModelError, match=f"{name} must be one of .*, got '{value}'"):
        inference.model_fn(model_dir)


def test_the_hosting_setting_reaches_the_model(model_dir, serving_env, monkeypatch):
    monkeypatch.setattr(inference, "bf16_is_native", lambda device: True)
    assert HostingConfig().model_environment() == {"TOP_K": "3"}  # fp32 is the default and is not sent
    environment = HostingConfig(top_k=2, inference_precision="bf16").model_environment()
    assert environment == {"TOP_K": "2", "INFERENCE_PRECISION": "bf16"}
    serving_env(**environment)  # what both backends put in the serving container's environment
    loaded = inference.model_fn(model_dir)
    assert (loaded.top_k, loaded.precision) == (2, "bf16")


class Overlap(torch.nn.Module):
    """A forward that records how many calls run at once."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.running, self.most = classes, 0, 0
        self.guard = threading.Lock()

    def forward(self, images):
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)  # long enough for a second caller to get in, were it let in
        with self.guard:
            self.running -= 1
        return torch.zeros(len(images), self.classes)


def test_one_forward_at_a_time(model):
    overlap = Overlap(len(CLASSES))
    loaded = inference.LoadedModel(overlap, model.config, model.device, 1, "v1")
    start = threading.Barrier(4)

    def request():
        start.wait()
        inference.handle(image_bytes(), "image/png", None, loaded)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap.most == 1
