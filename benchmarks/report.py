"""Write a run's report beside its results: the generated part of RESULTS.md (`benchmarks.markdown`)
and the plots (`benchmarks.plots`). `benchmarks.run` calls `write` after measuring; on its own it
redraws the report from a results.json, e.g. after a change to the tables:

    python -m benchmarks.report [RESULTS_JSON] [--output DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import markdown, plots, records

HERE = Path(__file__).resolve().parent


def write(results: records.Results, output: Path) -> str:
    """Render the tables into `output/RESULTS.md` and draw the plots; returns the rendered tables."""
    generated = markdown.render(results)
    path = output / "RESULTS.md"
    path.write_text(markdown.splice(path.read_text() if path.exists() else "", generated))
    plots.plot_latency(results.concurrency, output / plots.LATENCY_PLOT)
    plots.plot_memory(results.memory, output / plots.MEMORY_PLOT)
    if results.first_audio:
        plots.plot_first_audio(results.first_audio, output / plots.FIRST_AUDIO_PLOT)
    if results.stream_memory:
        plots.plot_stalled(results.stream_memory, output / plots.STALLED_PLOT)
    return generated


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="?", default=HERE / "results.json")
    parser.add_argument(
        "--output", type=Path, help="where RESULTS.md and the plots go (default: beside RESULTS_JSON)"
    )
    args = parser.parse_args(argv)
    output = args.output or args.results.parent
    output.mkdir(parents=True, exist_ok=True)
    write(records.load(args.results.read_text()), output)


if __name__ == "__main__":
    main()
