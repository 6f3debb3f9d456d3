"""The four demo services wired straight to each other (no mesh): replies and failures."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from tests.procs import Proc, free_port, start

pytestmark = pytest.mark.slow  # starts real processes: not in the fast loop

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HOST = socket.gethostname()


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with OPENER.open(request, timeout=10) as resp:
            return resp.status, resp.headers.get_content_type(), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read().decode()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs: dict[str, Proc] = {}
    sockets: list[socket.socket] = []
    try:
        procs["worldtime"] = start(
            "worldtime", "services.worldtime.app", {}, logs, ready_path="/api/timezone/Etc/UTC"
        )
        procs["clock"] = start(
            "clock",
            "services.clock.app:svc",
            {"SERVICE_NAME": "clock", "SERVICE_ENV": "prod"},
            logs,
        )
        clock = procs["clock"].url + "/"
        procs["core-test"] = start(
            "core-test",
            "services.core.app:svc",
            {"SERVICE_ENV": "test", "SERVICE_VERSION": "v2", "UPSTREAM_URI": clock},
            logs,
        )
        procs["core-prod"] = start(
            "core-prod",
            "services.core.app:svc",
            {
                "SERVICE_ENV": "prod",
                "UPSTREAM_URI": procs["worldtime"].url + "/api/timezone/Asia/Jakarta",
                "FALLBACK_URI": clock,
            },
            logs,
        )
        dead = free_port()
        # Accepts connections (the kernel's backlog) and never answers.
        silent = socket.create_server(("127.0.0.1", 0), backlog=64)
        sockets.append(silent)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/timezone/Asia/Jakarta"
        procs["core-slow"] = start(
            "core-slow",
            "services.core.app:svc",
            {
                "SERVICE_ENV": "prod",
                "UPSTREAM_URI": silent_url,
                "FALLBACK_URI": clock,
                "TIME_API_TIMEOUT": "0.5",
            },
            logs,
        )
        procs["core-slow-nofallback"] = start(
            "core-slow-nofallback",
            "services.core.app:svc",
            {"SERVICE_ENV": "prod", "UPSTREAM_URI": silent_url, "TIME_API_TIMEOUT": "0.5"},
            logs,
        )
        procs["core-offline"] = start(
            "core-offline",
            "services.core.app:svc",
            {
                "SERVICE_ENV": "prod",
                "UPSTREAM_URI": f"http://127.0.0.1:{dead}/api/timezone/Asia/Jakarta",
                "FALLBACK_URI": clock,
            },
            logs,
        )
        procs["core-nofallback"] = start(
            "core-nofallback",
            "services.core.app:svc",
            {
                "SERVICE_ENV": "prod",
                "UPSTREAM_URI": f"http://127.0.0.1:{dead}/api/timezone/Asia/Jakarta",
            },
            logs,
        )
        procs["middle"] = start(
            "middle",
            "services.middle.app:svc",
            {
                "SERVICE_ENV": "canary",
                "SERVICE_VERSION": "v2",
                "UPSTREAM_URI": procs["core-test"].url + "/",
            },
            logs,
        )
        procs["front"] = start(
            "front",
            "services.front.app:svc",
            {"UPSTREAM_URI": procs["middle"].url + "/", "SERVICE_INSTANCE": "front-7d9f-abcde"},
            logs,
        )
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
        for sock in sockets:
            sock.close()


def test_plain_text_reply_shows_one_line_per_hop_with_its_time(chain: dict[str, Proc]) -> None:
    status, ctype, body = get(chain["front"].url + "/")
    assert status == 200 and ctype == "text/plain"
    lines = body.splitlines()
    assert re.fullmatch(
        rf"took \([\d.]+ ms\) front v1 \(dev\) front-7d9f-abcde --> {chain['middle'].url}/",
        lines[0],
    )
    # an instance not given is the hostname
    assert lines[1].startswith("  took (") and f"middle v2 (canary) {HOST} -->" in lines[1]
    assert lines[2].startswith("    took (") and "core v2 (test)" in lines[2]
    assert lines[3].startswith("      took (") and "clock v1 (prod)" in lines[3]
    assert lines[4].strip().startswith("clock: 20")


def test_json_reply_nests_each_hop_and_carries_one_trace_id(chain: dict[str, Proc]) -> None:
    status, ctype, body = get(chain["front"].url + "/", accept="application/json")
    assert status == 200 and ctype == "application/json"
    reply = json.loads(body)
    hops = []
    node = reply
    while isinstance(node, dict) and "service" in node:
        hops.append(node)
        node = node.get("upstream")
    assert [h["service"] for h in hops] == ["front", "middle", "core", "clock"]
    assert [h["instance"] for h in hops] == ["front-7d9f-abcde", HOST, HOST, HOST]
    assert len({h["trace_id"] for h in hops}) == 1
    # each hop's time includes the hops beneath it
    took = [h["took_ms"] for h in hops]
    assert took == sorted(took, reverse=True)


def test_hello_answers_hello_world(chain: dict[str, Proc]) -> None:
    for name in ("front", "middle", "core-test", "clock"):
        status, _, body = get(chain[name].url + "/hello")
        assert (status, json.loads(body)) == (200, {"hello": "world!"})


def test_core_prod_reads_worldtimeapi_json(chain: dict[str, Proc]) -> None:
    status, _, body = get(chain["core-prod"].url + "/", accept="application/json")
    reply = json.loads(body)
    assert status == 200
    assert reply["worldtime"]["timezone"] == "Asia/Jakarta"
    assert reply["worldtime"]["utc_offset"] == "+07:00"
    assert reply["upstream"].startswith("worldtimeapi: ")
    assert "fallback" not in reply


def test_core_prod_falls_back_to_clock_and_says_so(chain: dict[str, Proc]) -> None:
    status, _, body = get(chain["core-offline"].url + "/")
    assert status == 200
    assert "note: 127.0.0.1 unreachable" in body
    assert "(fallback)" in body
    assert "clock v1 (prod)" in body


def test_core_prod_without_fallback_is_a_502_naming_the_time_api(chain: dict[str, Proc]) -> None:
    status, ctype, body = get(chain["core-nofallback"].url + "/")
    problem = json.loads(body)
    assert status == 502 and ctype == "application/problem+json"
    assert problem["service"] == "core"
    assert problem["upstream"] == "127.0.0.1"


def test_core_prod_falls_back_when_the_time_api_does_not_answer_within_its_timeout(
    chain: dict[str, Proc],
) -> None:
    # TIME_API_TIMEOUT (0.5 s) ends the call, far inside the 10 s egress timeout and
    # the 15 s request deadline: the fallback answers.
    status, _, body = get(chain["core-slow"].url + "/", accept="application/json")
    reply = json.loads(body)
    assert status == 200, reply
    assert reply["fallback"] is True
    assert "no answer within 0.5s" in reply["note"] and "(fallback)" in reply["note"]
    assert reply["upstream"]["service"] == "clock"
    status, _, body = get(chain["core-slow-nofallback"].url + "/")
    problem = json.loads(body)
    assert status == 504, problem
    assert problem["upstream"] == "127.0.0.1" and "no answer within 0.5s" in problem["detail"]


def test_worldtime_stand_in_speaks_the_real_apis_format(chain: dict[str, Proc]) -> None:
    status, _, body = get(chain["worldtime"].url + "/api/timezone/Asia/Jakarta")
    reply = json.loads(body)
    assert status == 200
    assert set(reply) >= {
        "datetime",
        "timezone",
        "utc_offset",
        "unixtime",
        "abbreviation",
        "day_of_week",
        "day_of_year",
        "week_number",
        "raw_offset",
        "dst",
    }
    assert reply["datetime"].endswith("+07:00")
    status, _, body = get(chain["worldtime"].url + "/api/timezone/Mars/Olympus")
    assert (status, json.loads(body)) == (404, {"error": "unknown location"})
