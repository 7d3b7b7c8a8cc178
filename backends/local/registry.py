"""The model registry on the local backend: <state>/registry/<group>/versions/<n>.json, one record
per version (metrics, hyperparameters, dataset, job, and SageMaker's approval status with its
reason), as SageMaker's model package group keeps them. The champion is the Approved version.

Versions are numbered and statuses changed under a cross-process lock (filelock), so two flows
registering at once never take the same number, and every record is written atomically.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from filelock import FileLock

from backends.errors import NotFoundError
from backends.files import write_json
from backends.types import APPROVED, PENDING, REJECTED, ModelVersion

_LOCK_TIMEOUT_S = 60


class LocalRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _versions(self, group: str) -> Path:
        return self.root / group / "versions"

    def _lock(self, group: str) -> FileLock:
        (self.root / group).mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / group / ".lock", timeout=_LOCK_TIMEOUT_S)

    def _read(self, path: Path, legacy_champion: int | None) -> ModelVersion:
        record = json.loads(path.read_text())
        if "status" not in record:  # written before statuses: a champion.json pointer named the champion
            record["status"] = APPROVED if record["version"] == legacy_champion else PENDING
        return ModelVersion(**record)

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        legacy = self._legacy_champion(group)
        versions = [self._read(path, legacy) for path in
                    sorted(self._versions(group).glob("*.json"), key=lambda p: int(p.stem))]
        champion = max((v.version for v in versions if v.status == APPROVED), default=None)
        return [replace(v, champion=v.version == champion) for v in versions]

    def register_model_version(self, group: str, model_artifact: str, metrics: dict[str, float],
                               hyperparameters: dict[str, str], dataset_checksum: str, job_name: str,
                               dataset_uri: str = "") -> ModelVersion:
        with self._lock(group):
            existing = next((v for v in self.list_model_versions(group) if v.job_name == job_name), None)
            if existing:
                return existing
            number = max((int(p.stem) for p in self._versions(group).glob("*.json")), default=0) + 1
            version = ModelVersion(group, number, model_artifact, dict(metrics), dict(hyperparameters),
                                   dataset_checksum, job_name, time.time(), dataset_uri=dataset_uri)
            self._write(version)
            return version

    def promote_model_version(self, group: str, version: int, reason: str = "promoted") -> ModelVersion:
        with self._lock(group):
            versions = {v.version: v for v in self.list_model_versions(group)}
            target = self._get(group, versions, version)
            if target.status != APPROVED:
                self._write(replace(target, status=APPROVED, status_reason=reason, status_changed_at=time.time()))
            for other in versions.values():  # only the champion stays Approved, as on SageMaker
                if other.version != version and other.status == APPROVED:
                    self._write(replace(other, status=REJECTED, status_reason=f"superseded by version {version}",
                                        status_changed_at=time.time()))
        return self._find(group, version)

    def reject_model_version(self, group: str, version: int, reason: str) -> ModelVersion:
        with self._lock(group):
            target = self._get(group, {v.version: v for v in self.list_model_versions(group)}, version)
            self._write(replace(target, status=REJECTED, status_reason=reason, status_changed_at=time.time()))
        return self._find(group, version)

    def _get(self, group: str, versions: dict[int, ModelVersion], version: int) -> ModelVersion:
        if version not in versions:
            raise NotFoundError(f"model group {group} has no version {version}")
        return versions[version]

    def _find(self, group: str, version: int) -> ModelVersion:
        return next(v for v in self.list_model_versions(group) if v.version == version)

    def _write(self, version: ModelVersion) -> None:
        record = {k: v for k, v in asdict(version).items() if k != "champion"}  # derived, never stored
        write_json(self._versions(version.group) / f"{version.version}.json", record)

    def _legacy_champion(self, group: str) -> int | None:
        try:
            return json.loads((self.root / group / "champion.json").read_text())["version"]
        except FileNotFoundError:
            return None
