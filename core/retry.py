"""Which failures are worth retrying. One place decides, for every task and both backends."""
from __future__ import annotations

import socket

# AWS error codes that mean "try again later", whatever the service.
TRANSIENT_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "ProvisionedThroughputExceededException", "SlowDown",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalError", "InternalServerError",
    "InternalServiceError", "RequestTimeout", "RequestTimeoutException", "ResourceInUse", "ResourceInUseException",
    "ResourceConflictException", "EC2ThrottledException", "PriorRequestNotComplete", "ModelNotReadyException",
    "ConcurrentUpdateException", "ConcurrentModificationException",
})


class TransientError(RuntimeError):
    """Raised by our own code for a fault that a retry may fix (a gateway still starting, a lock held)."""


class PermanentError(RuntimeError):
    """A failure no retry fixes; the message says what to change."""


def is_transient(exc: BaseException | None) -> bool:
    """True for faults a retry with backoff may fix: throttling, 5xx, timeouts, dropped connections."""
    if exc is None or isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TransientError):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        code = response["Error"].get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_AWS_CODES or status in (429, 500, 502, 503, 504)
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ConnectError", "ConnectTimeout", "ReadTimeout", "RemoteProtocolError", "PoolTimeout"):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)  # httpx.HTTPStatusError
    if isinstance(status, int):
        return status in (429, 502, 503, 504)
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout))
