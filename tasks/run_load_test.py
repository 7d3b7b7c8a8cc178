"""run_load_test: an open-loop load against the pipeline's endpoint (raw images through the SageMaker
Runtime API) or function ({"image": base64} through the Lambda Invoke API, its alias), at the rates
of core.loadtest's schedule, with the endpoint's instance count sampled every second.

A scheduler sends each request at its due time to a bounded thread pool; when the pool is full the
request is dropped (counted), never sent late; latency runs from the due time, so a client that
falls behind shows in it. Each request is sent once (botocore's retries are taken off these clients:
a retried 429 would hide the throttle and its wait). Sending stops at max_requests or max_seconds;
answers are awaited for ANSWER_GRACE_SECONDS more, then whatever is still out counts as an error.
The images are --images (a folder or an s3:// prefix), else the test split of data.source: a local
folder's, or a sample of an s3:// source's test/ (MAX_S3_IMAGES, spread over its classes).
`prepare` checks everything the test needs, with one request answered, before it starts (the CLI
calls it before any Prefect server starts, so bad input is one line, not a flow's traceback).
On the local backend, a time scale other than 1 registers the configuration's autoscaling policy at
that time scale for the test and registers it again at real time after it.
"""
from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from backends.aws.errors import is_not_found
from backends.aws.functions import ALIAS
from backends.backend import Backend
from backends.types import EndpointState
from core.config import PipelineConfig
from core.datasets import dataset_root
from core.loadtest import DROPPED, ERROR, OK, THROTTLED, LoadTestSettings, Outcome, Planned
from core.retry import PermanentError
from tasks import artifacts

MAX_IMAGES = 200  # of a folder, sent in turn; enough variety for a classifier, little memory
MAX_S3_IMAGES = 50  # of an s3:// prefix, read before the test starts: a few MB and seconds
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
THROTTLE_CODES = {"ThrottlingException", "TooManyRequestsException", "Throttling", "ThrottledException"}
ANSWER_GRACE_SECONDS = 30.0
SERVING = ("InService", "Updating", "SystemUpdating")  # an endpoint being scaled or updated still serves
Sample = tuple[float, "int | None"]  # (seconds from the start, instance count; None: the describe failed)


@dataclass(frozen=True)
class LoadRecord:
    target: str  # "endpoint NAME" or "function NAME:ALIAS"
    outcomes: list[Outcome]
    samples: list[Sample]
    duration: float  # the schedule's length (answers may come after it)
    stopped: str  # why sending ended
    images: int


def images_location(config: PipelineConfig, settings: LoadTestSettings) -> str:
    """Where the images to send are: settings.images (a folder or an s3:// prefix), else the test split of
    data.source (a local folder's, or an s3:// source's test/)."""
    if settings.images:
        return settings.images if settings.images.startswith("s3://") else str(Path(settings.images).expanduser())
    source = config.data.source
    if source.startswith("s3://"):
        return source.rstrip("/") + "/test"
    if "://" not in source and Path(source).expanduser().is_dir():
        return str(dataset_root(Path(source).expanduser()) / "test")
    raise PermanentError(f"data.source {source} is neither a local folder nor an s3:// prefix: give the images to "
                         "send (--images DIR or s3://bucket/prefix)")


def spread(names: Sequence[str], limit: int) -> list[str]:
    """At most `limit` of `names`, evenly spaced (sorted class folders each keep their share)."""
    return list(names) if len(names) <= limit else [names[i * len(names) // limit] for i in range(limit)]


def image_names(location: str, storage) -> list[str]:
    """The PNG and JPEG images to send at `location`, relative to it, sorted: up to MAX_IMAGES of a folder,
    MAX_S3_IMAGES of an s3:// prefix (read through `storage`), spread over all there are."""
    if location.startswith("s3://"):
        try:
            found = storage.list_objects(location)
        except Exception as exc:
            if is_not_found(exc):  # no such bucket
                raise PermanentError(f"images: {location} cannot be listed: {exc}") from None
            raise
        limit = MAX_S3_IMAGES
    else:
        folder = Path(location)
        if not folder.is_dir():
            raise PermanentError(f"images: {folder} is not a folder")
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        limit = MAX_IMAGES
    names = [name for name in found if Path(name).suffix.lower() in IMAGE_TYPES]
    if not names:
        raise PermanentError(f"no .png, .jpg or .jpeg images under {location}")
    return spread(names, limit)


def read_images(location: str, names: Sequence[str], storage) -> list[tuple[bytes, str]]:
    """The images `names` at `location` (see image_names), with their content types."""
    read = ((lambda name: storage.read_object(f"{location.rstrip('/')}/{name}")) if location.startswith("s3://")
            else (lambda name: (Path(location) / name).read_bytes()))
    return [(read(name), IMAGE_TYPES[Path(name).suffix.lower()]) for name in names]


def single_attempt(client):
    """`client` with botocore's retry handler taken off: each request is sent once."""
    name = client.meta.service_model.service_id.hyphenize()
    client.meta.events.unregister(f"needs-retry.{name}", unique_id=f"retry-config-{name}")
    return client


def _failure(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        kind = THROTTLED if code in THROTTLE_CODES or status == 429 else ERROR
        return kind, f"{code or status}: {exc.response.get('Error', {}).get('Message', '')}"[:300]
    return ERROR, f"{type(exc).__name__}: {exc}"[:300]


Sender = Callable[[int], tuple[str, str]]  # request number -> (ok | error | throttled, detail)


def endpoint_sender(client, name: str, images: Sequence[tuple[bytes, str]]) -> Sender:
    def send(number: int) -> tuple[str, str]:
        body, content_type = images[number % len(images)]
        try:
            client.invoke_endpoint(EndpointName=name, ContentType=content_type, Accept="application/json",
                                   Body=body)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            return _failure(exc)
        return OK, ""
    return send


def function_sender(client, name: str, images: Sequence[tuple[bytes, str]], qualifier: str | None = ALIAS) -> Sender:
    payloads = [json.dumps({"image": base64.b64encode(body).decode()}).encode() for body, _ in images]
    extra = {"Qualifier": qualifier} if qualifier else {}

    def send(number: int) -> tuple[str, str]:
        try:
            response = client.invoke(FunctionName=name, Payload=payloads[number % len(payloads)], **extra)
            answer = json.loads(response["Payload"].read() or b"null")
        except (ClientError, BotoCoreError) as exc:
            return _failure(exc)
        except ValueError as exc:
            return ERROR, f"the answer is not JSON: {exc}"
        if "FunctionError" in response:
            return ERROR, f"{answer.get('errorType')}: {answer.get('errorMessage')}"[:300]
        status = answer.get("statusCode") if isinstance(answer, dict) else None
        if status == 200:
            return OK, ""
        return (THROTTLED if status == 429 else ERROR), f"status {status}: {str(answer.get('body', ''))[:200]}"
    return send


def run_open_loop(schedule: Sequence[Planned], send: Sender, *, duration: float, max_in_flight: int,
                  sample: Callable[[], int | None],
                  on_sample: Callable[[float, list, list[Sample]], None] | None = None,
                  grace: float = ANSWER_GRACE_SECONDS, clock: Callable[[], float] = time.perf_counter
                  ) -> tuple[list[Outcome], list[Sample]]:
    """Send `schedule` open loop; sample the instance count every second (then call `on_sample` with the
    time, the outcomes so far and the samples) until `duration` has passed and the answers are in, or
    `grace` more seconds. Returns the outcomes, in schedule order, and the samples."""
    outcomes: list[Outcome | None] = [None] * len(schedule)
    samples: list[Sample] = []
    lock, done = threading.Lock(), threading.Event()
    in_flight = 0
    start = clock()

    def sampler() -> None:  # off the sending path: a slow describe or display never delays a request
        tick = 0
        while True:
            try:
                count = sample()
            except Exception:  # noqa: BLE001 - a failed describe is a gap in the series, not the end of the test
                count = None
            samples.append((clock() - start, count))
            if on_sample is not None:
                with contextlib.suppress(Exception):  # a display must never fail the test it shows
                    on_sample(clock() - start, outcomes, samples)
            tick += 1
            if done.wait(max(0.0, start + tick - clock())):
                return

    def worker(number: int, planned: Planned) -> None:
        nonlocal in_flight
        try:
            status, detail = send(number)
        except Exception as exc:  # noqa: BLE001 - a sender's bug is an error of that request, not of the test
            status, detail = ERROR, f"{type(exc).__name__}: {exc}"
        outcomes[number] = Outcome(planned.offset, planned.step, status, (clock() - start - planned.offset) * 1000,
                                   detail)
        with lock:
            in_flight -= 1

    def wait_until(offset: float) -> None:
        while (left := start + offset - clock()) > 0:
            time.sleep(left)

    # The sampler sees this thread's context (Prefect's settings and run), so its progress reaches the run.
    watcher = threading.Thread(target=contextvars.copy_context().run, args=(sampler,), name="load-sampler",
                               daemon=True)
    watcher.start()
    pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="load")
    try:
        for number, planned in enumerate(schedule):
            wait_until(planned.offset)
            with lock:
                full = in_flight >= max_in_flight
                in_flight += 0 if full else 1
            if full:
                outcomes[number] = Outcome(planned.offset, planned.step, DROPPED)
            else:
                pool.submit(worker, number, planned)
        wait_until(duration)
        end = clock() - start + grace
        while in_flight > 0 and clock() - start < end:
            time.sleep(0.05)
    finally:
        done.set()
        watcher.join(timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)
    now = clock() - start
    return [o if o is not None else Outcome(p.offset, p.step, ERROR, (now - p.offset) * 1000,
                                            f"no answer {grace:g} s after the test ended")
            for o, p in zip(list(outcomes), schedule)], samples


@contextlib.contextmanager
def time_scaled(config: PipelineConfig, backend: Backend, time_scale: float) -> Iterator[None]:
    """The configuration's autoscaling policy at `time_scale` while the block runs, then at real time again."""
    if time_scale == 1:
        yield
        return
    names, variant = config.names, config.hosting.variant_name
    backend.hosting.register_autoscaling(names.endpoint, variant, config.autoscaling, time_scale=time_scale)
    try:
        yield
    finally:
        backend.hosting.register_autoscaling(names.endpoint, variant, config.autoscaling)


def _progress_text(elapsed: float, duration: float, outcomes: list, samples: list[Sample]) -> str:
    answered = [o for o in outcomes if o is not None]
    failed = sum(o.status != OK for o in answered)
    instances = next((c for _, c in reversed(samples) if c is not None), "?")
    return (f"{elapsed:.0f}/{duration:.0f} s: {len(answered)} done, {failed} failed or dropped, "
            f"{instances} instance(s)")


@dataclass(frozen=True)
class Prepared:
    """What a load test sends, and to what: checked, with one request answered."""

    endpoint: EndpointState
    images: list[tuple[bytes, str]]
    send: Sender
    what: str  # "endpoint NAME" or "function NAME:ALIAS"


def prepare(config: PipelineConfig, backend: Backend, settings: LoadTestSettings,
            images_limit: int | None = None) -> Prepared:
    """The endpoint serving, the images read (at most `images_limit`), the sender made, and one request
    answered; PermanentError saying what is missing otherwise."""
    endpoint = backend.hosting.describe_endpoint(config.names.endpoint)
    if endpoint is None:
        raise PermanentError(f"endpoint {config.names.endpoint} is not deployed: deploy it first (sagemaker-flows "
                             "run, or demo)")
    if endpoint.status not in SERVING:
        raise PermanentError(f"endpoint {endpoint.name} is {endpoint.status}: it cannot serve a load test")
    location = images_location(config, settings)
    names = image_names(location, backend.storage)
    images = read_images(location, names[:images_limit], backend.storage)
    if settings.target == "endpoint":
        send, what = endpoint_sender(single_attempt(backend.client("sagemaker-runtime")), endpoint.name, images), \
            f"endpoint {endpoint.name}"
    else:
        send, what = function_sender(single_attempt(backend.client("lambda")), config.names.function, images), \
            f"function {config.names.function}:{ALIAS}"
    status, detail = send(0)  # one request first: a missing function or a refused image ends here
    if status != OK:
        raise PermanentError(f"the first request to {what} failed ({detail}); nothing was load tested")
    return Prepared(endpoint, images, send, what)


@task(name="run_load_test", cache_policy=NO_CACHE)  # never retried: a retry would send the load again
def run_load_test(config: PipelineConfig, backend: Backend, settings: LoadTestSettings) -> LoadRecord:
    logger = get_run_logger()
    ready = prepare(config, backend, settings)
    endpoint, images, send, what = ready.endpoint, ready.images, ready.send, ready.what
    schedule, duration = settings.schedule(), settings.duration()
    logger.info("load test of %s: %d requests over %.0f s (%d images), at most %d in flight, time scale %g",
                what, len(schedule), duration, len(images), settings.max_in_flight, settings.time_scale)
    progress = artifacts.Progress("load-test", f"load test of {what}")

    def sample() -> int | None:
        state = backend.hosting.describe_endpoint(endpoint.name)
        return None if state is None else state.instance_count

    def on_sample(elapsed: float, outcomes: list, samples: list[Sample]) -> None:
        progress.update(min(1.0, elapsed / duration), _progress_text(elapsed, duration, outcomes, samples))

    with time_scaled(config, backend, settings.time_scale):
        outcomes, samples = run_open_loop(schedule, send, duration=duration, max_in_flight=settings.max_in_flight,
                                          sample=sample, on_sample=on_sample)
    with contextlib.suppress(Exception):
        progress.update(1.0, f"done: {len(outcomes)} requests to {what}")
    return LoadRecord(what, outcomes, samples, duration, settings.stop_reason(), len(images))
