"""The benchmark's tables, as Markdown, from one run's results file (bench/results/latest.json).

Everything shown is computed here from the raw per-round samples the run recorded: a cell is
the median over the rounds, a ratio is the median of the same-round ratios (build A's req/s in
round r over build B's in round r), and each target of issue 13 is stated with its goal, the
measured value and whether it was met. The READMEs include these sections verbatim between
``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` markers (``python -m bench readme``
fills them), so no number in a table is typed by hand.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
LATEST = RESULTS_DIR / "latest.json"
# The files that include the tables, and which sections each one includes.
READMES: dict[Path, tuple[str, ...]] = {
    ROOT / "README.md": ("run", "single", "chain"),
    ROOT / "bench" / "README.md": ("run", "single", "chain"),
}
SUITE_ORDER = ("single", "chain")
# A hop is one call from one process to the next through the mesh: wrk -> front, front ->
# middle, middle -> core, core -> clock. A traversal is one pass through one Envoy listener:
# today a hop crosses one (the gateway, or the outbound listener); with a per-workload
# outbound and a per-replica inbound listener it crosses two. The run counts traversals
# (Envoy's downstream_rq_completed, see traversals()); ENVOY_TRAVERSALS is for older results.
ENVOY_HOPS = 4
ENVOY_TRAVERSALS = 4
DIRECT, MESH = "usvc", "usvc+envoy"
# A run beside more than this many busy cores of other work is flagged noisy (and, with
# --wait-idle, repeated).
NOISE_CORES = 0.25

Suite = Mapping[str, Any]
RowData = Mapping[str, Any]
SampleData = Mapping[str, Any]


class ReportError(ValueError):
    """The results file or a README is not what the tables need (missing suite, marker, ...)."""


# --- reading the raw samples -------------------------------------------------------------


def rows_of(suite: Suite) -> dict[str, RowData]:
    return {row["build"]: row for row in suite["rows"]}


def by_round(samples: Iterable[SampleData]) -> dict[int, SampleData]:
    return {int(s["round"]): s for s in samples}


def cpu_us(sample: SampleData, label: str | None = None) -> float:
    """CPU µs per request of one sample: all the build's processes, or one of them."""
    cpu: Mapping[str, float] = sample["cpu_s"]
    seconds = sum(cpu.values()) if label is None else cpu.get(label, 0.0)
    return seconds / max(int(sample["requests"]), 1) * 1e6


def median_of(samples: Sequence[SampleData], value: Callable[[SampleData], float]) -> float:
    return statistics.median(value(s) for s in samples)


@dataclass(frozen=True)
class Measured:
    """A value over one run: the median and the per-round values it is the median of."""

    value: float
    per_round: tuple[float, ...]


def paired(
    a: Sequence[SampleData],
    b: Sequence[SampleData],
    combine: Callable[[SampleData, SampleData], float],
) -> Measured | None:
    """``combine`` over the rounds both a and b ran in, and its median; None if none did."""
    first, second = by_round(a), by_round(b)
    values = tuple(combine(first[r], second[r]) for r in sorted(first.keys() & second.keys()))
    return Measured(statistics.median(values), values) if values else None


def ratio(suite: Suite, a: str, b: str, key: str = "samples") -> Measured | None:
    """a's req/s over b's, round by round, in this suite's run."""
    rows = rows_of(suite)
    if a not in rows or b not in rows:
        return None
    return paired(
        rows[a].get(key, []), rows[b].get(key, []), lambda x, y: float(x["rps"]) / float(y["rps"])
    )


Per = Callable[[SampleData], float]


def per_request(sample: SampleData) -> float:
    return 1.0


def traversals(sample: SampleData) -> float:
    """Listener traversals per request in a mesh sample: Envoy's own count of the requests
    its listeners served over the run, over wrk's requests; ENVOY_TRAVERSALS for a results
    file from before that count was recorded."""
    served = int(sample.get("listener_requests", 0))
    return served / max(int(sample["requests"]), 1) if served else float(ENVOY_TRAVERSALS)


def per_hop(sample: SampleData) -> float:
    return float(ENVOY_HOPS)


def counted(suite: Suite) -> bool:
    """Whether the mesh row's samples carry Envoy's count of listener requests."""
    row = rows_of(suite).get(MESH)
    samples = [*row.get("samples", []), *row.get("probes", [])] if row else []
    return bool(samples) and all(int(s.get("listener_requests", 0)) > 0 for s in samples)


def envoy_added(
    suite: Suite, key: str, value: Callable[[SampleData], float], per: Per = per_request
) -> Measured | None:
    """What the mesh build adds over the direct usvc hops (mesh - direct), round by round,
    divided by ``per`` of the mesh's sample (per request, traversal or hop)."""
    rows = rows_of(suite)
    if DIRECT not in rows or MESH not in rows:
        return None
    return paired(
        rows[MESH].get(key, []),
        rows[DIRECT].get(key, []),
        lambda m, d: (value(m) - value(d)) / per(m),
    )


def envoy_cpu(suite: Suite, key: str, per: Per = per_request) -> Measured | None:
    """Envoy's own CPU µs per request in the mesh build (or per traversal, per hop), by round."""
    row = rows_of(suite).get(MESH)
    samples = by_round(row.get(key, []) if row else [])
    values = tuple(cpu_us(samples[r], "envoy") / per(samples[r]) for r in sorted(samples))
    return Measured(statistics.median(values), values) if values else None


# --- the targets of issue 13 -------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # the row's first cell
    goal: float
    at_least: bool  # met when value >= goal; otherwise when value <= goal
    unit: str  # "×", "µs", "ms"
    measure: Callable[[Suite], Measured | None]

    @property
    def goal_text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {fmt(self.goal, self.unit)}"

    def met(self, value: float) -> bool:
        return value >= self.goal if self.at_least else value <= self.goal


def fmt(value: float, unit: str) -> str:
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "µs":
        return f"{value:.0f} µs"
    return f"{value:+.2f} ms" if unit == "+ms" else f"{value:.2f} {unit}"


def plain(value: float, unit: str) -> str:
    """A value without its unit (a per-round list): as precise as ``fmt``."""
    return f"{value:.0f}" if unit == "µs" else f"{value:+.2f}" if unit == "+ms" else f"{value:.2f}"


def _ratio_target(name: str, a: str, b: str, goal: float) -> Target:
    return Target(name, goal, True, "×", lambda suite: ratio(suite, a, b))


TARGETS: dict[str, tuple[Target, ...]] = {
    "single": (
        _ratio_target("usvc-100 req/s ÷ otel", "usvc-100", "otel", 2.0),
        _ratio_target("usvc-1 req/s ÷ bare", "usvc-1", "bare", 0.7),
    ),
    "chain": (
        _ratio_target("usvc req/s ÷ otel", "usvc", "otel", 2.0),
        _ratio_target("usvc req/s ÷ bare", "usvc", "bare", 0.75),
        Target(
            "Envoy CPU per traversal",
            150.0,
            False,
            "µs",
            lambda suite: envoy_cpu(suite, "samples", traversals),
        ),
        Target(
            "p50 added per traversal, 1 connection",
            0.3,
            False,
            "+ms",
            lambda suite: envoy_added(suite, "probes", lambda s: float(s["p50_ms"]), traversals),
        ),
    ),
}
MET, NOT_MET, NOT_MEASURED = "met", "**not met**", "not measured"


def verdict(target: Target, measured: Measured | None) -> str:
    if measured is None:
        return NOT_MEASURED
    return MET if target.met(measured.value) else NOT_MET


# --- rendering -----------------------------------------------------------------------------


def _table(
    columns: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[str]]
) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _align(*kinds: str) -> list[str]:
    return [{"l": "---", "r": "---:"}[k] for k in kinds]


MAIN_COLUMNS = ("build", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "× bare", "× otel")
PROBE_COLUMNS = ("build", "req/s", "p50 ms", "p99 ms", "CPU µs/req")
TARGET_COLUMNS = ("target (issue 13)", "goal", "measured", "per round", "result")
CAPTIONS = {
    "single": "one route, `GET /` → `ok` (`--suite single`)",
    "chain": "the four-hop chain front → middle → core → clock (`--suite chain`)",
}


def _cells(samples: Sequence[SampleData]) -> list[str]:
    return [
        f"{median_of(samples, lambda s: float(s['rps'])):.0f}",
        f"{median_of(samples, lambda s: float(s['p50_ms'])):.2f}",
        f"{median_of(samples, lambda s: float(s['p99_ms'])):.2f}",
        f"{median_of(samples, cpu_us):.0f}",
    ]


def _ratio_cell(measured: Measured | None) -> str:
    return "–" if measured is None else f"{measured.value:.2f}"


def render_suite(suite: Suite, run: Mapping[str, Any]) -> str:
    name = suite["suite"]
    wrk = run["wrk"]
    rounds = int(wrk["rounds"])
    lines = [
        f"**{name}**: {CAPTIONS.get(name, name)}. `wrk -t{wrk['threads']} -c{wrk['connections']} "
        f"-d{wrk['duration_s']:g}s --latency`, medians of {rounds} interleaved round(s); "
        "× bare and × otel are medians of the same-round ratios of req/s.",
        "",
    ]
    rows = []
    notes = []
    for row in suite["rows"]:
        samples = row.get("samples", [])
        if not samples:
            rows.append([row["build"], "pending", "", "", "", "", ""])
            notes.append(f"- {row['build']} did not run: {row.get('pending') or 'no samples'}")
            continue
        rows.append(
            [
                row["build"],
                *_cells(samples),
                _ratio_cell(ratio(suite, row["build"], "bare")),
                _ratio_cell(ratio(suite, row["build"], "otel")),
            ]
        )
        errors = sum(int(s["errors"]) for s in samples)
        if errors:
            notes.append(f"- {row['build']}: {errors} error answers or socket errors")
        other = max(float(s.get("other_cores", 0.0)) for s in samples)
        if other > NOISE_CORES:
            notes.append(
                f"- {row['build']}: noisy, other processes used up to {other:.2f} cores in a run"
            )
    lines += _table(MAIN_COLUMNS, _align("l", "r", "r", "r", "r", "r", "r"), rows)
    probed = [r for r in suite["rows"] if r.get("probes")]
    if probed:
        connections = int(wrk["probe_connections"])
        lines += [
            "",
            f"At {connections} connection (no queueing behind other requests), same run:",
            "",
        ]
        lines += _table(
            PROBE_COLUMNS,
            _align("l", "r", "r", "r", "r"),
            ([r["build"], *_cells(r["probes"])] for r in probed),
        )
    if name == "chain":
        lines += ["", *_envoy_table(suite, run)]
    lines += ["", *_targets_table(name, suite)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _envoy_table(suite: Suite, run: Mapping[str, Any]) -> list[str]:
    wrk = run["wrk"]

    def p50(s: SampleData) -> float:
        return float(s["p50_ms"])

    def p99(s: SampleData) -> float:
        return float(s["p99_ms"])

    def cell(measured: Measured | None, unit: str) -> str:
        return "–" if measured is None else fmt(measured.value, unit)

    measured = counted(suite)
    what = f"{ENVOY_TRAVERSALS} traversals"
    if measured:
        passes = statistics.median(traversals(s) for s in rows_of(suite)[MESH]["samples"])
        what = f"{ENVOY_HOPS} hops, {passes:.2f} listener traversals per request"
    columns = (
        f"Envoy: {MESH} over {DIRECT} ({what})",
        f"{wrk['connections']} connections",
        f"{wrk['probe_connections']} connection",
    )

    def row(label: str, unit: str, measure: Callable[[str], Measured | None]) -> list[str]:
        return [label, cell(measure("samples"), unit), cell(measure("probes"), unit)]

    rows = [
        row("p50 added", "+ms", lambda key: envoy_added(suite, key, p50)),
        row("p99 added", "+ms", lambda key: envoy_added(suite, key, p99)),
        row(
            "p50 added per traversal",
            "+ms",
            lambda key: envoy_added(suite, key, p50, traversals),
        ),
        row("Envoy CPU per request", "µs", lambda key: envoy_cpu(suite, key)),
        row("Envoy CPU per traversal", "µs", lambda key: envoy_cpu(suite, key, traversals)),
    ]
    if measured:
        rows += [
            row("p50 added per hop", "+ms", lambda key: envoy_added(suite, key, p50, per_hop)),
            row("Envoy CPU per hop", "µs", lambda key: envoy_cpu(suite, key, per_hop)),
        ]
    return _table(columns, _align("l", "r", "r"), rows)


def _targets_table(name: str, suite: Suite) -> list[str]:
    rows = []
    for target in TARGETS.get(name, ()):
        measured = target.measure(suite)
        rows.append(
            [
                target.name,
                target.goal_text,
                "–" if measured is None else fmt(measured.value, target.unit),
                "–"
                if measured is None
                else " ".join(plain(v, target.unit) for v in measured.per_round),
                verdict(target, measured),
            ]
        )
    return _table(TARGET_COLUMNS, _align("l", "r", "r", "l", "l"), rows)


RUN_COLUMNS = ("run", "")


# What a full run uses unless told otherwise (bench/__main__.py's defaults).
DEFAULT_WRK = {"connections": 32, "duration_s": 10, "warmup_s": 3.0, "rounds": 3}


def render_run(run: Mapping[str, Any], suites: Sequence[Suite] = ()) -> str:
    wrk = run["wrk"]
    load_before = " ".join(f"{x:.2f}" for x in run["load_before"])
    load_after = " ".join(f"{x:.2f}" for x in run["load_after"])
    rows = [
        ("command", f"`{run['command']}`"),
        ("commit", run["commit"]),
        ("date (UTC)", f"{run['started']} – {run['finished']}"),
        ("machine", f"{run['cores']} cores ({run['cpu_model']})"),
        ("load average (1, 5, 15 min)", f"before {load_before}; after {load_after}"),
        ("software", f"Python {run['python']}, aiohttp {run['aiohttp']}, {run['loop']}"),
        (
            "wrk",
            f"`-t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']:g}s --latency`, "
            f"{wrk['warmup_s']:g} s warm-up per build, {wrk['rounds']} interleaved round(s); "
            f"the probe runs at {wrk['probe_connections']} connection",
        ),
    ]
    defaults = DEFAULT_WRK.items() <= {k: wrk[k] for k in DEFAULT_WRK}.items()
    rows.append(
        (
            "settings",
            "the defaults"
            if defaults
            else "**not the defaults** ("
            + ", ".join(f"{k} {v}" for k, v in DEFAULT_WRK.items())
            + "): a shorter or different run",
        )
    )
    other = [
        float(sample.get("other_cores", 0.0))
        for suite in suites
        for row in suite["rows"]
        for sample in row.get("samples", [])
    ]
    rows.append(
        (
            "other load",
            f"up to {max(other):.2f} busy cores of other processes during a run"
            + (" (**a shared, busy machine**)" if max(other) > NOISE_CORES else "")
            if other
            else "–",
        )
    )
    return "\n".join(_table(RUN_COLUMNS, _align("l", "l"), rows))


def sections(results: Mapping[str, Any]) -> dict[str, str]:
    """The Markdown sections of one run: ``run`` (the header) and one per suite it ran."""
    run = results["run"]
    out = {"run": render_run(run, results["suites"])}
    for suite in results["suites"]:
        out[suite["suite"]] = render_suite(suite, run)
    return out


def markdown(results: Mapping[str, Any]) -> str:
    """The whole results file as Markdown (bench/results/latest.md)."""
    parts = ["# Benchmark results", "", "Written by `python -m bench` from one run.", ""]
    for name, text in sections(results).items():
        parts += [f"## {name}", "", marked(name, text), ""]
    return "\n".join(parts)


# --- the READMEs' marked sections ----------------------------------------------------------


def start_marker(name: str) -> str:
    return f"<!-- bench:{name}:start -->"


def end_marker(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def marked(name: str, text: str) -> str:
    return f"{start_marker(name)}\n{text}\n{end_marker(name)}"


def extract(text: str, name: str) -> str:
    """What a document holds between a section's markers."""
    pattern = re.escape(start_marker(name)) + r"\n(.*?)\n?" + re.escape(end_marker(name))
    found = re.findall(pattern, text, re.S)
    if len(found) != 1:
        raise ReportError(
            f"expected one {start_marker(name)} … {end_marker(name)}, found {len(found)}"
        )
    return str(found[0])


def fill(text: str, name: str, content: str) -> str:
    """The document with the section ``name`` replaced by ``content``."""
    extract(text, name)  # exactly one, or ReportError
    pattern = re.escape(start_marker(name)) + r".*?" + re.escape(end_marker(name))
    return re.sub(pattern, lambda _: marked(name, content), text, count=1, flags=re.S)


def update_readmes(results: Mapping[str, Any]) -> list[Path]:
    """Fill every README's marked sections from ``results``; the files changed."""
    got = sections(results)
    changed = []
    for path, names in READMES.items():
        missing = [n for n in names if n not in got]
        if missing:
            raise ReportError(
                f"{path.name} includes {', '.join(missing)}, which this results file lacks: "
                "the READMEs come from a full run (`./dev bench --suite all`)"
            )
        text = path.read_text()
        new = text
        for name in names:
            new = fill(new, name, got[name])
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# --- shape: what a table holds, numbers aside ----------------------------------------------


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The first column: builds, targets, run fields."""
        return tuple(row[0] for row in self.rows)

    def column(self, name: str) -> dict[str, str]:
        index = self.columns.index(name)
        return {row[0]: row[index] for row in self.rows}


def _cells_of(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


def tables(text: str) -> list[Table]:
    """Every Markdown table in ``text``, in order."""
    found: list[Table] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())
        ):
            columns = _cells_of(lines[i])
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells_of(lines[i]))
                i += 1
            found.append(Table(columns, tuple(rows)))
        else:
            i += 1
    return found


def shape(text: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each table's columns and first column (builds, targets): what must match, not numbers."""
    return [(t.columns, t.keys) for t in tables(text)]
