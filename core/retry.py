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


# How AWS says a role (or instance profile) made seconds ago cannot be used yet: IAM is eventually
# consistent, and SageMaker, Lambda and EC2 check the role when the resource is created.
_ROLE_NOT_YET_USABLE = (
    "could not assume role",  # SageMaker CreateModel / CreateTrainingJob / CreateHyperParameterTuningJob
    "cannot be assumed by lambda",  # Lambda CreateFunction / UpdateFunctionConfiguration
    "invalid iam instance profile",  # EC2 RunInstances with a new instance profile
)


def is_role_propagation_delay(exc: BaseException | None) -> bool:
    """True when AWS refused a create because a role or instance profile is not usable yet (a new
    role takes seconds, at worst about two minutes, to reach every service)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or "Error" not in response:
        return False
    message = str(response["Error"].get("Message", "")).lower()
    return any(marker in message for marker in _ROLE_NOT_YET_USABLE)


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
        return (code in TRANSIENT_AWS_CODES or status in (429, 500, 502, 503, 504)
                or is_role_propagation_delay(exc))
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ConnectError", "ConnectTimeout", "ReadTimeout", "RemoteProtocolError", "PoolTimeout"):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)  # httpx.HTTPStatusError
    if isinstance(status, int):
        return status in (429, 502, 503, 504)
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout))
