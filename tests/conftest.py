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
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)


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
