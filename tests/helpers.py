"""Small helpers shared by tests."""
import os
from pathlib import Path


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    """Write {relative path: bytes} under root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class FakeClock:
    """A backends.waiting.Clock that sleeps by moving its own time, and remembers each sleep."""

    def __init__(self):
        self.t, self.sleeps = 0.0, []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


CLASSES = ["cat", "dog", "fox"]


def make_model_artifact(folder: Path, classes: list[str] = CLASSES, broken: bool = False) -> str:
    """An untrained resnet18 for 32 px images as model.tar.gz with its serving code (broken: the
    weights are garbage, so model_fn fails and the model never passes /ping)."""
    from backends.model_artifact import pack_model_artifact
    from training.model import ModelConfig, build_model, save_model

    model_dir = folder / "model"
    save_model(build_model("resnet18", len(classes)), ModelConfig("resnet18", list(classes), 32), str(model_dir))
    if broken:
        (model_dir / "model.pth").write_bytes(b"not a state dict")
    return str(pack_model_artifact(model_dir, folder / "model.tar.gz"))


def image_bytes(fmt: str = "PNG", color=(200, 30, 30), size=(64, 48)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def make_special_file(path: Path, kind: str) -> None:
    """What a code folder must not hold: "link loop", "link to /" or "named pipe", at `path`."""
    if kind == "link loop":
        path.symlink_to(path)
    elif kind == "link to /":
        path.symlink_to("/")
    elif kind == "named pipe":
        os.mkfifo(path)
    else:
        raise ValueError(kind)
