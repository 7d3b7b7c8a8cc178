"""Live progress in the terminal while a flow runs in this process: one bar per step (staging, the
tuning job, each trial with its epoch and validation loss, the release), fed by the same progress
reports that become Prefect artifacts (tasks/artifacts.py). Prefect's log lines print above the bars."""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from tasks import artifacts

_LABELS = {"staging-progress": "staging", "tuning-progress": "tuning", "training-progress": "training",
           "evaluation-progress": "evaluation"}


def _label(key: str) -> str:
    for suffix, label in _LABELS.items():
        if key.endswith(suffix):
            return label
    return key


class _Bars:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, key: str, fraction: float, description: str) -> None:
        label = _label(key)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=100)
        self.progress.update(self.tasks[key], completed=fraction * 100, description=f"{label}: {description}"[:90])


def _prefect_console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    seen = []
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and handler not in seen:
                seen.append(handler)
    return seen


@contextlib.contextmanager
def live_progress(enabled: bool | None = None) -> Iterator[None]:
    """Progress bars for the block (only on a terminal, unless `enabled` says otherwise)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30), TaskProgressColumn(),
                        TimeElapsedColumn(), console=console, transient=False)
    handlers = _prefect_console_handlers()
    consoles = [h.console for h in handlers]
    with progress, artifacts.progress_shown_by(_Bars(progress)):
        for handler in handlers:  # Prefect's log lines go above the bars, not through them
            handler.console = progress.console
        try:
            yield
        finally:
            for handler, original in zip(handlers, consoles):
                handler.console = original
