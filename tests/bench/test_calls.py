"""bench/calls.py: Python calls per request of one server process, by function, from cProfile."""

from __future__ import annotations

import json

import pytest

from bench import calls

from .checks import run_bench

# pstats' stats of two hand-made runs: key (file, line, name) -> (primitive calls, calls,
# own time, cumulative time, callers); only the calls (the second) count.
BARE: dict[calls.Key, calls.Entry] = {
    ("/venv/aiohttp/web_protocol.py", 567, "_handle_request"): (2, 2, 0.1, 0.2, {}),
    ("~", 0, "<built-in method builtins.len>"): (10, 10, 0.1, 0.1, {}),
    ("/repo/bench/server.py", 63, "index"): (2, 2, 0.1, 0.1, {}),
    ("~", 0, "<method 'get' of 'dict' objects>"): (4, 4, 0.1, 0.1, {}),
}
USVC: dict[calls.Key, calls.Entry] = {
    ("/venv/aiohttp/web_protocol.py", 567, "_handle_request"): (4, 4, 0.1, 0.2, {}),
    ("~", 0, "<built-in method builtins.len>"): (36, 36, 0.1, 0.1, {}),
    ("~", 0, "<method 'get' of 'dict' objects>"): (8, 8, 0.1, 0.1, {}),
    ("/repo/services/middle/app.py", 12, "index"): (8, 8, 0.1, 0.1, {}),
    ("~", 0, "<built-in method __new__ of type object at 0x7f9f9a05ea00>"): (4, 4, 0, 0, {}),
    # Two files of one base name, the same line and name: one label, counted together.
    ("/venv/one/__init__.py", 1, "f"): (1, 2, 0.1, 0.1, {}),
    ("/venv/two/__init__.py", 1, "f"): (2, 2, 0.1, 0.1, {}),
}


def profiles() -> list[calls.Profile]:
    bare = calls.Profile("chain", "bare", "middle", 2, 8, 0, calls.calls_by_function(BARE))
    usvc = calls.Profile("chain", "usvc", "middle", 4, 8, 0, calls.calls_by_function(USVC))
    return [bare, usvc]


def test_functions_are_named_by_file_base_name_and_c_functions_by_a_tilde() -> None:
    bare, usvc = profiles()
    assert bare.calls == {
        "web_protocol.py:567:_handle_request": 2,
        "~:builtins.len": 10,
        "server.py:63:index": 2,
        "~:dict.get": 4,
    }
    # The calls, not the primitive calls (1 + 2 would be those); no object address.
    assert usvc.calls["__init__.py:1:f"] == 4
    assert usvc.calls["~:__new__ of type object"] == 4


def test_calls_are_divided_by_the_requests_and_differences_taken_per_request() -> None:
    bare, usvc = profiles()
    # (2 + 10 + 2 + 4) / 2 and (4 + 36 + 8 + 8 + 4 + 4) / 4
    assert (bare.per_request, usvc.per_request) == (9.0, 16.0)
    assert usvc.of("~:builtins.len") == 9.0 and usvc.of("server.py:63:index") == 0.0
    # _handle_request (1 and 1) and dict.get (2 and 2) are the same per request: not listed.
    assert calls.differences(bare, usvc) == {
        "~:builtins.len": 4.0,
        "app.py:12:index": 2.0,
        "__init__.py:1:f": 1.0,
        "server.py:63:index": -1.0,
        "~:__new__ of type object": 1.0,
    }
    line = usvc.line()
    assert line["calls_per_request"] == 16.0 and line["requests"] == 4
    first = list(line["functions"].items())[:2]
    assert first == [("~:builtins.len", 9.0), ("app.py:12:index", 2.0)]


def test_the_table_lists_the_largest_differences_either_way_and_sums_up_the_rest() -> None:
    text = calls.table(profiles(), top=3)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    # By the difference's size, then by name: of the three ±1.00, __init__.py sorts first.
    assert rows == [
        "| `~:builtins.len` | 5.00 | 9.00 | +4.00 |",
        "| `app.py:12:index` | 0.00 | 2.00 | +2.00 |",
        "| `__init__.py:1:f` | 0.00 | 1.00 | +1.00 |",
    ]
    assert "| function | bare | usvc | usvc - bare |" in text
    assert text.splitlines()[-1] == (
        "usvc - bare: 5 functions account for the difference (+7.00 calls per request in all, "
        "16.00 against 9.00); none of those not shown above 1.00 calls per request."
    )
    everything = calls.table(profiles(), top=10)
    assert "| `server.py:63:index` | 1.00 | 0.00 | -1.00 |" in everything
    assert everything.endswith("none of those not shown above 0.00 calls per request.")


def test_one_build_alone_is_listed_by_its_calls() -> None:
    bare = profiles()[0]
    rows = [line for line in calls.table([bare], top=2).splitlines() if line.startswith("| `")]
    assert rows == ["| `~:builtins.len` | 5.00 |", "| `~:dict.get` | 2.00 |"]
    assert calls.table([bare], top=2).endswith(
        "4 functions called, 9.00 calls per request in all; none of the 2 not shown above "
        "1.00 calls per request."
    )


def test_the_profiled_hop_runs_the_same_server_under_the_wrapper() -> None:
    argv = calls.profiled(["/venv/bin/python", "-m", "bench.server", "usvc"])
    assert argv == ["/venv/bin/python", "-m", "bench._profiled", "usvc"]


@pytest.mark.slow
def test_a_profiled_run_counts_exactly_the_requests_sent() -> None:
    argv = ["--suite", "single", "--build", "bare", "--requests", "50", "--warmup", "10"]
    done = run_bench(*argv, module="bench.calls", timeout=120)
    line = json.loads(done.stdout.splitlines()[0])
    assert line["requests"] == 50 and line["failed"] == 0
    # aiohttp's request handler runs once per request and, for "ok", never waits: 49 or
    # 51 calls (a request outside the switches, or one missed) would read 0.98 or 1.02.
    handler = [f for f in line["functions"] if f.startswith("web_protocol.py:")]
    handler = [f for f in handler if f.endswith(":_handle_request")]
    assert len(handler) == 1, sorted(line["functions"])
    assert line["functions"][handler[0]] == 1.0
    assert "| function | bare |" in done.stdout
