"""Local services as subprocesses: spawn on a free loopback port, wait for a readiness probe, stop.

Every `ServiceProcess` runs in its own process group, logs to `<log_dir>/<name>.log` and is stopped
with its children by `stop()`; an `atexit` hook stops whatever a crashed caller left running. Used by
`devtools.stack` and by tests that run a stand-in of their own.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
PORT_PLACEHOLDER = "{port}"

log = logging.getLogger("devtools.process")

Probe = Callable[["ServiceProcess"], bool]


class ServiceStartError(RuntimeError):
    """A service exited or did not become ready in time."""


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- readiness probes -------------------------------------------------------------------------------


def http_probe(path: str, *, expect: Callable[[int], bool] = lambda status: status == 200) -> Probe:
    """Ready when `GET path` over plain HTTP answers with a status `expect` accepts."""

    def probe(service: ServiceProcess) -> bool:
        connection = http.client.HTTPConnection(service.host, service.port, timeout=1.0)
        try:
            connection.request("GET", path)
            return expect(connection.getresponse().status)
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    return probe


def tcp_probe(service: ServiceProcess) -> bool:
    """Ready when the port accepts a TCP connection."""
    try:
        socket.create_connection((service.host, service.port), timeout=1.0).close()
    except OSError:
        return False
    return True


# --- one service ------------------------------------------------------------------------------------

# Running services, strongly referenced: one its owner dropped without stopping is still stopped at exit.
_live: set[ServiceProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for service in list(_live):
        service.stop()


class ServiceProcess:
    """A subprocess serving on one port of 127.0.0.1, with a readiness probe.

    `argv` items may contain `{port}`, replaced by the service's port. With `port=None` a free port is
    picked; if the service then loses a race for it (address in use) before it was ever ready, another
    port is tried. After the first successful start the port is fixed, so `restart()` comes back on the
    same address.
    """

    PORT_ATTEMPTS = 3
    _PORT_TAKEN_MARKERS = ("address already in use", "eaddrinuse", "errno 98")

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        probe: Probe,
        log_dir: Path,
        port: int | None = None,
        host: str = LOOPBACK,
        scheme: str = "http",
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv_template = list(argv)
        self.probe = probe
        self.host = host
        self.scheme = scheme
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path = log_dir / f"{name}.log"
        self._auto_port = port is None
        self.port = free_port(host) if port is None else port
        self._ever_ready = False
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<ServiceProcess {self.name} {self.url} {state}>"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [arg.replace(PORT_PLACEHOLDER, str(self.port)) for arg in self.argv_template]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        """Spawn the process and block until the probe passes."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> None:
        """Start the process without waiting (see `wait_ready`), e.g. to start several in parallel."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start on {self.url}\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() takes its children down too
        )
        _live.add(self)

    def wait_ready(self) -> Self:
        for attempt in range(1, self.PORT_ATTEMPTS + 1):
            try:
                self._wait_ready_once()
            except ServiceStartError:
                if not self._may_retry_on_new_port(attempt):
                    self.stop()
                    raise
                self._reap()
                self.port = free_port(self.host)
                log.info("%s: port taken, retrying on %d", self.name, self.port)
                self.spawn()
            else:
                self._ever_ready = True
                return self
        raise AssertionError("unreachable")

    def _wait_ready_once(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise ServiceStartError(
                    f"{self.name} exited (code {code}) before it was ready; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if self.probe(self):
                return
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"{self.name} not ready on {self.url} after {self.start_timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _may_retry_on_new_port(self, attempt: int) -> bool:
        if not self._auto_port or self._ever_ready or attempt == self.PORT_ATTEMPTS or self.running:
            return False
        recent = self._read_log_since_start().lower()
        return any(marker in recent for marker in self._PORT_TAKEN_MARKERS)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it does not exit in time, reap. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", self.name, self.stop_timeout)
                self._signal_group(signal.SIGKILL)
        self._reap()

    def restart(self) -> Self:
        """Stop, then start again on the same port."""
        self.stop()
        return self.start()

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._read_log_since_start().splitlines()[-lines:])

    def _read_log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as file:
                file.seek(self._log_offset)
                return file.read().decode(errors="replace")
        except OSError:
            return ""

    def _signal_group(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def _reap(self) -> None:
        """Wait for the leader and make sure nothing of its process group outlives it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._signal_group(signal.SIGKILL)
            self._process.wait()
            self._signal_group(signal.SIGKILL)  # stragglers the leader left behind
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _live.discard(self)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
