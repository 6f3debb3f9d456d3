"""``python -m tools.pictures [--seconds N] [--out DIR]``: see the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tools.dashboards import defaults, expand
from usvc_mesh.manifests import Layout
from usvc_mesh.procs import free_port
from usvc_mesh.supervisor import LocalMesh
from usvc_mesh.telemetry import Telemetry
from usvc_mesh.telemetry.waterfall import last_trace_id, render, spans_files, trace

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "helm" / "usvc" / "dashboards"
LOCAL = ("usvc-red", "usvc-canary", "usvc-egress", "usvc-mesh")
STEP = 2.0  # seconds between points
RATE_WINDOW = "10s"  # what $__rate_interval stands for at a 1 s scrape interval
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TABLE_COLUMNS = ("service", "env", "version", "usvc_version")
UNITS = {"reqps": "req/s", "percentunit": "share", "s": "seconds", "ms": "ms", "short": ""}


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP})
    with DIRECT.open(f"{url}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.load(resp)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def promql(expr: str, chosen: dict[str, str]) -> str:
    return expand(expr, chosen, RATE_WINDOW)


def legend(template: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m[1], ""), template).strip()


async def drive(gateway: str, seconds: float, on_third: Any) -> None:
    """Mixed traffic, about 40 requests a second, for ``seconds``."""
    mix: list[tuple[str, dict[str, str]]] = [
        *[("", {})] * 14,
        *[("", {"x-dev-user": "betaUser"})] * 3,
        ("", {"x-dev-user": "betaUser", "fail": "1"}),
        ("no-such-page", {}),
    ]
    started = time.monotonic()
    thirds_done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as client:

        async def get(path: str, headers: dict[str, str]) -> None:
            async with client.get(gateway + path, headers=headers) as resp:
                await resp.read()

        while (elapsed := time.monotonic() - started) < seconds:
            if elapsed > seconds * (thirds_done + 1) / 3 and thirds_done < 2:
                thirds_done += 1
                await asyncio.to_thread(on_third, thirds_done)
            await asyncio.gather(*(get(path, headers) for path, headers in mix))
            await asyncio.sleep(0.5)


def table(ax: Any, panel: dict[str, Any], url: str, chosen: dict[str, str], at: float) -> int:
    rows = []
    for target in panel["targets"]:
        for series in query_range(url, promql(target["expr"], chosen), at - STEP, at):
            metric = series["metric"]
            rows.append([*(metric.get(k, "") for k in TABLE_COLUMNS), series["values"][-1][1]])
    ax.axis("off")
    if rows:
        cells = ax.table(
            cellText=sorted(rows), colLabels=[*TABLE_COLUMNS, "instances"], loc="upper center"
        )
        cells.set_fontsize(8)
    return len(rows)


def draw(
    name: str, dashboard: dict[str, Any], url: str, start: float, end: float, out: Path
) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = defaults(dashboard)
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    columns = 2
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(14, 3.6 * rows), squeeze=False)
    drawn = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(panel["title"], fontsize=10, loc="left")
        lines = 0
        if panel["type"] == "table":  # the last value of each row, as Grafana's table shows
            lines = table(ax, panel, url, chosen, end)
            drawn += lines > 0
            continue
        for target in panel["targets"]:
            for series in query_range(url, promql(target["expr"], chosen), start, end):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    linewidth=1.2,
                    label=legend(target.get("legendFormat", ""), series["metric"]),
                )
                lines += 1
        drawn += lines > 0
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if lines > 6 else 1, framealpha=0.7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(
        f"{dashboard['title']} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(end))}, "
        f"local chain under mixed load",
        fontsize=12,
    )
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=80)
    plt.close(figure)
    return drawn


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pictures", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to drive traffic")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(f"/tmp/usvc-pictures-{int(time.time())}")
    telemetry = Telemetry(ROOT, run_dir)
    mesh = LocalMesh(
        Layout(ROOT),
        gateway_port=free_port(),
        run_dir=run_dir,
        base_env={"PATH": "/usr/bin:/bin", **telemetry.env},
        collector=telemetry.otlp_address,
    )
    mesh.env_overrides = mesh.layout.scenario_env("retry")  # clock honours `fail`
    mesh.start()
    try:
        telemetry.start(mesh)
        assert mesh.ports is not None and telemetry.prometheus is not None
        gateway = f"http://{mesh.ports.gateway_host}:{mesh.ports.gateway}/"
        worldtime = mesh.stand_ins["worldtimeapi.org"]

        def outage(third: int) -> None:  # worldtimeapi away for the middle third
            if third == 1:
                worldtime.stop()
            else:
                worldtime.start(mesh.layout.root)

        time.sleep(6)  # Prometheus's first scrape
        start = time.time()
        asyncio.run(drive(gateway, args.seconds, outage))
        time.sleep(3)
        end = time.time()
        for name in LOCAL:
            dashboard = json.loads((DASHBOARDS / f"{name}.json").read_text())
            drawn = draw(name, dashboard, telemetry.prometheus.url, start, end, args.out)
            print(f"{args.out / name}.png: {drawn}/{len(dashboard['panels'])} panels with data")
        body = get(gateway, {"x-dev-user": "betaUser", "Accept": "application/json"})
        trace_id = json.loads(body)["trace_id"]
        time.sleep(6)  # Envoy's tracer flushes every 5 s
        files = spans_files(telemetry.directory)
        assert last_trace_id(files) == trace_id
        waterfall = render(trace(files, trace_id))
        (args.out / "trace.txt").write_text(f"$ usvc trace --last\n{waterfall}\n")
        print(waterfall)
    finally:
        mesh.stop()
        telemetry.stop()
    return 0


def get(url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    with DIRECT.open(request, timeout=10) as resp:
        body: bytes = resp.read()
    return body


if __name__ == "__main__":
    raise SystemExit(main())
