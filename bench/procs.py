"""Server processes for the benchmark: start, wait until ready, CPU time, stop."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from usvc_mesh.procs import free_port as free_port  # the one free_port (builds.py uses it)
from usvc_mesh.procs import port_taken, port_taken_message, spawn, terminate

ROOT = Path(__file__).resolve().parents[1]
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")
# Loopback checks must not go through a proxy the user's environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartError(RuntimeError):
    """A server did not come up; the message carries its last log lines."""


def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _DIRECT.open(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """The body of ``GET url``, without any proxy the environment names."""
    with _DIRECT.open(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat)."""
    user, system = cpu_times(pid)
    return user + system


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    # The command name (field 2) may hold spaces; the fields after ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICK, int(fields[12]) / _CLOCK_TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy so far (/proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice: only the first eight fields add up.
    return (sum(fields[:8]) - idle) / _CLOCK_TICK


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def clean_env() -> dict[str, str]:
    """The parent's environment without settings that would change a build's behaviour."""
    skip = ("OTEL_", "SERVICE_", "UPSTREAM_URI", "PORT", "HOST", "ACCESS_LOG", "BENCH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Server:
    """One server process; ``pid`` is what CPU time is read from."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = spawn(
                list(self.argv),
                cwd=ROOT,
                env={**clean_env(), **self.env, "HOST": "127.0.0.1", "PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the runner only
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def last_lines(self, count: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-count:]
        except OSError:
            return ""
        return "\n    ".join(lines)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            terminate(self.process, timeout)


def python_server(name: str, args: Sequence[str], env: Mapping[str, str], run_dir: Path) -> Server:
    return Server(
        name=name,
        argv=[sys.executable, *args],
        env=env,
        port=free_port(),
        log_path=run_dir / f"{name}.log",
    )


def wait_ready(
    servers: Iterable[Server],
    path: str = "/",
    timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Wait until every server answers 200 on ``path``; name the one that did not."""
    pending = {s.name: s for s in servers}
    deadline = time.monotonic() + timeout
    while pending:
        for name, server in list(pending.items()):
            if not server.alive():
                if port_taken(server.last_lines().splitlines(), [server.port]) is not None:
                    raise StartError(port_taken_message(name, server.port))
                raise StartError(f"{name} exited; its last log lines:\n    {server.last_lines()}")
            if http_ok(f"http://127.0.0.1:{server.port}{path}", headers):
                del pending[name]
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            last = next(iter(pending.values())).last_lines()
            raise StartError(f"not ready after {timeout:g}s: {names}; last log lines:\n    {last}")
        if pending:
            time.sleep(0.05)
