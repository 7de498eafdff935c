"""What the raw records of a run come to: the numbers RESULTS.md, the plots and `benchmarks.compare`
show, and the targets they are held against. Pure functions of `benchmarks.records` types."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .records import (
    MIB,
    ChatCompletionsRun,
    ChatKind,
    ClientKind,
    ColdStartRun,
    ConcurrencyRun,
    FirstAudioRun,
    FirstAudioSample,
    FormatSample,
    Latency,
    MemoryRun,
    PoolThroughputRun,
    QuestionSample,
    StorageBurstRun,
    StreamMemoryRun,
    TelemetryRun,
    Timings,
)
from .stats import Spread, median, spread
from .units import audio

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


def latency_summary(run: Latency) -> LatencySummary:
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


# --- time to first audio ----------------------------------------------------------------------------

FIRST_AUDIO_SLACK_MS = 5.0
"""How much later than the bare loop's first delta the first SSE audio may reach the caller, and how
far the SSE request's total may be from the JSON one's (medians, one session)."""
FIRST_AUDIO_SOONER = 20.0
"""How many times sooner than the JSON answer the first SSE audio must come."""


@dataclass(frozen=True)
class FirstAudioSummary:
    """One first-audio run (ms): first audio at the caller per kind, and the totals."""

    sessions: int
    rounds: int
    failures: int
    bare_first: Spread
    sse_first: Spread
    json_total: Spread
    sse_total: Spread

    @property
    def sse_minus_bare(self) -> float:
        return self.sse_first.median - self.bare_first.median

    @property
    def json_over_sse(self) -> float:
        """How many times sooner the first SSE audio comes than the JSON answer (medians)."""
        return self.json_total.median / self.sse_first.median

    @property
    def sse_minus_json_total(self) -> float:
        return self.sse_total.median - self.json_total.median


def first_audio_summary(run: FirstAudioRun) -> FirstAudioSummary:
    ok = [sample for sample in run.samples if sample.ok]

    def of(kind: ClientKind, read: Callable[[FirstAudioSample], float | None]) -> Spread:
        return spread([value for s in ok if s.kind == kind and (value := read(s)) is not None])

    return FirstAudioSummary(
        sessions=run.sessions,
        rounds=len({sample.round for sample in run.samples}),
        failures=len(run.samples) - len(ok),
        bare_first=of("bare", lambda s: s.first_audio_ms),
        sse_first=of("sse", lambda s: s.first_audio_ms),
        json_total=of("function", lambda s: s.total_ms),
        sse_total=of("sse", lambda s: s.total_ms),
    )


def fewest_sessions(runs: Sequence[FirstAudioRun]) -> FirstAudioRun:
    return min(runs, key=lambda run: run.sessions)


# --- memory of streams ------------------------------------------------------------------------------

STALLED_READER_SLACK = 8 * MIB
"""How much the host's RSS may grow while one caller stops reading."""


@dataclass(frozen=True)
class RssCase:
    """The host's RSS before one case and its peak during it (bytes), and how many answers succeeded
    of how many."""

    name: str
    before: int
    peak: int
    ok: int
    calls: int

    @property
    def growth(self) -> int:
        return self.peak - self.before


def stream_memory_cases(run: StreamMemoryRun) -> list[RssCase]:
    return [
        RssCase(
            f"1 caller stops reading a {audio(run.stalled_seconds)} answer (full speed) for "
            f"{run.stall_seconds:g} s after its first audio",
            run.baseline_rss,
            run.stalled_peak_rss,
            1,
            1,
        ),
        RssCase(
            f"{run.sessions} simultaneous SSE streams of {audio(run.seconds)} (full speed)",
            run.streams_before_rss,
            run.streams_peak_rss,
            run.streams_ok,
            run.sessions,
        ),
        RssCase(
            f"{run.sessions} simultaneous JSON answers of {audio(run.seconds)} (full speed)",
            run.json_before_rss,
            run.json_peak_rss,
            run.json_ok,
            run.sessions,
        ),
    ]


# --- output encoding and input decoding -------------------------------------------------------------

CPU_SHARE_TARGET = 0.02
"""CPU seconds allowed per second of audio, for encoding an answer or decoding a question."""


def cpu_share(cpu_seconds: Sequence[float], audio_seconds: float) -> float:
    """CPU seconds per audio second (the median repetition): the share of real time it costs."""
    return median(cpu_seconds) / audio_seconds


@dataclass(frozen=True)
class FormatLatency:
    """Requests in one format (ms), the median against wav's (same rounds), and the file's size."""

    format: str
    function: Spread
    added: float
    file_bytes: int


def format_latencies(samples: Sequence[FormatSample]) -> list[FormatLatency]:
    by_format: dict[str, list[FormatSample]] = {}
    for sample in samples:
        by_format.setdefault(sample.format, []).append(sample)
    wav = median([sample.function_ms for sample in by_format["wav"]])
    return [
        FormatLatency(
            format=name,
            function=spread([s.function_ms for s in chosen]),
            added=median([s.function_ms for s in chosen]) - wav,
            file_bytes=chosen[0].file_bytes,
        )
        for name, chosen in by_format.items()
    ]


@dataclass(frozen=True)
class QuestionLatency:
    """Spoken or written questions: the function's first audio and end (ms since the request began)."""

    kind: str
    first_audio: Spread
    function: Spread


def question_latencies(samples: Sequence[QuestionSample]) -> dict[str, QuestionLatency]:
    kinds = dict.fromkeys(sample.kind for sample in samples)
    return {
        kind: QuestionLatency(
            kind=kind,
            first_audio=spread([s.timings_ms["first_audio"] for s in samples if s.kind == kind]),
            function=spread([s.function_ms for s in samples if s.kind == kind]),
        )
        for kind in kinds
    }


# --- backend pool -----------------------------------------------------------------------------------

POOL_SCALING_TARGET = 1.9
"""Throughput with two backends over one, each admitting the same number of sessions."""


@dataclass(frozen=True)
class PoolSummary:
    """One closed-loop run: answers per second, end-to-end (ms), and the CPU share of the machine."""

    backends: int
    answers: int
    throughput: float
    e2e: Spread
    refusals: int
    cpu_share: float
    """Worker and emulators' CPU seconds over the wall time and every CPU."""


def pool_summary(run: PoolThroughputRun, cpus: int) -> PoolSummary:
    cpu = run.cpu_seconds + sum(run.stand_in_cpu_seconds.values())
    return PoolSummary(
        backends=run.backends,
        answers=len(run.e2e_ms),
        throughput=len(run.e2e_ms) / run.wall_seconds,
        e2e=spread(run.e2e_ms),
        refusals=sum(run.refusals.values()),
        cpu_share=cpu / (run.wall_seconds * cpus),
    )


def pool_scaling(runs: Sequence[PoolThroughputRun]) -> float:
    """Total throughput of the runs with the most backends over that of the runs with one."""
    most = max(run.backends for run in runs)

    def throughput(backends: int) -> float:
        chosen = [run for run in runs if run.backends == backends]
        return sum(len(run.e2e_ms) for run in chosen) / sum(run.wall_seconds for run in chosen)

    return throughput(most) / throughput(1)


# --- telemetry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetryEffect:
    """Medians over every pair of the runs without and with telemetry (ms), and the items exported."""

    off: LatencySummary
    on: LatencySummary
    items: int

    @property
    def added(self) -> float:
        """What telemetry adds to the function's added latency (medians)."""
        return self.on.added.median - self.off.added.median


def telemetry_effect(runs: Sequence[TelemetryRun]) -> TelemetryEffect:
    def pooled(chosen: list[TelemetryRun]) -> LatencySummary:
        return latency_summary(replace(chosen[0], samples=[s for run in chosen for s in run.samples]))

    on = [run for run in runs if run.settings]
    off = [run for run in runs if not run.settings]
    return TelemetryEffect(off=pooled(off), on=pooled(on), items=sum(run.ingested_items for run in on))


# --- chat completions -------------------------------------------------------------------------------

CHAT_LONG_ANSWER_SLACK = 24 * MIB
"""How much more a 10-minute non-streamed answer may grow the host's RSS than a 10-second one."""


@dataclass(frozen=True)
class ChatSummary:
    """One chat run: first audio per kind (ms), and the host's RSS growth per answer length."""

    rounds: int
    failures: int
    first: dict[ChatKind, Spread]
    history_turns: int
    short_seconds: float
    long_seconds: float
    short: RssCase
    long: RssCase

    def minus_bare(self, kind: ChatKind) -> float:
        return self.first[kind].median - self.first["bare"].median

    @property
    def history_cost(self) -> float:
        """How much later the first audio comes with the history turns than without (medians)."""
        return self.first["chat_history"].median - self.first["chat"].median

    @property
    def long_over_short(self) -> int:
        return self.long.growth - self.short.growth


def chat_summary(run: ChatCompletionsRun) -> ChatSummary:
    ok = [sample for sample in run.samples if sample.ok and sample.first_audio_ms is not None]
    kinds: tuple[ChatKind, ...] = ("chat", "chat_history", "sse", "bare")

    def first(kind: ChatKind) -> Spread:
        return spread([value for s in ok if s.kind == kind and (value := s.first_audio_ms) is not None])

    return ChatSummary(
        rounds=len({sample.round for sample in run.samples}),
        failures=len(run.samples) - len(ok),
        first={kind: first(kind) for kind in kinds},
        history_turns=run.history_turns,
        short_seconds=run.short_seconds,
        long_seconds=run.long_seconds,
        short=RssCase(
            f"1 non-streamed `wav` answer of {audio(run.short_seconds)}",
            run.short_before_rss,
            run.short_peak_rss,
            1,
            1,
        ),
        long=RssCase(
            f"1 non-streamed `wav` answer of {audio(run.long_seconds)}"
            f" ({run.long_body_bytes / MIB:.1f} MiB body)",
            run.long_before_rss,
            run.long_peak_rss,
            1,
            1,
        ),
    )
