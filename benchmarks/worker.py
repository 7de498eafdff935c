"""A benchmark worker process: `python -m benchmarks.worker NAME PARAMS_JSON OUT_FILE`.

It times `import function_app` before anything else heavy is imported, runs the procedure of
`benchmarks.measure` named after the benchmark with the JSON parameters, and writes its measurement
(plus the import's time and peak RSS) to OUT_FILE as JSON. The runner starts it with the stack's app
settings in its environment.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> None:
    name, params, out = argv
    started = time.perf_counter()
    importlib.import_module("function_app")
    import_ms = (time.perf_counter() - started) * 1000
    import_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # After the timed import: the records import pydantic, whose import time is the app's.
    from benchmarks import measure
    from benchmarks.registry import BENCHMARKS

    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}")
    procedure = getattr(measure, BENCHMARKS[name].procedure_name)
    measured = asyncio.run(procedure(**json.loads(params)))
    Path(out).write_text(
        json.dumps({"import_ms": import_ms, "import_peak_rss": import_peak_rss, **asdict(measured)})
    )


if __name__ == "__main__":
    main(sys.argv[1:])
