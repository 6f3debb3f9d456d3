"""The scaling benchmark (``--suite scale``): its generated meshes, its fits, its tables.

The generator's meshes are checked by the project's Istio validator and translated for real;
the growth fit and the targets are checked on figures made up here; the slow smoke test runs
the suite at 3 and 6 services and checks the tables' shape and that each target row states its
goal and a verdict. No timing threshold anywhere.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import usvc_mesh as mesh
from bench import meshgen, report, scale
from usvc_mesh import validation

from .checks import run_bench, table_with

VERDICTS = {report.MET, report.NOT_MET}


def test_a_generated_mesh_passes_the_istio_validator_and_translates() -> None:
    objects = meshgen.generate(3)
    assert [o["kind"] for o in objects].count("Deployment") == 6
    assert validation.validate_objects(objects, namespace=meshgen.NAMESPACE) == []
    translation = mesh.translate(
        objects, endpoints=meshgen.endpoints(3, ("127.0.0.1", 9)), namespace=meshgen.NAMESPACE
    )
    assert translation.warnings == ()  # every subset selects a workload
    hosts = translation.outbound_routes["virtual_hosts"]
    assert [h["name"] for h in hosts] == [f"{meshgen.host(i)}:80" for i in range(3)] + ["allow_any"]
    canary, split = hosts[2]["routes"]
    assert canary["match"]["headers"] == [
        {"name": meshgen.CANARY_HEADER, "string_match": {"exact": "true"}}
    ]
    assert canary["route"]["cluster"] == f"outbound|80|v2|{meshgen.host(2)}"
    weights = {c["name"]: c["weight"] for c in split["route"]["weighted_clusters"]["clusters"]}
    assert weights == {
        f"outbound|80|v1|{meshgen.host(2)}": 80,
        f"outbound|80|v2|{meshgen.host(2)}": 20,
    }


def test_the_flipped_mesh_changes_only_the_split_weights() -> None:
    address = ("127.0.0.1", 9)
    kw: dict[str, Any] = {"endpoints": meshgen.endpoints(2, address), "namespace": "scale"}
    before = mesh.translate(meshgen.generate(2), **kw)
    after = mesh.translate(meshgen.generate(2, flipped=True), **kw)
    assert before.clusters == after.clusters
    assert mesh.versions(before)["outbound"] != mesh.versions(after)["outbound"]
    split = after.outbound_routes["virtual_hosts"][0]["routes"][1]["route"]["weighted_clusters"]
    assert [c["weight"] for c in split["clusters"]] == [20, 80]


@pytest.mark.parametrize(
    ("power", "expected"),
    [(0.0, "∝ 1"), (1.0, "∝ n"), (2.0, "∝ n²"), (3.0, "∝ n²")],
)
def test_the_growth_is_the_nearest_model_of_the_fitted_exponent(
    power: float, expected: str
) -> None:
    sizes = [10, 100, 1000]
    values = [3.0 * n**power for n in sizes]
    assert scale.exponent(sizes, values) == pytest.approx(power)
    assert scale.growth(sizes, scale.exponent(sizes, values)) == expected


def test_n_log_n_is_told_from_n_by_its_own_exponent_over_the_sizes() -> None:
    sizes = [10, 100, 1000]
    slope = scale.exponent(sizes, [n * math.log(n) for n in sizes])
    assert 1.2 < slope < 1.3
    assert scale.growth(sizes, slope) == "∝ n log n"
    assert scale.growth(sizes, 1.1) == "∝ n"


def _sample(round_no: int, envoy_s: float, requests: int = 1000, errors: int = 0) -> dict[str, Any]:
    return {
        "round": round_no,
        "started": 0.0,
        "rps": 1000.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "requests": requests,
        "errors": errors,
        "cpu_s": {"envoy": envoy_s, "upstream": 0.01},
        "wrk_cpu_s": 0.0,
        "other_cores": 0.0,
    }


def _count(round_no: int, worker: int, main: int, requests: int = 500) -> dict[str, Any]:
    """One callgrind count: thread 1 is Envoy's main thread, the busiest other its worker."""
    return {
        "round": round_no,
        "requests": requests,
        "connections": 8,
        "failed": 0,
        "wall_s": 9.0,
        "threads": {"1": main, "2": 1000, "6": worker, "8": 2000},
    }


def _results(
    translate_s: float,
    apply_s: float,
    big_cpu: list[float],
    big_worker: tuple[int, ...] = (165_000_000, 165_000_000),
) -> dict[str, Any]:
    def size(n: int, factor: float) -> dict[str, Any]:
        return {
            "services": n,
            "objects": 5 * n,
            "clusters": 3 * n + 1,
            "virtual_hosts": n + 1,
            "xds_bytes": 7000 * n,
            "translate_s": [9.0, 9.0],  # wall: the targets read CPU
            "translate_cpu_s": [translate_s * factor * 0.8] * 2,
            "write_s": [9.0, 9.0],
            "write_cpu_s": [translate_s * factor * 0.2] * 2,
            "validate_s": [9.0, 9.0],
            "validate_cpu_s": [0.2 + factor, 0.2 + factor],
            "start_s": 1.0,
            "apply_s": [apply_s * factor, apply_s * factor],
            "apply_cpu_s": [apply_s * factor / 2, apply_s * factor / 2],
            "rss_mb": 60 + factor,
            "allocated_mb": 5 + factor,
        }

    lookups = {
        "10/first": [_sample(1, 0.2), _sample(2, 0.2)],
        "10/last": [_sample(1, 0.2), _sample(2, 0.2)],
        "1000/first": [_sample(r + 1, v) for r, v in enumerate(big_cpu)],
        "1000/last": [_sample(r + 1, v) for r, v in enumerate(big_cpu)],
    }
    run = {
        "command": "python -m bench --suite scale",
        "commit": "abc1234",
        "started": "2026-12-01 00:00:00",
        "finished": "2026-12-01 00:03:00",
        "cores": 2,
        "cpu_model": "test",
        "python": "3.11",
        "envoy": "1.40.0",
        "load_before": [0.0, 0.0, 0.0],
        "load_after": [0.0, 0.0, 0.0],
        "sizes": [10, 100, 1000],
        "rounds": 2,
        "wrk": {"threads": 1, "connections": 32, "duration_s": 5, "warmup_s": 2.0},
        "concurrency": 2,
    }
    return {
        "format": 1,
        "run": run,
        "scale": {
            "sizes": [size(10, 0.01), size(100, 0.1), size(1000, 1.0)],
            "lookups": lookups,
            "idle_cores": {"10": 0.001, "1000": 0.01},
            # 330k instructions a request at 10 services; the main thread's timers far more
            # at 1,000 (health checks over a count's wall time), which the target leaves out.
            "instructions": {
                "10/first": [_count(1, 165_000_000, 1_000_000), _count(2, 165_000_000, 900_000)],
                "10/last": [_count(1, 165_000_000, 1_000_000), _count(2, 165_000_000, 900_000)],
                "1000/first": [_count(r + 1, w, 400_000_000) for r, w in enumerate(big_worker)],
                "1000/last": [_count(r + 1, w, 400_000_000) for r, w in enumerate(big_worker)],
            },
            "callgrind_start_s": {"10": 7.0, "1000": 27.0},
        },
    }


def test_targets_state_goal_and_verdict_from_the_same_run() -> None:
    # The CPU ratio misses the goal (0.30 / 0.20 in round 2) but the target reads instructions.
    met = table_with(scale.render(_results(1.5, 0.5, [0.21, 0.30])), "target (issue 13)")
    lookup = "Envoy instructions per request (worker), 1,000 ÷ 10 services"
    assert met.keys == (
        "1,000 services: translate + write, CPU",
        "1,000 services: apply (hot switch), CPU",
        "1,000 services: apply (hot switch), wall",
        lookup,
    )
    goals = ["≤ 2.00 s", "≤ 1.00 s", "≤ 1.00 s", "≤ 1.10×"]
    assert met.column("goal") == dict(zip(met.keys, goals, strict=True))
    assert set(met.column("result").values()) == {report.MET}
    assert met.column("per round")[lookup] == "1.00 1.00"
    # 330k and then 400k instructions a request against 330k: 1.00 and 1.21, median 1.11×.
    missed = table_with(
        scale.render(_results(2.5, 2.5, [0.21, 0.21], (165_000_000, 200_000_000))),
        "target (issue 13)",
    )
    assert set(missed.column("result").values()) == {report.NOT_MET}
    assert missed.column("measured")["1,000 services: translate + write, CPU"] == "2.50 s"
    assert missed.column("per round")[lookup] == "1.00 1.21"
    assert missed.column("measured")[lookup] == "1.11×"


def test_the_cpu_ratios_are_stated_beside_the_instruction_target() -> None:
    text = scale.render(_results(2.5, 2.5, [0.21, 0.30]))
    # 0.21 / 0.20 and 0.30 / 0.20 by round; less 10 µs (1,000) and 1 µs (10) of idle CPU per
    # request: 200 / 199 and 290 / 199.
    assert "1.27× (per round 1.05 1.50)" in text
    assert "1.23× without its idle CPU (per round 1.01 1.46)" in text
    assert "The lookup target reads the worker's instructions" in text


def test_the_lookup_table_counts_the_worker_apart_from_the_other_threads() -> None:
    lookups = table_with(scale.render(_results(1.5, 0.5, [0.2, 0.2])), "services", "virtual host")
    last = {row[0]: dict(zip(scale.LOOKUP_COLUMNS, row, strict=True)) for row in lookups.rows}
    # Thread 6 (165M over 500 requests), not thread 1 though it ran more at 1,000 services.
    assert last["1,000"]["worker kinstr/2xx"] == "330.0"
    assert last["1,000"]["other threads kinstr/2xx"] == "800.0"  # (400M + 1k + 2k) / 500
    assert last["10"]["other threads kinstr/2xx"] == "1.9"  # median of 1.006M and 0.906M / 500


def test_a_run_without_counts_says_so_and_measures_no_lookup_target() -> None:
    results = _results(1.5, 0.5, [0.2, 0.2])
    del results["scale"]["instructions"], results["scale"]["callgrind_start_s"]
    text = scale.render(results)
    assert "(not counted in this run)" in text
    lookups = table_with(text, "services", "virtual host")
    assert set(lookups.column("worker kinstr/2xx").values()) == {"–"}
    targets = table_with(text, "target (issue 13)")
    lookup = "Envoy instructions per request (worker), 1,000 ÷ 10 services"
    assert targets.column("result")[lookup] == report.NOT_MEASURED


def test_a_lookup_counts_only_2xx_answers_as_requests() -> None:
    results = _results(1.5, 0.5, [0.2, 0.2])
    # Half of the largest mesh's answers were 503 UH: its cost is per answer that was routed.
    results["scale"]["lookups"]["1000/last"] = [_sample(1, 0.2, errors=500)] * 2
    text = scale.render(results)
    lookups = table_with(text, "services", "virtual host")
    last = {row[0]: row for row in lookups.rows if row[1].startswith("last")}["1,000"]
    cells = dict(zip(scale.LOOKUP_COLUMNS, last, strict=True))
    assert cells["2xx/s"] == "500"
    assert cells["Envoy CPU µs/2xx"] == "400"  # 0.2 s over 500 answers, not over 1,000
    assert cells["not 2xx"] == "1000"
    assert "2.00× (per round 2.00)" in text  # the CPU ratio: 400 µs over 200


async def test_unhealthy_hosts_reads_the_health_flags_of_the_lookups_clusters(
    aiohttp_server: Any,
) -> None:
    listing = "\n".join(
        [
            "outbound|80||svc-0.scale.svc.cluster.local::observability_name::x",
            "outbound|80||svc-0.scale.svc.cluster.local::127.0.0.1:9::health_flags::healthy",
            "outbound|80|v1|svc-0.scale.svc.cluster.local::127.0.0.1:9::health_flags::healthy",
            "outbound|80|v2|svc-0.scale.svc.cluster.local::127.0.0.1:9::health_flags::"
            "/failed_active_hc",
            "outbound|80||svc-1.scale.svc.cluster.local::127.0.0.1:9::health_flags::"
            "/failed_active_hc",
        ]
    )

    async def clusters(request: web.Request) -> web.Response:
        return web.Response(text=listing)

    app = web.Application()
    app.router.add_get("/clusters", clusters)
    server = await aiohttp_server(app)
    admin = ("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    hosts = [meshgen.host(0), meshgen.host(2)]
    found = await loop.run_in_executor(None, scale.unhealthy_hosts, admin, hosts)
    assert found == [
        "outbound|80|v2|svc-0.scale.svc.cluster.local 127.0.0.1:9 /failed_active_hc",
        "svc-2.scale.svc.cluster.local: no endpoint yet",
    ]


def test_the_growth_table_fits_the_medians_of_each_size() -> None:
    text = scale.render(_results(1.5, 0.5, [0.2, 0.2]))
    grown = table_with(text, "measure")
    assert grown.keys == (
        "translate (CPU)",
        "validate (CPU)",
        "apply (CPU)",
        "apply (wall)",
        "Envoy RSS",
        "Envoy heap",
    )
    assert grown.column("exponent")["translate (CPU)"] == "1.00"  # 0.012, 0.12, 1.2 s
    assert grown.column("growth")["apply (wall)"] == "∝ n"


# --- the committed results and the READMEs ------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(scale.SCALE_JSON.read_text())
    return data


def test_scale_md_is_the_rendering_of_scale_json(committed: dict[str, Any]) -> None:
    md = scale.SCALE_JSON.with_suffix(".md").read_text()
    assert md == scale.markdown(committed), "re-render it: ./dev bench --update-readme"
    assert [f["services"] for f in committed["scale"]["sizes"]] == list(scale.SIZES)


@pytest.mark.parametrize("readme", sorted(report.READMES), ids=lambda p: p.parent.name)
def test_readme_scale_tables_have_the_shape_of_scale_json(
    committed: dict[str, Any], readme: Path
) -> None:
    mine = report.shape(report.extract(readme.read_text(), scale.SECTION))
    assert mine, f"{readme.name}: no table between the bench:scale markers"
    assert mine == report.shape(scale.render(committed)), "./dev bench --update-readme"


# --- the suite end to end -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_a_small_scale_run_prints_every_table_and_states_each_target(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = ["--suite", "scale", "--sizes", "3,6", "--rounds", "1", "--duration", "1"]
    done = run_bench(*argv, "--warmup", "1", "--results", str(out))
    results = json.loads(out.read_text())
    printed = report.extract(out.with_suffix(".md").read_text(), scale.SECTION)
    assert printed in done.stdout
    assert printed == scale.render(results)
    sizes = table_with(printed, "services", "clusters")
    assert sizes.keys == ("3", "6")
    assert sizes.column("virtual hosts") == {"3": "4", "6": "7"}  # one per Service + catch-all
    lookups = table_with(printed, "services", "virtual host")
    assert [(row[0], row[1]) for row in lookups.rows] == [
        ("3", "first (svc-0)"),
        ("3", "last (svc-2)"),
        ("6", "first (svc-0)"),
        ("6", "last (svc-5)"),
    ]
    # The lookups wait for Envoy's health checks: no 503 UH (nor anything else) but 2xx.
    assert set(lookups.column("not 2xx").values()) == {"0"}, done.stderr
    assert all(s["errors"] == 0 for got in results["scale"]["lookups"].values() for s in got)
    targets = table_with(printed, "target (issue 13)")
    assert len(targets.rows) == 4
    for row in targets.rows:
        assert row[1].startswith("≤ "), row
        assert row[-1] in VERDICTS, row
    # Each lookup counted under callgrind: the worker's instructions, every request answered.
    if not scale.can_count():
        return  # no valgrind: the counts are "–" (test_a_run_without_counts_says_so...)
    counted = results["scale"]["instructions"]
    assert sorted(counted) == ["3/first", "3/last", "6/first", "6/last"]
    assert all(
        c["failed"] == 0 and scale.worker_instructions(c) > 0
        for got in counted.values()
        for c in got
    )
    assert "–" not in lookups.column("worker kinstr/2xx").values()
