"""A model's predictions on test images, made by the model's OWN serving code (code/inference.py in
its model.tar.gz), so that a champion and a challenger are compared on the same images with each
one's own preprocessing, never a second implementation of it.

evaluate_model runs backends.evaluation_worker in a subprocess (one model's `inference` module per
process: two models' code never share one) on the machine that runs the pipeline, whichever the
backend. The worker asks for every class's probability (TOP_K=100000; inference.py caps it at the
class count), so each image's probability of its true label and the loss come back too.

    evaluation = evaluate_model("model.tar.gz", [("cat/0001.png", png_bytes), ...])
    evaluation.accuracy, evaluation.loss, evaluation.per_class_accuracy()

An image's key is its path relative to the test/ split; its first part is the true label.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.errors import InvalidRequestError, JobFailedError, NotFoundError
from backends.model_artifact import unpack_model_artifact

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALL_CLASSES_TOP_K = 100000  # inference.py caps TOP_K at the model's class count
MIN_PROBABILITY = 1e-12  # the loss of a probability of 0 is -log(1e-12), not infinity
_STDERR_LINES = 20


@dataclass(frozen=True)
class ImagePrediction:
    key: str  # the image's key, e.g. "cat/0001.png" (relative to the test/ split)
    expected: str  # the true label: the first path part of key
    predicted: str  # top-1 label ("" when the model refused the image)
    score: float  # top-1 probability
    true_label_probability: float  # what the model gives `expected` (0.0 if it does not know that label)
    error: str | None = None  # why the model's code refused the image (e.g. a corrupt file)

    @property
    def correct(self) -> bool:
        return self.error is None and self.predicted == self.expected


@dataclass(frozen=True)
class Evaluation:
    model_version: str  # what the model reports (MODEL_VERSION when given)
    predictions: list[ImagePrediction]  # in the order of the images given

    @property
    def accuracy(self) -> float:
        """The share of images predicted right; NaN for no images."""
        if not self.predictions:
            return math.nan
        return sum(p.correct for p in self.predictions) / len(self.predictions)

    @property
    def loss(self) -> float:
        """Mean cross-entropy, -log(max(p_true, 1e-12)); NaN for no images."""
        if not self.predictions:
            return math.nan
        return sum(-math.log(max(p.true_label_probability, MIN_PROBABILITY))
                   for p in self.predictions) / len(self.predictions)

    def per_class_accuracy(self) -> dict[str, float]:
        """True label -> the accuracy on its images, sorted by label."""
        by_label: dict[str, list[bool]] = {}
        for p in self.predictions:
            by_label.setdefault(p.expected, []).append(p.correct)
        return {label: sum(hits) / len(hits) for label, hits in sorted(by_label.items())}


def _check_keys(images: Sequence[tuple[str, bytes]]) -> list[str]:
    keys, seen = [], set()
    for item in images:
        key, body = item
        if not isinstance(key, str) or not isinstance(body, (bytes, bytearray, memoryview)):
            raise InvalidRequestError(f"an image must be (key: str, bytes), got ({type(key).__name__}, "
                                      f"{type(body).__name__})")
        parts = key.split("/")
        if key.startswith("/") or os.path.isabs(key) or "\\" in key or "\x00" in key:
            raise InvalidRequestError(f"image key {key!r} must be a relative path like 'cat/0001.png'")
        if any(part in ("", ".", "..") for part in parts):
            raise InvalidRequestError(f"image key {key!r} has an empty, '.' or '..' part")
        if len(parts) < 2:
            raise InvalidRequestError(f"image key {key!r} has no label folder: expected '<label>/<file>'")
        if key in seen:
            raise InvalidRequestError(f"image key {key!r} is given twice")
        seen.add(key)
        keys.append(key)
    if not keys:
        raise InvalidRequestError("no images to evaluate on")
    return keys


def _write_images(folder: Path, images: Sequence[tuple[str, bytes]]) -> None:
    for key, body in images:
        path = folder.joinpath(*key.split("/"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:  # "a/b" and "a/b/c.png"
            raise InvalidRequestError(f"image key {key!r} clashes with another key: {exc}") from None


def _environment(model_version: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["TOP_K"] = str(ALL_CLASSES_TOP_K)
    # Eager, not the TorchScript form an endpoint builds: that form is fused for batch 1 only and is checked
    # to answer as eager does, so at the batches evaluated here it would cost seconds to build and gain nothing.
    env["INFERENCE_GRAPH"] = "eager"
    env.pop("MODEL_VERSION", None)  # never the orchestrator's own: the model then reports its weights' hash
    if model_version:
        env["MODEL_VERSION"] = model_version
    cpus = str(os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = env["SM_NUM_CPUS"] = cpus
    return env


def _tail(path: Path, lines: int = _STDERR_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_results(out: Path, keys: list[str]) -> Evaluation:
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if len(lines) != len(keys) + 1 or "model_version" not in lines[-1]:
        raise JobFailedError(f"the evaluation worker wrote {len(lines)} lines for {len(keys)} images")
    predictions = []
    for key, line in zip(keys, lines):
        if line.get("key") != key:
            raise JobFailedError(f"the evaluation worker answered for {line.get('key')!r} where {key!r} was due")
        predictions.append(ImagePrediction(key=key, expected=key.split("/", 1)[0], predicted=line["predicted"],
                                           score=float(line["score"]),
                                           true_label_probability=float(line["true_label_probability"]),
                                           error=line.get("error")))
    return Evaluation(model_version=str(lines[-1]["model_version"]), predictions=predictions)


def evaluate_model(model_artifact: str | os.PathLike, images: Sequence[tuple[str, bytes]], *,
                   model_version: str = "", python: str = sys.executable, timeout_s: float = 600,
                   batch_size: int = 32) -> Evaluation:
    """The model's prediction on each (key, bytes) image, by its own code/inference.py in a subprocess.

    Raises InvalidRequestError for a key that is not a relative '<label>/<file>' path (no '..') or
    for no images, NotFoundError when model_artifact does not exist, and JobFailedError when the
    model does not load (model_fn fails) or the worker fails or runs past timeout_s. An image the
    model refuses is a wrong prediction with its error, not a failure.
    """
    keys = _check_keys(images)
    if batch_size < 1:
        raise InvalidRequestError(f"batch_size must be at least 1, got {batch_size}")
    if not os.path.isfile(model_artifact):
        raise NotFoundError(f"no model artifact at {model_artifact}")
    with tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
        work = Path(tmp)
        try:
            model_dir = unpack_model_artifact(model_artifact, work / "model")
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise InvalidRequestError(f"{model_artifact} is not a readable model.tar.gz: {exc}") from None
        _write_images(work / "images", images)
        (work / "keys.json").write_text(json.dumps(keys))
        out, log = work / "predictions.jsonl", work / "worker.log"
        cmd = [python, "-m", "backends.evaluation_worker", "--model-dir", str(model_dir),
               "--images-dir", str(work / "images"), "--keys-file", str(work / "keys.json"), "--out", str(out),
               "--batch-size", str(batch_size), "--parent-pid", str(os.getpid())]
        with open(log, "wb") as log_file:
            try:
                proc = subprocess.run(cmd, check=False, cwd=PROJECT_ROOT, env=_environment(model_version),
                                      stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                      timeout=timeout_s)
            except subprocess.TimeoutExpired:  # run() has killed the worker
                raise JobFailedError(f"evaluating {model_artifact} ran past {timeout_s:g} s and was stopped; "
                                     f"the worker's last lines:\n{_tail(log)}") from None
        if proc.returncode != 0:
            raise JobFailedError(f"evaluating {model_artifact} failed (the worker exited with {proc.returncode}); "
                                 f"the worker's last lines:\n{_tail(log)}")
        try:
            return _read_results(out, keys)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JobFailedError(f"evaluating {model_artifact}: the worker's results are unreadable "
                                 f"({type(exc).__name__}: {exc}); its last lines:\n{_tail(log)}") from None
