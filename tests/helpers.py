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
