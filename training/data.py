"""Reading an ImageFolder channel (train/, valid/, test/, one folder per class).

Images are decoded and resized once per request into uint8 tensors; normalization
happens on whole batches (on the GPU when there is one), which is cheaper than the
per-image ToTensor + Normalize of a plain torchvision pipeline.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

SPLITS = ("train", "valid", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(ValueError):
    """The dataset is not usable; the message names the folder or file and what is wrong."""


@dataclass
class Split:
    name: str
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Splits:
    root: str
    class_names: list[str]
    train: Split
    valid: Split
    test: Split


def _visible_entries(folder: str) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)


def scan_splits(root: str) -> Splits:
    """List every image of the three splits, checking the layout first."""
    if not os.path.isdir(root):
        raise DataError(f"training channel {root} does not exist or is not a folder")
    for split in SPLITS:
        if not os.path.isdir(os.path.join(root, split)):
            present = ", ".join(e.name + "/" for e in _visible_entries(root) if e.is_dir()) or "nothing"
            raise DataError(
                f"missing split: {split}/ not found in {root} (expected train/, valid/ and test/, "
                f"each with one folder per class; found {present})"
            )
    class_names = [e.name for e in _visible_entries(os.path.join(root, "train")) if e.is_dir()]
    if len(class_names) < 2:
        raise DataError(f"train/ needs at least 2 class folders, found {len(class_names)} in {root}/train")
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split in SPLITS:
        paths, labels = [], []
        for entry in _visible_entries(os.path.join(root, split)):
            if not entry.is_dir():
                continue
            if entry.name not in index:
                raise DataError(f"{split}/{entry.name} is not a class of train/ (classes come from train/)")
            images = [
                f.path for f in _visible_entries(entry.path)
                if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)
            ]
            if not images:
                raise DataError(f"empty class folder: {split}/{entry.name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += images
            labels += [index[entry.name]] * len(images)
        if not paths:
            raise DataError(f"split {split}/ has no class folders with images")
        splits[split] = Split(split, paths, labels)
    return Splits(root, class_names, splits["train"], splits["valid"], splits["test"])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB; transparency over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str, image_size: int, root: str | None = None) -> Image.Image:
    """Decode `path` as an RGB image resized to image_size x image_size; CorruptImage names the file."""
    shown = os.path.relpath(path, root) if root else path
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (image_size, image_size))  # DCT-domain downscale when the photo is >= 2x the target
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            return img.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"corrupt image {shown}: {exc}") from None


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class ImageDataset(Dataset):
    """Images as uint8 CHW tensors; items are requested by (index, flip, crop_seed) keys
    so the training loop, not the worker, decides the augmentation (and can cache features)."""

    def __init__(self, split: Split, root: str, image_size: int):
        self.split = split
        self.root = root
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, bool, int]) -> tuple[torch.Tensor, int, int, bool]:
        index, flip, crop_seed = key
        path = self.split.paths[index]
        if crop_seed >= 0:
            img = random_resized_crop(load_image(path, self.image_size * 2, self.root), self.image_size, crop_seed)
        else:
            img = load_image(path, self.image_size, self.root)
        tensor = pil_to_uint8(img)
        if flip:
            tensor = tensor.flip(-1)
        return tensor, self.split.labels[index], index, flip


def random_resized_crop(img: Image.Image, size: int, seed: int, scale=(0.5, 1.0)) -> Image.Image:
    rng = random.Random(seed)
    w, h = img.size
    area = w * h * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(round(min(w, np.sqrt(area * aspect))))
    ch = int(round(min(h, np.sqrt(area / aspect))))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))


def epoch_plan(n: int, augmentation: str, generator: torch.Generator, shuffle: bool = True) -> list[tuple[int, bool, int]]:
    """The (index, flip, crop_seed) keys of one epoch, in order."""
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if augmentation == "none" or not shuffle:
        return [(i, False, -1) for i in order]
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    if augmentation == "flip":
        return [(i, flips[k], -1) for k, i in enumerate(order)]
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
    return [(i, flips[k], seeds[k]) for k, i in enumerate(order)]


def normalize_batch(images: torch.Tensor, mean, std, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW -> normalized float, on `device`."""
    images = images.to(device, non_blocking=True).float().div_(255.0)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    images = images.sub_(mean_t).div_(std_t)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
