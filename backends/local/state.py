"""Where the local backend keeps everything: one state folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "SAGEMAKER_FLOWS_HOME"
DEFAULT_HOME = ".sagemaker-flows"
DEFAULT_BUCKET = "sagemaker-flows"


@dataclass(frozen=True)
class LocalState:
    home: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "LocalState":
        """The configured folder, else $SAGEMAKER_FLOWS_HOME, else ./.sagemaker-flows."""
        chosen = Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
        for sub in ("store", "jobs", "tuning", "registry"):
            (chosen / sub).mkdir(parents=True, exist_ok=True)
        return cls(chosen)

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def jobs(self) -> Path:
        return self.home / "jobs"

    @property
    def tuning(self) -> Path:
        return self.home / "tuning"

    @property
    def registry(self) -> Path:
        return self.home / "registry"
