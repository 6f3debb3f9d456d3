"""Real service processes on loopback ports for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from usvc_mesh.procs import die_with_parent, free_port, http_ok, terminate

__all__ = ["ROOT", "Proc", "free_port", "http_ok", "start"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.process)


def start(
    name: str,
    module: str,
    env: dict[str, str],
    log_dir: Path,
    ready_path: str = "/readyz",
    port: int | None = None,
) -> Proc:
    port = port or free_port()
    log = log_dir / f"{name}.log"
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "OTEL_TRACES_EXPORTER": "none",
        "DRAIN_SECONDS": "0",
        **env,
    }
    if module.endswith(":app") or ":" not in module:
        argv = [sys.executable, "-m", module.split(":")[0]]
    else:
        argv = [sys.executable, "-m", "usvc", "run", module]
    with log.open("a") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    proc = Proc(name, port, process, log)
    deadline = time.monotonic() + 20
    while not http_ok(proc.url + ready_path):
        if process.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc
