"""Local processes: free ports, readiness polls, graceful stops.

The one set of process helpers of the project: the mesh supervisor, the
benchmark and the tests all start real processes on loopback and stop them by
their own handle, never by name.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import itertools
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

# Loopback checks must not go through a proxy the user's environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# Where free_port() picks: below Linux's default ephemeral range (32768-60999), so
# an outgoing connection (wrk's, a client's) is never given a port a child has
# yet to bind; the kernel's actual range is left out too, wherever it is set.
LISTEN_PORTS = range(20000, 32768)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# A port handed out stays reserved this long (a child binds its port within
# seconds), so two callers in one process never get the same one.
RESERVATION_SECONDS = 600.0
_reserved: dict[int, float] = {}  # port -> when it was handed out (time.monotonic)
_reserving = threading.Lock()


def ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports (Linux's default if unknown)."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


@functools.cache
def _outside(ephemeral: range) -> tuple[int, ...]:
    return tuple(p for p in LISTEN_PORTS if p not in ephemeral)


def free_port(host: str = "127.0.0.1") -> int:
    """A port for a child to listen on: free now, outside the ephemeral range, not reserved.

    The kernel's pick for port 0 comes from the ephemeral range, from which it
    also picks the local port of every outgoing connection: between the pick
    and the child's bind, any connection may take it ("address already in
    use"). Ports outside that range are taken only by an explicit bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ephemeral = ephemeral_ports()
    with _reserving:
        now = time.monotonic()
        for port, since in list(_reserved.items()):
            if now - since > RESERVATION_SECONDS:
                del _reserved[port]
        candidates = _outside(ephemeral)
        start = random.randrange(len(candidates)) if candidates else 0
        for port in itertools.chain(candidates[start:], candidates[:start]):
            if port in _reserved:
                continue
            with socket.socket(family) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue  # something holds it
            _reserved[port] = now
            return port
    raise OSError(
        errno.EADDRNOTAVAIL,
        f"no free port on {host} in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1} outside the "
        f"ephemeral range {ephemeral.start}-{ephemeral.stop - 1}",
    )


def port_taken(lines: Iterable[str], ports: Iterable[int]) -> int | None:
    """Which of ``ports`` a child's log says it could not bind: another process had it.

    Both the services' ``address already in use`` (OSError 98, as aiohttp and
    usvc's start-up check word it) and Envoy's ``cannot bind '127.0.0.1:PORT':
    Address already in use`` name the port on the same line.
    """
    wanted = set(ports)
    for line in lines:
        if "address already in use" in line.lower():
            for number in re.findall(r"\d+", line):
                if int(number) in wanted:
                    return int(number)
    return None


def port_taken_message(name: str, port: int) -> str:
    """The one line that says a child lost the race for its port."""
    return (
        f"{name} could not listen on port {port}: another process took it after it was "
        "picked as free (address already in use)"
    )


def is_ip_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal, False for a name that needs resolving."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def http_ok(url: str, headers: Mapping[str, str] | None = None, timeout: float = 0.5) -> bool:
    """True when ``GET url`` answers 200 within ``timeout``; any failure is False."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> float:
    """Poll ``ready`` until it is true; returns the seconds it took.

    ``alive`` is called between polls and raises when the thing waited for has
    died (so a crash is reported at once, not after the timeout). Raises
    TimeoutError naming ``what``.
    """
    started = time.monotonic()
    deadline = started + timeout
    while not ready():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g}s")
        time.sleep(interval)
    return time.monotonic() - started


# prctl(2) option: the signal a child receives when the thread that forked it dies.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
# Looked up now: the child, between fork and exec, should do as little as it can.
_PRCTL = _LIBC.prctl if _LIBC is not None else None


def die_with_parent(parent: int | None = None) -> None:
    """``preexec_fn``: SIGTERM this child when the thread that started it dies.

    For daemons a test run starts (dockerd, services): if the test process is
    killed (SIGKILL runs no finaliser), its children stop too instead of
    outliving it. The signal is sent when the *forking thread* exits, so use
    it only for children started from a thread that lives as long as they
    should (the main thread, or :func:`spawn`'s). Preserved across exec
    (prctl(2)), so it reaches the program a wrapper such as
    ``unshare``/``sh -c 'exec ...'`` becomes. ``parent``: the starter's pid;
    if it died before the prctl took effect the child exits at once. Linux
    only; elsewhere it does nothing.
    """
    if _PRCTL is None:
        return
    if _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # orphaned already: the signal will never come


class _Forker:
    """One thread that lives as long as the process and forks every :func:`spawn` child.

    PR_SET_PDEATHSIG follows the forking thread, not the process: a replica
    the supervisor restarts from its watch loop or its control socket's thread
    would be killed when that thread ends. Forked here, a child dies with the
    process and only then.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, job: Callable[[], _T]) -> _T:
        with self._starting:
            # After a fork (a test's child process) the old thread is not there.
            if self._thread is None or self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._serve, args=(self._jobs,), name="usvc-forker", daemon=True
                )
                self._thread.start()
        if threading.current_thread() is self._thread:
            return job()
        done: Future[_T] = Future()
        self._jobs.put((job, done))
        return done.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:  # never returns: its exit would be every child's SIGTERM
            job, done = jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # the caller's to handle
                done.set_exception(exc)


_FORKER = _Forker()


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)`` for a child that must not outlive this process.

    Forked from one long-lived thread with :func:`die_with_parent`: whichever
    thread asks, the child gets SIGTERM when this process dies, SIGKILL
    included, and not before.
    """
    starter = os.getpid()
    return _FORKER.run(
        lambda: subprocess.Popen(
            list(argv), preexec_fn=functools.partial(die_with_parent, starter), **popen
        )
    )


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat); None if it is gone.

    With the pid it names one process: a pid is reused, a (pid, start) pair is not.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # exited, not yet reaped
    return int(fields[19])  # field 22, starttime


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM (the graceful way), then SIGKILL if it is not gone within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    reap(process, timeout)


def reap(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Wait for a process already told to stop; SIGKILL it after ``timeout``."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
