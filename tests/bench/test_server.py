"""bench/server.py: the builds the chain suite compares do the same work per hop."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from bench.builds import CHAIN_HEADERS, Processes, chain_builds
from tests.chain.conftest import hops

pytestmark = pytest.mark.slow  # starts two chains of real processes

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What only the framework knows: bare aiohttp has no trace to name.
FRAMEWORK_ONLY = {"trace_id"}


def reply_of(build: Processes, accept: str) -> str:
    headers = dict(h.split(": ", 1) for h in CHAIN_HEADERS) | {"Accept": accept}
    request = urllib.request.Request(build.url, headers=headers)
    with OPENER.open(request, timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def test_bare_and_usvc_chain_hops_answer_the_same_fields_but_the_trace_id(tmp_path: Path) -> None:
    builds = {b.name: b for b in chain_builds() if b.name in ("bare", "usvc")}
    assert set(builds) == {"bare", "usvc"}
    try:
        for build in builds.values():
            assert isinstance(build, Processes)
            (tmp_path / build.name).mkdir()
            build.start(tmp_path / build.name, "uvloop")
            build.wait()
        replies = {
            name: hops(json.loads(reply_of(build, "application/json")))  # type: ignore[arg-type]
            for name, build in builds.items()
        }
        texts = {name: reply_of(build, "text/plain") for name, build in builds.items()}  # type: ignore[arg-type]
    finally:
        for build in builds.values():
            build.stop()
    bare, usvc = replies["bare"], replies["usvc"]
    assert [h["service"] for h in bare] == [h["service"] for h in usvc]
    assert [h["service"] for h in usvc] == ["front", "middle", "core", "clock"]
    for b, u in zip(bare, usvc, strict=True):
        assert set(u) - set(b) == FRAMEWORK_ONLY, (b, u)
        assert set(b) <= set(u), (b, u)
        assert b["instance"] == u["instance"]  # the host's name: the same bytes to carry
    # The text the edge renders: one line per hop in both, naming the instance.
    for text in texts.values():
        lines = text.splitlines()
        assert [line.split(")")[1].split()[0] for line in lines[:4]] == [
            "front",
            "middle",
            "core",
            "clock",
        ]
        assert all(usvc[0]["instance"] in line for line in lines[:4])
