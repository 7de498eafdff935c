"""The plots beside RESULTS.md, drawn from a run's records with matplotlib (Agg, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .records import MIB, ConcurrencyRun, FirstAudioRun, MemoryRun, StreamMemoryRun
from .summaries import (
    P99_TARGET_MS,
    STALLED_READER_SLACK,
    concurrency_summary,
    first_audio_summary,
    memory_limit,
)
from .units import audio, mib, ms

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LATENCY_PLOT = "latency_vs_concurrency.png"
MEMORY_PLOT = "memory_vs_audio_length.png"
FIRST_AUDIO_PLOT = "first_audio.png"
STALLED_PLOT = "stalled_reader_rss.png"


def plot_latency(runs: Sequence[ConcurrencyRun], path: Path) -> None:
    """Added latency p50/p99 vs sessions, function and bare SDK loop, with the p99 target."""
    from matplotlib import ticker

    figure, axes = _figure()
    styles = {"function": ("tab:red", "function"), "bare": ("tab:blue", "bare openai SDK")}
    for kind, (color, label) in styles.items():
        chosen = sorted((run for run in runs if run.kind == kind), key=lambda run: run.sessions)
        sessions = [run.sessions for run in chosen]
        added = [concurrency_summary(run).added for run in chosen]
        axes.plot(sessions, [s.median for s in added], "o-", color=color, label=f"{label} p50")
        axes.plot(sessions, [s.p99 for s in added], "s--", color=color, label=f"{label} p99")
    axes.axhline(P99_TARGET_MS, color="black", linestyle=":", label=f"p99 target {P99_TARGET_MS:g} ms")
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("simultaneous sessions (10 s of audio each, paced at real time)")
    axes.set_ylabel("added latency, ms (log scale)")
    axes.set_title("Added latency vs concurrency (e2e minus audio length)")
    axes.set_xticks(sorted({run.sessions for run in runs}))
    axes.grid(True, which="both", alpha=0.3)
    _save(figure, axes, path)


def plot_memory(runs: Sequence[MemoryRun], path: Path) -> None:
    """Peak RSS vs audio length, one line per block size, with the target for the default block."""
    figure, axes = _figure()
    for block_size in sorted({run.block_size for run in runs}):
        chosen = sorted((run for run in runs if run.block_size == block_size), key=lambda run: run.seconds)
        default = "" if chosen[0].settings else " (default)"
        axes.plot(
            [run.seconds for run in chosen],
            [run.peak_rss / MIB for run in chosen],
            "o-",
            label=f"block {mib(block_size)}{default}",
        )
    axes.axhline(memory_limit(runs) / MIB, color="black", linestyle=":", label="target for the default block")
    seconds = sorted({run.seconds for run in runs})
    axes.set_xscale("log")
    axes.set_xticks(seconds, [audio(s) for s in seconds])
    axes.minorticks_off()
    axes.set_xlabel("audio length (log scale); one process per point, after a 10 s warm-up request")
    axes.set_ylabel("peak RSS, MiB")
    axes.set_title("Peak RSS of one request vs audio length")
    axes.grid(True, alpha=0.3)
    _save(figure, axes, path)


def plot_first_audio(runs: Sequence[FirstAudioRun], path: Path) -> None:
    """Median time to the first audio at the caller per number of sessions: the bare SDK loop's first
    delta, the first SSE audio event, and the whole JSON answer (log scale)."""
    figure, axes = _figure()
    summaries = [first_audio_summary(run) for run in sorted(runs, key=lambda run: run.sessions)]
    bars = {
        "bare SDK loop, first delta": ("tab:blue", [s.bare_first.median for s in summaries]),
        "SSE, first speech.audio.delta": ("tab:red", [s.sse_first.median for s in summaries]),
        "JSON answer (all of it)": ("tab:gray", [s.json_total.median for s in summaries]),
    }
    width = 0.8 / len(bars)
    for index, (label, (color, values)) in enumerate(bars.items()):
        offsets = [group + (index - 1) * width for group in range(len(summaries))]
        drawn = axes.bar(offsets, values, width, color=color, label=label)
        axes.bar_label(drawn, [ms(value) for value in values], fontsize=7)
    axes.set_yscale("log")
    axes.set_xticks(range(len(summaries)), [f"{s.sessions} simultaneous" for s in summaries])
    axes.set_ylabel("ms since the request began (median, log scale)")
    axes.set_title(f"Time to first audio, {audio(runs[0].seconds)} answers at real time")
    axes.grid(True, axis="y", which="both", alpha=0.3)
    _save(figure, axes, path)


def plot_stalled(runs: Sequence[StreamMemoryRun], path: Path) -> None:
    """The dev host's RSS while one caller stops reading, against the RSS before and the target."""
    figure, axes = _figure()
    run = runs[-1]
    seconds = [at for at, _ in run.stalled_rss]
    axes.plot(seconds, [rss / MIB for _, rss in run.stalled_rss], "-", color="tab:red", label="host RSS")
    axes.axhline(run.baseline_rss / MIB, color="tab:blue", linestyle="--", label="before the request")
    limit = (run.baseline_rss + STALLED_READER_SLACK) / MIB
    axes.axhline(limit, color="black", linestyle=":", label="target: less than 8 MiB growth")
    axes.set_xlabel("seconds since the request began (it stops reading after its first audio)")
    axes.set_ylabel("RSS, MiB")
    axes.set_title(f"Dev host RSS while a caller stops reading a {audio(run.stalled_seconds)} answer")
    axes.grid(True, alpha=0.3)
    _save(figure, axes, path)


def _figure() -> tuple[Figure, Axes]:
    # Imported here: matplotlib takes a while to import and only the plots need it.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7, 4.2), dpi=120)


def _save(figure: Figure, axes: Axes, path: Path) -> None:
    from matplotlib import pyplot

    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
