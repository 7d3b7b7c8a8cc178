"""One model's evaluation on test images, through the model's own serving code, in its own process.

    python -m backends.evaluation_worker --model-dir DIR --images-dir IMAGES --keys-file KEYS --out OUT

Started by backends.evaluation.evaluate_model. DIR is an unpacked model.tar.gz; its code/inference.py
is imported exactly as an endpoint instance imports it (backends.local.gateway.model_worker._load:
DIR/code first on sys.path, never training.inference), model_fn(DIR) runs once, and each image under
IMAGES (KEYS: a JSON list of keys, relative paths, in order) goes through inference.handle as an
endpoint request would. OUT gets one JSON line per image, in the order of KEYS:

    {"key", "predicted", "score", "true_label_probability", "error"}

then a last line {"model_version"}. An image the model's code refuses or fails on is a line with
predicted "" and its error; the process still exits 0. model_fn failing exits 1 with the reason as
the last line of stderr. Nothing is written to stdout (the model's code may; nobody parses it).
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import traceback

from backends.local.gateway.model_worker import _load, _watch_parent

log = logging.getLogger("evaluation_worker")
_JSON = "application/json"
_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def content_type_of(key: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), "application/x-image")


def expected_label(key: str) -> str:
    return key.split("/", 1)[0]


class _Refused(Exception):
    """The model's code refused an image or failed on it; the message is what the evaluation keeps."""


def _describe(exc: BaseException, error_type) -> str:
    if error_type is not None and isinstance(exc, error_type):
        return f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


def _ranked(entry) -> list[tuple[str, float]]:
    """One image's answer, [{"label", "score"}, ...], as (label, score) pairs; malformed raises."""
    if not isinstance(entry, list) or not entry:
        raise ValueError(f"expected a non-empty list of {{label, score}}, got {type(entry).__name__}")
    return [(str(item["label"]), float(item["score"])) for item in entry]


def _result(key: str, ranked: list[tuple[str, float]]) -> dict:
    probabilities: dict[str, float] = {}
    for label, score in ranked:
        probabilities.setdefault(label, score)
    predicted, score = max(ranked, key=lambda pair: pair[1])  # the first of equal scores: the model's order
    return {"key": key, "predicted": predicted, "score": score,
            "true_label_probability": probabilities.get(expected_label(key), 0.0), "error": None}


def _failed(key: str, message: str) -> dict:
    return {"key": key, "predicted": "", "score": 0.0, "true_label_probability": 0.0, "error": message}


class Evaluator:
    def __init__(self, inference, model):
        self.inference = inference
        self.model = model
        self.error_type = getattr(inference, "InferenceError", None)
        self.max_bytes = getattr(inference, "MAX_REQUEST_BYTES", 6 * 1024 * 1024)
        self.max_batch = getattr(inference, "MAX_BATCH", 1)
        self.versions: list[str] = []

    def _call(self, body: bytes, content_type: str):
        try:
            answer = self.inference.handle(body, content_type, _JSON, self.model)
            payload = json.loads(answer)
            predictions = payload["predictions"]
        except Exception as exc:  # noqa: BLE001 - whatever the model's code does with an image is its answer
            if self.error_type is None or not isinstance(exc, self.error_type):
                log.warning("the model's code failed on a request:\n%s", traceback.format_exc().rstrip())
            raise _Refused(_describe(exc, self.error_type)) from None
        if isinstance(payload.get("model_version"), str):
            self.versions.append(payload["model_version"])
        return predictions

    def one(self, key: str, body: bytes) -> dict:
        try:
            return _result(key, _ranked(self._call(body, content_type_of(key))))
        except _Refused as exc:
            return _failed(key, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return _failed(key, f"malformed answer from the model's code: {type(exc).__name__}: {exc}"[:500])

    # Batching wins on the CPU: 100 images through an untrained resnet18 at 32 px, 2 cores, measured
    # inside the worker (model load excluded), one image per call 0.8-1.0 s (64x48 PNG/JPEG) and
    # 1.0-1.2 s (640x480); 32 per {"instances"} call 0.14-0.16 s and 0.36-0.39 s; 64 per call
    # 0.09-0.12 s and 0.25-0.39 s. evaluate_model's default is 32.
    def batch(self, items: list[tuple[str, bytes]]) -> list[dict]:
        """One {"instances": [...]} request; should it fail (one bad image fails them all), each image alone."""
        if len(items) > 1:
            instances = [base64.b64encode(body).decode("ascii") for _, body in items]
            try:
                answers = self._call(json.dumps({"instances": instances}).encode(), _JSON)
                if isinstance(answers, list) and len(answers) == len(items):
                    return [_result(key, _ranked(answer)) for (key, _), answer in zip(items, answers)]
            except (_Refused, KeyError, TypeError, ValueError):
                pass
        return [self.one(key, body) for key, body in items]

    def batches(self, images_dir: str, keys: list[str], batch_size: int):
        """(key, bytes) groups of at most batch_size images whose base64 JSON stays within the model's
        request limit; an image too large for that goes alone, as the raw body an endpoint would get."""
        size = max(1, min(batch_size, self.max_batch))
        group: list[tuple[str, bytes]] = []
        group_bytes = 16
        for key in keys:
            with open(os.path.join(images_dir, *key.split("/")), "rb") as f:
                body = f.read()
            encoded = 4 * ((len(body) + 2) // 3) + 4  # base64 plus quotes and a comma
            if size > 1 and group and (len(group) >= size or group_bytes + encoded > self.max_bytes):
                yield group
                group, group_bytes = [], 16
            group.append((key, body))
            group_bytes += encoded
            if size == 1 or encoded + 16 > self.max_bytes:
                yield group
                group, group_bytes = [], 16
        if group:
            yield group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--images-dir", required=True)
    parser.add_argument("--keys-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=1, help="images per handle() call")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    with open(args.keys_file) as f:
        keys = json.load(f)

    started = time.monotonic()
    try:
        inference, model = _load(args.model_dir)
    except BaseException as exc:  # noqa: BLE001 - reported as the reason, then exit 1
        log.error("%s", traceback.format_exc().rstrip())
        logging.shutdown()
        print(f"model_fn failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)  # the last line
        return 1
    log.info("model loaded from %s in %.1f s", args.model_dir, time.monotonic() - started)

    started = time.monotonic()
    evaluator = Evaluator(inference, model)
    refused = 0
    with open(args.out, "w") as out:
        for group in evaluator.batches(args.images_dir, keys, args.batch_size):
            for line in evaluator.batch(group):
                refused += line["error"] is not None
                out.write(json.dumps(line) + "\n")
        version = evaluator.versions[0] if evaluator.versions else str(getattr(model, "model_version", "") or "")
        out.write(json.dumps({"model_version": version}) + "\n")
    log.info("%d images in %.2f s (%d refused), model version %s", len(keys), time.monotonic() - started,
             refused, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
