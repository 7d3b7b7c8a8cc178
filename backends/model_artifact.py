"""model.tar.gz as the SageMaker PyTorch serving container expects it:
the model files at the top, the inference code under code/. training/train.py already writes
code/ into the model folder; a model folder without it gets the project's serving code."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

from backends.files import atomic_path

TRAINING_SOURCE_DIR = Path(__file__).resolve().parent.parent / "training"
# inference.py is the entry point; model.py and data.py are what it imports.
SERVING_CODE_FILES = ("inference.py", "model.py", "data.py")


def pack_model_artifact(model_dir: str | os.PathLike, destination: str | os.PathLike,
                        source_dir: str | os.PathLike = TRAINING_SOURCE_DIR) -> Path:
    model_dir, destination, source_dir = Path(model_dir), Path(destination), Path(source_dir)
    has_code = (model_dir / "code" / "inference.py").is_file()
    missing = [n for n in SERVING_CODE_FILES if not (source_dir / n).is_file()]
    if missing and not has_code:
        raise FileNotFoundError(f"serving code missing from {source_dir}: {', '.join(missing)}")
    # Level 1: float weights hardly compress (resnet18: 45 MB -> 42 MB at any level), and level 9 takes longer.
    with atomic_path(destination) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
        if not has_code:
            for name in SERVING_CODE_FILES:
                tar.add(source_dir / name, arcname=f"code/{name}")
    return destination


def unpack_model_artifact(archive: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Extract, refusing members that would land outside `destination`."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(destination, filter="data")
    return destination
