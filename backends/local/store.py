"""The local stand-in for S3: objects under <state>/store/<bucket>/<key>, addressed by s3:// URIs.

Each object has a sidecar record (size, SHA-256) under <state>/store/.meta, like S3's
checksums; a folder upload copies only files whose SHA-256 changed, and writes each
object and record through a temporary file (backends/files.py) so nothing half-written is ever visible.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from backends.errors import NotFoundError
from backends.files import atomic_path, write_atomic
from core.datasets import manifest_checksum, sha256_file
from core.uris import S3Uri, parse_s3_uri


@dataclass(frozen=True)
class SyncResult:
    uri: str
    uploaded: int
    unchanged: int
    deleted: int
    total_bytes: int
    manifest_sha256: str  # one checksum of the whole folder: relative paths and their SHA-256


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.meta_root = self.root / ".meta"

    def path(self, uri: str | S3Uri) -> Path:
        """Where an object (or prefix) of `uri` lives on disk."""
        loc = parse_s3_uri(uri) if isinstance(uri, str) else uri
        target = (self.root / loc.bucket / loc.key).resolve()
        if not str(target).startswith(str((self.root / loc.bucket).resolve())):
            raise ValueError(f"{uri} points outside its bucket")
        return target

    def _meta_path(self, loc: S3Uri) -> Path:
        return self.meta_root / loc.bucket / (loc.key + ".json")

    def head(self, uri: str) -> dict | None:
        loc = parse_s3_uri(uri)
        try:
            with open(self._meta_path(loc)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def exists(self, uri: str) -> bool:
        return self.path(uri).is_file() and self.head(uri) is not None

    def put_file(self, source: str | os.PathLike, uri: str, sha256: str | None = None) -> dict:
        loc = parse_s3_uri(uri)
        target = self.path(loc)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        record = {"size": target.stat().st_size, "sha256": sha256 or sha256_file(target)}
        write_atomic(self._meta_path(loc), json.dumps(record))
        return record

    def read(self, uri: str) -> bytes:
        source = self.path(uri)
        if not source.is_file():
            raise NotFoundError(f"no object at {uri}")
        return source.read_bytes()

    def list(self, prefix_uri: str) -> list[str]:
        """Keys under a prefix, relative to it, sorted."""
        base = self.path(prefix_uri)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and not _partial(p))

    def delete(self, uri: str) -> None:
        loc = parse_s3_uri(uri)
        for p in (self.path(loc), self._meta_path(loc)):
            if p.exists():
                p.unlink()

    def sync_folder(self, folder: str | os.PathLike, prefix_uri: str, delete: bool = True, progress=None) -> SyncResult:
        """Make prefix_uri mirror `folder`: copy new and changed files (by SHA-256), skip the rest,
        and (delete=True) remove objects whose file is gone, so a dataset prefix never mixes versions."""
        folder = Path(folder)
        if not folder.is_dir():
            raise NotFoundError(f"{folder} is not a folder")
        prefix = parse_s3_uri(prefix_uri)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        uploaded = unchanged = total = 0
        checksums: dict[str, str] = {}
        for i, path in enumerate(files, 1):
            rel = path.relative_to(folder).as_posix()
            uri = prefix.join(rel).uri
            digest = sha256_file(path)
            checksums[rel] = digest
            total += path.stat().st_size
            existing = self.head(uri)
            if existing and existing.get("sha256") == digest and self.path(uri).is_file():
                unchanged += 1
            else:
                self.put_file(path, uri, sha256=digest)
                uploaded += 1
            if progress:
                progress(i, len(files))
        deleted = 0
        if delete:
            wanted = {p.relative_to(folder).as_posix() for p in files}
            for rel in self.list(prefix.uri):
                if rel not in wanted:
                    self.delete(prefix.join(rel).uri)
                    deleted += 1
        return SyncResult(prefix.uri, uploaded, unchanged, deleted, total, manifest_checksum(checksums))


def _partial(path: Path) -> bool:
    """A write in progress (backends/files.atomic_path), not an object."""
    return path.name.startswith(".") and path.name.endswith(".partial")
