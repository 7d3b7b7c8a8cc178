"""Writing state files so a reader never sees half of one: through a temporary file beside the
target, renamed over it (atomic on POSIX). A crash leaves the old file or the new one, never a mix."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block succeeds and
    is removed when it fails."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` atomically; `mode` (e.g. 0o600) is set before the file appears."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
    return Path(path)


def write_json(path: str | os.PathLike, value: Any, mode: int | None = None) -> Path:
    return write_atomic(path, json.dumps(value, indent=2), mode)
