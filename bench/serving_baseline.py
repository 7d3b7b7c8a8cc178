"""The plain eager fp32 server bench/serving.py measures the served one against.

What training/inference.py did before it was made fast, and what a plain SageMaker predict_fn does:
the eager model under inference_mode, torch's threads from SM_NUM_CPUS, no warm-up, no lock (requests
in threads run their forwards at once), the same decoding and preprocessing as training (so its
answers are the reference for top-1 agreement). Good requests only: the bench sends nothing else.

Used in-process (imported as bench.serving_baseline) and as an artifact's code/inference.py next to
data.py and model.py, which is how the local endpoint serves it.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

try:  # in-process: the training package
    from training import data as data_lib
    from training import model as model_lib
except ImportError:  # in an artifact's code/, as the serving container has it
    import data as data_lib
    import model as model_lib


@dataclass
class PlainModel:
    model: torch.nn.Module
    config: model_lib.ModelConfig
    top_k: int


def model_fn(model_dir: str) -> PlainModel:
    threads = os.environ.get("SM_NUM_CPUS") or os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    model, config = model_lib.load_model(model_dir, map_location="cpu")
    top_k = min(int(os.environ.get("TOP_K", "3")), len(config.class_names))
    return PlainModel(model.eval(), config, top_k)


def predict(body: bytes, loaded: PlainModel) -> list[dict]:
    """One image's top-k, decoded and resized as training evaluates (data_lib.load_image's steps)."""
    config = loaded.config
    with Image.open(io.BytesIO(body)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (config.image_size, config.image_size))
        ImageOps.exif_transpose(img, in_place=True)
        small = data_lib.to_rgb(img).resize((config.image_size, config.image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    pixels = data_lib.pil_to_uint8(small).unsqueeze(0)
    with torch.inference_mode():
        inputs = data_lib.normalize_batch(pixels, config.mean, config.std, torch.device("cpu"), channels_last=False)
        probs = torch.softmax(loaded.model(inputs), dim=1)
        scores, indices = probs.topk(loaded.top_k, dim=1)
    return [{"label": config.class_names[i], "score": s} for s, i in zip(scores[0].tolist(), indices[0].tolist())]


def handle(body: bytes, loaded: PlainModel) -> str:
    return json.dumps({"predictions": predict(body, loaded), "model_version": "plain"})


def transform_fn(loaded: PlainModel, body, content_type, accept, context) -> tuple[str, str]:
    """The serving toolkit's entry (the local model worker's too): an image body in, JSON out."""
    return handle(bytes(body), loaded), "application/json"
