"""Waiting for something to settle where botocore has no waiter (provisioned concurrency, an S3
status marker, a tuning job's trials, the local gateway): one loop, with a clock tests can replace."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from backends.errors import WaitTimedOutError

T = TypeVar("T")


@dataclass(frozen=True)
class Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


def wait_for(probe: Callable[[], T | None], *, what: str, timeout_s: float, interval_s: float,
             clock: Clock = SYSTEM_CLOCK) -> T:
    """Call `probe` every `interval_s` until it returns something other than None, and return that.

    An exception from `probe` ends the wait (a failed state is the probe's to raise). Past
    `timeout_s`: WaitTimedOutError naming `what`.
    """
    deadline = clock.now() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        remaining = deadline - clock.now()
        if remaining <= 0:
            raise WaitTimedOutError(f"{what}: not done after {timeout_s:g} s")
        clock.sleep(min(interval_s, remaining))
