"""What a running local mesh is made of, read from its state file (``.run/mesh/mesh.json``).

``usvc up`` writes the file (see usvc_mesh.supervisor); this reads the gateway
URL, Envoy's admin port and each workload's port(s), and finds the processes
behind them in /proc, so the load test can scrape and watch a mesh another
shell started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .prometheus import scrape_config

STATE_FILE = "mesh.json"


class StateError(RuntimeError):
    """No readable state file: no local mesh runs from that directory."""


def _ports(value: Any) -> tuple[int, ...]:
    """A workload's port(s): an int, a list of ints, or replicas as {"port": n} objects."""
    if isinstance(value, int):
        return (value,)
    if isinstance(value, Mapping):
        if "ports" in value:
            return _ports(value["ports"])
        if "replicas" in value:
            return _ports(value["replicas"])
        return _ports(value.get("port"))
    if isinstance(value, list):
        return tuple(port for item in value for port in _ports(item))
    return ()


@dataclass(frozen=True)
class MeshState:
    gateway: str  # http://host:port
    admin_port: int | None
    supervisor_pid: int | None
    workloads: dict[str, tuple[int, ...]]
    stand_ins: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, run_dir: Path) -> MeshState:
        path = run_dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise StateError(f"no local mesh is running: {path} does not exist") from None
        except ValueError as exc:
            raise StateError(f"{path} is not JSON: {exc}") from None
        ports = state.get("ports", {})
        return cls(
            gateway=state["gateway"],
            admin_port=ports.get("admin"),
            supervisor_pid=state.get("pid"),
            workloads={name: _ports(v) for name, v in state.get("workloads", {}).items()},
            stand_ins={name: _ports(v) for name, v in state.get("stand_ins", {}).items()},
        )

    def scrape_config(self) -> dict[str, Any]:
        """Prometheus's configuration: a job per workload, each replica a target; and Envoy."""
        workloads: dict[str, tuple[Sequence[int], Mapping[str, str]]] = {
            name: (ports, {}) for name, ports in self.workloads.items() if ports
        }
        return scrape_config(workloads, self.admin_port)

    def target_count(self) -> int:
        return sum(len(ports) for ports in self.workloads.values()) + (self.admin_port is not None)

    def processes(self) -> dict[str, int]:
        """A name for each process of the mesh -> its pid, found in /proc.

        A workload or stand-in is the process whose environment has its PORT;
        ``envoy`` is the Envoy; replicas are ``NAME-1``, ``NAME-2``…, as the mesh names them.
        """
        by_port: dict[int, str] = {}
        for names in (self.workloads, self.stand_ins):
            for name, ports in names.items():
                for index, port in enumerate(ports):
                    by_port[port] = name if len(ports) == 1 else f"{name}-{index + 1}"
        found: dict[str, int] = {}
        for pid in descendants(self.supervisor_pid) if self.supervisor_pid else []:
            listens = _env_port(pid)
            if listens in by_port:
                found[by_port[listens]] = pid
            elif _is_envoy(pid):
                found["envoy"] = pid
        return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children…), from /proc's PPid."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                parents.setdefault(int(line.split()[1]), []).append(int(entry))
                break
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _env_port(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"PORT=") and item[5:].isdigit():
            return int(item[5:])
    return None


def _is_envoy(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"envoy"
