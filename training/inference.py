"""SageMaker PyTorch serving handlers: model_fn, input_fn, predict_fn, output_fn (+ handle).

Shipped in model.tar.gz as code/inference.py next to model.py and data.py. Every bad
request raises InferenceError (a ValueError with an HTTP status_code and a short code);
nothing in a request body may raise anything else or take the process down.

input_fn parses the body and opens each image (header only: format and size are
checked, pixels are not decoded yet); predict_fn decodes with the model's image size,
exactly as training evaluates (JPEG draft, exif_transpose, to_rgb, BILINEAR resize),
so one full-size image at a time is ever held in memory.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # imported as the `training` package (tests)
    from . import data as data_lib
    from . import model as model_lib
except ImportError:  # in the serving container, code/ is on sys.path
    import data as data_lib
    import model as model_lib

MAX_REQUEST_BYTES = 6 * 1024 * 1024  # SageMaker's own real-time payload limit
MAX_PIXELS = 40_000_000  # per image, checked from the header before decoding
MAX_BATCH = 64
DEFAULT_TOP_K = 3
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
ACCEPTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES + (JSON_CONTENT_TYPE,)
# The formats training reads; never EPS & co., whose plugins shell out or parse far more.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class InferenceError(ValueError):
    """A request that cannot be served; status_code is the HTTP status to answer with."""

    def __init__(self, status_code: int, code: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message

    def to_json(self) -> str:
        return json.dumps({"error": self.code, "message": self.message})


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: model_lib.ModelConfig
    device: torch.device
    top_k: int
    model_version: str


@dataclass
class ImageBatch:
    images: list[Image.Image]  # opened and size-checked, not yet decoded
    is_batch: bool  # an `instances` request: answer with a list per image


@dataclass
class Prediction:
    results: list[list[dict]]  # per image, top-k {"label", "score"} by descending score
    is_batch: bool
    model_version: str


def model_fn(model_dir: str) -> LoadedModel:
    threads = os.environ.get("SM_NUM_CPUS") or os.environ.get("OMP_NUM_THREADS")
    if threads and threads.strip().isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config = model_lib.load_model(model_dir, map_location="cpu")
    model.to(device).eval()
    raw_top_k = os.environ.get("TOP_K", str(DEFAULT_TOP_K)).strip()
    if not raw_top_k.isdigit() or int(raw_top_k) < 1:
        raise model_lib.ModelError(f"TOP_K must be a positive integer, got {raw_top_k!r}")
    top_k = min(int(raw_top_k), len(config.class_names))
    version = os.environ.get("MODEL_VERSION")
    if not version:  # the weights' content hash: changes exactly when the served model does
        with open(os.path.join(model_dir, model_lib.WEIGHTS_FILE), "rb") as f:
            version = hashlib.file_digest(f, "sha256").hexdigest()[:12]
    return LoadedModel(model, config, device, top_k, version)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def input_fn(request_body, request_content_type: str | None) -> ImageBatch:
    content_type = _media_type(request_content_type)
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise InferenceError(
            415, "UnsupportedMediaType",
            f"unsupported content type {request_content_type!r}; send one of {', '.join(ACCEPTED_CONTENT_TYPES)}",
        )
    if isinstance(request_body, str):
        request_body = request_body.encode("utf-8")
    elif isinstance(request_body, (bytearray, memoryview)):
        request_body = bytes(request_body)
    elif request_body is not None and not isinstance(request_body, bytes):
        kind = type(request_body).__name__
        raise InferenceError(400, "InvalidRequest", f"request body must be bytes or str, got {kind}")
    if not request_body:
        raise InferenceError(400, "EmptyBody", "the request body is empty; send an image or a JSON document")
    if len(request_body) > MAX_REQUEST_BYTES:
        message = f"request body is {len(request_body)} bytes, more than the {MAX_REQUEST_BYTES} allowed"
        raise InferenceError(413, "PayloadTooLarge", message)
    if content_type in IMAGE_CONTENT_TYPES:
        return ImageBatch([_open_image(request_body, "the request body")], is_batch=False)
    return _parse_json(request_body)


def _parse_json(body: bytes) -> ImageBatch:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested [[[[...
        raise InferenceError(400, "InvalidJSON", f"the request body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(payload, dict) or ("image" in payload) == ("instances" in payload):
        raise InferenceError(
            400, "InvalidRequest", 'JSON body must be an object with either "image" (base64) or "instances" (a list)'
        )
    if "image" in payload:
        return ImageBatch([_open_image(_b64(payload["image"], '"image"'), '"image"')], is_batch=False)
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InferenceError(400, "InvalidRequest", '"instances" must be a non-empty list of images')
    if len(instances) > MAX_BATCH:
        raise InferenceError(413, "BatchTooLarge", f"{len(instances)} instances sent, at most {MAX_BATCH} per request")
    images = []
    for i, instance in enumerate(instances):
        where = f"instance {i}"
        if isinstance(instance, dict) and "image" in instance:
            instance = instance["image"]
        if not isinstance(instance, str):
            raise InferenceError(400, "InvalidRequest", f'{where} must be a base64 string or {{"image": "<base64>"}}')
        images.append(_open_image(_b64(instance, where), where))
    return ImageBatch(images, is_batch=True)


def _b64(value, where: str) -> bytes:
    if not isinstance(value, str):
        raise InferenceError(400, "InvalidRequest", f"{where} must be a base64 string, got {type(value).__name__}")
    try:  # whitespace (MIME line breaks) is tolerated; anything else outside the alphabet is not
        data = base64.b64decode("".join(value.split()), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise InferenceError(400, "InvalidBase64", f"{where} is not valid base64: {exc}") from None
    if not data:
        raise InferenceError(400, "InvalidImage", f"{where} is empty")
    return data


@contextlib.contextmanager
def _decoding(where: str):
    """Map whatever PIL raises on hostile bytes to InferenceError; bombs become 413."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except InferenceError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InferenceError(413, "ImageTooLarge", f"{where} is too large to decode: {exc}") from None
        except UnidentifiedImageError:
            message = f"could not decode {where}: not a {'/'.join(IMAGE_FORMATS)} image"
            raise InferenceError(400, "InvalidImage", message) from None
        except Exception as exc:  # PIL decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error ...
            message = f"could not decode {where}: {type(exc).__name__}: {exc}"[:400]
            raise InferenceError(400, "InvalidImage", message) from None


def _open_image(data: bytes, where: str) -> Image.Image:
    with _decoding(where):
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width * height > MAX_PIXELS:
            message = f"{where} is {width}x{height} pixels, more than the {MAX_PIXELS} allowed"
            raise InferenceError(413, "ImageTooLarge", message)
        return img


def _prepare(img: Image.Image, image_size: int, where: str) -> torch.Tensor:
    # The same steps as data_lib.load_image, so serving sees what evaluation saw.
    with _decoding(where):
        if img.format == "JPEG":
            img.draft("RGB", (image_size, image_size))
        img = data_lib.to_rgb(ImageOps.exif_transpose(img))
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return data_lib.pil_to_uint8(img)


def predict_fn(input_data: ImageBatch, model: LoadedModel) -> Prediction:
    config = model.config
    names = [f"instance {i}" if input_data.is_batch else "the image" for i in range(len(input_data.images))]
    pixels = torch.stack([_prepare(img, config.image_size, w) for img, w in zip(input_data.images, names)])
    with torch.inference_mode():
        batch = data_lib.normalize_batch(pixels, config.mean, config.std, model.device, channels_last=False)
        probs = torch.softmax(model.model(batch).float(), dim=1)
        scores, indices = probs.topk(model.top_k, dim=1)  # sorted, descending
    results = [
        [{"label": config.class_names[i], "score": s} for s, i in zip(row_scores, row_indices)]
        for row_scores, row_indices in zip(scores.cpu().tolist(), indices.cpu().tolist())
    ]
    return Prediction(results, input_data.is_batch, model.model_version)


def _check_accept(accept: str | None) -> None:
    accepted = [_media_type(part) for part in (accept or "").split(",")]
    if not any(a in ("", JSON_CONTENT_TYPE, "application/*", "*/*") for a in accepted):
        raise InferenceError(406, "NotAcceptable", f"cannot answer with {accept!r}; responses are {JSON_CONTENT_TYPE}")


def output_fn(prediction: Prediction, accept: str | None) -> str:
    _check_accept(accept)
    predictions = prediction.results if prediction.is_batch else prediction.results[0]
    return json.dumps({"predictions": predictions, "model_version": prediction.model_version})


def handle(body, content_type: str | None, accept: str | None, model: LoadedModel) -> str:
    """input_fn -> predict_fn -> output_fn, for servers and tests; raises InferenceError."""
    _check_accept(accept)  # before the work, not after
    return output_fn(predict_fn(input_fn(body, content_type), model), accept)
