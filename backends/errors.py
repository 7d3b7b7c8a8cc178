"""The errors every backend raises, whichever it is (sagemaker-core's utils/exceptions.py and
Powertools' per-utility exceptions are the models).

Each is a PermanentError or a TransientError of core.retry, so a task's retry policy decides on
the class alone: a wait that ran out or a deployment that failed is not retried; a backend that
cannot answer right now is.

    PermanentError
        NotFoundError            a named resource (object, model version, endpoint, function) does not exist
        InvalidRequestError      the backend refused the request as it stands (a bad spec, data not staged)
        DeploymentFailedError    an endpoint, function or scaling change did not reach service; what
                                 served before still serves
        JobFailedError           a training or tuning job ended Failed or Stopped
        WaitTimedOutError        a wait for a resource to settle ran out of time
    TransientError
        ServiceUnavailableError  the backend could not answer now (starting, overloaded, a 5xx)
"""
from __future__ import annotations

from core.retry import PermanentError, TransientError


class NotFoundError(PermanentError):
    """A named resource does not exist."""


class InvalidRequestError(PermanentError):
    """The backend refused the request as it stands; the message says what to change."""


class DeploymentFailedError(PermanentError):
    """An endpoint, function or scaling change did not reach service; what served before still serves."""


class JobFailedError(PermanentError):
    """A training or tuning job ended Failed or Stopped; the message carries its reason."""


class WaitTimedOutError(PermanentError):
    """A wait ran out of time. Not transient: the wait was already as long as it should be."""


class ServiceUnavailableError(TransientError):
    """The backend could not answer now (starting, overloaded, a server error); a retry may succeed."""
