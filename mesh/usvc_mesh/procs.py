"""Local processes: free ports, readiness polls, graceful stops.

The one set of process helpers of the project: the mesh supervisor, the
benchmark and the tests all start real processes on loopback and stop them by
their own handle, never by name.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

# Loopback checks must not go through a proxy the user's environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
