"""botocore's waiters (and the few it lacks), with what their end means decided once for every AWS module.

A waiter ends in one of four ways, and each has one meaning here:
- success: returns None;
- a failure state of the waiter (an endpoint Failed, a function update Failed): returns the last
  response, for the caller to say why;
- out of attempts: WaitTimedOutError (permanent: the wait was as long as it should be, and a task
  retry must not wait as long again);
- a call failed in a way the waiter does not expect (throttling or a 5xx past botocore's own
  retries, access denied): that ClientError is raised as it came, for core.retry to class.
"""
from __future__ import annotations

import math

from botocore.exceptions import ClientError, WaiterError
from botocore.waiter import WaiterModel, create_waiter_with_client

from backends.errors import WaitTimedOutError

# Waiters botocore lacks, in its own model format; wait_until takes their names as it takes botocore's.
_OWN = WaiterModel({"version": 2, "waiters": {
    # botocore's endpoint_in_service with failure acceptors for every state an endpoint does not leave by
    # itself: it has one for Failed only, so it polls an UpdateRollbackFailed or OutOfService endpoint
    # until it runs out of time.
    "EndpointSettled": {"operation": "DescribeEndpoint", "delay": 30, "maxAttempts": 120, "acceptors": [
        {"matcher": "path", "argument": "EndpointStatus", "state": "success", "expected": "InService"},
        *({"matcher": "path", "argument": "EndpointStatus", "state": "failure", "expected": status}
          for status in ("Failed", "UpdateRollbackFailed", "OutOfService")),
        {"matcher": "error", "state": "failure", "expected": "ValidationException"},  # gone
    ]},
}})
_OWN_NAMES = {"endpoint_settled": "EndpointSettled"}

_STATUS_KEYS = ("EndpointStatus", "State", "LastUpdateStatus")


def _status(response: dict | None) -> str:
    response = response or {}
    for place in (response, response.get("Configuration") or {}):
        for key in _STATUS_KEYS:
            if key in place:
                return f" (still {place[key]})"
    return ""


def wait_until(client, waiter_name: str, *, what: str, timeout_s: float, poll_seconds: float,
               **params) -> dict | None:
    """Run `client`'s botocore waiter `waiter_name` on `params` for about `timeout_s`, polling every
    `poll_seconds`; None on success, the last response when the waiter reached a failure state.

    Raises:
        WaitTimedOutError: `what` had not happened after timeout_s.
        ClientError: a call failed with an error the waiter has no acceptor for.
    """
    waiter = (create_waiter_with_client(_OWN_NAMES[waiter_name], _OWN, client) if waiter_name in _OWN_NAMES
              else client.get_waiter(waiter_name))
    attempts = max(1, math.ceil(timeout_s / max(poll_seconds, 0.01)))
    try:
        waiter.wait(**params, WaiterConfig={"Delay": poll_seconds, "MaxAttempts": attempts})
        return None
    except WaiterError as exc:
        last = exc.last_response or {}
        if "Max attempts exceeded" in str(exc):
            raise WaitTimedOutError(f"{what}: not done after {timeout_s:g} s{_status(last)}") from None
        if "terminal failure state" in str(exc):
            return last
        if isinstance(last.get("Error"), dict):
            raise ClientError(last, waiter.config.operation) from None
        raise
