"""Prefect artifacts the tasks leave: markdown summaries, tables, links, progress and pictures."""
from __future__ import annotations

import base64
import contextlib
import io
import re
from collections.abc import Callable, Iterator

from prefect.artifacts import (
    create_link_artifact, create_markdown_artifact, create_progress_artifact, create_table_artifact,
    update_progress_artifact,
)


def artifact_key(*parts: str) -> str:
    """Prefect keys take lowercase letters, digits and dashes."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]


def markdown(key: str, text: str, description: str | None = None) -> None:
    create_markdown_artifact(text, key=artifact_key(key), description=description)


def table(key: str, rows: list[dict], description: str | None = None) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)


def link(key: str, url: str, text: str, description: str | None = None) -> None:
    create_link_artifact(url, link_text=text, key=artifact_key(key), description=description)


# Whoever shows progress besides the Prefect UI (the CLI's progress bars): (key, fraction, description).
ProgressListener = Callable[[str, float, str], None]
_listeners: list[ProgressListener] = []


@contextlib.contextmanager
def progress_shown_by(listener: ProgressListener) -> Iterator[None]:
    """While the block runs, every progress report also goes to `listener`."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def report(key: str, fraction: float, description: str) -> None:
    """Progress for the listeners only (a step too small for an artifact of its own: one trial's epochs)."""
    for listener in list(_listeners):
        try:
            listener(key, max(0.0, min(1.0, fraction)), description)
        except Exception:  # noqa: BLE001 - a display must never fail the work it shows
            pass


class Progress:
    """A progress artifact, 0..100 %, updated as work advances (and reported to the listeners)."""

    def __init__(self, key: str, description: str):
        self.key = artifact_key(key)
        self.id = create_progress_artifact(0.0, key=self.key, description=description)
        report(self.key, 0.0, description)

    def update(self, fraction: float, description: str | None = None) -> None:
        update_progress_artifact(self.id, max(0.0, min(100.0, fraction * 100.0)), description=description)
        report(self.key, fraction, description or "")


def training_curve_png(epochs: list[dict[str, float]], title: str) -> bytes:
    """Loss and accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [int(e["epoch"]) for e in epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    for name, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for split, style in (("train", "o-"), ("valid", "s--")):
            values = [e.get(f"{split}_{name}") for e in epochs]
            if all(v is not None for v in values):
                ax.plot(x, values, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def training_curve_markdown(epochs: list[dict[str, float]], title: str) -> str:
    """The curve embedded in markdown (a data URI), so the Prefect UI shows it with no file server."""
    encoded = base64.b64encode(training_curve_png(epochs, title)).decode()
    return f"![training curve: {title}](data:image/png;base64,{encoded})"


def epoch_rows(epochs: list[dict[str, float]]) -> list[dict]:
    keys = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds")
    return [{k: (int(e[k]) if k == "epoch" else round(e[k], 4)) for k in keys if k in e} for e in epochs]


def model_versions(config, versions) -> None:
    """The model group's versions as a table: the release history."""
    table(f"{config.stage}-model-versions", [
        {"version": v.version, "champion": v.champion, "status": v.status, "reason": v.status_reason,
         "job": v.job_name, "test_accuracy": round(v.metrics.get("test_accuracy", float("nan")), 4),
         "valid_loss": round(v.metrics.get("valid_loss", float("nan")), 4), "dataset": v.dataset_checksum[:12]}
        for v in versions], f"versions of {config.names.model_group}")
