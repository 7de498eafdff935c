"""Compare versions of the app in one run, e.g. before and after a change to the service:

    python -m benchmarks.compare base=HEAD fix=/tmp/app blocks-1MiB=HEAD,AUDIO_BLOCK_SIZE_BYTES=1048576

Each version is NAME=SOURCE[,SETTING=VALUE...]: SOURCE is a directory holding `function_app.py` and
`realtime_speech/` (a scratch copy with a proposed change) or a git ref of this checkout, and the
settings are extra app settings for it. Every round measures each version in turn on the same
stand-ins, so the drift of a noisy machine hits all of them alike. Prints a Markdown table: the
median over the rounds, with the lowest and highest round in brackets.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.stack import Stack, start_stack

from .markdown import load_sentence, table
from .records import MIB, ConcurrencyRun, LatencyRun, MemoryRun
from .registry import LATENCY, MEMORY
from .run import Workers, concurrency_run, export_app
from .stats import median
from .summaries import concurrency_summary, latency_summary, memory_growth

SHORT_SECONDS = 10.0
LONG_SECONDS = 600.0


@dataclass(frozen=True)
class Version:
    name: str
    source: str
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Version:
        name, _, rest = text.partition("=")
        source, *pairs = rest.split(",")
        if not name or not source or any("=" not in pair for pair in pairs):
            raise argparse.ArgumentTypeError(f"expected NAME=SOURCE[,SETTING=VALUE...], got {text!r}")
        return cls(name, source, dict(pair.split("=", 1) for pair in pairs))

    def app_root(self, work_dir: Path) -> Path:
        directory = Path(self.source)
        return directory.resolve() if directory.is_dir() else export_app(self.source, work_dir / self.name)


@dataclass(frozen=True)
class Round:
    """One round for one version."""

    latency: LatencyRun
    memory: list[MemoryRun]
    concurrency: ConcurrencyRun


def _tail_median(run: ConcurrencyRun) -> float:
    tail = concurrency_summary(run).tail
    return tail.median if tail else math.nan


# Each metric: (column title, unit, how to read it from one round).
Metric = tuple[str, str, Callable[[Round], float]]
METRICS: tuple[Metric, ...] = (
    ("Added median, 10 s at full speed", "ms", lambda r: latency_summary(r.latency).added.median),
    ("Tail after response.done", "ms", lambda r: latency_summary(r.latency).tail_signed),
    ("Peak RSS growth 10 s -> 10 min", "MiB", lambda r: memory_growth(r.memory).growth / MIB),
    ("N sessions: added p50", "ms", lambda r: concurrency_summary(r.concurrency).added.median),
    ("N sessions: added p99", "ms", lambda r: concurrency_summary(r.concurrency).added.p99),
    ("N sessions: tail p50", "ms", lambda r: _tail_median(r.concurrency)),
    (
        "N sessions: worker CPU / audio s",
        "ms",
        lambda r: concurrency_summary(r.concurrency).cpu_per_audio_second * 1000,
    ),
    (
        "N sessions: Azurite CPU / audio s",
        "ms",
        lambda r: concurrency_summary(r.concurrency).stand_in_cpu["azurite"] * 1000,
    ),
    ("N sessions: loop lag max, streaming", "ms", lambda r: r.concurrency.loop_lag_ms.streaming),
)


def measure_round(workers: Workers, stack: Stack, version: Version, args: argparse.Namespace) -> Round:
    """One round for one version: latency, memory at two audio lengths, one concurrency burst."""
    settings = version.settings
    pids = {"emulator": stack.emulator.pid, "azurite": stack.azurite.pid}
    return Round(
        latency=workers.run(LATENCY, settings, seconds=SHORT_SECONDS, pairs=args.pairs),
        memory=[workers.run(MEMORY, settings, seconds=seconds) for seconds in (SHORT_SECONDS, LONG_SECONDS)],
        concurrency=concurrency_run(
            workers,
            stack,
            settings,
            sessions=args.sessions,
            seconds=SHORT_SECONDS,
            pace=1.0,
            kind="function",
            pids=pids,
        ),
    )


def comparison_table(rounds: dict[str, list[Round]], sessions: int) -> str:
    header = ["Version", *(title.replace("N sessions", f"{sessions} sessions") for title, _, _ in METRICS)]
    rows = [
        [name, *(_spread([read(r) for r in results], unit) for _, unit, read in METRICS)]
        for name, results in rounds.items()
    ]
    return table(header, rows)


def _spread(values: Sequence[float], unit: str) -> str:
    """The median, and the range over the rounds; milliseconds from 1000 on as seconds."""
    middle = median(values)
    scale, unit, digits = (1000, "s", 2) if unit == "ms" and middle >= 1000 else (1, unit, 1)
    text = f"{middle / scale:.{digits}f} {unit}"
    if len(values) == 1:
        return text
    return f"{text} ({min(values) / scale:.{digits}f}-{max(values) / scale:.{digits}f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("versions", nargs="+", type=Version.parse, metavar="NAME=SOURCE[,SETTING=VALUE...]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=20, help="function/bare pairs per latency run")
    parser.add_argument("--sessions", type=int, default=200, help="simultaneous sessions, paced at real time")
    args = parser.parse_args(argv)

    rounds: dict[str, list[Round]] = {version.name: [] for version in args.versions}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp, start_stack(Path(tmp)) as stack:
        workers = {
            version.name: Workers(stack, version.app_root(Path(tmp)), Path(tmp) / "workers" / version.name)
            for version in args.versions
        }
        for number in range(1, args.rounds + 1):
            for version in args.versions:
                print(f"round {number}: {version.name}", flush=True)
                rounds[version.name].append(measure_round(workers[version.name], stack, version, args))
    print(comparison_table(rounds, args.sessions))
    loads = [each.machine_load.values() for each in workers.values()]
    readings = [value for per_benchmark in loads for values in per_benchmark for value in values]
    print(f"\n{load_sentence(readings, os.cpu_count() or 1)}")


if __name__ == "__main__":
    main()
