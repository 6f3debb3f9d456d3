"""Egress attempt deadlines on one loop timer, not one timer per attempt.

``aiohttp.ClientTimeout(total=...)`` arms a loop timer for every request and
cancels it when the request ends: a ``call_at`` and a ``cancel`` that cost
about as much as the rest of the attempt's instrumentation together
(bench/README.md, "What the parts cost"), for a timer that almost never fires.

:class:`Deadlines` keeps every attempt's deadline in one table and one loop
timer armed for the earliest of them. An attempt that ends leaves the timer
as it is; when it fires it expires what is due and is armed again for the
earliest deadline still pending. With one per-attempt timeout, deadlines
arrive in order, so under a steady load the timer fires about once per
timeout period, whatever the request rate.

What expiring does is what aiohttp's own total timeout does:

* while the attempt waits for its connection and the response head (the
  egress middleware waits on the handler inside the :class:`Deadline`), its
  task is cancelled and ``TimeoutError`` raised in its place; a cancellation
  that came from elsewhere is left to propagate;
* once the head is in, a body not yet complete fails with
  :class:`BodyTimeoutError` (aiohttp's ``ServerTimeoutError``, a
  ``TimeoutError``, naming the upstream), whoever reads it
  and however (``read()``, ``json()``, ``content``), as aiohttp's read
  timeouts do; a body that had arrived whole is still read.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any

from aiohttp import ClientResponse, ServerTimeoutError
from yarl import URL

__all__ = ["BodyTimeoutError", "Deadline", "Deadlines"]

# A loop may run a timer up to its clock's resolution early (uvloop's is a
# millisecond): a deadline this close to now is due.
_RESOLUTION = 0.001


class BodyTimeoutError(ServerTimeoutError):
    """A response body not complete by its attempt's deadline; ``url`` is what was asked."""

    def __init__(self, url: URL) -> None:
        super().__init__("body not complete in time")
        self.url = url


class Deadline:
    """One attempt's deadline, expired by :class:`Deadlines` (see the module docstring)."""

    __slots__ = ("_cancelling", "_deadlines", "_expired", "_tasks", "response", "when")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        # The response, once its head is in: its body is what is left to bound.
        self.response: ClientResponse | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._expired = False
        self._cancelling = 0

    @property
    def expired(self) -> bool:
        return self._expired

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._deadlines.loop)
        if task is None:
            raise RuntimeError("a deadline is waited on inside a task")
        if self._expired:
            raise TimeoutError
        # Cancelled already as it comes in: that cancellation is not ours to turn.
        self._cancelling = task.cancelling()
        self._tasks.append(task)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._tasks.pop() if self._tasks else None
        if task is None or exc_type is not asyncio.CancelledError or not self._expired:
            return
        # Uncancel what we cancelled; time out unless another cancellation is pending.
        if task.uncancel() <= self._cancelling:
            raise TimeoutError from exc

    def expire(self) -> None:
        if self._expired:
            return
        self._expired = True
        for task in set(self._tasks):
            task.cancel()
        response = self.response
        body = None if response is None else response.content
        if response is not None and body is not None and not body.is_eof():
            body.set_exception(BodyTimeoutError(response.real_url))

    def close(self) -> None:
        """The attempt is over: forget the deadline (the timer is left as it is)."""
        self._deadlines.pending.pop(self, None)
        # The response holds its attempt, which holds this: no cycle for the collector.
        self.response = None


class Deadlines:
    """Every pending :class:`Deadline` of one event loop, on one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Insertion-ordered: the scan on firing visits the oldest first.
        self.pending: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def start(self, when: float) -> Deadline:
        """A deadline at loop time ``when``; :meth:`Deadline.close` it when the attempt ends."""
        deadline = Deadline(self, when)
        self.pending[deadline] = None
        if when < self._armed_for:
            self._arm(when)
        return deadline

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        now = self.loop.time() + _RESOLUTION
        earliest = math.inf
        for deadline in list(self.pending):
            if deadline.when <= now:
                del self.pending[deadline]
                deadline.expire()
            elif deadline.when < earliest:
                earliest = deadline.when
        if earliest < math.inf:
            self._arm(earliest)

    def close(self) -> None:
        """Stop the timer (the loop is closing); pending deadlines no longer expire."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf
        self.pending.clear()
