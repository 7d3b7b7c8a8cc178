"""The training script's data checks and image loading, in-process."""
import shutil

import numpy as np
import pytest
from PIL import Image

from training.data import DataError, load_image, scan_splits


def test_every_image_mode_loads_as_rgb(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    cases = {
        "photo.jpg": rgb, "gray.png": rgb.convert("L"), "alpha.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"), "cmyk.jpg": rgb.convert("CMYK"), "wide16.png": rgb.convert("I;16"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    transparent = Image.new("P", (40, 30))
    transparent.info["transparency"] = 0
    transparent.save(tmp_path / "transparent.png")
    for name in [*cases, "transparent.png"]:
        out = load_image(str(tmp_path / name), 64)
        assert out.mode == "RGB" and out.size == (64, 64), name


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(str(tmp_path / "clear.png"), 16).getpixel((8, 8)) == (255, 255, 255)


def test_corrupt_image_names_the_file(tmp_path, tiny_dataset):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    bad = root / "train" / "three" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"corrupt image train/three/broken.jpg"):
        load_image(str(bad), 32, str(root))


def test_missing_split_is_named(tmp_path, tiny_dataset):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    shutil.rmtree(root / "valid")
    with pytest.raises(DataError, match=r"missing split: valid/ not found"):
        scan_splits(str(root))


def test_empty_class_folder_is_named(tmp_path, tiny_dataset):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    for f in (root / "test" / "seven").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"empty class folder: test/seven"):
        scan_splits(str(root))


def test_unknown_class_outside_train(tmp_path, tiny_dataset):
    root = tmp_path / "d"
    shutil.copytree(tiny_dataset, root)
    (root / "valid" / "eleven").mkdir()
    Image.new("L", (8, 8)).save(root / "valid" / "eleven" / "x.png")
    with pytest.raises(DataError, match=r"valid/eleven is not a class of train/"):
        scan_splits(str(root))


def test_scan_counts_and_classes(tiny_dataset):
    splits = scan_splits(str(tiny_dataset))
    assert len(splits.class_names) == 10
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (70, 15, 15)
