"""Checks of the benchmarks' pure parts against the committed results.json: its typed form, the
registry, the summaries and the generated part of RESULTS.md (`pytest benchmarks/test_reports.py`)."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import get_type_hints

import pydantic
import pytest

from benchmarks import markdown, records, summaries
from benchmarks.registry import BENCHMARKS

HERE = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS_TEXT = (HERE / "results.json").read_text()


@pytest.fixture(scope="module")
def results() -> records.Results:
    return records.load(RESULTS_TEXT)


def test_results_json_loads_and_dumps_to_the_same_text(results: records.Results) -> None:
    assert records.dump(results) == RESULTS_TEXT


@pytest.mark.parametrize(
    ("path", "value"),
    [(("latency", 0, "samples", 0, "unknown_ms"), 1.0), (("concurrency", 0, "loop_lag_ms", "tail"), "slow")],
)
def test_unknown_keys_and_wrong_types_are_rejected(path: tuple[str | int, ...], value: object) -> None:
    data = json.loads(RESULTS_TEXT)
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    with pytest.raises(pydantic.ValidationError):
        records.parse(records.Results, data)


def test_results_are_merged_from_their_parts(results: records.Results) -> None:
    runs = records.Runs(**{field.name: getattr(results, field.name) for field in fields(records.Runs)})
    rebuilt = records.merge(
        records.Results,
        runs,
        machine=results.machine,
        plan=results.plan,
        runtime_seconds=results.runtime_seconds,
    )
    assert rebuilt == results


def test_every_benchmark_keeps_its_runs_under_its_name() -> None:
    fields = get_type_hints(records.Runs)
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.name == name
        assert fields[name] == list[benchmark.record]


def test_rendered_tables_are_the_generated_part_of_results_md(results: records.Results) -> None:
    document = (HERE / "RESULTS.md").read_text()
    generated = document.split(markdown.BEGIN, 1)[1].split(markdown.END, 1)[0]
    assert markdown.render(results) == generated.strip("\n")


def test_splice_replaces_only_the_generated_part() -> None:
    document = f"intro\n\n{markdown.BEGIN}\n\nold tables\n\n{markdown.END}\n\nanalysis\n"
    assert markdown.splice(document, "new tables") == (
        f"intro\n\n{markdown.BEGIN}\n\nnew tables\n\n{markdown.END}\n\nanalysis\n"
    )


def test_a_burst_with_a_failure_counts_it_and_has_no_tail_without_timings(results: records.Results) -> None:
    bare = next(run for run in results.concurrency if run.kind == "bare" and run.sessions > 1)
    failed = replace(bare, e2e_ms=bare.e2e_ms[1:], failures=["upstream-failed"])
    summary = summaries.concurrency_summary(failed)
    assert summary.success == (bare.sessions - 1) / bare.sessions
    assert summary.added.n == bare.sessions - 1
    assert summary.tail is None


def test_memory_growth_is_from_the_shortest_to_the_longest_audio(results: records.Results) -> None:
    runs = summaries.default_block(results.memory)
    growth = summaries.memory_growth(runs)
    by_seconds = {run.seconds: run.peak_rss for run in runs}
    assert growth.growth == by_seconds[max(by_seconds)] - by_seconds[min(by_seconds)]
    assert growth.allowed == runs[0].block_size + summaries.MEMORY_SLACK
