"""Every benchmark the worker can run, by name, with the type of its runs' records.

A benchmark's name is at once the worker mode (`python -m benchmarks.worker NAME ...`), the procedure
of `benchmarks.measure` that measures it (unless it names another: `telemetry` runs `latency` with
other settings) and the key of its runs in results.json (a field of `records.Runs`).
benchmarks/README.md says what else a new benchmark adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .records import (
    AudioDecodingRun,
    ChatCompletionsRun,
    ColdStartRun,
    ConcurrencyRun,
    FirstAudioRun,
    LatencyRun,
    MemoryRun,
    OutputEncodingRun,
    PoolThroughputRun,
    Process,
    StorageBurstRun,
    StreamMemoryRun,
    TelemetryRun,
    parse,
)

R = TypeVar("R", bound=Process)


@dataclass(frozen=True)
class Benchmark(Generic[R]):
    name: str
    record: type[R]
    procedure: str = ""
    """The procedure of `benchmarks.measure` it runs, when not the one named after it."""

    @property
    def procedure_name(self) -> str:
        return self.procedure or self.name

    def parse(self, data: object) -> R:
        """One run's record from the worker's output (JSON values) and the runner's additions."""
        return parse(self.record, data)


COLD_START = Benchmark("cold_start", ColdStartRun)
LATENCY = Benchmark("latency", LatencyRun)
MEMORY = Benchmark("memory", MemoryRun)
STORAGE_BURST = Benchmark("storage_burst", StorageBurstRun)
CONCURRENCY = Benchmark("concurrency", ConcurrencyRun)
FIRST_AUDIO = Benchmark("first_audio", FirstAudioRun)
STREAM_MEMORY = Benchmark("stream_memory", StreamMemoryRun)
MP3_ENCODING = Benchmark("mp3_encoding", OutputEncodingRun)
AUDIO_DECODING = Benchmark("audio_decoding", AudioDecodingRun)
BACKEND_POOL = Benchmark("backend_pool", PoolThroughputRun)
TELEMETRY = Benchmark("telemetry", TelemetryRun, procedure="latency")
"""The latency procedure, run with and without telemetry settings."""
CHAT_COMPLETIONS = Benchmark("chat_completions", ChatCompletionsRun)

BENCHMARKS: dict[str, Benchmark[Process]] = {
    benchmark.name: benchmark
    for benchmark in (
        COLD_START,
        LATENCY,
        MEMORY,
        STORAGE_BURST,
        CONCURRENCY,
        FIRST_AUDIO,
        STREAM_MEMORY,
        MP3_ENCODING,
        AUDIO_DECODING,
        BACKEND_POOL,
        TELEMETRY,
        CHAT_COMPLETIONS,
    )
}
