"""The local model registry: versions with metrics, hyperparameters, dataset checksum and job
name under <state>/registry/<group>/, and a champion pointer (SageMaker's model package group
with an Approved version, locally)."""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from backends.base import ModelVersion


class LocalRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def _group(self, group: str) -> Path:
        folder = self.root / group
        (folder / "versions").mkdir(parents=True, exist_ok=True)
        return folder

    def list(self, group: str) -> list[ModelVersion]:
        folder = self._group(group)
        champion = self._champion_number(folder)
        versions = []
        for path in sorted((folder / "versions").glob("*.json"), key=lambda p: int(p.stem)):
            record = ModelVersion(**json.loads(path.read_text()))
            versions.append(replace(record, champion=record.version == champion))
        return versions

    def register(self, group: str, model_artifact: str, metrics: dict[str, float], hyperparameters: dict[str, str],
                 dataset_checksum: str, job_name: str) -> ModelVersion:
        with self._lock:
            existing = next((v for v in self.list(group) if v.job_name == job_name), None)
            if existing:
                return existing
            folder = self._group(group)
            number = max((int(p.stem) for p in (folder / "versions").glob("*.json")), default=0) + 1
            version = ModelVersion(group, number, model_artifact, dict(metrics), dict(hyperparameters),
                                   dataset_checksum, job_name, time.time())
            _write_json(folder / "versions" / f"{number}.json", {k: v for k, v in asdict(version).items() if k != "champion"})
            return version

    def promote(self, group: str, version: int) -> ModelVersion:
        with self._lock:
            folder = self._group(group)
            if not (folder / "versions" / f"{version}.json").is_file():
                raise KeyError(f"model group {group} has no version {version}")
            _write_json(folder / "champion.json", {"version": version, "promoted_at": time.time()})
        return next(v for v in self.list(group) if v.version == version)

    @staticmethod
    def _champion_number(folder: Path) -> int | None:
        try:
            return json.loads((folder / "champion.json").read_text())["version"]
        except FileNotFoundError:
            return None


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
