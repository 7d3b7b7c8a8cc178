"""The local autoscaler with a real EndpointManager and real model_worker processes, at a time scale of
60 (a datapoint a second): registration clamps the count at once, three datapoints above the target
scale out, fifteen of a low rate below 90 % of it scale back in (quiet has no datapoints: no scale-in)."""
import asyncio
import io
import time

import pytest
from PIL import Image

from backends.local.gateway.endpoints import EndpointManager
from backends.model_artifact import pack_model_artifact
from core.config import AutoscalingConfig
from core.scaling import scalable_target, target_tracking_policy
from training.model import ModelConfig, build_model, save_model
from tests.helpers import alive  # noqa: E402

pytestmark = pytest.mark.integration
NAME = "scaled"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    """A tiny untrained resnet18 as model.tar.gz."""
    root = tmp_path_factory.mktemp("artifact")
    config = ModelConfig("resnet18", ["cat", "dog", "fox"], image_size=32)
    save_model(build_model("resnet18", 3), config, root / "model")
    return str(pack_model_artifact(root / "model", root / "out" / "model.tar.gz"))


def registration(min_capacity: int, max_capacity: int) -> dict:
    """What the local backend PUTs to /_local/endpoints/{name}/autoscaling: a target of 100 invocations
    per instance per minute, no scale-out cooldown, 120 s of scale-in cooldown; at a time scale of 60
    (a datapoint is a second, the cooldown 2 s)."""
    config = AutoscalingConfig(min_capacity=min_capacity, max_capacity=max_capacity,
                               target_invocations_per_instance=100, scale_out_cooldown_seconds=0,
                               scale_in_cooldown_seconds=120)
    target = scalable_target(NAME, "AllTraffic", config)
    return {"min_capacity": target["MinCapacity"], "max_capacity": target["MaxCapacity"],
            "policy": target_tracking_policy(NAME, "AllTraffic", config), "time_scale": 60}


async def eventually(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out waiting"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.timeout(120)
def test_target_tracking_scales_out_and_in(artifact, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    seen: set[int] = set()

    async def scenario():
        # Two requests in a datapoint of a second are 120 a minute on one instance: above the target.
        manager = EndpointManager(tmp_path / "state", threads_per_instance=1)
        await manager.start()

        def describe():
            info = manager.describe(NAME)
            seen.update(i["pid"] for i in info.instances)
            return info

        def settled(count):
            info = describe()
            return (info.instance_count, info.current_instance_count, info.status) == (count, count, "InService") \
                and not any(a["status"] == "InProgress" for a in info.scaling_activities)

        def activities(**match):
            return [a for a in describe().scaling_activities if all(a.get(k) == v for k, v in match.items())]

        try:
            await manager.create_or_update(NAME, artifact, instance_count=2)
            describe()

            # Registering a scalable target brings the count within [min, max] at once, cooldowns or not.
            manager.set_autoscaling(NAME, registration(1, 1))
            await eventually(lambda: settled(1), 10)
            [clamp] = activities()
            assert (clamp["from"], clamp["to"], clamp["cause"], clamp["status"]) == (2, 1, "registration", "Successful")

            # Within range, with no traffic: nothing happens.
            manager.set_autoscaling(NAME, registration(1, 2))
            await asyncio.sleep(1.2)
            assert describe().instance_count == 1 and len(activities()) == 1

            # Traffic: three datapoints above the target scale out to the maximum; no scale-in meanwhile.
            scaled_out = False

            async def traffic(pause: float, until):
                while not until():
                    assert (await manager.invoke(NAME, jpeg, "image/jpeg", "application/json")).status_code == 200
                    await asyncio.sleep(pause)

            load = asyncio.create_task(traffic(0.05, lambda: scaled_out))
            await eventually(lambda: settled(2), 30)
            await asyncio.sleep(2.4)  # past the scale-in cooldown, still busy
            scaled_out = True
            await load
            info = describe()
            assert (info.instance_count, info.current_instance_count, info.status) == (2, 2, "InService")
            [out] = activities(direction="out")
            assert (out["from"], out["to"], out["cause"], out["status"]) == (1, 2, "policy", "Successful")
            assert "SageMakerVariantInvocationsPerInstance above 100/min for 3 of 3 datapoints" in out["reason"]
            assert out["end_time"] >= out["time"]
            assert not activities(direction="in", cause="policy")
            stopped = time.monotonic()

            # A low rate (a request every 0.6 s: 30 to 60 a minute on each of 2 instances, below 90): fifteen
            # datapoints below 90 % of the target, and back to the minimum.
            scaled_in = False
            low = asyncio.create_task(traffic(0.6, lambda: scaled_in))
            await eventually(lambda: settled(1), 40)
            scaled_in = True
            await low
            assert time.monotonic() - stopped >= 14  # fifteen datapoints of a second had to close first
            [back] = activities(direction="in", cause="policy")
            assert (back["from"], back["to"], back["status"]) == (2, 1, "Successful")
            assert back["time"] >= out["end_time"] + 1.0  # the scale-in cooldown
            assert [(a["cause"], a["direction"]) for a in describe().scaling_activities] == [
                ("registration", "in"), ("policy", "out"), ("policy", "in")]
            assert len(describe().instances) == 1 and describe().status == "InService"

            # Removing the policy stops the scaling; the endpoint keeps serving as it is.
            manager.set_autoscaling(NAME, None)
            for _ in range(3):
                await manager.invoke(NAME, jpeg, "image/jpeg", "application/json")
            await asyncio.sleep(1.2)
            assert describe().instance_count == 1 and len(activities()) == 3
        finally:
            await manager.close()

    asyncio.run(scenario())
    assert len(seen) >= 3
    assert not [pid for pid in seen if alive(pid)], "worker processes left running"
