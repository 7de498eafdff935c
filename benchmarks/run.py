"""`make bench`: start the local stand-ins, run each measurement in its own worker process, then write
`results.json`, the generated part of `RESULTS.md` and the plots.

    python -m benchmarks.run [--quick] [--app-ref REF | --app-root DIR] [--output DIR]

By default the app (`function_app.py`, `realtime_speech/`) is imported from this checkout as it is.
`--app-ref` measures the app as committed at a git ref instead (e.g. `HEAD`, while the working tree
is mid-change); `--app-root` imports it from DIR, e.g. a scratch copy with a proposed change.
`--output` writes the results elsewhere (default: `benchmarks/`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devtools.stack import REPO_ROOT, Stack, start_stack

from . import environment, report

WORKER_TIMEOUT_SECONDS = 900
MIB = 2**20
SETTLE_SECONDS = 2.0
"""Pause before a CPU-accounted run, so deferred work of the stand-ins (Azurite persisting its
metadata) from the previous step is not counted."""
APP_PATHS = ("function_app.py", "realtime_speech")


@dataclass(frozen=True)
class Plan:
    """How much to measure. The default keeps `make bench` within about five minutes on two cores."""

    latency_seconds: float = 10.0
    latency_pairs: int = 30
    long_seconds: float = 600.0
    long_pairs: int = 3
    memory_seconds: tuple[float, ...] = (10.0, 60.0, 300.0, 600.0)
    block_sizes: tuple[int | None, ...] = (None, 1 * MIB, 16 * MIB)
    """AUDIO_BLOCK_SIZE_BYTES of the memory runs; None keeps the app's default."""
    sessions: tuple[int, ...] = (1, 50, 100, 200)
    session_seconds: float = 10.0
    pace: float = 1.0
    cold_starts: int = 5


QUICK = Plan(
    latency_pairs=4,
    long_seconds=60.0,
    long_pairs=1,
    memory_seconds=(10.0, 60.0),
    block_sizes=(None, 1 * MIB),
    sessions=(5, 10),
    cold_starts=1,
)


class Workers:
    """Starts worker processes with the stack's app settings in their environment from the start."""

    def __init__(self, stack: Stack, app_root: Path, work_dir: Path) -> None:
        self._stack = stack
        self._app_root = app_root
        self._work_dir = work_dir
        self._count = 0
        work_dir.mkdir(parents=True, exist_ok=True)

    def env(self, settings: Mapping[str, str] = {}) -> dict[str, str]:
        """The function host's environment plus `settings`; the app comes from the app root,
        `benchmarks` from this checkout."""
        path = os.pathsep.join(dict.fromkeys([str(self._app_root), str(REPO_ROOT)]))
        return {**self._stack.host_env(settings), "PYTHONPATH": path}

    def run(self, mode: str, settings: Mapping[str, str] = {}, **params: Any) -> dict[str, Any]:
        """Run one measurement with extra app `settings`; the result carries `spawned_epoch`, the wall
        clock just before spawning."""
        self._count += 1
        out = self._work_dir / f"{self._count:03d}-{mode}.json"
        log_path = out.with_suffix(".log")
        argv = [sys.executable, "-m", "benchmarks.worker", mode, json.dumps(params), str(out)]
        spawned = time.time()
        with log_path.open("wb") as log_file:
            completed = subprocess.run(
                argv,
                cwd=self._app_root,
                env=self.env(settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=WORKER_TIMEOUT_SECONDS,
                check=False,
            )
        if completed.returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"worker {mode} {params} exited with {completed.returncode}:\n{tail}")
        return {"spawned_epoch": spawned, **json.loads(out.read_text())}

    def import_profile(self) -> str:
        """`python -X importtime -c 'import function_app'` (its stderr) in a fresh process."""
        completed = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import function_app"],
            cwd=self._app_root,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return completed.stderr


def measure_all(workers: Workers, stack: Stack, plan: Plan) -> dict[str, Any]:
    """Every measurement, in an order where each one starts from a quiet machine."""
    results: dict[str, Any] = {"plan": asdict(plan)}
    results["cold_start"] = [_step(workers, "cold_start", seconds=10.0) for _ in range(plan.cold_starts)]
    results["import_profile"] = environment.import_profile(workers.import_profile())
    results["latency"] = [
        _step(workers, "latency", seconds=plan.latency_seconds, pairs=plan.latency_pairs),
        _step(workers, "latency", seconds=plan.long_seconds, pairs=plan.long_pairs),
    ]
    results["memory"] = [
        _step(workers, "memory", _block_setting(block), seconds=seconds)
        for block in plan.block_sizes
        for seconds in plan.memory_seconds
    ]
    results["storage_burst"] = [_step(workers, "storage_burst", sessions=n, rounds=4) for n in plan.sessions]
    pids = {"emulator": stack.emulator.pid, "azurite": stack.azurite.pid, "identity": stack.identity.pid}
    results["concurrency"] = [
        concurrency_run(
            workers, stack, sessions=n, seconds=plan.session_seconds, pace=plan.pace, kind=kind, pids=pids
        )
        for n in plan.sessions
        for kind in ("bare", "function")
    ]
    return results


def concurrency_run(
    workers: Workers, stack: Stack, settings: Mapping[str, str] = {}, **params: Any
) -> dict[str, Any]:
    """A concurrency run, with the number of tokens the identity endpoint issued meanwhile."""
    time.sleep(SETTLE_SECONDS)
    issued_before = stack.identity_stats()["issued_total"]
    run = _step(workers, "concurrency", settings, **params)
    return {**run, "tokens_issued": stack.identity_stats()["issued_total"] - issued_before}


def _block_setting(block_size: int | None) -> dict[str, str]:
    return {} if block_size is None else {"AUDIO_BLOCK_SIZE_BYTES": str(block_size)}


def _step(workers: Workers, mode: str, settings: Mapping[str, str] = {}, **params: Any) -> dict[str, Any]:
    """One worker run; the result records the extra settings it ran with."""
    started = time.perf_counter()
    result = workers.run(mode, settings, **params)
    shown = {**settings, **{k: v for k, v in params.items() if k != "pids"}}
    print(f"  {mode} {shown}: {time.perf_counter() - started:.1f} s", flush=True)
    return {"settings": dict(settings), **result}


def export_app(ref: str, into: Path) -> Path:
    """The app's files as of git `ref`, extracted into `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref, *APP_PATHS], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run to check the benchmarks work")
    app = parser.add_mutually_exclusive_group()
    app.add_argument("--app-ref", help="measure the app as committed at this git ref")
    app.add_argument("--app-root", type=Path, default=REPO_ROOT, help="where function_app.py lives")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, start_stack(Path(tmp)) as stack:
        if args.app_ref:
            app_root = export_app(args.app_ref, Path(tmp) / "app")
            label = environment.ref_label(args.app_ref, APP_PATHS)
        else:
            app_root = args.app_root.resolve()
            label = environment.checkout_label(app_root, APP_PATHS)
        print(f"stand-ins ready; measuring the app at {label}", flush=True)
        workers = Workers(stack, app_root, Path(tmp) / "workers")
        results = {"machine": environment.describe(label), **measure_all(workers, stack, plan)}
    results["runtime_seconds"] = time.perf_counter() - started
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(report.write(results, args.output))


if __name__ == "__main__":
    main()
