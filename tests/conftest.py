import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Fake credentials so no test can reach a real AWS account.
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   # No telemetry from Prefect's test server: there is no network to send it to.
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   # Two test workers share the cores with the training and serving processes they start:
                   # OpenMP threads that spin while they wait take the CPU from the others (measured on
                   # 2 cores: the training and tuning tests 105 s -> 77 s, a quarter less CPU).
                   "OMP_WAIT_POLICY": "PASSIVE",
                   # Endpoint workers serve the eager model: building the TorchScript form takes ~3 s of each
                   # worker's start, and the tests start dozens. The default form is served end to end in
                   # test_pipeline_flow (which unsets this) and checked against eager in tests/unit/test_inference.py.
                   "INFERENCE_GRAPH": "eager"}.items():
    os.environ.setdefault(key, value)


def pytest_collection_modifyitems(config, items):
    """Slowest files first, by their `slow(minutes=...)` mark, then the other integration tests, then the rest:
    `make test` hands whole files to two workers in this order, so the long ones never start last."""
    def expected_minutes(item) -> float:
        mark = item.get_closest_marker("slow")
        if mark is not None:
            return mark.kwargs.get("minutes", 1.0)
        return 0.5 if item.get_closest_marker("integration") else 0.0

    file_of = lambda item: item.nodeid.split("::")[0]  # noqa: E731
    by_file: dict[str, float] = {}
    for item in items:
        by_file[file_of(item)] = max(by_file.get(file_of(item), 0.0), expected_minutes(item))
    items.sort(key=lambda item: -by_file[file_of(item)])  # stable: each file keeps its order


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """100 digits (10 classes), 32 px PNGs, split 70/15/15."""
    from core.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("data") / "digits"
    write_demo_dataset(str(root), seed=0, image_size=32, per_class=10)
    return root


@pytest.fixture
def local_state(tmp_path):
    from backends.local.state import LocalState

    return LocalState.resolve(tmp_path / "state")


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True, scope="session")
def retries_without_waiting():
    """Tasks retry a transient fault after 1, 4 and 15 s (tasks/retry_policy.py). Tests inject such
    faults by the dozen: here they are retried as often, at once."""
    import importlib
    import pkgutil

    import tasks
    from prefect import Task

    for info in pkgutil.iter_modules(tasks.__path__):
        for value in vars(importlib.import_module(f"tasks.{info.name}")).values():
            if isinstance(value, Task) and value.retries:
                value.retry_delay_seconds = 0
    yield
