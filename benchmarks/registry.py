"""Every benchmark the worker can run, by name, with the type of its runs' records.

A benchmark's name is at once the worker mode (`python -m benchmarks.worker NAME ...`), the procedure
of `benchmarks.measure` that measures it and the key of its runs in results.json (a field of
`records.Runs`). benchmarks/README.md says what else a new benchmark adds, and which are planned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .records import ColdStartRun, ConcurrencyRun, LatencyRun, MemoryRun, Process, StorageBurstRun, parse

R = TypeVar("R", bound=Process)


@dataclass(frozen=True)
class Benchmark(Generic[R]):
    name: str
    record: type[R]

    def parse(self, data: object) -> R:
        """One run's record from the worker's output (JSON values) and the runner's additions."""
        return parse(self.record, data)


COLD_START = Benchmark("cold_start", ColdStartRun)
LATENCY = Benchmark("latency", LatencyRun)
MEMORY = Benchmark("memory", MemoryRun)
STORAGE_BURST = Benchmark("storage_burst", StorageBurstRun)
CONCURRENCY = Benchmark("concurrency", ConcurrencyRun)

BENCHMARKS: dict[str, Benchmark[Process]] = {
    benchmark.name: benchmark for benchmark in (COLD_START, LATENCY, MEMORY, STORAGE_BURST, CONCURRENCY)
}
