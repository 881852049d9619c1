"""The one way tests wait: :func:`wait_for` polls a condition until it holds, with a deadline
and a message saying what it waited for, so a wait that never ends fails instead of hanging.

Every polling loop of the tests and their helpers goes through it (servers starting, tables
becoming ACTIVE, a proxy going idle, the tool reaching a point of its run, a terminal showing
a text). Nothing depends on the deadline being reached: it only turns a hang into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """A wait whose deadline passed (a TimeoutError for helpers that retry on it, an
    AssertionError for pytest's report)."""


class WaitAbandoned(AssertionError):
    """A wait given up early: what it waited for can no longer happen (e.g. the tool exited)."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    give_up: Callable[[], str | None] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``condition()`` every ``interval`` seconds until it returns something true, and
    return that. ``what``: what is waited for, for the messages. ``give_up()``: checked after
    each false answer; a text it returns is why the wait cannot succeed any more
    (:class:`WaitAbandoned`). ``details()``: more to say when the wait fails (e.g. the output
    so far). After ``timeout`` seconds: :class:`WaitTimeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        reason = give_up() if give_up is not None else None
        if reason:
            # one more look: it may have happened just before the reason arose
            result = condition()
            if result:
                return result
            raise WaitAbandoned(f"gave up waiting for {what}: {reason}" + _more(details))
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}" + _more(details))
        time.sleep(interval)


def _more(details: Callable[[], str] | None) -> str:
    return f"\n{details()}" if details is not None else ""
