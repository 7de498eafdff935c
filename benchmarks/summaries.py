"""What the raw records of a run come to: the numbers RESULTS.md, the plots and `benchmarks.compare`
show, and the targets they are held against. Pure functions of `benchmarks.records` types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .records import MIB, ColdStartRun, ConcurrencyRun, LatencyRun, MemoryRun, StorageBurstRun, Timings
from .stats import Spread, median, spread

P99_TARGET_MS = 250.0
"""Added latency p99 allowed at the largest number of real-time sessions."""
MEMORY_SLACK = 8 * MIB
"""Peak RSS growth from the shortest to the longest audio allowed beyond one block."""


@dataclass(frozen=True)
class LatencySummary:
    """One latency run: the function and the bare loop (ms), and medians of where the added time goes."""

    seconds: float
    pairs: int
    function: Spread
    bare: Spread
    added: Spread
    ratio: float
    """Median of the function over median of the bare loop."""
    commit: float
    allowed_ms: float
    """The target for the added median: 1.5 x the bare commit + 2 ms."""
    before_done: float
    tail_committed: float
    tail_signed: float
    stage_pair: float
    record: float
    put_blob: float
    fn_lag: float
    bare_lag: float


def latency_summary(run: LatencyRun) -> LatencySummary:
    samples = run.samples
    function = [s.function_ms for s in samples]
    bare = [s.bare_ms for s in samples]
    commit = median([s.commit_ms for s in samples])
    return LatencySummary(
        seconds=run.seconds,
        pairs=len(samples),
        function=spread(function),
        bare=spread(bare),
        added=spread([f - b for f, b in zip(function, bare, strict=True)]),
        ratio=median(function) / median(bare),
        commit=commit,
        allowed_ms=1.5 * commit + 2.0,
        before_done=median([s.timings_ms["response_done"] for s in samples]),
        tail_committed=median([_tail_ms(s.timings_ms, "committed") for s in samples]),
        tail_signed=median([_tail_ms(s.timings_ms, "signed") for s in samples]),
        stage_pair=median([s.stage_pair_ms for s in samples]),
        record=median([s.record_ms for s in samples]),
        put_blob=median([s.put_blob_ms for s in samples]),
        fn_lag=max(s.function_loop_lag_ms for s in samples),
        bare_lag=max(s.bare_loop_lag_ms for s in samples),
    )


@dataclass(frozen=True)
class MemoryGrowth:
    """Peak RSS growth (bytes) from the shortest to the longest audio (seconds), and what is allowed."""

    shortest: float
    longest: float
    growth: int
    allowed: int


def memory_growth(runs: Sequence[MemoryRun]) -> MemoryGrowth:
    """For runs with the same block size."""
    first, last = shortest(runs), max(runs, key=lambda run: run.seconds)
    return MemoryGrowth(
        shortest=first.seconds,
        longest=last.seconds,
        growth=last.peak_rss - first.peak_rss,
        allowed=last.block_size + MEMORY_SLACK,
    )


def memory_limit(runs: Sequence[MemoryRun]) -> int:
    """The highest peak RSS the target allows with the default block size."""
    default = default_block(runs)
    return shortest(default).peak_rss + default[0].block_size + MEMORY_SLACK


def default_block(runs: Sequence[MemoryRun]) -> list[MemoryRun]:
    """The runs with the app's default block size (no extra settings)."""
    return [run for run in runs if not run.settings]


def shortest(runs: Sequence[MemoryRun]) -> MemoryRun:
    return min(runs, key=lambda run: run.seconds)


@dataclass(frozen=True)
class ConcurrencySummary:
    """One burst: the share that succeeded, added latency and tail (ms), CPU seconds per audio second."""

    success: float
    added: Spread
    tail: Spread | None
    """From `response_done` to `signed`; None for the bare loop, which has no tail."""
    cpu_per_audio_second: float
    stand_in_cpu: dict[str, float]


def concurrency_summary(run: ConcurrencyRun) -> ConcurrencySummary:
    audio_seconds = run.seconds / run.pace
    succeeded = len(run.e2e_ms)
    total_audio = max(succeeded, 1) * run.seconds
    tails = [_tail_ms(timings, "signed") for timings in run.timings_ms if "signed" in timings]
    return ConcurrencySummary(
        success=succeeded / run.sessions,
        added=spread([e2e - audio_seconds * 1000 for e2e in run.e2e_ms]),
        tail=spread(tails) if tails else None,
        cpu_per_audio_second=run.cpu_seconds / total_audio,
        stand_in_cpu={name: cpu / total_audio for name, cpu in run.stand_in_cpu_seconds.items()},
    )


def largest_function_burst(runs: Sequence[ConcurrencyRun]) -> ConcurrencyRun:
    return max((run for run in runs if run.kind == "function"), key=lambda run: run.sessions)


@dataclass(frozen=True)
class StorageFloor:
    """Milliseconds of the first burst of `sessions` commits (new connections) and the later ones'
    median."""

    sessions: int
    first: float
    later: float


def storage_floors(bursts: Sequence[StorageBurstRun]) -> list[StorageFloor]:
    """One per number of sessions, fewest first."""
    by_sessions = {burst.sessions: burst.burst_ms for burst in bursts}
    return [
        StorageFloor(sessions, values[0], median(values[1:]))
        for sessions, values in sorted(by_sessions.items())
    ]


@dataclass(frozen=True)
class ColdStartSummary:
    """Medians (ms) over fresh processes."""

    processes: int
    import_ms: float
    first_ms: float
    second_ms: float
    spawn_to_first_ms: float
    """From just before the process was spawned to the first request's answer."""
    first_marks: Timings
    second_marks: Timings


def cold_start_summary(runs: Sequence[ColdStartRun]) -> ColdStartSummary:
    return ColdStartSummary(
        processes=len(runs),
        import_ms=median([run.import_ms for run in runs]),
        first_ms=median([run.first_ms for run in runs]),
        second_ms=median([run.second_ms for run in runs]),
        spawn_to_first_ms=median([(run.first_done_epoch - run.spawned_epoch) * 1000 for run in runs]),
        first_marks=_median_marks([run.first_timings_ms for run in runs]),
        second_marks=_median_marks([run.second_timings_ms for run in runs]),
    )


def _median_marks(timings: Sequence[Timings]) -> Timings:
    """The median of each mark of the first timings over all of them."""
    return {mark: median([each[mark] for each in timings]) for mark in timings[0]}


def _tail_ms(timings: Timings, mark: str) -> float:
    """Milliseconds from `response_done` to `mark`."""
    return timings[mark] - timings["response_done"]
