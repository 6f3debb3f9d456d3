"""The project's Grafana dashboards read as Grafana reads them, without a Grafana.

Used by the dashboard tests (every panel query against a real Prometheus) and
by ``python -m tools.pictures`` (the README's pictures from the same queries).
"""

from __future__ import annotations

import re
from typing import Any


def defaults(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each query variable's value when the dashboard opens: its default, or "All"."""
    chosen = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            value = variable["current"]["value"][0]
            chosen[variable["name"]] = variable["allValue"] if value == "$__all" else value
    return chosen


def expand(expr: str, chosen: dict[str, str], rate_window: str) -> str:
    """A panel's expression as Grafana sends it: variables and ``$__rate_interval`` filled in."""
    expr = expr.replace("$__rate_interval", rate_window)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: chosen.get(m[1], m[0]), expr)
