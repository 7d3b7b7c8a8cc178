"""Local endpoints with real model_worker processes and real HTTP: serving, failures, blue/green, scaling."""
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import time

import pytest
import uvloop
from PIL import Image

from backends.local.gateway.endpoints import (EndpointManager, EndpointNotFoundError, EndpointUnavailableError,
                                              EndpointUpdateError)
from backends.model_artifact import TRAINING_SOURCE_DIR, pack_model_artifact
from training.model import ModelConfig, build_model, save_model
from tests.helpers import alive  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=2.3)]
CLASSES = ["cat", "dog", "fox"]


BUGGY_HANDLE = """

_handle = handle


def handle(body, content_type, accept, model):  # a serving bug, on one request only
    if body == b"trigger the bug":
        raise RuntimeError("a bug in the serving code")
    return _handle(body, content_type, accept, model)
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny untrained resnet18 as model.tar.gz; the same with garbage for weights; and with buggy code."""
    root = tmp_path_factory.mktemp("artifacts")
    save_model(build_model("resnet18", 3), ModelConfig("resnet18", CLASSES, image_size=32), root / "model")
    good = pack_model_artifact(root / "model", root / "good" / "model.tar.gz")
    shutil.copytree(root / "model", root / "broken-model")
    (root / "broken-model" / "model.pth").write_bytes(b"these are not the weights you are looking for")
    broken = pack_model_artifact(root / "broken-model", root / "broken" / "model.tar.gz")
    shutil.copytree(TRAINING_SOURCE_DIR, root / "buggy-code")
    with open(root / "buggy-code" / "inference.py", "a") as f:
        f.write(BUGGY_HANDLE)
    buggy = pack_model_artifact(root / "model", root / "buggy" / "model.tar.gz", root / "buggy-code")
    return str(good), str(broken), str(buggy)


def image_bytes(fmt: str, color=(200, 30, 30), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


JPEG, PNG = image_bytes("JPEG"), image_bytes("PNG", (20, 200, 90))
BATCH = json.dumps({"instances": [base64.b64encode(PNG).decode(), {"image": base64.b64encode(JPEG).decode()}]})
REQUESTS = [(JPEG, "image/jpeg"), (PNG, "image/png"), (BATCH.encode(), "application/json")]


def check_prediction(result, version: str) -> None:
    assert result.status_code == 200, result.body
    assert result.content_type == "application/json"
    payload = json.loads(result.body)
    assert payload["model_version"] == version
    for ranked in (payload["predictions"] if isinstance(payload["predictions"][0], list) else [payload["predictions"]]):
        assert sorted(p["label"] for p in ranked) == CLASSES
        assert abs(sum(p["score"] for p in ranked) - 1.0) < 1e-4


async def eventually(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.2)


def test_unknown_endpoints_and_bad_arguments(tmp_path):
    async def scenario():
        manager = EndpointManager(tmp_path / "state")
        await manager.start()
        try:
            for call in (manager.invoke("nope", b"{}", "application/json", ""), manager.delete("nope"),
                         manager.set_instance_count("nope", 2)):
                with pytest.raises(EndpointNotFoundError):
                    await call
            with pytest.raises(EndpointNotFoundError):
                manager.describe("nope")
            with pytest.raises(ValueError):
                await manager.create_or_update("bad name!", "x.tar.gz")
            with pytest.raises(ValueError):
                await manager.create_or_update("ok", "x.tar.gz", instance_count=0)
            with pytest.raises(EndpointUpdateError, match="cannot read the model artifact"):
                await manager.create_or_update("missing", str(tmp_path / "nothing.tar.gz"))
            assert manager.describe("missing").status == "Failed"
            with pytest.raises(EndpointUnavailableError):
                await manager.invoke("missing", JPEG, "image/jpeg", "")
        finally:
            await manager.close()

    asyncio.run(scenario())


def test_instances_started_while_the_monitor_prunes_are_listed_and_stopped(artifacts, tmp_path):
    """The monitor prunes exited workers from the manager's registry every interval; an instance whose
    process was being spawned meanwhile must still be registered: listed in status, stopped on close.
    (A prune that made a new registry lost it: invisible in status, and left running until its
    parent-watch saw the gateway gone. CI caught it once; a 1 ms interval makes it certain.)"""
    good, _, _ = artifacts
    pids: list[int] = []

    async def scenario():
        manager = EndpointManager(tmp_path / "state", threads_per_instance=1, monitor_interval=0.001)
        await manager.start()
        try:
            info = await manager.create_or_update("digits", good, instance_count=3, model_version="v1")
            assert info.current_instance_count == 3
            assert len(info.instances) == 3, info.instances  # every routed instance is listed
            pids.extend(i["pid"] for i in info.instances)
        finally:
            await manager.close()

    uvloop.run(scenario())  # the gateway's loop: its spawn gives the monitor a turn before the process returns
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)  # close stopped all of them


@pytest.mark.timeout(240)
def test_endpoint_lifecycle_with_real_workers(artifacts, tmp_path):
    good, broken, buggy = artifacts
    seen: set[int] = set()

    async def scenario():
        manager = EndpointManager(tmp_path / "state", threads_per_instance=1)
        await manager.start()

        def describe(name="digits"):
            info = manager.describe(name)
            seen.update(i["pid"] for i in info.instances)
            return info

        async def invoke(body=JPEG, content_type="image/jpeg", accept="application/json"):
            return await manager.invoke("digits", body, content_type, accept)

        try:
            info = await manager.create_or_update("digits", good, instance_count=2, model_version="v1")
            assert (info.status, info.model_version, info.instance_count, info.current_instance_count) == \
                   ("InService", "v1", 2, 2)
            assert [i["state"] for i in info.instances] == ["InService"] * 2 and info.model_artifact == good
            describe()

            # JPEG, PNG and JSON, 12 at once, spread over both instances.
            results = await asyncio.gather(*(invoke(b, ct) for b, ct in REQUESTS * 4))
            for result in results:
                check_prediction(result, "v1")
            assert {r.instance_id for r in results} == {i["id"] for i in info.instances}
            assert len(json.loads(results[2].body)["predictions"]) == 2  # the batch: one ranking per image

            # Bad requests answer 4xx with the JSON error; the next good one is served.
            for body, content_type, accept, status, code in [
                (b"not an image", "image/jpeg", "application/json", 400, "InvalidImage"),
                (b"hello", "text/plain", "application/json", 415, "UnsupportedMediaType"),
                (b'{"image": "***"}', "application/json", "application/json", 400, "InvalidBase64"),
                (JPEG, "image/jpeg", "text/csv", 406, "NotAcceptable"),
            ]:
                bad = await invoke(body, content_type, accept)
                assert (bad.status_code, json.loads(bad.body)["error"]) == (status, code)
            check_prediction(await invoke(), "v1")

            # The same artifact, version and environment again: nothing changes.
            again = await manager.create_or_update("digits", good, instance_count=2, model_version="v1")
            assert again.instances == info.instances and again.updated_at == info.updated_at

            # An instance dies: requests keep succeeding, the monitor replaces it.
            victim = info.instances[0]
            os.kill(victim["pid"], signal.SIGKILL)
            for _ in range(6):
                check_prediction(await invoke(), "v1")
            await eventually(lambda: describe().replacements >= 1 and describe().current_instance_count == 2)
            info = describe()
            assert victim["id"] not in {i["id"] for i in info.instances} and info.status == "InService"
            assert info.instance_count == 2 and len(info.instances) == 2

            # A broken model: the update fails with the worker's own error, v1 keeps serving.
            # (A new endpoint with the same artifact ends Failed.)
            update, create = await asyncio.gather(
                manager.create_or_update("digits", broken, instance_count=2, model_version="v2"),
                manager.create_or_update("broken", broken, instance_count=1), return_exceptions=True)
            for error in (update, create):
                assert isinstance(error, EndpointUpdateError), error
                assert "model_fn failed" in str(error) and "exited with code 1" in str(error)
            info = describe()
            assert (info.status, info.model_version, info.current_instance_count) == ("InService", "v1", 2)
            assert "model_fn failed" in info.failure_reason
            assert {i["state"] for i in info.instances} == {"InService"}
            check_prediction(await invoke(), "v1")
            assert manager.describe("broken").status == "Failed" and manager.describe("broken").instances == []
            with pytest.raises(EndpointUnavailableError):
                await manager.invoke("broken", JPEG, "image/jpeg", "")
            await manager.delete("broken")

            # A good update (new code, new version) is blue/green: traffic during the switch never fails.
            old_pids = {i["pid"] for i in info.instances}
            statuses, switching = [], True

            async def traffic():
                while switching:
                    statuses.append((await invoke()).status_code)

            load = asyncio.create_task(traffic())
            info = await manager.create_or_update("digits", buggy, instance_count=2, model_version="v2")
            switching = False
            await load
            assert statuses and set(statuses) == {200}
            assert (info.status, info.model_version, info.failure_reason) == ("InService", "v2", None)
            assert info.model_artifact == buggy
            assert not old_pids & {i["pid"] for i in describe().instances}
            assert not any(alive(pid) for pid in old_pids)
            check_prediction(await invoke(), "v2")

            # The workers run the artifact's own code/inference.py: its bug answers 500, and they keep serving.
            for _ in range(3):
                crash = await invoke(b"trigger the bug")
                assert crash.status_code == 500 and json.loads(crash.body)["error"] == "InternalServerError"
                assert "a bug in the serving code" in json.loads(crash.body)["message"]
                check_prediction(await invoke(), "v2")
            assert describe().instances == info.instances

            # Scale out and in.
            for count in (1, 3, 1):
                info = await manager.set_instance_count("digits", count)
                assert (info.instance_count, info.current_instance_count, len(describe().instances)) == \
                       (count, count, count)
                results = await asyncio.gather(*(invoke() for _ in range(2 * count)))
                assert {r.instance_id for r in results} == {i["id"] for i in info.instances}
                for result in results:
                    check_prediction(result, "v2")

            manager.set_autoscaling("digits", {"min": 1, "max": 3, "target_invocations_per_instance": 10})
            assert describe().autoscaling["max"] == 3
            assert [e.name for e in manager.list()] == ["digits"]

            await manager.delete("digits")
            with pytest.raises(EndpointNotFoundError):
                manager.describe("digits")
            with pytest.raises(EndpointNotFoundError):
                await invoke()
            assert manager.list() == []
        finally:
            await manager.close()

    asyncio.run(scenario())
    assert len(seen) >= 6
    assert not [pid for pid in seen if alive(pid)], "worker processes left running"


@pytest.mark.timeout(240)
def test_canary_update_rolls_back_on_5xx_and_completes_when_healthy(artifacts, tmp_path):
    """The gateway's traffic shift: half the requests to the new model for the bake; its 5xx errors
    roll the update back by themselves, a healthy one goes on to take all traffic."""
    good, _, buggy = artifacts
    shift = {"steps": [50, 100], "wait_seconds": 3, "max_5xx_errors": 0, "max_model_latency_ms": 60000}

    async def scenario():
        manager = EndpointManager(tmp_path / "state", threads_per_instance=1)
        await manager.start()

        async def during_bake(update, body, content_type):
            while manager._endpoints["digits"].shift is None:
                assert not update.done(), update
                await asyncio.sleep(0.05)
            return await asyncio.gather(*(manager.invoke("digits", body, content_type, "application/json")
                                          for _ in range(30)))

        try:
            await manager.create_or_update("digits", good, instance_count=1, model_version="v1")
            update = asyncio.create_task(manager.create_or_update("digits", buggy, 1, "v2-buggy", traffic_shift=shift))
            answers = await during_bake(update, b"trigger the bug", "image/jpeg")
            statuses = sorted({a.status_code for a in answers})
            assert statuses == [400, 500]  # the old model refuses the bytes; the canary breaks on them
            with pytest.raises(EndpointUpdateError, match=r"rolled back at 50 % of the traffic: the new model had \d+ 5xx"):
                await update
            info = manager.describe("digits")
            assert (info.status, info.model_version, len(info.instances)) == ("InService", "v1", 1)
            check_prediction(await manager.invoke("digits", PNG, "image/png", "application/json"), "v1")

            update = asyncio.create_task(manager.create_or_update("digits", good, 1, "v3", traffic_shift=shift))
            answers = await during_bake(update, PNG, "image/png")
            served = {json.loads(a.body)["model_version"] for a in answers}
            assert served == {"v1", "v3"}  # both took part of the traffic during the bake
            info = await update
            assert (info.status, info.model_version) == ("InService", "v3")
            check_prediction(await manager.invoke("digits", PNG, "image/png", "application/json"), "v3")
        finally:
            await manager.close()

    asyncio.run(scenario())


def test_redeploys_keep_the_endpoint_capacity(tmp_path):
    """As SageMaker's UpdateEndpoint with RetainAllVariantProperties: an endpoint scaled to 2 stays at 2
    when the model it serves is deployed again (the same instances) and when a new model is deployed
    (2 instances of the new model), whatever hosting.initial_instance_count says."""
    from backends.local.backend import LocalBackend
    from backends.local.gateway.server import stop_gateway
    from backends.types import ModelVersion
    from core.config import HostingConfig
    from tests.helpers import make_model_artifact

    backend = LocalBackend(home=str(tmp_path / "home"))
    bucket = backend.storage.default_bucket()
    artifact = backend.storage.upload_file(make_model_artifact(tmp_path / "model"), f"s3://{bucket}/m/model.tar.gz")

    def version(number: int) -> ModelVersion:
        return ModelVersion("pets", number, artifact, {}, {}, "ab" * 32, f"job-{number}", 1.7e9)

    hosting, config = backend.hosting, HostingConfig(instance_type="ml.m5.large", initial_instance_count=1)

    def instances() -> tuple[str, list[int]]:
        [info] = backend.gateway.client().status()["endpoints"]
        assert info["status"] == "InService" and info["current_instance_count"] == info["instance_count"]
        return info["model_version"], sorted(i["pid"] for i in info["instances"])

    try:
        assert hosting.deploy_endpoint("pets", version(1), config).instance_count == 1
        backend.gateway.client().scale_endpoint("pets", 2)  # as the autoscaler would
        served, pids = instances()
        assert served == "pets/1" and len(pids) == 2

        assert hosting.deploy_endpoint("pets", version(1), config).instance_count == 2
        assert instances() == ("pets/1", pids)  # nothing changed

        updated = hosting.deploy_endpoint("pets", version(2), config)
        assert (updated.model_version, updated.instance_count) == ("pets/2", 2)
        served, new_pids = instances()
        assert served == "pets/2" and len(new_pids) == 2 and not set(new_pids) & set(pids)
    finally:
        backend.close()
        stop_gateway(backend.state)
