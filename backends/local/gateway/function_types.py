"""What the local Lambda functions answer with (functions.py): the Invoke API's errors as Lambda
names them, a function's description, one invocation's reply, and a queued Event invocation."""
from __future__ import annotations

from dataclasses import dataclass

from backends.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError


class FunctionNotFoundError(NotFoundError):
    """No function of that name (or no such version or alias of it)."""

    status_code, error_type = 404, "ResourceNotFoundException"  # what the Invoke API answers


class InvalidPayloadError(InvalidRequestError):
    """The payload is not JSON: Lambda refuses it before the handler runs."""

    status_code, error_type = 400, "InvalidRequestContentException"

    def __init__(self, reason: str):
        super().__init__(f"Could not parse request body into json: Could not parse payload into json: {reason}")


class TooManyRequestsError(ServiceUnavailableError):
    """Lambda's throttle: the reserved (or the account's) concurrency is in use."""

    status_code, error_type = 429, "TooManyRequestsException"

    def __init__(self, name: str, reason: str = "ReservedFunctionConcurrentInvocationLimitExceeded",
                 detail: str = ""):
        super().__init__(f"Rate Exceeded. ({name}: {reason}{'; ' + detail if detail else ''})")
        self.reason = reason


@dataclass
class QueuedEvent:
    name: str
    payload: bytes
    qualifier: str | None


@dataclass
class FunctionInfo:
    name: str
    code_sha256: str  # base64 of a sha256 over the folder's files (Lambda's CodeSha256 format)
    handler: str
    environment: dict[str, str]
    memory_mb: int
    timeout_s: int
    reserved_concurrency: int | None
    provisioned_concurrency: int
    last_modified: str
    invocations: int = 0
    cold_starts: int = 0
    throttles: int = 0
    errors: int = 0
    environments: int = 0  # alive (starting, idle or busy), old configurations' draining ones included
    busy: int = 0  # invocations in flight
    arn: str = ""
    code_dir: str = ""  # the immutable copy the environments run
    last_init_error: str | None = None
    async_events_received: int = 0  # Event invocations queued (Lambda's AsyncEventsReceived)
    async_events_dropped: int = 0  # ... given up on after throttles (Lambda's AsyncEventsDropped)


@dataclass
class FunctionReply:
    payload: bytes
    status_code: int = 200
    function_error: str | None = None  # "Unhandled": the handler raised, timed out, or its runtime failed
    executed_version: str = "$LATEST"
    log_result: str = ""  # the invocation's log lines (last 4 KB), plain text
    cold_start: bool = False
    duration_ms: float = 0.0
    request_id: str = ""
    init_duration_ms: float | None = None
