"""The local registry with several processes registering at once (two flows finishing together)."""
import json
import multiprocessing

import pytest

from backends.local.registry import LocalRegistry

pytestmark = pytest.mark.integration
PROCESSES, JOBS_EACH, GROUP = 4, 5, "pets"


def register_jobs(root: str, worker: int, start, results) -> None:
    registry = LocalRegistry(root)
    start.wait()
    names = ["job-shared"] + [f"job-{worker}-{i}" for i in range(JOBS_EACH)]  # one job every process registers
    registered = [registry.register_model_version(GROUP, f"s3://models/{name}.tar.gz", {"test_accuracy": 0.5},
                                                  {"epochs": "1"}, "ab" * 32, name) for name in names]
    results.put([(v.job_name, v.version) for v in registered])


def test_concurrent_registrations_get_distinct_consecutive_versions(tmp_path):
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=register_jobs, args=(str(tmp_path / "registry"), n, start, results))
               for n in range(PROCESSES)]
    for worker in workers:
        worker.start()
    start.set()
    answers = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    versions = LocalRegistry(tmp_path / "registry").list_model_versions(GROUP)
    total = PROCESSES * JOBS_EACH + 1
    assert [v.version for v in versions] == list(range(1, total + 1))  # none lost, none taken twice
    assert sorted(v.job_name for v in versions) == sorted(
        ["job-shared"] + [f"job-{n}-{i}" for n in range(PROCESSES) for i in range(JOBS_EACH)])
    for version in versions:  # every record whole and its own
        record = json.loads((tmp_path / "registry" / GROUP / "versions" / f"{version.version}.json").read_text())
        assert record["model_artifact"] == f"s3://models/{record['job_name']}.tar.gz"
    by_job = {v.job_name: v.version for v in versions}
    for answer in answers:  # each process got the versions that were recorded, the shared job's included
        assert all(by_job[job] == number for job, number in answer)
    assert not list((tmp_path / "registry").rglob("*.partial"))
