"""The demo dataset: scikit-learn's handwritten digits as an ImageFolder (train/valid/test).

Nothing is downloaded: the digits ship inside scikit-learn.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MARKER = ".demo-data.json"


@dataclass(frozen=True)
class DemoDataSummary:
    root: str
    counts: dict[str, int]
    classes: tuple[str, ...]
    reused: bool


def write_demo_dataset(
    root: str,
    seed: int = 0,
    image_size: int = 32,
    per_class: int | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> DemoDataSummary:
    """Write digits as PNGs under root/{train,valid,test}/<digit name>/, stratified and seeded.

    Re-running with the same arguments reuses what is there; a folder holding anything
    else is refused rather than overwritten.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    params = {"seed": seed, "image_size": image_size, "per_class": per_class, "fractions": list(fractions)}
    marker = os.path.join(root, MARKER)
    if os.path.isdir(root) and os.listdir(root):
        if os.path.isfile(marker):
            with open(marker) as f:
                previous = json.load(f)
            if previous.get("params") == params:
                return DemoDataSummary(root, previous["counts"], DIGIT_NAMES, reused=True)
        raise FileExistsError(f"{root} is not empty and is not a demo dataset made with these settings; choose another folder")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")

    digits = load_digits()
    images, labels = digits.images, digits.target
    if per_class is not None:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        images, labels = images[keep], labels[keep]
    indices = np.arange(len(labels))
    train_idx, rest = train_test_split(indices, train_size=fractions[0], stratify=labels, random_state=seed)
    valid_share = fractions[1] / (fractions[1] + fractions[2])
    valid_idx, test_idx = train_test_split(rest, train_size=valid_share, stratify=labels[rest], random_state=seed)

    counts = {}
    for split, idx in (("train", train_idx), ("valid", valid_idx), ("test", test_idx)):
        for name in DIGIT_NAMES:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i in idx:
            pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(pixels, "L").resize((image_size, image_size), Image.Resampling.BILINEAR)
            img.save(os.path.join(root, split, DIGIT_NAMES[labels[i]], f"digit_{i:04d}.png"))
        counts[split] = int(len(idx))
    with open(marker, "w") as f:
        json.dump({"params": params, "counts": counts}, f)
    return DemoDataSummary(root, counts, DIGIT_NAMES, reused=False)
