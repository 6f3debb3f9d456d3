"""Attempt deadlines on one loop timer (usvc.deadlines), alone and under the egress client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

import usvc
from usvc.deadlines import Deadlines

from .conftest import Serve, ServiceFactory

LONG = 10.0  # a deadline no test waits out: one that is cut short takes less than half of it
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def problem_of(serve: Serve, svc: usvc.Service, path: str) -> tuple[int, Any]:
    """Serve ``svc`` and GET ``path``: (status, JSON body), well before any LONG wait."""
    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with asyncio.timeout(LONG / 2):  # fails the test if it waited LONG out
            async with client.get(front.make_url(path)) as resp:
                return resp.status, await resp.json(content_type=None)


async def upstream(serve: Serve, answer: Handler) -> str:
    """The URL of a plain aiohttp upstream that answers every GET with ``answer``."""
    app = web.Application()
    app.router.add_get("/", answer)
    return str((await serve(app)).make_url("/"))


async def test_a_deadline_turns_its_wait_into_a_timeout_and_leaves_the_task_uncancelled() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    deadline = deadlines.start(loop.time() + 0.05)
    with pytest.raises(TimeoutError):
        with deadline:
            await asyncio.sleep(LONG)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert deadline.expired and deadline not in deadlines.pending
    await asyncio.sleep(0)  # the task goes on as if nothing had happened
    with pytest.raises(TimeoutError):  # and a wait that starts past the deadline times out at once
        with deadline:
            pass


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    deadline = deadlines.start(loop.time() + LONG)

    async def wait() -> None:
        with deadline:
            await asyncio.sleep(LONG)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadline.expired


async def test_a_deadline_that_expires_while_the_task_is_being_cancelled_lets_that_through() -> (
    None
):
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    deadline = deadlines.start(loop.time() + LONG)
    inside = asyncio.Event()

    async def wait() -> None:
        with deadline:
            inside.set()
            await asyncio.sleep(LONG)

    task = asyncio.create_task(wait())
    await inside.wait()
    task.cancel()  # somebody else's cancellation first ...
    deadline.expire()  # ... then the deadline, before the task has run again
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_earlier_deadline_rearms_the_timer_and_a_later_one_does_not() -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    deadlines = Deadlines(loop)
    arm = deadlines._arm

    def spy(when: float) -> None:
        armed.append(when)
        arm(when)

    deadlines._arm = spy  # type: ignore[method-assign]
    late = deadlines.start(loop.time() + LONG)
    later = deadlines.start(loop.time() + LONG + 1)
    soon = deadlines.start(loop.time() + 0.05)
    assert armed == [late.when, soon.when]  # the later one left the timer as it was
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(LONG / 2):  # fails the test if it waited for `late`
            with soon:
                await asyncio.sleep(LONG)
    assert not late.expired and not later.expired
    assert armed[-1] == late.when  # armed again for the earliest still pending
    late.close()
    later.close()
    deadlines.close()


async def test_egress_calls_arm_one_loop_timer_between_them_not_one_each(
    make_service: ServiceFactory, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    url = await upstream(serve, ok)
    # A timeout no run of 20 local calls reaches, however busy the machine: the timer
    # armed for the first call's deadline never fires, so nothing re-arms it.
    svc = make_service("front", EGRESS_TIMEOUT="60", REQUEST_DEADLINE="60")
    calls = 20

    @svc.get("/fan")
    async def fan(request: web.Request) -> web.Response:
        for _ in range(calls):
            async with svc.egress.get(url) as resp:
                assert await resp.text() == "ok"
        return web.Response(text="done")

    front = await serve(svc.app)
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    call_at = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        timers.append(getattr(callback, "__qualname__", repr(callback)))
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting)
    # No total timeout on the test's own client: it would arm a timer of its own.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as client:
        async with client.get(front.make_url("/fan")) as resp:
            assert (resp.status, await resp.text()) == (200, "done")
    egress_timers = [t for t in timers if t.startswith(("TimeoutHandle", "Deadlines"))]
    # aiohttp's total timeout arms (and cancels) one timer per call: 20 here.
    assert len(egress_timers) <= 1, timers


async def test_a_body_still_coming_at_the_deadline_fails_however_it_is_read(
    make_service: ServiceFactory, serve: Serve
) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "10"})
        await resp.prepare(request)
        await resp.write(b"ab")
        await asyncio.sleep(LONG)
        return resp

    url = await upstream(serve, trickle)
    svc = make_service("front", EGRESS_TIMEOUT="0.2", EGRESS_RETRIES="0")

    @svc.get("/stream")
    async def stream(request: web.Request) -> web.Response:
        async with svc.egress.get(url) as resp:
            chunks = [chunk async for chunk in resp.content.iter_any()]
            return web.Response(body=b"".join(chunks))

    status, problem = await problem_of(serve, svc, "/stream")
    assert status == 504, problem
    assert problem["upstream"] == URL(url).authority


async def test_a_body_that_arrived_whole_is_read_after_the_deadline(
    make_service: ServiceFactory, serve: Serve
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="all of it")

    url = await upstream(serve, ok)
    svc = make_service("front", EGRESS_TIMEOUT="0.1", EGRESS_RETRIES="0")

    @svc.get("/late-read")
    async def late_read(request: web.Request) -> web.Response:
        async with svc.egress.get(url) as resp:
            await asyncio.sleep(0.3)  # the handler's own work, past the attempt's deadline
            return web.Response(text=await resp.text())

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/late-read")) as resp:
            assert (resp.status, await resp.text()) == (200, "all of it")


async def test_a_call_timeout_bounds_the_call_retries_included(
    make_service: ServiceFactory, serve: Serve
) -> None:
    attempts = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(LONG)
        return web.Response()

    url = await upstream(serve, hang)
    # Each attempt could take 10 s, two retries: the call's own 0.3 s is what ends it.
    svc = make_service("front", EGRESS_TIMEOUT="10", REQUEST_DEADLINE="30", EGRESS_RETRIES="2")

    @svc.get("/bounded")
    async def bounded(request: web.Request) -> web.Response:
        async with svc.egress.get(url, timeout=0.3) as resp:
            return web.Response(text=await resp.text())

    status, problem = await problem_of(serve, svc, "/bounded")
    assert status == 504, problem
    assert "no answer within 0.3s" in problem["detail"]
    assert attempts == 1  # no time left for a retry


@pytest.mark.parametrize("bad", [0, -1, "2", aiohttp.ClientTimeout(total=1)])
def test_a_call_timeout_is_a_positive_number_of_seconds(
    make_service: ServiceFactory, bad: Any
) -> None:
    svc: usvc.Service = make_service("front")
    with pytest.raises(TypeError, match="timeout must be a positive number of seconds"):
        svc.egress.get("http://127.0.0.1:1/", timeout=bad)
