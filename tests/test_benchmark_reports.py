"""Checks of the benchmarks' pure parts against the committed results.json: its typed form, the
registry, the summaries and the generated part of RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import get_type_hints

import pydantic
import pytest

from benchmarks import markdown, records, summaries
from benchmarks.registry import BENCHMARKS
from benchmarks.run import Workers

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
        machine_load=results.machine_load,
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


def _first_audio_run(samples: list[records.FirstAudioSample]) -> records.FirstAudioRun:
    return records.FirstAudioRun(
        settings={},
        spawned_epoch=0.0,
        import_ms=0.0,
        import_peak_rss=0,
        sessions=1,
        seconds=10.0,
        pace=1.0,
        samples=samples,
    )


def _sample(
    kind: records.ClientKind, first: float | None, total: float, ok: bool = True
) -> records.FirstAudioSample:
    return records.FirstAudioSample(kind=kind, round=0, first_audio_ms=first, total_ms=total, ok=ok)


def test_first_audio_compares_medians_and_leaves_failures_out() -> None:
    run = _first_audio_run(
        [
            _sample("sse", 30.0, 10_010.0),
            _sample("sse", 50.0, 10_030.0),
            _sample("sse", None, 200.0, ok=False),
            _sample("bare", 38.0, 10_000.0),
            _sample("function", 10_000.0, 10_000.0),
            _sample("function", 10_040.0, 10_040.0),
        ]
    )
    summary = summaries.first_audio_summary(run)
    assert summary.failures == 1
    assert summary.sse_minus_bare == 2.0
    assert summary.json_over_sse == 10_020.0 / 40.0
    assert summary.sse_minus_json_total == 0.0


def _chat_sample(kind: records.ChatKind, first: float | None, ok: bool = True) -> records.ChatSample:
    return records.ChatSample(kind=kind, round=0, first_audio_ms=first, ok=ok)


def test_chat_completions_compare_medians_and_the_long_answers_extra_growth() -> None:
    measured = records.ChatCompletions(
        seconds=10.0,
        pace=1.0,
        history_turns=10,
        samples=[
            _chat_sample("chat", 40.0),
            _chat_sample("chat", 44.0),
            _chat_sample("chat", None, ok=False),
            _chat_sample("sse", 41.0),
            _chat_sample("bare", 38.0),
            _chat_sample("chat_history", 52.0),
        ],
        short_seconds=10.0,
        short_before_rss=100 * records.MIB,
        short_peak_rss=104 * records.MIB,
        long_seconds=600.0,
        long_before_rss=101 * records.MIB,
        long_peak_rss=113 * records.MIB,
        long_body_bytes=38 * records.MIB,
    )
    process = records.Process(settings={}, spawned_epoch=0.0, import_ms=0.0, import_peak_rss=0)
    summary = summaries.chat_summary(records.merge(records.ChatCompletionsRun, measured, process))
    assert summary.failures == 1
    assert summary.minus_bare("chat") == 4.0 and summary.minus_bare("sse") == 3.0
    assert summary.history_cost == 10.0
    assert summary.long_over_short == 8 * records.MIB


def test_pool_scaling_is_the_throughput_ratio_over_all_rounds(results: records.Results) -> None:
    runs = results.backend_pool
    one = [run for run in runs if run.backends == 1]
    two = [run for run in runs if run.backends == 2]
    expected = (sum(len(r.e2e_ms) for r in two) / sum(r.wall_seconds for r in two)) / (
        sum(len(r.e2e_ms) for r in one) / sum(r.wall_seconds for r in one)
    )
    assert summaries.pool_scaling(runs) == pytest.approx(expected)
    doubled = [replace(run, e2e_ms=run.e2e_ms * 2) if run.backends == 2 else run for run in runs]
    assert summaries.pool_scaling(doubled) == pytest.approx(2 * expected)


def test_format_latency_is_against_wav_in_the_same_run() -> None:
    samples = [
        records.FormatSample(format=name, round=number, function_ms=ms, file_bytes=size)
        for number, (name, ms, size) in enumerate(
            [("wav", 50.0, 480_044), ("mp3", 80.0, 60_336), ("wav", 60.0, 480_044), ("mp3", 70.0, 60_336)]
        )
    ]
    latencies = {latency.format: latency for latency in summaries.format_latencies(samples)}
    assert latencies["wav"].added == 0.0
    assert latencies["mp3"].added == 20.0
    assert latencies["mp3"].file_bytes == 60_336


def test_telemetry_effect_pools_the_runs_of_each_setting(results: records.Results) -> None:
    effect = summaries.telemetry_effect(results.telemetry)
    with_telemetry = [run for run in results.telemetry if run.settings]
    assert effect.on.pairs == sum(len(run.samples) for run in with_telemetry)
    assert effect.items == sum(run.ingested_items for run in with_telemetry)
    assert effect.added == effect.on.added.median - effect.off.added.median


def test_the_stalled_reader_grows_from_the_baseline(results: records.Results) -> None:
    run = results.stream_memory[-1]
    stalled, streams, answers = summaries.stream_memory_cases(run)
    assert stalled.growth == run.stalled_peak_rss - run.baseline_rss
    assert max(rss for _, rss in run.stalled_rss) <= run.stalled_peak_rss
    assert (streams.calls, answers.calls) == (run.sessions, run.sessions)


def test_an_older_results_json_without_the_new_benchmarks_still_loads_and_renders(
    results: records.Results,
) -> None:
    data = json.loads(RESULTS_TEXT)
    for name in (
        "first_audio",
        "stream_memory",
        "mp3_encoding",
        "audio_decoding",
        "backend_pool",
        "telemetry",
        "chat_completions",
        "machine_load",
    ):
        del data[name]
    older = records.parse(records.Results, data)
    assert older.first_audio == [] and older.telemetry == [] and older.machine_load == {}
    rendered = markdown.render(older)
    assert "Time to first audio" not in rendered and "## Targets" in rendered
    assert "Machine load while it ran: not in results.json" in rendered


def test_every_section_says_how_busy_the_machine_was(results: records.Results) -> None:
    loads = {name: [1.0 + index, 3.0] for index, name in enumerate(BENCHMARKS)}
    rendered = markdown.render(replace(results, machine_load=loads))
    sections = rendered.split("\n## ")[2:]  # after the run and the targets
    assert len(sections) == 11
    for section in sections:
        assert "\nMachine load while it ran: 1-minute load average " in section, section[:80]
    assert "load average 2.0 to 3.0, median 2.5 (2 readings), on 2 CPUs." in sections[0]  # latency
    assert "load average 3.0 to 5.0, median 3.5 (4 readings), on 2 CPUs." in sections[2]  # with storage


def test_a_worker_run_reads_the_load_as_it_starts_and_ends() -> None:
    readings: list[float] = []
    worker = subprocess.Popen([sys.executable, "-c", "pass"])
    assert Workers._wait_reading_load(worker, readings) == 0
    assert len(readings) == 2 and all(reading >= 0 for reading in readings)
