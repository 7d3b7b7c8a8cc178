"""What both backends' planning observes the same way: the dataset and weights a run stages, the
function's concurrency, and checks that must never stop a plan because they could not be made."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backends.errors import InvalidRequestError, NotFoundError
from backends.services import Functions, Storage
from backends.types import ModelVersion
from core.config import PipelineConfig
from core.datasets import DatasetError, check_layout, folder_checksum
from core.plan import Check, PlannedChange
from core.retry import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


def reason(exc: BaseException) -> str:
    """An error in a few words: AWS's code and message, else the exception's text."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    return str(exc) or type(exc).__name__


def attempted(checks: list[Check], name: str, observe: Callable[[], T], default: T) -> T:
    """`observe()`, or `default` with a warn check saying what could not be read (an API refused, or
    missing where the backend is emulated). Transient faults propagate: the task retries them."""
    try:
        return observe()
    except Exception as exc:  # noqa: BLE001 - a plan reports what it could not see; it never stops on it
        if is_transient(exc):
            raise
        log.warning("plan: could not check %s: %s", name, reason(exc))
        checks.append(Check(name, "warn", f"could not check: {reason(exc)}"))
        return default


def released_version_change(release: ModelVersion) -> PlannedChange:
    """The registry's change when a run serves `release` again (a rollback): it becomes the champion
    after its smoke test, unless it is the champion already."""
    if release.champion:
        return PlannedChange("model version", release.label, "keep", "the champion")
    return PlannedChange("model version", release.label, "update", f"{release.status} -> the champion after its "
                                                                   "smoke test")


@dataclass(frozen=True)
class DatasetPlan:
    uri: str | None  # where training reads it (None: known only after a download)
    change: PlannedChange
    check: Check
    bytes_to_stage: int  # what staging copies (0 when it is staged already)
    checksum: str = ""  # its content (StagedDataset.checksum), when known before the run


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def plan_dataset(config: PipelineConfig, storage: Storage, bucket: str, bucket_exists: bool) -> DatasetPlan:
    """Where stage_dataset will put data.source (named by its content) and whether it is there already;
    an s3:// source must be staged already, a local folder must have the dataset layout."""
    source, names = config.data.source, config.names
    if source.startswith("https://"):
        return DatasetPlan(None, PlannedChange("dataset", f"{names.prefix_uri(bucket)}datasets/<checksum>", "create",
                                               f"downloaded from {source}, checked against data.sha256; kept if the "
                                               "same content is staged already"),
                           Check("data", "pass", f"{source} is downloaded when the run starts"), 0)
    if source.startswith("s3://"):
        try:
            staged = storage.describe_prefix(source)
        except Exception as exc:  # noqa: BLE001 - not there, not staged, or no such bucket: the run would fail
            if is_transient(exc):
                raise
            return DatasetPlan(None, PlannedChange("dataset", source, "keep", "trained in place"),
                               Check("data", "fail", f"data.source {source}: {reason(exc)}"), 0)
        change = PlannedChange("dataset", source, "keep",
                               f"trained in place: {staged.files} files, {staged.total_bytes / 1e6:.1f} MB")
        # The aws store's DigestedDataset: objects without a SHA-256, read to checksum them.
        digested, read = getattr(staged, "digested_files", 0), getattr(staged, "digested_bytes", 0)
        if not digested:
            return DatasetPlan(source, change, Check("data", "pass", f"{source} is staged ({staged.files} files)"), 0,
                               staged.checksum)
        return DatasetPlan(source, change, Check("data", "warn", (
            f"{source}: {digested} of its {staged.files} objects carry no SHA-256, so each plan and each run read "
            f"them once ({read / 1e6:.1f} MB) to checksum the data; uploaded with `aws s3 sync "
            "--checksum-algorithm SHA256` (or with data.source the local folder) they need only a listing")), 0,
                           staged.checksum)
    folder = Path(source).expanduser()
    try:
        check_layout(folder)
    except DatasetError as exc:
        return DatasetPlan(None, PlannedChange("dataset", source, "create", "not a dataset folder"),
                           Check("data", "fail", str(exc)), 0)
    size, checksum = _folder_bytes(folder), folder_checksum(folder)
    uri = names.dataset_uri(bucket, checksum)
    check = Check("data", "pass", f"{folder}: train/, valid/ and test/, {size / 1e6:.1f} MB")
    if not bucket_exists:
        return DatasetPlan(uri, PlannedChange("dataset", uri, "create", f"{size / 1e6:.1f} MB from {folder}"),
                           check, size, checksum)
    try:
        staged = storage.describe_prefix(uri)
    except NotFoundError:
        return DatasetPlan(uri, PlannedChange("dataset", uri, "create", f"{size / 1e6:.1f} MB from {folder}"),
                           check, size, checksum)
    except InvalidRequestError:  # an upload that did not finish: the next one re-sends what may be half-written
        return DatasetPlan(uri, PlannedChange("dataset", uri, "update", f"finishes an incomplete upload from {folder}"),
                           check, size, checksum)
    return DatasetPlan(uri, PlannedChange("dataset", uri, "keep", f"staged: {staged.files} files"), check, 0, checksum)


def plan_weights(config: PipelineConfig, storage: Storage, bucket: str, exists: Callable[[str], bool],
                 checks: list[Check]) -> tuple[str | None, list[PlannedChange]]:
    """Where training reads training.pretrained_weights from (stage_pretrained_weights uploads a local
    file each run; an s3:// one is read where it is and must exist)."""
    source = config.training.pretrained_weights
    if not source:
        return None, []
    if source.startswith("s3://"):
        if not exists(source):
            checks.append(Check("pretrained weights", "fail", f"training.pretrained_weights: no object at {source}"))
        return source, []
    path = Path(source).expanduser()
    if not path.is_file():
        checks.append(Check("pretrained weights", "fail", f"training.pretrained_weights {source} is not a file"))
        return None, []
    uri = config.names.pretrained_uri(bucket, path.name)
    action = "update" if exists(uri) else "create"
    return uri, [PlannedChange("pretrained weights", uri, action, f"{path.stat().st_size / 1e6:.1f} MB from {path}")]


def concurrency_check(functions: Functions, config: PipelineConfig) -> Check:
    """The function's reserved and provisioned concurrency against the account (or this machine)."""
    function = config.function
    try:
        functions.check_concurrency(config.names.function, function)
    except InvalidRequestError as exc:
        return Check("function concurrency", "fail", str(exc))
    return Check("function concurrency", "pass",
                 f"reserved {function.reserved_concurrency if function.reserved_concurrency is not None else 'none'}"
                 f", provisioned {function.provisioned_concurrency} fit")
