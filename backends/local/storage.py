"""Storage on the local backend: the local store (backends/local/store.py) behind the Storage interface."""
from __future__ import annotations

import shutil

from backends.errors import NotFoundError
from backends.files import atomic_path
from backends.local.state import DEFAULT_BUCKET
from backends.local.store import LocalStore
from backends.types import Progress, StagedDataset
from core.datasets import manifest_checksum
from core.uris import parse_s3_uri


class LocalStorage:
    def __init__(self, store: LocalStore):
        self.store = store

    def default_bucket(self) -> str:
        return DEFAULT_BUCKET

    def upload_folder(self, folder: str, prefix_uri: str, progress: Progress | None = None) -> StagedDataset:
        result = self.store.sync_folder(folder, prefix_uri, progress=progress)
        return StagedDataset(uri=result.uri, files=result.uploaded + result.unchanged, uploaded=result.uploaded,
                             unchanged=result.unchanged, total_bytes=result.total_bytes,
                             checksum=result.manifest_sha256, deleted=result.deleted)

    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        keys = self.store.list(prefix_uri)
        if not keys:
            raise NotFoundError(f"nothing is stored under {prefix_uri} in the local store ({self.store.root})")
        prefix = parse_s3_uri(prefix_uri)
        heads = {key: self.store.head(prefix.join(key).uri) or {} for key in keys}
        checksum = manifest_checksum({key: head.get("sha256", "") for key, head in heads.items()})
        total = sum(head.get("size", 0) for head in heads.values())
        return StagedDataset(uri=prefix.uri, files=len(keys), uploaded=0, unchanged=len(keys), total_bytes=total,
                             checksum=checksum)

    def upload_file(self, path: str, uri: str) -> str:
        self.store.put_file(path, uri)
        return uri

    def list_objects(self, prefix_uri: str) -> list[str]:
        return self.store.list(prefix_uri)

    def read_object(self, uri: str) -> bytes:
        return self.store.read(uri)

    def download_file(self, uri: str, path: str) -> str:
        source = self.store.path(uri)
        if not source.is_file():
            raise NotFoundError(f"no object at {uri}")
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
        return path
