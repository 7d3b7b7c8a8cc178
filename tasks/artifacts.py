"""Prefect artifacts the tasks leave: markdown summaries, tables, links, progress and pictures."""
from __future__ import annotations

import base64
import io
import re

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


class Progress:
    """A progress artifact, 0..100 %, updated as work advances."""

    def __init__(self, key: str, description: str):
        self.id = create_progress_artifact(0.0, key=artifact_key(key), description=description)

    def update(self, fraction: float, description: str | None = None) -> None:
        update_progress_artifact(self.id, max(0.0, min(100.0, fraction * 100.0)), description=description)


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
