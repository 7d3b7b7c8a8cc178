"""What an AWS error means, decided once for every AWS module: its code, whether it says "no such
resource", calls that read "not found" as an answer (None, or False for a delete), and creates
that wait for a new role to become usable."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from backends.waiting import SYSTEM_CLOCK, Clock
from core.retry import PermanentError, is_role_propagation_delay

# Every service's way of saying "no such thing" (S3 answers HEAD with a bare 404).
NOT_FOUND_CODES = frozenset({
    "404", "NotFound", "NoSuchKey", "NoSuchBucket",  # S3
    "NoSuchEntity", "NoSuchEntityException",  # IAM
    "ResourceNotFound", "ResourceNotFoundException",  # SageMaker, Lambda
    "ObjectNotFoundException",  # Application Auto Scaling
    "ProvisionedConcurrencyConfigNotFoundException",  # Lambda
    "InvalidInstanceID.NotFound",  # EC2
})
# SageMaker (and moto's Application Auto Scaling) answer ValidationException for a missing resource.
_NOT_FOUND_MESSAGES = ("could not find", "does not exist", "not found", "no scalable target", "no scaling policy")


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str((response or {}).get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str((response or {}).get("Error", {}).get("Message", "")) if isinstance(response, dict) else ""


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_not_found(exc: BaseException) -> bool:
    """Whether `exc` is AWS saying the resource asked about does not exist."""
    if not isinstance(exc, ClientError):
        return False
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return True
    return code == "ValidationException" and any(m in error_message(exc).lower() for m in _NOT_FOUND_MESSAGES)


# SageMaker's "a job of that name exists". Only for jobs: on an endpoint, ResourceInUse is a conflicting
# operation in progress (transient), not a name that is taken.
JOB_EXISTS_CODES = frozenset({"ResourceInUse", "ResourceInUseException"})


def already_exists(exc: BaseException, *, job: bool = False) -> bool:
    """Whether `exc` is AWS refusing a create because the resource exists: the answer to botocore's resend
    of a create whose first send went through, or to a concurrent run's create. IAM says
    EntityAlreadyExists, SageMaker ValidationException "Cannot create already existing ..." for models,
    endpoint configurations and endpoints, and (`job=True`) ResourceInUse for a training or tuning job."""
    if not isinstance(exc, ClientError):
        return False
    code = error_code(exc)
    return (code == "EntityAlreadyExists" or (job and code in JOB_EXISTS_CODES)
            or (code == "ValidationException" and "already existing" in error_message(exc)))


def or_none(call: Callable[..., Any], **params) -> Any:
    """`call(**params)`, or None when AWS says the resource does not exist (a describe)."""
    try:
        return call(**params)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def if_exists(call: Callable[..., Any], **params) -> bool:
    """`call(**params)` and True, or False when AWS says there was nothing to act on (a delete)."""
    try:
        call(**params)
        return True
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise


ROLE_PROPAGATION_BUDGET_S = 120.0  # AWS: a new role is usable everywhere within about two minutes


class RoleNotUsableError(PermanentError):
    """A role was still refused after the propagation budget: its trust policy is wrong, not new."""


def while_role_propagates(call: Callable[..., Any], *, budget_s: float = ROLE_PROPAGATION_BUDGET_S,
                          clock: Clock = SYSTEM_CLOCK, **params) -> Any:
    """`call(**params)`, again with exponential backoff (1, 2, 4 ... 16 s) while AWS says the role
    cannot be assumed yet, for at most `budget_s`; then RoleNotUsableError (not retried again by
    the task: the budget already covers IAM's propagation)."""
    deadline, delay = clock.now() + budget_s, 1.0
    while True:
        try:
            return call(**params)
        except ClientError as exc:
            if not is_role_propagation_delay(exc):
                raise
            remaining = deadline - clock.now()
            if remaining <= 0:
                raise RoleNotUsableError(
                    f"{error_message(exc)} (still refused after {budget_s:g} s: check the role's trust policy "
                    "and that the caller may pass it)") from exc
            clock.sleep(min(delay, remaining))
            delay = min(delay * 2, 16.0)
