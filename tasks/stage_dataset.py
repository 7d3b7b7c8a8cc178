"""stage_dataset: put the images where training reads them (S3, or the local store)."""
from __future__ import annotations

import hashlib
import tempfile
import urllib.request
from pathlib import Path

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.types import StagedDataset
from core.config import PipelineConfig
from core.datasets import DatasetError, check_layout, folder_checksum, safe_extract_zip
from core.retry import PermanentError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS

DOWNLOAD_TIMEOUT_S = 60


def download_zip(url: str, sha256: str, destination: Path) -> Path:
    """Fetch the zip, refusing it unless its SHA-256 is the configured one."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(destination, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        raise PermanentError(f"{url} has SHA-256 {digest.hexdigest()}, not the configured data.sha256 {sha256}: "
                             "the file changed or the checksum is wrong")
    return destination


@task(name="stage_dataset", **TASK_OPTIONS)
def stage_dataset(config: PipelineConfig, backend: Backend) -> StagedDataset:
    logger = get_run_logger()
    source = config.data.source
    if source.startswith("s3://"):
        staged = backend.storage.describe_prefix(source)  # already staged: train from it in place
    else:
        with tempfile.TemporaryDirectory(prefix="sagemaker-flows-") as scratch:
            try:
                if source.startswith("https://"):
                    folder = safe_extract_zip(download_zip(source, config.data.sha256, Path(scratch) / "data.zip"),
                                              Path(scratch) / "data")
                else:
                    folder = Path(source).expanduser()
                check_layout(folder)
            except DatasetError as exc:
                raise PermanentError(str(exc)) from None
            checksum = folder_checksum(folder)
            prefix = config.names.dataset_uri(backend.storage.default_bucket(), checksum)
            progress = artifacts.Progress(f"{config.stage}-staging-progress", f"uploading {folder}")
            last = [0.0]

            def report(done: int, total: int) -> None:
                if done == total or done / total - last[0] >= 0.05:  # about 20 updates, not one per file
                    last[0] = done / total
                    progress.update(done / total, f"{done}/{total} files")

            staged = backend.storage.upload_folder(str(folder), prefix, progress=report)
    logger.info("dataset at %s: %d files (%d uploaded, %d unchanged)", staged.uri, staged.files, staged.uploaded,
                staged.unchanged)
    artifacts.markdown(f"{config.stage}-dataset", "\n".join([
        "## Dataset", f"- source: `{source}`", f"- staged at: `{staged.uri}`",
        f"- files: {staged.files} ({staged.uploaded} uploaded, {staged.unchanged} unchanged)",
        f"- size: {staged.total_bytes / 1e6:.1f} MB", f"- checksum (SHA-256): `{staged.checksum}`"]))
    return staged
