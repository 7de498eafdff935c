"""The two plots beside RESULTS.md, drawn from a run's records with matplotlib (Agg, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .records import MIB, ConcurrencyRun, MemoryRun
from .summaries import P99_TARGET_MS, concurrency_summary, memory_limit
from .units import audio, mib

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LATENCY_PLOT = "latency_vs_concurrency.png"
MEMORY_PLOT = "memory_vs_audio_length.png"


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
