"""bench/envoy_profile.py and envoy_symbols.py: the chain's Envoy by component, from callgrind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import envoy_profile, envoy_symbols
from bench.envoy_parts import _envoy_executable

# A callgrind file as callgrind writes one (name compression, a call's inclusive cost on the
# line after its calls= line): the dispatcher calls the HTTP/1 codec, which calls an
# unnamed helper, which the tracer calls too; malloc is memory whoever calls it.
CALLGRIND = """\
version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /envoy
fl=(1) ???
fn=(1) Envoy::Event::DispatcherImpl::virtual#3
0 10
cfn=(2) Envoy::Http::Http1::ServerConnectionImpl::virtual#2
calls=1 0
0 160
cfn=(3) Envoy::Extensions::Tracers::OpenTelemetry::Span::virtual#3
calls=1 0
0 130
fn=(2)
0 100
cfn=(4) fn_1234
calls=3 0
0 60
fn=(3)
0 40
cfn=(4)
calls=1 0
0 20
cfn=(5) malloc
calls=1 0
0 70
fn=(4)
0 80
fn=(5)
0 70
totals: 300
"""


def test_an_unnamed_function_is_charged_to_its_callers_by_what_their_calls_cost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND)
    profile = envoy_profile.read_callgrind(path)
    assert profile.total == 300
    assert profile.self_cost["fn_1234"] == 80
    assert profile.calls[("Envoy::Http::Http1::ServerConnectionImpl::virtual#2", "fn_1234")] == 60
    parts = envoy_profile.by_component(profile)
    # fn_1234's 80: 60 of its callers' 80 from the codec, 20 from the tracer.
    assert parts["HTTP/1 codec (parser, encoder)"] == pytest.approx(100 + 60)
    assert parts["tracing: OpenTelemetry spans (create, tags, finish)"] == pytest.approx(40 + 20)
    assert parts["memory allocation (tcmalloc)"] == 70
    assert parts["dispatcher, timers, libevent"] == 10
    assert sum(parts.values()) == pytest.approx(profile.total)


def test_every_edit_names_what_it_changes_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "tracing": {"custom_tags": [], "provider": {"typed_config": {}}},
        "access_log": [],
        "http_filters": [{"name": "envoy.filters.http.cors"}, {"name": "router"}],
    }
    (tmp_path / "bootstrap.json").write_text(
        '{"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": '
        + json.dumps(hcm)
        + "}]}]}]}}"
    )
    (tmp_path / "lds.json").write_text('{"resources": []}')
    envoy_profile.edit_config(
        tmp_path,
        ["-log", "-custom_tags", "-filter:envoy.filters.http.cors", "runtime:a.b=5"],
    )
    boot = json.loads((tmp_path / "bootstrap.json").read_text())
    (edited,) = envoy_profile._hcms(boot)
    assert "access_log" not in edited and "custom_tags" not in edited["tracing"]
    assert [f["name"] for f in edited["http_filters"]] == ["router"]
    assert boot["layered_runtime"]["layers"][0]["static_layer"] == {"a.b": 5}
    with pytest.raises(SystemExit, match="no edit"):
        envoy_profile.edit_config(tmp_path, ["-everything"])


@pytest.mark.slow
def test_rtti_names_the_virtual_functions_of_envoys_own_classes() -> None:
    symbols = envoy_symbols.read_symbols(Path(_envoy_executable()).resolve())
    names = set(symbols.names.values())
    assert any(n.startswith("Envoy::Http::Http1::ServerConnectionImpl::virtual#") for n in names)
    assert any(
        n.startswith("Envoy::Extensions::Tracers::OpenTelemetry::Span::virtual#") for n in names
    )
    assert any(n.startswith("tcmalloc::fn_") for n in names)
    # Function starts are sorted and every name is at one of them.
    assert symbols.starts == sorted(symbols.starts)
    assert symbols.function_at(symbols.starts[10] + 1) == symbols.starts[10]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_the_chain_profile_counts_every_traversal_and_sums_to_envoys_total() -> None:
    run = envoy_profile.run_chain(requests=20, warmup=5, connections=2, idle_seconds=1.0)
    assert run.failed == 0
    # the gateway, front's inbound, then for each call (front, middle, core) the caller's
    # outbound and the callee's inbound listener: 8 a request (a rare retry adds one)
    assert 8 * 20 <= run.traversals <= 8 * 20 + 4
    parts = envoy_profile.by_component(run.profile)
    assert sum(parts.values()) == pytest.approx(run.profile.total, rel=1e-6)
    # The tracer and the HTTP/1 codec are there: names came through.
    assert parts["tracing: OpenTelemetry spans (create, tags, finish)"] > 0
    assert parts["HTTP/1 codec (parser, encoder)"] > 0
    assert 0 <= run.idle < run.profile.total
