"""SageMaker PyTorch serving handlers: model_fn and transform_fn, and the steps transform_fn runs.

Shipped in model.tar.gz as code/inference.py next to model.py and data.py. The serving toolkit
(sagemaker-inference's Transformer, under TorchServe) calls model_fn(model_dir) once, then
transform_fn(model, body, content_type, accept, context) per request; the local model worker
calls the same transform_fn. handle() is transform_fn without the context: parse_request ->
predict -> format_response, raising InferenceError (a ValueError with an HTTP status_code and a
short code) for every bad request; transform_fn answers that error's status (set on the context)
with its JSON body. The toolkit would answer any exception of ours 500 with a traceback, and it
refuses a module that has transform_fn beside input_fn/predict_fn/output_fn, hence these names.

Memory per request. parse_request opens each image's header only (format and size; no pixels):
one image may declare at most MAX_IMAGE_PIXELS and a request's images MAX_REQUEST_PIXELS
together, else 413 before anything is decoded. predict then decodes, converts and resizes one
image at a time, exactly as training evaluates (JPEG draft, exif_transpose, to_rgb, BILINEAR
resize), and closes it before the next, so one full-size image is alive at a time. Decoding and
converting one image peaks at PEAK_BYTES_PER_PIXEL bytes per declared pixel (measured worst case,
an RGBA WebP; RGB is 4), so a request takes at most MAX_IMAGE_PIXELS x 28 B = 700 MB for its
images, plus its model input (n x 3 x size^2 x 5 B: uint8, then float; 48 MB for 64 images at
224 px), plus the model's own activations. After a request that decoded more than
TRIM_AFTER_PIXELS, freed memory is handed back to the OS (glibc's malloc_trim), else the worker's
RSS stays at its largest request.

Speed. The forward is nearly all of a request's time (resnet50 at 224 px: decoding, resizing and
normalizing a 500x375 JPEG take ~3 ms of ~100), so model_fn serves the fastest form that needs nothing
beyond torch (no compiler, no download): INFERENCE_GRAPH=torchscript, the default, traces and freezes
the model (batch norm folded into the convolutions) and lets oneDNN Graph fuse convolution + ReLU (+ add)
for single-image requests, the common case; batches run the frozen graph unfused, at about eager's speed
(each fused batch size would hold its own copy of the weights). The form is checked against eager at
batch 1 and 3 at load, and any failure there serves eager instead, logged. It costs memory: resnet50
serves in ~250 MB more than eager (weights folded and prepacked). INFERENCE_PRECISION=bf16 runs under
bf16 autocast, only when asked and only where the device computes bf16 natively (emulated it is many
times slower). One forward runs at a time per process (LoadedModel.lock): each already uses all of
torch's threads, two at once only oversubscribe the cores; the next request decodes meanwhile.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import io
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from http import HTTPStatus

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # imported as the `training` package (tests)
    from . import data as data_lib
    from . import model as model_lib
except ImportError:  # in the serving container, code/ is on sys.path
    import data as data_lib
    import model as model_lib

MAX_REQUEST_BYTES = 6 * 1024 * 1024  # SageMaker's own real-time payload limit
MAX_IMAGE_PIXELS = 25_000_000  # one image (5000x5000; a 24 MP photo), from its header, before decoding
MAX_REQUEST_PIXELS = 100_000_000  # a request's images together: 64 of 1250x1250 pass
MAX_BATCH = 64
PEAK_BYTES_PER_PIXEL = 28  # decoding + to_rgb of one image, measured: RGBA WebP 28, RGBA PNG 20, RGB 4
MAX_IMAGE_MEMORY_MB = MAX_IMAGE_PIXELS * PEAK_BYTES_PER_PIXEL // 10**6  # 700: one image alive at a time
TRIM_AFTER_PIXELS = 4_000_000  # a request that decoded more returns freed memory to the OS
DEFAULT_TOP_K = 3
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
ACCEPTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES + (JSON_CONTENT_TYPE,)
# The formats training reads; never EPS & co., whose plugins shell out or parse far more.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
GRAPHS = ("torchscript", "eager")  # INFERENCE_GRAPH, the first the default
PRECISIONS = ("fp32", "bf16")  # INFERENCE_PRECISION, the first the default
CHECK_BATCH_SIZES = (1, 3)  # the fast form must answer as eager does at these, before it serves
CHECK_TOLERANCE = 1e-3  # |fast - eager| <= this x (1 + the largest |eager| logit); fp32 reorderings are ~1e-6
WARM_UP_CALLS = 2  # TorchScript profiles a shape's first call and fuses at the second

log = logging.getLogger("inference")


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
    model: torch.nn.Module  # what predict runs: the TorchScript form, or the eager model
    config: model_lib.ModelConfig
    device: torch.device
    top_k: int
    model_version: str
    graph: str = "eager"  # as served, which may be less than asked: see serving_form
    precision: str = "fp32"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # one forward at a time


@dataclass
class ImageBatch:
    images: list[Image.Image]  # opened and size-checked, not yet decoded; predict closes them
    is_batch: bool  # an `instances` request: answer with a list per image
    pixels: int  # declared by the images' headers, together


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
    graph, precision = _choice("INFERENCE_GRAPH", GRAPHS), _choice("INFERENCE_PRECISION", PRECISIONS)
    version = os.environ.get("MODEL_VERSION")
    if not version:  # the weights' content hash: changes exactly when the served model does
        with open(os.path.join(model_dir, model_lib.WEIGHTS_FILE), "rb") as f:
            version = hashlib.file_digest(f, "sha256").hexdigest()[:12]
    served, graph, precision = serving_form(model, config.image_size, device, graph, precision)
    log.info("serving %s with %s %s on %s, %d torch threads", config.architecture, graph, precision, device,
             torch.get_num_threads())
    return LoadedModel(served, config, device, top_k, version, graph, precision)


def _choice(variable: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(variable, "").strip().lower() or choices[0]
    if value not in choices:
        raise model_lib.ModelError(f"{variable} must be one of {', '.join(choices)}, got {value!r}")
    return value


class Autocast(torch.nn.Module):
    """The model's forward under bf16 autocast (predict takes its logits back to fp32)."""

    def __init__(self, model: torch.nn.Module, device_type: str):
        super().__init__()
        self.model = model
        self.device_type = device_type

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(images)


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CPU with AVX512_BF16 or AMX. Elsewhere oneDNN converts
    in software (on AVX2, resnet50's bf16 forward measured ~40x slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell, so no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def serving_form(model: torch.nn.Module, image_size: int, device: torch.device, graph: str,
                 precision: str) -> tuple[torch.nn.Module, str, str]:
    """The module predict runs, warmed up, and the graph and precision it really has.

    bf16 only where the device computes it natively (else fp32); TorchScript only for fp32 on the CPU,
    and only once it answers as eager does on CHECK_BATCH_SIZES (else eager): a model that cannot be
    traced, a torch without oneDNN Graph, or a trace that does not generalize over the batch size all
    end in eager, logged, never in a failed model load.
    """
    if precision == "bf16" and not bf16_is_native(device):
        log.warning("INFERENCE_PRECISION=bf16 asked, but %s has no native bf16 (emulated it is many times "
                    "slower): serving fp32", device)
        precision = "fp32"
    eager = Autocast(model, device.type).eval() if precision == "bf16" else model
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randn(n, 3, image_size, image_size, generator=generator).to(device) for n in CHECK_BATCH_SIZES]
    if graph == "torchscript" and (precision, device.type) == ("fp32", "cpu"):
        try:
            fast = _torchscript(model, examples[0])
            _check_answers(fast, eager, examples)
            return fast, "torchscript", precision
        except Exception as exc:  # noqa: BLE001 - any failure to build serves eager instead
            _onednn_fusion(False)
            log.warning("TorchScript form of the model failed (%s: %s); serving eager",
                        type(exc).__name__, str(exc)[:300])
    elif graph == "torchscript":
        log.info("TorchScript form is for fp32 on the CPU; serving %s eager", precision)
    with torch.inference_mode():
        for example in examples:
            eager(example)  # first calls allocate and pick kernels: not in a request's time
    return eager, "eager", precision


def _torchscript(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """Traced and frozen (weights as constants, batch norm folded); oneDNN Graph fuses it on its first calls
    at the batch size of the first input it gets, and only that one: each fused batch size holds its own
    copy of the weights (resnet50: ~100 MB), so other sizes run the frozen graph unfused (about eager's speed)."""
    _onednn_fusion(True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch marks TorchScript deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.set_fusion_strategy([("STATIC", 1)])  # process-wide, as the fusion itself
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))  # _check_answers checks


def _onednn_fusion(enabled: bool) -> None:
    """oneDNN Graph fusion of TorchScript graphs: process-wide; no eager model is affected."""
    enable = getattr(torch.jit, "enable_onednn_fusion", None)
    if enable is None:
        if enabled:
            raise RuntimeError("this torch has no oneDNN Graph fusion (torch.jit.enable_onednn_fusion)")
        return
    enable(enabled)


def _check_answers(fast: torch.nn.Module, eager: torch.nn.Module, examples: list[torch.Tensor]) -> None:
    """Raise unless `fast` gives eager's logits (and so its top-1) at each example's batch size; warms it up."""
    with torch.inference_mode():
        for example in examples + examples[:1]:  # back to batch 1 last: the shape most requests have
            for _ in range(WARM_UP_CALLS):
                got = fast(example)
            want = eager(example)
            if got.shape != want.shape:
                raise model_lib.ModelError(f"answers {tuple(got.shape)} where eager answers {tuple(want.shape)}")
            error = (got.float() - want.float()).abs().max().item()
            if error > CHECK_TOLERANCE * (1 + want.abs().max().item()) or not torch.equal(got.argmax(1), want.argmax(1)):
                raise model_lib.ModelError(f"answers differ from eager's by {error:.3g} at batch {len(example)}")


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def parse_request(request_body, request_content_type: str | None) -> ImageBatch:
    """The request's images, opened (headers read, size-checked), not decoded."""
    content_type = _media_type(request_content_type)
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise InferenceError(
            415, "UnsupportedMediaType",
            f"unsupported content type {request_content_type!r}; send one of {', '.join(ACCEPTED_CONTENT_TYPES)}",
        )
    if isinstance(request_body, str):
        request_body = request_body.encode("utf-8")
    elif isinstance(request_body, (bytearray, memoryview)):  # TorchServe hands a bytearray
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
        return _opened([(request_body, "the request body")], is_batch=False)
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
        return _opened([(_b64(payload["image"], '"image"'), '"image"')], is_batch=False)
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InferenceError(400, "InvalidRequest", '"instances" must be a non-empty list of images')
    if len(instances) > MAX_BATCH:
        raise InferenceError(413, "BatchTooLarge", f"{len(instances)} instances sent, at most {MAX_BATCH} per request")
    encoded = []
    for i, instance in enumerate(instances):
        where = f"instance {i}"
        if isinstance(instance, dict) and "image" in instance:
            instance = instance["image"]
        if not isinstance(instance, str):
            raise InferenceError(400, "InvalidRequest", f'{where} must be a base64 string or {{"image": "<base64>"}}')
        encoded.append((_b64(instance, where), where))
    return _opened(encoded, is_batch=True)


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


def _opened(encoded: list[tuple[bytes, str]], is_batch: bool) -> ImageBatch:
    """Open each image (header only) and hold the request to its pixel limits before any is decoded."""
    images, total = [], 0
    for data, where in encoded:
        with _decoding(where):
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            message = (f"{where} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} one image may have "
                       f"(decoding one takes up to {PEAK_BYTES_PER_PIXEL} bytes a pixel, {MAX_IMAGE_MEMORY_MB} MB)")
            raise InferenceError(413, "ImageTooLarge", message)
        total += width * height
        if total > MAX_REQUEST_PIXELS:
            message = (f"the images up to {where} ({width}x{height}) come to {total:,} pixels, more than the "
                       f"{MAX_REQUEST_PIXELS:,} one request may decode; send fewer or smaller images "
                       f"(a request holds at most {MAX_IMAGE_MEMORY_MB} MB of decoded image at a time)")
            raise InferenceError(413, "TooManyPixels", message)
        images.append(img)
    return ImageBatch(images, is_batch, total)


def _prepare(img: Image.Image, image_size: int, where: str) -> torch.Tensor:
    """Decode, convert and resize one image, then close it; the same steps as data_lib.load_image,
    so serving sees what evaluation saw."""
    try:
        with _decoding(where):
            if img.format == "JPEG":
                img.draft("RGB", (image_size, image_size))
            ImageOps.exif_transpose(img, in_place=True)  # the same pixels, without a full-size copy
            rgb = data_lib.to_rgb(img)
            small = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            return data_lib.pil_to_uint8(small)
    finally:
        img.close()  # frees the decoded original before the next image


def predict(batch: ImageBatch, model: LoadedModel) -> Prediction:
    """Top-k labels per image; decodes one image at a time and closes each (the batch is used up)."""
    config = model.config
    try:
        tensors = []
        for i, img in enumerate(batch.images):
            tensors.append(_prepare(img, config.image_size, f"instance {i}" if batch.is_batch else "the image"))
        pixels = torch.stack(tensors)
        del tensors
        with torch.inference_mode():
            inputs = data_lib.normalize_batch(pixels, config.mean, config.std, model.device, channels_last=False)
            with model.lock:  # the next request decodes meanwhile
                logits = model.model(inputs)
            probs = torch.softmax(logits.float(), dim=1)
            scores, indices = probs.topk(model.top_k, dim=1)  # sorted, descending
    finally:
        for img in batch.images:  # those not reached, when one failed
            img.close()
        if batch.pixels > TRIM_AFTER_PIXELS:
            _return_freed_memory()
    results = [
        [{"label": config.class_names[i], "score": s} for s, i in zip(row_scores, row_indices)]
        for row_scores, row_indices in zip(scores.cpu().tolist(), indices.cpu().tolist())
    ]
    return Prediction(results, batch.is_batch, model.model_version)


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):  # another C library: nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def _return_freed_memory() -> None:
    # glibc keeps freed blocks (PIL's image blocks are 16 MB) in its heaps. Measured: four 5000x5000
    # PNGs left a worker 49 MB above its baseline without this, 0 with it; in a bare process, three
    # such images left 100-430 MB (by mode) that malloc_trim gave back entirely.
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _check_accept(accept: str | None) -> None:
    accepted = [_media_type(part) for part in (accept or "").split(",")]
    if not any(a in ("", JSON_CONTENT_TYPE, "application/*", "*/*") for a in accepted):
        raise InferenceError(406, "NotAcceptable", f"cannot answer with {accept!r}; responses are {JSON_CONTENT_TYPE}")


def format_response(prediction: Prediction, accept: str | None) -> str:
    _check_accept(accept)
    predictions = prediction.results if prediction.is_batch else prediction.results[0]
    return json.dumps({"predictions": predictions, "model_version": prediction.model_version})


def handle(body, content_type: str | None, accept: str | None, model: LoadedModel) -> str:
    """parse_request -> predict -> format_response; raises InferenceError for a bad request."""
    _check_accept(accept)  # before the work, not after
    return format_response(predict(parse_request(body, content_type), model), accept)


def transform_fn(model: LoadedModel, input_data, content_type, accept, context) -> tuple[str, str]:
    """The serving toolkit's per-request entry (the local worker's too): (JSON body, content type).

    A bad request's status goes on the context (TorchServe's, or the local worker's) with the
    InferenceError's JSON body; anything else raises, which the toolkit answers 500.
    """
    try:
        return handle(input_data, content_type, accept, model), JSON_CONTENT_TYPE
    except InferenceError as exc:
        context.set_response_status(code=exc.status_code, phrase=HTTPStatus(exc.status_code).phrase)
        return exc.to_json(), JSON_CONTENT_TYPE
