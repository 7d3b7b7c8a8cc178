"""evaluate_models: the champion and the challenger on the same test images (the champion's frozen
test split plus the current split's new images), each by its own code/inference.py."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from backends.backend import Backend
from backends.evaluation import Evaluation, evaluate_model
from backends.types import ModelVersion, StagedDataset
from core.datasets import combined_test_set
from core.retry import PermanentError
from tasks import artifacts
from tasks.retry_policy import TASK_OPTIONS


@dataclass(frozen=True)
class Comparison:
    champion: Evaluation | None  # None when there is no champion yet
    challenger: Evaluation
    frozen_images: int  # from the champion's test split
    new_images: int  # from the current test split, not in the champion's


def _test_split(backend: Backend, dataset_uri: str) -> dict[str, bytes]:
    prefix = dataset_uri.rstrip("/") + "/test"
    return {key: backend.storage.read_object(f"{prefix}/{key}") for key in backend.storage.list_objects(prefix)}


def _evaluate(backend: Backend, model: ModelVersion, images: list[tuple[str, bytes]], scratch: Path) -> Evaluation:
    artifact = backend.storage.download_file(model.model_artifact, str(scratch / f"model-{model.version}.tar.gz"))
    return evaluate_model(artifact, images, model_version=model.label)


@task(name="evaluate_models", **TASK_OPTIONS)
def evaluate_models(backend: Backend, champion: ModelVersion | None, challenger: ModelVersion,
                    dataset: StagedDataset) -> Comparison:
    frozen = _test_split(backend, champion.dataset_uri) if champion and champion.dataset_uri else {}
    current = _test_split(backend, dataset.uri)
    digest = lambda images: {k: hashlib.sha256(v).hexdigest() for k, v in images.items()}  # noqa: E731
    chosen = combined_test_set(digest(frozen), digest(current))
    images = [(target, (frozen if origin == "frozen" else current)[key]) for origin, key, target in chosen]
    if not images:
        raise PermanentError(f"no test images under {dataset.uri}/test to compare the models on")
    new = sum(origin == "current" for origin, _, _ in chosen) if frozen else 0
    progress = artifacts.Progress("evaluation-progress", f"evaluating on {len(images)} test images")
    with tempfile.TemporaryDirectory(prefix="sagemaker-flows-eval-") as scratch:
        models = [m for m in (champion, challenger) if m is not None]
        results = []
        for done, model in enumerate(models, 1):
            results.append(_evaluate(backend, model, images, Path(scratch)))
            progress.update(done / len(models), f"{model.label}: accuracy {results[-1].accuracy:.4f}")
    comparison = Comparison(results[0] if champion else None, results[-1], len(images) - new, new)
    get_run_logger().info("evaluated on %d test images (%d frozen with the champion, %d new): %s", len(images),
                          comparison.frozen_images, new,
                          ", ".join(f"{e.model_version} accuracy {e.accuracy:.4f}" for e in results))
    return comparison
