"""Start and stop the local stand-ins (identity endpoint, Azurite, realtime emulator, dev host).

The one place tests, `make demo` and the benchmarks get their processes from:

    with start_stack(Path(tmp)) as stack:
        host = stack.start_host()                       # function app, settings from stack.app_settings()
        ...
        stack.azurite.restart()                         # outage drill: same port, same data

Every service is a real subprocess in its own process group, listening on 127.0.0.1 on a free port
(or on the fixed ports of a `StackPorts`, as `devtools.run` does), logging to
`<state_dir>/logs/<name>.log`. `Stack.close()` (or leaving the `with` block) stops all of them, even
after errors; an `atexit` hook catches whatever a crashed caller left behind.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools import azurite
from devtools.certs import DevCerts, ensure_dev_certs
from devtools.process import (
    LOOPBACK,
    PORT_PLACEHOLDER,
    REPO_ROOT,
    Probe,
    ServiceProcess,
    free_port,
    http_probe,
    tcp_probe,
)

DEFAULT_STATE_DIR = REPO_ROOT / ".devstate"
DEPLOYMENT_NAME = "gpt-realtime"
AUDIO_CONTAINER = "audio"
# Inherited variables with these prefixes are dropped from a function host's environment, so a
# developer's shell (AZURE_CLIENT_ID, AZURE_OPENAI_API_KEY, MSI_ENDPOINT...) cannot change what the
# app under test sees; the stack's settings and explicit overrides are all it gets.
AMBIENT_SETTING_PREFIXES = ("AZURE_", "AUDIO_", "REALTIME_", "IDENTITY_", "MSI_", "IMDS_")

log = logging.getLogger("devtools.stack")


@dataclass(frozen=True)
class StackPorts:
    """Fixed ports for the stand-ins; None picks a free one (the default for each)."""

    identity: int | None = None
    azurite: int | None = None
    emulator: int | None = None


def azurite_probe(ca_file: Path) -> Probe:
    return lambda service: azurite.is_ready(service.host, service.port, ca_file)


# --- the whole stack --------------------------------------------------------------------------------


class Stack:
    """Certificates, identity endpoint, Azurite and the realtime emulator; function hosts on demand.

    `with_emulator=False` leaves the realtime emulator out (storage and identity only).
    `azurite_in_memory=False` keeps blobs under the state dir, so `azurite.restart()` behaves like a
    storage outage (data survives) rather than a wipe. `ports` fixes the stand-ins' ports and
    `identity_header` the identity endpoint's secret (random by default), so that settings written down
    once (a `local.settings.json`) stay valid across runs.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        emulator_args: Sequence[str] = (),
        with_emulator: bool = True,
        emulator_tls: bool = False,
        azurite_in_memory: bool = False,
        token_lifetime: int = 3600,
        ports: StackPorts = StackPorts(),
        identity_header: str | None = None,
    ) -> None:
        self.state_dir = (state_dir or DEFAULT_STATE_DIR).resolve()
        self.log_dir = self.state_dir / "logs"
        self.emulator_args = list(emulator_args)
        self.with_emulator = with_emulator
        self.emulator_tls = emulator_tls
        self.azurite_in_memory = azurite_in_memory
        self.token_lifetime = token_lifetime
        self.ports = ports

        self.identity_header = identity_header or secrets.token_urlsafe(24)
        self.emulator_api_key = secrets.token_urlsafe(24)
        self.tenant_id = str(uuid.uuid4())
        self.object_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())

        self._certs: DevCerts | None = None
        self._identity: ServiceProcess | None = None
        self._azurite: ServiceProcess | None = None
        self.emulator: ServiceProcess | None = None
        """The realtime emulator, None when this stack runs without it."""
        self.extra_emulators: list[ServiceProcess] = []
        """More emulators (backends of a pool), started with `start_emulator`."""
        self._ingest: ServiceProcess | None = None
        self.instrumentation_key = str(uuid.uuid4())
        self.emulator_tls_port: int | None = None
        self.hosts: list[ServiceProcess] = []
        self._previous_sigterm: signal.Handlers | Callable[..., object] | int | None = None

    # lifecycle

    def start(self) -> Self:
        """Start every stand-in (in parallel) and wait until all are ready."""
        if self._certs is not None:
            raise RuntimeError("the stack is already started")
        self._exit_cleanly_on_sigterm()
        try:
            self._certs = certs = ensure_dev_certs(self.state_dir)
            services = [self._make_identity(certs), self._make_azurite(certs), self._make_ingest(certs)]
            if self.with_emulator:
                services.append(self._make_emulator(certs))
            for service in services:
                service.spawn()
            for service in services:
                service.wait_ready()
        except BaseException:
            self.close()
            raise
        log.info("stack ready: %s", ", ".join(repr(s) for s in self.services))
        return self

    def close(self) -> None:
        """Stop hosts first, then the stand-ins; keep going if one of them fails to stop."""
        errors: list[BaseException] = []
        stand_ins = [*self.extra_emulators, self.emulator, self._ingest, self._azurite, self._identity]
        for service in [*reversed(self.hosts), *stand_ins]:
            if service is None:
                continue
            try:
                service.stop()
            except Exception as error:  # stop the rest regardless
                errors.append(error)
        self.hosts.clear()
        self._restore_sigterm()
        if errors:
            raise ExceptionGroup("failed to stop some services", errors)

    def __enter__(self) -> Self:
        return self if self._certs is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _exit_cleanly_on_sigterm(self) -> None:
        """Turn SIGTERM (CI timeouts, `kill`) into SystemExit so `close()` still runs.

        The services live in their own process groups, so nobody else would stop them. Only done from
        the main thread and only when nobody installed a SIGTERM handler already.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def exit_on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, exit_on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    @property
    def services(self) -> list[ServiceProcess]:
        """Every service this stack started (stand-ins and hosts), running or not."""
        started = [self._identity, self._azurite, self._ingest, self.emulator, *self.extra_emulators]
        started += self.hosts
        return [service for service in started if service is not None]

    @property
    def certs(self) -> DevCerts:
        """CA, server certificate and token-signing keys (see `devtools.certs`)."""
        if self._certs is None:
            raise RuntimeError("the stack is not started")
        return self._certs

    @property
    def identity(self) -> ServiceProcess:
        """The managed-identity endpoint process (`stop()`/`restart()` for outage tests)."""
        return self._require(self._identity, "identity endpoint")

    @property
    def azurite(self) -> ServiceProcess:
        """The Azurite process (`stop()`/`restart()` for outage tests)."""
        return self._require(self._azurite, "azurite")

    # addresses and settings

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def storage_url(self) -> str:
        """Blob account URL, `https://127.0.0.1:PORT/devstoreaccount1`."""
        return azurite.account_url(self.azurite.port)

    @property
    def identity_endpoint(self) -> str:
        """`IDENTITY_ENDPOINT`: the token URL of the managed-identity stand-in."""
        return f"{self.identity.url}/msi/token"

    @property
    def openai_endpoint(self) -> str:
        """`AZURE_OPENAI_ENDPOINT` of the realtime emulator (plain HTTP/WS)."""
        return self._require(self.emulator, "realtime emulator").url

    @property
    def openai_tls_endpoint(self) -> str:
        """The emulator's TLS listener (`https://`, for clients that always use `wss://`)."""
        self._require(self.emulator, "realtime emulator")
        if self.emulator_tls_port is None:
            raise RuntimeError("the realtime emulator was started without a TLS listener (emulator_tls=True)")
        return f"https://{LOOPBACK}:{self.emulator_tls_port}"

    def app_settings(self, **overrides: str | None) -> dict[str, str]:
        """The function app's settings for this stack; an override of None removes the setting."""
        settings = {
            "AZURE_OPENAI_DEPLOYMENT_NAME": DEPLOYMENT_NAME,
            "AUDIO_STORAGE_ACCOUNT_URL": self.storage_url,
            "AUDIO_CONTAINER": AUDIO_CONTAINER,
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "SSL_CERT_FILE": str(self.ca_file),
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
        }
        if self.emulator is not None:
            settings["AZURE_OPENAI_ENDPOINT"] = self.openai_endpoint
        return _apply_overrides(settings, overrides)

    @property
    def ingest(self) -> ServiceProcess:
        """The Application Insights ingestion stand-in (`devtools.appinsights_ingest`)."""
        return self._require(self._ingest, "ingestion stand-in")

    def telemetry_settings(self) -> dict[str, str]:
        """App settings that send the app's telemetry to the ingestion stand-in, authenticated with
        the managed identity, with short export intervals and nothing sent anywhere else."""
        endpoint = f"{self.ingest.url}/"
        return {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                f"InstrumentationKey={self.instrumentation_key};IngestionEndpoint={endpoint};"
                f"LiveEndpoint={endpoint}"
            ),
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"Authorization=AAD;ClientId={self.client_id}",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }

    def start_emulator(self, name: str, args: Sequence[str] = ()) -> ServiceProcess:
        """Another realtime emulator (e.g. a second backend of a pool), stopped with the stack."""
        argv = self._emulator_argv(self.certs, tls=False) + list(args)
        emulator = self._service(name, argv, http_probe("/_emulator/health"))
        self.extra_emulators.append(emulator)
        return emulator.start()

    def identity_stats(self) -> dict[str, object]:
        """Counts of tokens issued (per resource) and refused by the identity endpoint."""
        connection = http.client.HTTPConnection(self.identity.host, self.identity.port, timeout=5)
        try:
            connection.request("GET", "/stats")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    # function hosts

    def host_env(self, env_overrides: Mapping[str, str | None] = {}) -> dict[str, str]:
        """`os.environ` (minus ambient Azure settings) plus `app_settings()`, then the overrides."""
        inherited = {name: value for name, value in os.environ.items() if not is_ambient_setting(name)}
        env = {**inherited, **self.app_settings(), "PYTHONUNBUFFERED": "1"}
        return _apply_overrides(env, env_overrides)

    def start_host(
        self,
        env_overrides: Mapping[str, str | None] = {},
        port: int | None = None,
        *,
        name: str | None = None,
        app: str | None = None,
        start_timeout: float = 60.0,
        function_key: str | None = None,
    ) -> ServiceProcess:
        """Run the function app under `devtools.devhost` and wait until it answers HTTP.

        The developer's `local.settings.json` is not read (`--settings` points at a file that does not
        exist), so only this stack's settings and `env_overrides` apply. With `function_key` the host
        enforces function keys as in Azure (see `devtools.devhost`); without, it does not, as Core Tools.
        """
        name = name or f"host-{len(self.hosts) + 1}"
        no_settings = self.state_dir / "no-local-settings.json"
        argv = [sys.executable, "-m", "devtools.devhost", "--port", PORT_PLACEHOLDER, "--host", LOOPBACK]
        if app is not None:
            argv += ["--app", app]
        if function_key is not None:
            argv.append(f"--function-key={function_key}")
        host = ServiceProcess(
            name,
            [*argv, "--settings", str(no_settings)],
            probe=http_probe("/api/health", expect=lambda status: True),
            log_dir=self.log_dir,
            port=port,
            env=self.host_env(env_overrides),
            start_timeout=start_timeout,
        )
        self.hosts.append(host)
        return host.start()

    # internals

    def _make_identity(self, certs: DevCerts) -> ServiceProcess:
        argv = [
            *(sys.executable, "-m", "devtools.identity_endpoint"),
            *("--port", PORT_PLACEHOLDER, "--host", LOOPBACK),
            # `--name=value`: a random secret may start with "-", which argparse would take for an option
            *(f"--secret={self.identity_header}", "--signing-key", str(certs.token_signing_key)),
            *("--tenant-id", self.tenant_id, "--object-id", self.object_id, "--client-id", self.client_id),
            *("--token-lifetime", str(self.token_lifetime)),
        ]
        self._identity = self._service("identity", argv, http_probe("/health"), port=self.ports.identity)
        return self._identity

    def _make_azurite(self, certs: DevCerts) -> ServiceProcess:
        location = None
        if not self.azurite_in_memory:
            location = self.state_dir / "azurite"
            location.mkdir(parents=True, exist_ok=True)
        argv = azurite.azurite_argv(PORT_PLACEHOLDER, certs, host=LOOPBACK, location=location)
        self._azurite = self._service(
            "azurite", argv, azurite_probe(certs.ca_file), scheme="https", port=self.ports.azurite
        )
        return self._azurite

    def _make_emulator(self, certs: DevCerts) -> ServiceProcess:
        argv = self._emulator_argv(certs, tls=self.emulator_tls) + self.emulator_args
        self.emulator = self._service(
            "emulator", argv, http_probe("/_emulator/health"), port=self.ports.emulator
        )
        return self.emulator

    def _emulator_argv(self, certs: DevCerts, *, tls: bool) -> list[str]:
        argv = [
            *(sys.executable, "-m", "devtools.realtime_emulator"),
            *("--port", PORT_PLACEHOLDER, "--host", LOOPBACK),
            f"--api-key={self.emulator_api_key}",
            *("--token-public-key", str(certs.token_signing_public_key)),
        ]
        if tls:
            self.emulator_tls_port = free_port()
            argv += ["--tls-port", str(self.emulator_tls_port)]
            argv += ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
        return argv

    def _make_ingest(self, certs: DevCerts) -> ServiceProcess:
        argv = [
            *(sys.executable, "-m", "devtools.appinsights_ingest"),
            *("--port", PORT_PLACEHOLDER, "--host", LOOPBACK),
            *("--token-public-key", str(certs.token_signing_public_key)),
            *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        ]
        self._ingest = self._service("ingest", argv, tcp_probe, scheme="https")
        return self._ingest

    def _service(
        self, name: str, argv: Sequence[str], probe: Probe, *, scheme: str = "http", port: int | None = None
    ) -> ServiceProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return ServiceProcess(
            name, argv, probe=probe, log_dir=self.log_dir, port=port, scheme=scheme, env=env
        )

    @staticmethod
    def _require(service: ServiceProcess | None, what: str) -> ServiceProcess:
        if service is None:
            raise RuntimeError(f"the {what} is not part of this stack (not started)")
        return service


def start_stack(state_dir: Path | None = None, **options: Any) -> Stack:
    """Start a `Stack` (usable as a context manager); state under `state_dir` (default `.devstate/`),
    `options` as for `Stack`."""
    return Stack(state_dir, **options).start()


def is_ambient_setting(name: str) -> bool:
    """True for inherited variables that would configure the app or azure-identity behind our back."""
    return name.upper().startswith(AMBIENT_SETTING_PREFIXES)


def _apply_overrides(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(base)
    for name, value in overrides.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged
