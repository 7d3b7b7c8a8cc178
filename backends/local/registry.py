"""The model registry on the local backend: versions with metrics, hyperparameters, dataset
checksum and job name under <state>/registry/<group>/versions/<n>.json, and a champion pointer
(SageMaker's model package group with one Approved version, locally)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from backends.errors import NotFoundError
from backends.files import write_json
from backends.types import ModelVersion


class LocalRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def _versions(self, group: str) -> Path:
        return self.root / group / "versions"

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        champion = self._champion_number(group)
        versions = []
        for path in sorted(self._versions(group).glob("*.json"), key=lambda p: int(p.stem)):
            record = ModelVersion(**json.loads(path.read_text()))
            versions.append(replace(record, champion=record.version == champion))
        return versions

    def register_model_version(self, group: str, model_artifact: str, metrics: dict[str, float],
                               hyperparameters: dict[str, str], dataset_checksum: str, job_name: str) -> ModelVersion:
        with self._lock:
            existing = next((v for v in self.list_model_versions(group) if v.job_name == job_name), None)
            if existing:
                return existing
            number = max((int(p.stem) for p in self._versions(group).glob("*.json")), default=0) + 1
            version = ModelVersion(group, number, model_artifact, dict(metrics), dict(hyperparameters),
                                   dataset_checksum, job_name, time.time())
            write_json(self._versions(group) / f"{number}.json",
                       {k: v for k, v in asdict(version).items() if k != "champion"})
            return version

    def promote_model_version(self, group: str, version: int) -> ModelVersion:
        with self._lock:
            if not (self._versions(group) / f"{version}.json").is_file():
                raise NotFoundError(f"model group {group} has no version {version}")
            write_json(self.root / group / "champion.json", {"version": version, "promoted_at": time.time()})
        return next(v for v in self.list_model_versions(group) if v.version == version)

    def _champion_number(self, group: str) -> int | None:
        try:
            return json.loads((self.root / group / "champion.json").read_text())["version"]
        except FileNotFoundError:
            return None
