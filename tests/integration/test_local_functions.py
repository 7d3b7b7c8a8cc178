"""Local Lambda functions: real handlers in execution-environment processes under Lambda's rules
(cold starts, reuse, provisioned and reserved concurrency, timeouts, errors, updates)."""
import asyncio
import base64
import contextlib
import functools
import json
import textwrap
import time
from pathlib import Path

import pytest

from backends.local.gateway.function_types import FunctionNotFoundError, InvalidPayloadError, TooManyRequestsError
from backends.local.gateway.functions import FunctionManager
from backends.local.gateway.guard import ControlInputError
from tests.helpers import make_special_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

ECHO = """
import os, time

def lambda_handler(event, context):
    print("echo handler says hi")  # must land in the log, not in the protocol
    before = context.get_remaining_time_in_millis()
    time.sleep(event.get("sleep", 0))
    return {"event": event, "request_id": context.aws_request_id, "function_name": context.function_name,
            "function_version": context.function_version, "memory": context.memory_limit_in_mb,
            "arn": context.invoked_function_arn, "log_group": context.log_group_name,
            "log_stream": context.log_stream_name, "remaining_before": before,
            "remaining_after": context.get_remaining_time_in_millis(), "pid": os.getpid(),
            "greeting": os.environ.get("GREETING"), "version": VERSION,
            "lambda_env": {k: os.environ.get(k) for k in ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                                                           "AWS_LAMBDA_FUNCTION_VERSION", "AWS_REGION",
                                                           "AWS_ACCESS_KEY_ID", "AWS_LAMBDA_INITIALIZATION_TYPE")}}
"""
SLEEPER = """
import time

def lambda_handler(event, context):
    time.sleep(event["sleep"])
    return {"slept": event["sleep"]}
"""
RAISER = """
def lambda_handler(event, context):
    raise ValueError("boom: " + event.get("why", ""))
"""
BROKEN_IMPORT = """
import no_such_module_for_this_test

def lambda_handler(event, context):
    return "unreachable"
"""
CRASHER = """
import os

def lambda_handler(event, context):
    os._exit(3)
"""


def write_code(folder: Path, source: str, version: str = "v1") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(textwrap.dedent(source) + f"\nVERSION = {version!r}\n")
    return str(folder)


def runtime_pids(tmp_path: Path) -> list[int]:
    """Live lambda_runtime processes whose code lies under this test's tmp_path."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                if "lambda_runtime" in cmdline and str(tmp_path) in cmdline:
                    pids.append(int(proc.name))
    return pids


def run_async(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return wrapper


@contextlib.asynccontextmanager
async def functions(tmp_path: Path, **kwargs):
    manager = FunctionManager(tmp_path / "state", **kwargs)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()
        assert runtime_pids(tmp_path) == []


async def eventually(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def invoke_json(manager, name, event):
    result = await manager.invoke(name, json.dumps(event).encode())
    return result, json.loads(result.payload)


@run_async
async def test_handler_result_context_and_environment_reuse(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path) as manager:
        info = await manager.create_or_update("echo", code, environment={"GREETING": "hello"}, memory_mb=256,
                                              timeout_s=5)
        assert info.environments == 0 and info.code_sha256

        first, body = await invoke_json(manager, "echo", {"n": 1, "sleep": 0.05})
        assert first.status_code == 200 and first.function_error is None and first.executed_version == "$LATEST"
        assert first.cold_start and first.init_duration_ms is not None
        assert body["event"] == {"n": 1, "sleep": 0.05} and body["greeting"] == "hello"
        assert body["function_name"] == "echo" and body["function_version"] == "$LATEST" and body["memory"] == "256"
        assert body["arn"].endswith(":function:echo") and body["log_group"] == "/aws/lambda/echo"
        assert "[$LATEST]" in body["log_stream"]
        assert 4000 < body["remaining_before"] <= 5000
        assert body["remaining_after"] <= body["remaining_before"] - 40  # the deadline is real
        assert body["request_id"] == first.request_id
        access_key = body["lambda_env"].pop("AWS_ACCESS_KEY_ID")
        assert body["lambda_env"] == {"AWS_LAMBDA_FUNCTION_NAME": "echo", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                                      "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": manager.region,
                                      "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}
        grant = manager.s3_grant(access_key)  # the function's own key, the one the local S3 answers
        assert access_key.startswith("LKIA") and grant is not None and grant.prefixes == ()
        assert "echo handler says hi" in first.log_result and f"REPORT RequestId: {first.request_id}" in first.log_result

        second, body2 = await invoke_json(manager, "echo", {"n": 2})
        assert not second.cold_start and body2["pid"] == body["pid"]  # the idle environment was reused
        assert body2["request_id"] != body["request_id"]
        assert "Init Duration" not in second.log_result and first.request_id not in second.log_result

        empty = await manager.invoke("echo", b"")  # Lambda passes {} for an empty payload
        assert json.loads(empty.payload)["event"] == {}

        info = manager.describe("echo")
        assert (info.invocations, info.cold_starts, info.errors, info.environments, info.busy) == (3, 1, 0, 1, 0)
        assert [f.name for f in manager.list()] == ["echo"]

        started = time.perf_counter()
        for _ in range(200):
            await manager.invoke("echo", b'{"n": 3}')
        per_call_ms = (time.perf_counter() - started) / 200 * 1000
        assert per_call_ms < 5, per_call_ms  # a warm hop is ~0.2-0.3 ms here; generous for busy CI machines


@run_async
async def test_provisioned_environments_are_warm(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path) as manager:
        with pytest.raises(ValueError, match="cannot exceed reserved"):
            await manager.create_or_update("warm", code, reserved_concurrency=1, provisioned_concurrency=2)
        info = await manager.create_or_update("warm", code, provisioned_concurrency=2)
        assert info.environments == 2 and info.provisioned_concurrency == 2

        results = await asyncio.gather(*(invoke_json(manager, "warm", {"sleep": 0.2}) for _ in range(2)))
        assert not any(result.cold_start for result, _ in results)
        assert {body["lambda_env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] for _, body in results} == {"provisioned-concurrency"}
        assert len({body["pid"] for _, body in results}) == 2

        third = await asyncio.gather(*(invoke_json(manager, "warm", {"sleep": 0.2}) for _ in range(3)))
        assert sum(result.cold_start for result, _ in third) == 1  # beyond provisioned: on-demand spill-over
        assert manager.describe("warm").cold_starts == 1


@run_async
async def test_idle_on_demand_environments_are_stopped(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path, idle_timeout_s=0.3) as manager:
        await manager.create_or_update("idle", code, provisioned_concurrency=1)
        await asyncio.gather(*(manager.invoke("idle", b'{"sleep": 0.1}') for _ in range(2)))  # one on-demand extra
        assert manager.describe("idle").environments == 2
        assert await eventually(lambda: manager.describe("idle").environments == 1)  # the provisioned one stays
        await asyncio.sleep(0.5)
        assert manager.describe("idle").environments == 1
        result = await manager.invoke("idle", b"{}")
        assert not result.cold_start


@run_async
async def test_reserved_concurrency_throttles_beyond_the_cap(tmp_path):
    code = write_code(tmp_path / "sleeper", SLEEPER)
    async with functions(tmp_path) as manager:
        await manager.create_or_update("capped", code, reserved_concurrency=2)
        outcomes = await asyncio.gather(*(manager.invoke("capped", b'{"sleep": 0.5}') for _ in range(4)),
                                        return_exceptions=True)
        throttled = [o for o in outcomes if isinstance(o, TooManyRequestsError)]
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(throttled) == 2 and len(answered) == 2
        assert all(json.loads(o.payload) == {"slept": 0.5} for o in answered)
        assert throttled[0].reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
        assert throttled[0].status_code == 429
        info = manager.describe("capped")
        assert (info.throttles, info.invocations, info.busy) == (2, 2, 0)

        await manager.create_or_update("off", code, reserved_concurrency=0)
        with pytest.raises(TooManyRequestsError):
            await manager.invoke("off", b'{"sleep": 0}')
        assert manager.describe("off").throttles == 1 and manager.describe("off").environments == 0


@run_async
async def test_timeout_kills_the_environment_and_the_next_call_works(tmp_path):
    code = write_code(tmp_path / "sleeper", SLEEPER)
    async with functions(tmp_path) as manager:
        await manager.create_or_update("slow", code, timeout_s=1)
        began = time.perf_counter()
        result = await manager.invoke("slow", b'{"sleep": 5}')
        assert time.perf_counter() - began < 4
        error = json.loads(result.payload)
        assert result.function_error == "Unhandled" and result.status_code == 200
        assert "Task timed out after 1.00 seconds" in error["errorMessage"] and result.request_id in error["errorMessage"]
        assert error["errorType"] == "Sandbox.Timedout"
        assert manager.describe("slow").environments == 0  # killed

        after = await manager.invoke("slow", b'{"sleep": 0}')
        assert after.function_error is None and json.loads(after.payload) == {"slept": 0} and after.cold_start
        assert manager.describe("slow").errors == 1


@run_async
async def test_handler_exceptions_crashes_and_init_errors(tmp_path):
    async with functions(tmp_path) as manager:
        await manager.create_or_update("raiser", write_code(tmp_path / "raiser", RAISER))
        result, error = await invoke_json(manager, "raiser", {"why": "testing"})
        assert result.function_error == "Unhandled"
        assert error["errorType"] == "ValueError" and error["errorMessage"] == "boom: testing"
        assert any("handler.py" in line and "lambda_handler" in line for line in error["stackTrace"])
        assert "ValueError: boom: testing" in result.log_result
        again, _ = await invoke_json(manager, "raiser", {})
        assert not again.cold_start  # an exception does not cost the environment
        assert manager.describe("raiser").errors == 2

        await manager.create_or_update("broken", write_code(tmp_path / "broken", BROKEN_IMPORT))
        result, error = await invoke_json(manager, "broken", {})
        assert result.function_error == "Unhandled" and result.cold_start
        assert error["errorType"] == "Runtime.ImportModuleError"
        assert "Unable to import module 'handler'" in error["errorMessage"]
        assert "no_such_module_for_this_test" in error["errorMessage"]
        assert manager.describe("broken").environments == 0

        await manager.create_or_update("nohandler", write_code(tmp_path / "echo", ECHO), handler="handler.missing")
        _, error = await invoke_json(manager, "nohandler", {})
        assert error["errorType"] == "Runtime.HandlerNotFound"

        await manager.create_or_update("crasher", write_code(tmp_path / "crasher", CRASHER))
        result, error = await invoke_json(manager, "crasher", {})
        assert result.function_error == "Unhandled" and error["errorType"] == "Runtime.ExitError"
        assert "exit status 3" in error["errorMessage"]


@run_async
async def test_update_delete_and_idempotence(tmp_path):
    source = tmp_path / "echo"
    write_code(source, ECHO, version="v1")
    async with functions(tmp_path) as manager:
        first = await manager.create_or_update("fn", str(source), environment={"GREETING": "a"})
        same = await manager.create_or_update("fn", str(source), environment={"GREETING": "a"})
        assert same.code_sha256 == first.code_sha256 and same.last_modified == first.last_modified

        _, body = await invoke_json(manager, "fn", {})
        assert body["version"] == "v1"
        write_code(source, ECHO, version="v2")  # editing the source does not change the deployed copy
        _, body = await invoke_json(manager, "fn", {})
        assert body["version"] == "v1"

        slow = asyncio.ensure_future(invoke_json(manager, "fn", {"sleep": 0.5}))
        await asyncio.sleep(0.1)
        updated = await manager.create_or_update("fn", str(source), environment={"GREETING": "b"})
        assert updated.code_sha256 != first.code_sha256
        new, new_body = await invoke_json(manager, "fn", {})
        assert new.cold_start and new_body["version"] == "v2" and new_body["greeting"] == "b"
        _, old_body = await slow  # the in-flight invocation finished on the old environment
        assert old_body["version"] == "v1" and old_body["greeting"] == "a"
        assert manager.describe("fn").environments == 1  # the old environment was retired once done
        assert await eventually(lambda: len(list((tmp_path / "state" / "fn" / "code").glob("[!.]*"))) == 1)

        await manager.delete("fn")
        with pytest.raises(FunctionNotFoundError):
            await manager.invoke("fn", b"{}")
        with pytest.raises(FunctionNotFoundError):
            manager.describe("fn")
        with pytest.raises(FunctionNotFoundError):
            await manager.delete("fn")
        assert await eventually(lambda: not (tmp_path / "state" / "fn").exists())


@run_async
async def test_the_real_lambda_handler_runs(tmp_path):
    """lambda_src/handler.py itself, in an environment: without ENDPOINT_NAME it answers its own 502."""
    async with functions(tmp_path) as manager:
        await manager.create_or_update("front", str(ROOT / "lambda_src"), timeout_s=10)
        image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
        result, body = await invoke_json(manager, "front", {"image": image})
        assert result.function_error is None, result.payload
        assert body["statusCode"] == 502 and body["headers"]["Content-Type"] == "application/json"
        answer = json.loads(body["body"])
        assert answer["error"]["code"] == "ConfigurationError" and answer["request_id"] == result.request_id
        assert '"request completed"' in result.log_result  # the handler's JSON log line went to the log


DEEP = """
import os

def lambda_handler(event, context):
    if event.get("deep_result"):
        value = []
        for _ in range(100_000):
            value = [value]
        return value
    if event.get("recurse"):
        def down():
            return down()
        return down()
    return {"pid": os.getpid()}
"""


@run_async
async def test_nothing_an_invocation_sends_or_returns_ends_the_environment(tmp_path):
    async with functions(tmp_path) as manager:
        await manager.create_or_update("deep", write_code(tmp_path / "deep", DEEP))
        _, first = await invoke_json(manager, "deep", {})
        result, error = await invoke_json(manager, "deep", {"deep_result": True})
        assert result.function_error == "Unhandled" and error["errorType"] == "Runtime.MarshalError"
        result, error = await invoke_json(manager, "deep", {"recurse": True})
        assert result.function_error == "Unhandled" and error["errorType"] == "RecursionError"
        for payload in (b"[" * 100_000 + b"]" * 100_000, b"[" * 1000 + b"]" * 1000, b"{nope"):  # runtime / gateway
            with pytest.raises(InvalidPayloadError, match="Could not parse request body into json"):
                await manager.invoke("deep", payload)
        _, last = await invoke_json(manager, "deep", {})
        assert last["pid"] == first["pid"]  # one environment answered all of it
        info = manager.describe("deep")
        assert (info.cold_starts, info.invocations, info.errors) == (1, 4, 2)


@run_async
async def test_each_function_has_its_own_s3_key_for_as_long_as_it_exists(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path) as manager:
        await manager.create_or_update("a", code, environment={"ALLOWED_S3_PREFIXES": "s3://bucket/a/,s3://bucket/x/"})
        await manager.create_or_update("b", code)
        _, a = await invoke_json(manager, "a", {})
        _, b = await invoke_json(manager, "b", {})
        key_a, key_b = a["lambda_env"]["AWS_ACCESS_KEY_ID"], b["lambda_env"]["AWS_ACCESS_KEY_ID"]
        assert key_a != key_b
        assert manager.s3_grant(key_a).prefixes == ("s3://bucket/a/", "s3://bucket/x/")
        await manager.create_or_update("a", code, environment={"ALLOWED_S3_PREFIXES": "s3://bucket/new/"})
        _, updated = await invoke_json(manager, "a", {})
        assert updated["lambda_env"]["AWS_ACCESS_KEY_ID"] == key_a  # an update keeps the key, with the new prefixes
        assert manager.s3_grant(key_a).prefixes == ("s3://bucket/new/",)
        await manager.delete("a")
        assert manager.s3_grant(key_a) is None and manager.s3_grant("LKIA-never-issued") is None


# -- the local cap on environment processes, and Event invocations ---------------------------------
@run_async
async def test_environments_alive_at_once_are_capped_for_all_functions_together(tmp_path):
    echo, sleeper = write_code(tmp_path / "echo", ECHO), write_code(tmp_path / "sleeper", SLEEPER)
    async with functions(tmp_path, max_environments=2) as manager:
        for name in ("a", "b", "c"):
            await manager.create_or_update(name, echo)
        await manager.create_or_update("slow", sleeper)
        _, a = await invoke_json(manager, "a", {})
        await invoke_json(manager, "b", {})
        assert len(runtime_pids(tmp_path)) == 2
        # c needs a third: the least recently used idle one (a's) is stopped for it
        result, _ = await invoke_json(manager, "c", {})
        assert result.cold_start and manager.describe("a").environments == 0
        assert await eventually(lambda: a["pid"] not in runtime_pids(tmp_path))
        assert [manager.describe(n).environments for n in ("b", "c")] == [1, 1]

        # both places busy: a cold start has nothing idle to stop and is throttled, as Lambda throttles
        busy = [asyncio.ensure_future(manager.invoke("slow", b'{"sleep": 1.5}')) for _ in range(2)]
        assert await eventually(lambda: (manager.describe("slow").busy, manager.describe("slow").environments) == (2, 2))
        with pytest.raises(TooManyRequestsError) as throttled:
            await manager.invoke("a", b"{}")
        assert throttled.value.reason == "ConcurrentInvocationLimitExceeded" and throttled.value.status_code == 429
        assert "local cap is 2" in str(throttled.value)
        info = manager.describe("a")
        assert (info.throttles, info.invocations, info.environments) == (1, 1, 0)
        assert [json.loads(r.payload) for r in await asyncio.gather(*busy)] == [{"slept": 1.5}] * 2
        assert len(runtime_pids(tmp_path)) <= 2

        # provisioned environments count toward the cap, and are never stopped to make room
        with pytest.raises(ControlInputError, match="would pass the local cap of 2") as refused:
            await manager.create_or_update("warm", echo, provisioned_concurrency=3)
        assert refused.value.field == "provisioned_concurrency"
        await manager.create_or_update("warm", echo, provisioned_concurrency=2)  # the idle on-demand ones go
        assert manager.describe("warm").environments == 2 and manager.describe("slow").environments == 0
        with pytest.raises(TooManyRequestsError):
            await manager.invoke("a", b"{}")
        with pytest.raises(ControlInputError, match="and the other functions' 2 would pass"):
            await manager.create_or_update("b", echo, provisioned_concurrency=1)
        assert not (await manager.invoke("warm", b"{}")).cold_start
        # an update's new provisioned environments may take the places of the ones they replace
        updated = await manager.create_or_update("warm", echo, environment={"GREETING": "v2"},
                                                 provisioned_concurrency=2)
        assert updated.environments == 2
        _, body = await invoke_json(manager, "warm", {})
        assert body["greeting"] == "v2"
        assert len(runtime_pids(tmp_path)) <= 2


@run_async
async def test_event_invocations_wait_in_a_bounded_queue_and_throttled_ones_are_retried_then_dropped(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path, max_queued_events=2, event_workers=1, event_retry_delays_s=(0.05, 0.05)) as manager:
        await manager.create_or_update("off", code, reserved_concurrency=0)  # every invocation is throttled
        with pytest.raises(InvalidPayloadError):
            manager.submit_event("off", b"{nope")
        with pytest.raises(FunctionNotFoundError):
            manager.submit_event("nope", b"{}")
        manager.submit_event("off", b'{"n": 1}')
        manager.submit_event("off", b'{"n": 2}')
        with pytest.raises(TooManyRequestsError) as full:  # the worker has not taken one yet: the queue holds 2
            manager.submit_event("off", b'{"n": 3}')
        assert full.value.status_code == 429 and "the local queue holds 2" in str(full.value)
        assert await eventually(lambda: manager.describe("off").async_events_dropped == 2)
        info = manager.describe("off")
        # each event tried 3 times (two retries), plus the refused third
        assert (info.async_events_received, info.throttles, info.invocations) == (2, 7, 0)

    async with functions(tmp_path, max_queued_event_bytes=100, event_workers=1) as manager:
        await manager.create_or_update("echo", code)
        manager.submit_event("echo", json.dumps({"pad": "x" * 60}).encode())
        with pytest.raises(TooManyRequestsError, match="bytes"):  # its bytes count until it is delivered
            manager.submit_event("echo", json.dumps({"pad": "y" * 60}).encode())
        assert await eventually(lambda: (manager.describe("echo").invocations, manager.describe("echo").busy) == (1, 0))
        manager.submit_event("echo", json.dumps({"pad": "z" * 60}).encode())  # delivered: its bytes were given back
        assert await eventually(lambda: manager.describe("echo").invocations == 2)


@run_async
async def test_events_past_the_cap_wait_for_a_place_and_all_run(tmp_path):
    code = write_code(tmp_path / "sleeper", SLEEPER)
    async with functions(tmp_path, max_environments=2, event_retry_delays_s=(0.5, 1, 2, 4, 8)) as manager:
        await manager.create_or_update("slow", code)
        for _ in range(4):
            manager.submit_event("slow", b'{"sleep": 0.5}')
        assert await eventually(lambda: manager.describe("slow").invocations == 4, timeout_s=30)
        assert await eventually(lambda: manager.describe("slow").busy == 0)
        info = manager.describe("slow")
        # two environments did all of it: the two throttled events ran on them once they were idle
        assert (info.cold_starts, info.environments, info.async_events_dropped) == (2, 2, 0) and info.throttles >= 2


# -- the code folder -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["link loop", "link to /", "named pipe"])
@run_async
async def test_a_code_folder_with_links_or_special_files_is_refused_naming_the_path(tmp_path, kind):
    code = Path(write_code(tmp_path / "code", ECHO))
    (code / "pkg").mkdir()
    bad = code / "pkg" / "bad"
    make_special_file(bad, kind)
    async with functions(tmp_path) as manager:
        with pytest.raises(ControlInputError) as refused:
            await manager.create_or_update("fn", str(code))
        assert refused.value.field == "code_dir" and str(bad) in str(refused.value)
        assert ("symbolic link" if kind != "named pipe" else "named pipe") in str(refused.value)
        with pytest.raises(FunctionNotFoundError):
            manager.describe("fn")
        assert list((tmp_path / "state" / "fn" / "code").iterdir()) == []  # no partial copy left behind


@run_async
async def test_stale_partial_copies_are_cleaned_and_handlers_are_checked(tmp_path):
    code = write_code(tmp_path / "echo", ECHO)
    async with functions(tmp_path) as manager:
        stale = tmp_path / "state" / "fn" / "code" / ".tmp-0123abcd"
        stale.mkdir(parents=True)
        (stale / "handler.py").write_text("left by a gateway that was killed while copying")
        await manager.create_or_update("fn", code)
        assert not stale.exists()
        for handler in ("h" * 129, "handler .lambda_handler", ""):
            with pytest.raises(ControlInputError, match="1-128 characters, no white space") as refused:
                await manager.create_or_update("fn", code, handler=handler)
            assert refused.value.field == "handler"
        await manager.create_or_update("fn", code, handler="handler.lambda_handler".rjust(128, "_")[-128:])
