"""`make bench`: start the local stand-ins, run each measurement in its own worker process, then write
`results.json`, the generated part of `RESULTS.md` and the plots.

    python -m benchmarks.run [--quick] [--app-ref REF | --app-root DIR] [--output DIR]

By default the app (`function_app.py`, `realtime_speech/`) is imported from this checkout as it is.
`--app-ref` measures the app as committed at a git ref instead (e.g. `HEAD`, while the working tree
is mid-change); `--app-root` imports it from DIR, e.g. a scratch copy with a proposed change.
`--output` writes the results elsewhere (default: `benchmarks/`). `--quick` measures little (small
sizes, few repetitions): a check that everything still runs, not numbers to keep.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar, cast

from devtools.process import ServiceProcess
from devtools.stack import REPO_ROOT, Stack, start_stack

from . import environment, records, report
from .records import MIB, ConcurrencyRun, Plan, PoolThroughputRun, Process, Results, Runs, TelemetryRun
from .registry import (
    AUDIO_DECODING,
    BACKEND_POOL,
    CHAT_COMPLETIONS,
    COLD_START,
    CONCURRENCY,
    FIRST_AUDIO,
    LATENCY,
    MEMORY,
    MP3_ENCODING,
    STORAGE_BURST,
    STREAM_MEMORY,
    TELEMETRY,
    Benchmark,
)

WORKER_TIMEOUT_SECONDS = 900
SETTLE_SECONDS = 2.0
"""Pause before a CPU-accounted run, so deferred work of the stand-ins (Azurite persisting its
metadata) from the previous step is not counted."""
APP_PATHS = ("function_app.py", "realtime_speech")
HOSTED_APP = "benchmarks.hosted_app"
# The benchmarks measure the service at up to 200 sessions in one process, not MAX_CONCURRENT_SESSIONS
# (its own benchmark is `benchmarks.spoken_parallel`): the highest limit.
UNLIMITED_SESSIONS = {"MAX_CONCURRENT_SESSIONS": "1000"}
APP_ROOT_SETTING = "BENCH_APP_ROOT"
"""Where `benchmarks.hosted_app` imports the app from (a module the runner must not import itself)."""

QUICK = Plan(
    latency_pairs=4,
    long_seconds=60.0,
    long_pairs=1,
    memory_seconds=(10.0, 60.0),
    block_sizes=(None, 1 * MIB),
    sessions=(5, 10),
    cold_starts=1,
    first_audio_sessions=(1, 4),
    first_audio_seconds=3.0,
    first_audio_rounds=(2, 1),
    stream_sessions=4,
    stream_seconds=10.0,
    stalled_seconds=60.0,
    stall_seconds=2.0,
    encoded_seconds=10.0,
    format_rounds=2,
    decoded_seconds=5.0,
    question_rounds=2,
    pool_max_sessions=2,
    pool_clients=6,
    pool_answer_seconds=2.0,
    pool_window_seconds=5.0,
    telemetry_pairs=4,
    telemetry_rounds=1,
    chat_rounds=2,
    chat_long_seconds=60.0,
)

R = TypeVar("R", bound=Process)
Counter = Callable[[], int]
"""A count kept outside the worker (e.g. by a stand-in); a record gets how much it grew during a run."""


class Workers:
    """Starts worker processes with the stack's app settings in their environment from the start."""

    def __init__(self, stack: Stack, app_root: Path, work_dir: Path) -> None:
        self._stack = stack
        self._app_root = app_root
        self._work_dir = work_dir
        self._count = 0
        self.machine_load: defaultdict[str, list[float]] = defaultdict(list)
        """By benchmark name: the load average while its workers ran (`Results.machine_load`)."""
        work_dir.mkdir(parents=True, exist_ok=True)

    def env(self, settings: Mapping[str, str] = {}) -> dict[str, str]:
        """The function host's environment plus `settings`; the app comes from the app root,
        `benchmarks` from this checkout."""
        path = os.pathsep.join(dict.fromkeys([str(self._app_root), str(REPO_ROOT)]))
        return {**self._stack.host_env({**UNLIMITED_SESSIONS, **settings}), "PYTHONPATH": path}

    def run(
        self,
        benchmark: Benchmark[R],
        settings: Mapping[str, str] = {},
        counters: Mapping[str, Counter] = {},
        **params: object,
    ) -> R:
        """One run of `benchmark` with extra app `settings`: its record, with the wall clock just
        before spawning and, under each name of `counters`, how much that counter grew meanwhile."""
        self._count += 1
        out = self._work_dir / f"{self._count:03d}-{benchmark.name}.json"
        log_path = out.with_suffix(".log")
        argv = [sys.executable, "-m", "benchmarks.worker", benchmark.name, json.dumps(params), str(out)]
        before = {name: count() for name, count in counters.items()}
        spawned = time.time()
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(
                argv, cwd=self._app_root, env=self.env(settings), stdout=log_file, stderr=subprocess.STDOUT
            )
            returncode = self._wait_reading_load(worker, self.machine_load[benchmark.name])
        if returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"worker {benchmark.name} {params} exited with {returncode}:\n{tail}")
        grown = {name: count() - before[name] for name, count in counters.items()}
        measured = json.loads(out.read_text())
        return benchmark.parse({"settings": dict(settings), "spawned_epoch": spawned, **measured, **grown})

    @staticmethod
    def _wait_reading_load(worker: subprocess.Popen[bytes], readings: list[float]) -> int:
        """Wait for `worker` (killed after `WORKER_TIMEOUT_SECONDS`), reading the load average as it
        starts, every `LOAD_READ_SECONDS` and as it ends; its exit status."""
        deadline = time.monotonic() + WORKER_TIMEOUT_SECONDS
        readings.append(environment.load_average())
        try:
            while True:
                try:
                    return worker.wait(min(environment.LOAD_READ_SECONDS, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise
                    readings.append(environment.load_average())
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            readings.append(environment.load_average())

    def start_host(self) -> ServiceProcess:
        """A dev host (over a socket) of the app in the app root, with the stack's settings."""
        settings = {**UNLIMITED_SESSIONS, APP_ROOT_SETTING: str(self._app_root)}
        return self._stack.start_host(settings, app=HOSTED_APP)

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


def measure_all(workers: Workers, stack: Stack, plan: Plan) -> Runs:
    """Every measurement, in an order where each one starts from a quiet machine."""
    cold_start = [_step(workers, COLD_START, seconds=10.0) for _ in range(plan.cold_starts)]
    import_profile = environment.import_profile(workers.import_profile())
    latency = [
        _step(workers, LATENCY, seconds=plan.latency_seconds, pairs=plan.latency_pairs),
        _step(workers, LATENCY, seconds=plan.long_seconds, pairs=plan.long_pairs),
    ]
    memory = [
        _step(workers, MEMORY, _block_setting(block), seconds=seconds)
        for block in plan.block_sizes
        for seconds in plan.memory_seconds
    ]
    storage_burst = [_step(workers, STORAGE_BURST, sessions=n, rounds=4) for n in plan.sessions]
    pids = {"emulator": stack.emulator.pid, "azurite": stack.azurite.pid, "identity": stack.identity.pid}
    concurrency = [
        concurrency_run(
            workers, stack, sessions=n, seconds=plan.session_seconds, pace=plan.pace, kind=kind, pids=pids
        )
        for n in plan.sessions
        for kind in ("bare", "function")
    ]
    return Runs(
        cold_start=cold_start,
        import_profile=import_profile,
        latency=latency,
        memory=memory,
        storage_burst=storage_burst,
        concurrency=concurrency,
        first_audio=[
            _hosted_step(
                workers,
                FIRST_AUDIO,
                sessions=n,
                seconds=plan.first_audio_seconds,
                pace=plan.pace,
                rounds=rounds,
            )
            for n, rounds in zip(plan.first_audio_sessions, plan.first_audio_rounds, strict=True)
        ],
        stream_memory=[
            _hosted_step(
                workers,
                STREAM_MEMORY,
                with_pid=True,
                sessions=plan.stream_sessions,
                seconds=plan.stream_seconds,
                stalled_seconds=plan.stalled_seconds,
                stall_seconds=plan.stall_seconds,
            )
        ],
        mp3_encoding=[
            _step(
                workers,
                MP3_ENCODING,
                seconds=plan.encoded_seconds,
                request_seconds=plan.latency_seconds,
                rounds=plan.format_rounds,
            )
        ],
        audio_decoding=[
            _step(
                workers,
                AUDIO_DECODING,
                seconds=plan.decoded_seconds,
                question_seconds=plan.first_audio_seconds,
                rounds=plan.question_rounds,
            )
        ],
        backend_pool=pool_runs(workers, stack, plan),
        telemetry=telemetry_runs(workers, stack, plan),
        chat_completions=[
            _hosted_step(
                workers,
                CHAT_COMPLETIONS,
                with_pid=True,
                seconds=plan.first_audio_seconds,
                pace=plan.pace,
                rounds=plan.chat_rounds,
                history_turns=plan.chat_history_turns,
                short_seconds=plan.chat_short_seconds,
                long_seconds=plan.chat_long_seconds,
            )
        ],
    )


def _hosted_step(workers: Workers, benchmark: Benchmark[R], *, with_pid: bool = False, **params: object) -> R:
    """A run whose worker calls a dev host of its own (started with the same settings, stopped after);
    the worker gets its URL, and with `with_pid` its process id."""
    host = workers.start_host()
    hosted = {"host_url": host.url, **({"host_pid": host.pid} if with_pid else {})}
    try:
        return _step(workers, benchmark, **hosted, **params)
    finally:
        host.stop()


def pool_runs(workers: Workers, stack: Stack, plan: Plan) -> list[PoolThroughputRun]:
    """Closed-loop throughput against one, then two backends that each admit
    `plan.pool_max_sessions` sessions at once (emulators of their own), `plan.pool_rounds` times."""
    quota = ["--max-sessions", str(plan.pool_max_sessions)]
    emulators = [stack.start_emulator(f"pool-{index}", quota) for index in (1, 2)]
    runs = []
    for _ in range(plan.pool_rounds):
        for count in (1, 2):
            chosen = emulators[:count]
            backends = [{"name": emulator.name, "endpoint": emulator.url} for emulator in chosen]
            time.sleep(SETTLE_SECONDS)
            run = _step(
                workers,
                BACKEND_POOL,
                {"AZURE_OPENAI_BACKENDS": json.dumps(backends)},
                backends=count,
                max_sessions=plan.pool_max_sessions,
                clients=plan.pool_clients,
                seconds=plan.pool_answer_seconds,
                pace=plan.pace,
                window_seconds=plan.pool_window_seconds,
                pids={emulator.name: emulator.pid for emulator in chosen},
            )
            runs.append(run)
    return runs


def telemetry_runs(workers: Workers, stack: Stack, plan: Plan) -> list[TelemetryRun]:
    """Latency without and with telemetry (to the ingestion stand-in), alternating, with the number of
    items the stand-in accepted meanwhile."""
    counters = {"ingested_items": lambda: _ingested_items(stack)}
    return [
        _step(
            workers, TELEMETRY, settings, counters, seconds=plan.latency_seconds, pairs=plan.telemetry_pairs
        )
        for _ in range(plan.telemetry_rounds)
        for settings in ({}, stack.telemetry_settings())
    ]


def _ingested_items(stack: Stack) -> int:
    context = ssl.create_default_context(cafile=stack.ca_file)
    ingest = stack.ingest
    connection = http.client.HTTPSConnection(ingest.host, ingest.port, context=context, timeout=5)
    try:
        connection.request("GET", "/_ingest/health")
        return cast(int, json.loads(connection.getresponse().read())["items"])
    finally:
        connection.close()


def concurrency_run(
    workers: Workers, stack: Stack, settings: Mapping[str, str] = {}, **params: object
) -> ConcurrencyRun:
    """A concurrency run, with the number of tokens the identity endpoint issued meanwhile."""
    time.sleep(SETTLE_SECONDS)
    return _step(workers, CONCURRENCY, settings, {"tokens_issued": lambda: _tokens_issued(stack)}, **params)


def _tokens_issued(stack: Stack) -> int:
    return cast(int, stack.identity_stats()["issued_total"])


def _block_setting(block_size: int | None) -> dict[str, str]:
    return {} if block_size is None else {"AUDIO_BLOCK_SIZE_BYTES": str(block_size)}


def _step(
    workers: Workers,
    benchmark: Benchmark[R],
    settings: Mapping[str, str] = {},
    counters: Mapping[str, Counter] = {},
    **params: object,
) -> R:
    """One worker run, and a line saying how long it took."""
    started = time.perf_counter()
    record = workers.run(benchmark, settings, counters, **params)
    shown = {**settings, **{k: v for k, v in params.items() if k not in ("pids", "host_url", "host_pid")}}
    print(f"  {benchmark.name} {shown}: {time.perf_counter() - started:.1f} s", flush=True)
    return record


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
        machine = environment.describe(label)
        runs = measure_all(workers, stack, plan)
    results = records.merge(
        Results,
        runs,
        machine=machine,
        plan=plan,
        runtime_seconds=time.perf_counter() - started,
        machine_load=dict(workers.machine_load),
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(records.dump(results))
    print(report.write(results, args.output))


if __name__ == "__main__":
    main()
