"""A benchmark worker process: `python -m benchmarks.worker MODE PARAMS_JSON OUT_FILE`.

It times `import function_app` before anything else heavy is imported, runs one procedure of
`benchmarks.measure` with the JSON parameters, and writes the result (plus the import's time and
peak RSS) to OUT_FILE. The runner starts it with the stack's app settings in its environment.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import resource
import sys
import time
from pathlib import Path

MODES = ("latency", "memory", "concurrency", "storage_burst", "cold_start")


def main(argv: list[str]) -> None:
    mode, params, out = argv
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    started = time.perf_counter()
    importlib.import_module("function_app")
    import_ms = (time.perf_counter() - started) * 1000
    import_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    from benchmarks import measure

    result = asyncio.run(getattr(measure, mode)(**json.loads(params)))
    Path(out).write_text(json.dumps({"import_ms": import_ms, "import_peak_rss": import_peak_rss, **result}))


if __name__ == "__main__":
    main(sys.argv[1:])
