"""The committed results and the READMEs' tables: one run, honest ratios, the READMEs' shape.

Fast: reads files only. The numbers are the last run's, whatever they are; what is checked is
that the tables follow from that run's raw figures and that the READMEs hold those tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import report

from .checks import check_one_run, check_suite

ROOT = Path(__file__).resolve().parents[2]
LATEST = ROOT / "bench" / "results" / "latest.json"


@pytest.fixture(scope="module")
def latest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(LATEST.read_text())
    return data


def test_the_results_file_is_one_full_run(latest: dict[str, Any]) -> None:
    assert [s["suite"] for s in latest["suites"]] == ["single", "chain"]
    run = latest["run"]
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", run["commit"]), run["commit"]
    assert len(run["load_before"]) == len(run["load_after"]) == 3
    assert run["cores"] >= 1
    check_one_run(latest)


def test_latest_md_is_the_rendering_of_latest_json(latest: dict[str, Any]) -> None:
    md = LATEST.with_suffix(".md").read_text()
    assert md == report.markdown(latest), "re-render it: ./dev bench --update-readme"


@pytest.mark.parametrize("suite", ["single", "chain"])
def test_ratios_and_verdicts_follow_from_the_raw_figures(
    latest: dict[str, Any], suite: str
) -> None:
    md = LATEST.with_suffix(".md").read_text()
    data = next(s for s in latest["suites"] if s["suite"] == suite)
    check_suite(data, report.extract(md, suite))


@pytest.mark.parametrize("readme", sorted(report.READMES), ids=lambda p: p.parent.name)
def test_readme_tables_have_the_shape_of_the_results_file(
    latest: dict[str, Any], readme: Path
) -> None:
    text = readme.read_text()
    got = report.sections(latest)
    for name in report.READMES[readme]:
        mine = report.shape(report.extract(text, name))
        assert mine, f"{readme.name}: no table between the bench:{name} markers"
        assert mine == report.shape(got[name]), (
            f"{readme.name}'s bench:{name} tables differ in shape from {LATEST.name}'s: "
            "./dev bench --update-readme"
        )


def test_readme_benchmarks_section_has_no_table_of_its_own() -> None:
    """Every table under "## Benchmarks" is between bench markers: none typed by hand."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    outside = re.sub(r"<!-- bench:(\w+):start -->.*?<!-- bench:\1:end -->", "", section, flags=re.S)
    assert not report.tables(outside), outside


RESULTS = ROOT / "bench" / "results"
# The separate runs the READMEs cite beside latest.json's, and the suites each one ran.
REPEATS = sorted(RESULTS.glob("single-repeat-*.json"))
FULL_REPEATS = sorted(RESULTS.glob("full-repeat-*.json"))
SUITES_OF = {"single-repeat": ["single"], "full-repeat": ["single", "chain"]}


@pytest.mark.parametrize("path", REPEATS + FULL_REPEATS, ids=lambda p: p.stem)
def test_each_repeat_run_is_one_run_and_its_md_its_rendering(path: Path) -> None:
    data: dict[str, Any] = json.loads(path.read_text())
    assert [s["suite"] for s in data["suites"]] == SUITES_OF[path.stem.rsplit("-", 1)[0]]
    check_one_run(data)
    md = path.with_suffix(".md").read_text()
    assert md == report.markdown(data), "render it again from its JSON (bench.report.markdown)"
    for suite in data["suites"]:
        check_suite(suite, report.extract(md, suite["suite"]))


def test_there_are_repeat_runs_to_check() -> None:
    assert len(REPEATS) >= 2
