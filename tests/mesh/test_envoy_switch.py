"""The hot switch's own work: versions, which files write() serialises, applied()'s admin reads.

The switch itself against a real Envoy is in test_envoy_live.py; here a real aiohttp server on
127.0.0.1 answers the two admin reads applied() makes, as an Envoy would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

import usvc_mesh as tr
from tests.mesh.conftest import deployment, destination_rule, service, virtual_service

ENDPOINTS = {"web-a": ("127.0.0.1", 9), "web-b": ("127.0.0.1", 9)}


def _translation(weight_a: int) -> tr.Translation:
    objects = [
        deployment("web-a", app="web", v="a"),
        deployment("web-b", app="web", v="b"),
        service("web", {"app": "web"}),
        destination_rule("web", "web", {"a": {"v": "a"}, "b": {"v": "b"}}),
        virtual_service(
            "web",
            ["web"],
            [
                {
                    "route": [
                        {"destination": {"host": "web", "subset": "a"}, "weight": weight_a},
                        {"destination": {"host": "web", "subset": "b"}, "weight": 100 - weight_a},
                    ]
                }
            ],
        ),
    ]
    return tr.translate(objects, endpoints=ENDPOINTS)


def test_versions_of_one_translation_are_its_own_after_another_is_asked_for() -> None:
    eighty, twenty = _translation(80), _translation(20)
    first = tr.versions(eighty)
    first["outbound"] = "changed by the caller"
    assert tr.versions(twenty)["outbound"] != tr.versions(eighty)["outbound"]
    assert tr.versions(eighty) == tr.versions(_translation(80))  # a copy each time: unchanged
    assert tr.versions(eighty)["cds"] == tr.versions(twenty)["cds"]


def test_a_file_in_writes_own_layout_is_known_by_its_version_from_its_head(
    tmp_path: Path,
) -> None:
    translation = _translation(80)
    tr.write(tmp_path, translation)
    cds = tmp_path / tr.CDS_FILE
    assert tr.envoy._version_in(cds) == tr.versions(translation)["cds"]
    assert tr.envoy._version_in(tmp_path / "missing.json") is None
    # Another layout (one line) is not read for a version: write() compares the content
    # and puts its own layout back.
    cds.write_text(json.dumps(json.loads(cds.read_text())))
    assert tr.envoy._version_in(cds) is None
    before = cds.stat().st_ino
    tr.write(tmp_path, translation)
    assert cds.stat().st_ino != before
    assert tr.envoy._version_in(cds) == tr.versions(translation)["cds"]


def test_a_change_of_weights_rewrites_the_outbound_routes_alone(tmp_path: Path) -> None:
    tr.write(tmp_path, _translation(80))
    before = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    switched = _translation(20)
    tr.write(tmp_path, switched)
    after = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {tr.RDS_FILES[tr.OUTBOUND_ROUTES]}
    document = json.loads((tmp_path / tr.RDS_FILES[tr.OUTBOUND_ROUTES]).read_text())
    assert document["version_info"] == tr.versions(switched)["outbound"]


async def _fake_admin(
    aiohttp_server: Any,
    translation: tr.Translation,
    warming: dict[str, int],
    readouts: tuple[str, ...] = (),
) -> tuple[tuple[str, int], list[dict[str, str]]]:
    """An admin endpoint that reports ``translation``'s versions (and ``readouts``' lines)
    and the ``warming`` gauges; the stats queries it was asked, in order."""
    asked: list[dict[str, str]] = []
    version = tr.versions(translation)

    async def stats(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        if request.query.get("type") == "TextReadouts":
            lines = [
                f'cluster_manager.cds.version_text: "{version["cds"]}"',
                f'http.gateway.rds.gateway.version_text: "{version["gateway"]}"',
                f'http.outbound.rds.outbound.version_text: "{version["outbound"]}"',
                *readouts,
            ]
        else:
            lines = [f"{name}: {value}" for name, value in sorted(warming.items())]
        return web.Response(text="\n".join(lines) + "\n")

    app = web.Application()
    app.router.add_get("/stats", stats)
    server = await aiohttp_server(app)
    return ("127.0.0.1", server.port), asked


async def test_applied_waits_for_a_warming_cluster_from_the_gauges_alone(
    aiohttp_server: Any,
) -> None:
    translation = _translation(80)
    warming = {"cluster_manager.warming_clusters": 1, "listener_manager.total_listeners_warming": 0}
    admin, asked = await _fake_admin(aiohttp_server, translation, warming)
    assert not await asyncio.to_thread(tr.applied, admin, translation)
    warming["cluster_manager.warming_clusters"] = 0
    assert await asyncio.to_thread(tr.applied, admin, translation)
    # Two reads a poll, each of one stat type: never a filter over every stat, which at
    # 1,000 services costs Envoy a sixth of a second (envoy.applied).
    assert [query.get("type") for query in asked] == ["TextReadouts", "Gauges"] * 2
    assert all("usedonly" in query for query in asked if query["type"] == "Gauges")


async def test_applied_counts_a_gauge_envoy_never_set_as_zero(aiohttp_server: Any) -> None:
    translation = _translation(80)
    admin, _ = await _fake_admin(aiohttp_server, translation, {})
    assert await asyncio.to_thread(tr.applied, admin, translation)
    assert not await asyncio.to_thread(tr.applied, admin, _translation(20))


async def test_applied_is_false_while_two_subscriptions_to_one_route_differ(
    aiohttp_server: Any,
) -> None:
    """Two connection managers (stat prefixes) on one route configuration: one still has
    the old version, so the switch has not finished."""
    translation = _translation(80)
    other = 'http.outbound_extra.rds.outbound.version_text: "an older version"'
    admin, _ = await _fake_admin(aiohttp_server, translation, {}, (other,))
    assert not await asyncio.to_thread(tr.applied, admin, translation)
    version = tr.versions(translation)["outbound"]
    same = f'http.outbound_extra.rds.outbound.version_text: "{version}"'
    admin, _ = await _fake_admin(aiohttp_server, translation, {}, (same,))
    assert await asyncio.to_thread(tr.applied, admin, translation)


async def test_admin_stats_reads_each_stat_by_name_with_its_raw_text(aiohttp_server: Any) -> None:
    """Envoy's text /stats: ``name: value`` lines; a readout's value keeps its quotes."""
    asked: list[str] = []

    async def stats(request: web.Request) -> web.Response:
        asked.append(request.query_string)
        lines = [
            'cluster_manager.cds.version_text: "v1: with a colon"',
            "cluster_manager.warming_clusters: 3",
            "cluster.a.upstream_rq_time: P0(nan,1) P25(nan,2)",
            "",
        ]
        return web.Response(text="\n".join(lines))

    app = web.Application()
    app.router.add_get("/stats", stats)
    server = await aiohttp_server(app)
    found = await asyncio.to_thread(
        tr.admin_stats, ("127.0.0.1", server.port), "type=Gauges&filter=^cluster"
    )
    assert found == {
        "cluster_manager.cds.version_text": '"v1: with a colon"',
        "cluster_manager.warming_clusters": "3",
        "cluster.a.upstream_rq_time": "P0(nan,1) P25(nan,2)",
    }
    assert asked == ["type=Gauges&filter=^cluster"]
