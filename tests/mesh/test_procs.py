"""free_port: ports for children to listen on, which no outgoing connection can take first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from usvc_mesh.procs import (
    LISTEN_PORTS,
    die_with_parent,
    ephemeral_ports,
    free_port,
    port_taken,
    spawn,
    start_ticks,
)

# How usvc's start-up check and Envoy say it (the first from a benchmark run that lost the race).
USVC_LINE = (
    "usvc: configuration error: PORT='37273' is invalid: cannot listen on 127.0.0.1:37273 "
    "(error while attempting to bind on address ('127.0.0.1', 37273): address already in use)"
)
ENVOY_LINE = "cannot bind '127.0.0.1:51627': Address already in use"


def test_a_port_handed_out_is_outside_the_ephemeral_range_and_bindable() -> None:
    ephemeral = ephemeral_ports()  # /proc/sys/net/ipv4/ip_local_port_range
    for _ in range(50):
        port = free_port()
        assert port in LISTEN_PORTS and port not in ephemeral, port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if something holds it


def test_concurrent_free_port_calls_never_return_the_same_port() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        ports = list(pool.map(lambda _: free_port(), range(800)))
    assert len(set(ports)) == len(ports)


def test_a_port_something_listens_on_is_never_handed_out() -> None:
    held = []
    try:
        for port in LISTEN_PORTS[:1000]:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sock.listen()
            held.append(sock)
        taken = {s.getsockname()[1] for s in held}
        assert not taken & {free_port() for _ in range(100)}
    finally:
        for sock in held:
            sock.close()


def test_free_port_works_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        port = free_port("::1")
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


@pytest.mark.parametrize(("line", "port"), [(USVC_LINE, 37273), (ENVOY_LINE, 51627)])
def test_a_log_line_saying_a_port_was_in_use_names_that_port(line: str, port: int) -> None:
    assert port_taken(["starting", line], [port, 9901]) == port
    assert port_taken(["starting", line], [9901]) is None  # another port's trouble
    assert port_taken(["exited with status 2"], [port]) is None


# A "test run" that starts a daemon the way tests/procs.py and the container tier do
# (through a wrapper that execs it, as unshare/sh do for dockerd), or as the supervisor
# does (spawn), prints its pid, then waits to be killed.
_RUN = """
import subprocess, sys, time
from usvc_mesh.procs import die_with_parent, spawn
argv, how = ["sh", "-c", "exec sleep 120"], sys.argv[1]
if how == "spawn":
    child = spawn(argv)
else:
    child = subprocess.Popen(argv, preexec_fn=die_with_parent if how == "die_with_parent" else None)
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # exited, waiting for init to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["die_with_parent", "spawn", "without"])
def test_a_child_started_with_die_with_parent_or_spawn_stops_when_its_starter_is_killed(
    how: str,
) -> None:
    """SIGKILL runs no finaliser: without prctl(PR_SET_PDEATHSIG) the daemon outlives the run."""
    run = subprocess.Popen([sys.executable, "-c", _RUN, how], stdout=subprocess.PIPE, text=True)
    assert run.stdout is not None
    with run.stdout:
        daemon = int(run.stdout.readline())
    run.kill()
    run.wait()
    stops = how != "without"
    try:
        assert _gone(daemon, within=10 if stops else 1) is stops
    finally:
        if not _gone(daemon, within=0):
            os.kill(daemon, signal.SIGKILL)  # ours: the control case's orphan


def _started_by_a_thread_that_ends(start: str) -> subprocess.Popen[bytes]:
    """A ``sleep`` started from a thread of its own, which has ended when this returns."""
    started: list[subprocess.Popen[bytes]] = []

    def run() -> None:
        argv = ["sleep", "120"]
        if start == "spawn":
            started.append(spawn(argv))
        else:
            started.append(subprocess.Popen(argv, preexec_fn=die_with_parent))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return started[0]


@pytest.mark.parametrize("start", ["spawn", "die_with_parent"])
def test_a_spawned_child_outlives_the_short_lived_thread_that_asked_for_it(start: str) -> None:
    """PR_SET_PDEATHSIG follows the forking thread: spawn forks from one that never ends."""
    child = _started_by_a_thread_that_ends(start)
    try:
        # The signal comes as the thread exits: by now, or never.
        ended = child.wait(5) if start == "die_with_parent" else child.poll()
        assert ended == (-signal.SIGTERM if start == "die_with_parent" else None)
    except subprocess.TimeoutExpired:
        raise AssertionError("the control case's child was not told its thread ended") from None
    finally:
        child.kill()
        child.wait()


def test_a_pid_and_its_start_time_name_one_process_and_none_once_it_ended() -> None:
    child = subprocess.Popen(["sleep", "120"])
    ticks = start_ticks(child.pid)
    assert ticks is not None and ticks >= start_ticks(os.getpid())  # type: ignore[operator]
    assert start_ticks(child.pid) == ticks
    child.kill()
    child.wait()
    assert start_ticks(child.pid) is None
