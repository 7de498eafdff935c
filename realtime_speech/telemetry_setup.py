"""Telemetry's pipeline: which exporters this process sends to, chosen once from the settings.

`configure()` runs once per process and picks the pipeline:

- `APPLICATIONINSIGHTS_CONNECTION_STRING`: the Azure Monitor OpenTelemetry distro. With
  `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` (`Authorization=AAD[;ClientId=<id>]`) the exporter
  authenticates with the managed identity (user-assigned when a client id is given). Live metrics are
  off unless asked, performance counters are off, and of the distro's instrumentations only the Azure
  SDK's is on, so storage calls appear as spans below ours and nothing else adds requests.
- otherwise `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP/HTTP export of traces, metrics and logs with the plain SDK.
- otherwise nothing is configured, OpenTelemetry is not even imported.

If the Functions worker configured OpenTelemetry itself (`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`),
its providers are used as they are: configuring a second pipeline would export everything twice.
The standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`,
`OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_TRACES_SAMPLER`, ...) apply to both pipelines. With a loopback
ingestion endpoint (the local stand-in), statsbeat and the SDK's remote configuration are turned off
unless set explicitly, so nothing reaches Microsoft's endpoints during development.

What is recorded per request is `telemetry`'s business; this module only says where it goes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

Mode = Literal["off", "azure-monitor", "otlp", "external"]

LOGGER_NAME = "realtime_speech"
MONITOR_AUDIENCE = "https://monitor.azure.com"
# The distro's instrumentations other than the Azure SDK's: HTTP clients and web frameworks would add
# spans (and, for fastapi, a second request) for traffic this module already describes.
_OTHER_INSTRUMENTATIONS = (
    "django",
    "fastapi",
    "flask",
    "httpx",
    "httpx2",
    "psycopg2",
    "requests",
    "urllib",
    "urllib3",
)
# Resource detectors that read only the environment (the distro's default adds azure_vm, which asks IMDS).
_RESOURCE_DETECTORS = "azure_app_service,azure_functions"
_LOCAL_ONLY_DEFAULTS = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class TelemetrySettings:
    """The three settings that choose the pipeline (see `Settings`)."""

    connection_string: str | None = None
    authentication_string: str | None = None
    otlp_endpoint: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TelemetrySettings:
        secret = settings.applicationinsights_connection_string
        return cls(
            connection_string=secret.get_secret_value() if secret else None,
            authentication_string=settings.applicationinsights_authentication_string,
            otlp_endpoint=settings.otel_exporter_otlp_endpoint,
        )

    @classmethod
    def current(cls) -> TelemetrySettings:
        """From the app settings; when other settings are invalid, from the same variables directly,
        so a misconfigured app still reports what happens to it."""
        try:
            return cls.from_settings(get_settings())
        except SettingsError:
            return cls(*(os.environ.get(name.upper()) or None for name in _TELEMETRY_FIELDS))


_TELEMETRY_FIELDS = (
    "applicationinsights_connection_string",
    "applicationinsights_authentication_string",
    "otel_exporter_otlp_endpoint",
)


@dataclass(frozen=True)
class EntraAuthentication:
    """`APPLICATIONINSIGHTS_AUTHENTICATION_STRING`: Entra auth with a managed identity, user-assigned
    when `client_id` is set, else system-assigned."""

    client_id: str | None = None

    @classmethod
    def parse(cls, value: str) -> EntraAuthentication:
        """`Authorization=AAD` or `Authorization=AAD;ClientId=<id>` (names case-insensitive)."""
        pairs: dict[str, str] = {}
        for part in filter(None, (part.strip() for part in value.split(";"))):
            name, sep, item = part.partition("=")
            if not sep or not item.strip():
                raise ValueError("APPLICATIONINSIGHTS_AUTHENTICATION_STRING must be name=value pairs")
            pairs[name.strip().lower()] = item.strip()
        if pairs.get("authorization", "").upper() != "AAD":
            raise ValueError("APPLICATIONINSIGHTS_AUTHENTICATION_STRING must say Authorization=AAD")
        unknown = set(pairs) - {"authorization", "clientid"}
        if unknown:
            raise ValueError(
                f"APPLICATIONINSIGHTS_AUTHENTICATION_STRING: unknown {', '.join(sorted(unknown))}"
            )
        return cls(pairs.get("clientid"))

    def credential(self) -> TokenCredential:
        # The exporter calls get_token synchronously from its export thread: a sync credential.
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=self.client_id)


_lock = threading.Lock()
_mode: Mode | None = None


def configure(
    settings: Settings | TelemetrySettings | None = None,
    *,
    credential: TokenCredential | None = None,
    live_metrics: bool = False,
) -> Mode:
    """Set up telemetry for this process, once; later calls return the mode chosen first.

    `credential` (sync) replaces the managed identity of `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`.
    A telemetry setting that cannot be used is logged and leaves telemetry off: the service runs anyway.
    """
    global _mode
    with _lock:
        if _mode is not None:
            return _mode
        chosen = settings if isinstance(settings, TelemetrySettings) else None
        if chosen is None:
            chosen = TelemetrySettings.from_settings(settings) if settings else TelemetrySettings.current()
        try:
            _mode = _configure(chosen, credential, live_metrics)
        except Exception as exc:
            log.warning("telemetry is off: %s", exc)
            _mode = "off"
        if _mode != "off":
            _silence_fastapi()
            if log.level == logging.NOTSET:  # the per-request line is INFO; it must reach the exporter
                log.setLevel(logging.INFO)
        return _mode


def _silence_fastapi() -> None:
    """Turn off FastAPI's own telemetry (0.142 and later trace every app through the global providers,
    the worker's catch-all app included), which would record each request a second time. FastAPI has
    no switch for an app it did not create, so its instrumentation scope is disabled in the SDK's
    providers, through their (experimental) scope configurators; a disabled tracer still carries its
    parent's context, so traces stay whole."""
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    try:
        from opentelemetry.sdk._logs._internal import _LoggerConfig
        from opentelemetry.sdk.metrics._internal import _MeterConfig
        from opentelemetry.sdk.trace import _TracerConfig
    except ImportError:  # an SDK without scope configurators: FastAPI's spans stay
        log.info("telemetry: this OpenTelemetry SDK cannot turn FastAPI's own telemetry off")
        return

    def without_fastapi(config: Any) -> Any:
        return lambda scope: config(is_enabled=scope.name != "fastapi")

    setters = (
        (trace.get_tracer_provider(), "_set_tracer_configurator", "tracer_configurator", _TracerConfig),
        (metrics.get_meter_provider(), "_set_meter_configurator", "meter_configurator", _MeterConfig),
        (get_logger_provider(), "_set_logger_configurator", "logger_configurator", _LoggerConfig),
    )
    for provider, setter, keyword, config in setters:
        if hasattr(provider, setter):  # an SDK provider (not a proxy or a no-op one)
            getattr(provider, setter)(**{keyword: without_fastapi(config)})


def mode() -> Mode:
    """The pipeline `configure()` chose ("off" before it ran)."""
    return _mode or "off"


def flush(timeout_millis: int = 10_000) -> None:
    """Export everything recorded so far (spans, metrics, logs)."""
    for provider in _providers():
        provider.force_flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop the exporters (at process exit the SDK does this by itself)."""
    for provider in _providers():
        provider.shutdown()


def _providers() -> list[Any]:
    if mode() == "off":
        return []
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    candidates = (trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider())
    return [provider for provider in candidates if hasattr(provider, "force_flush")]


def _configure(chosen: TelemetrySettings, credential: TokenCredential | None, live_metrics: bool) -> Mode:
    if not (chosen.connection_string or chosen.otlp_endpoint):
        return "off"  # without importing OpenTelemetry at all
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return "external"  # the Functions worker (or the embedding process) configured it
    if chosen.connection_string:
        _configure_azure_monitor(chosen, credential, live_metrics)
        return "azure-monitor"
    _configure_otlp()
    return "otlp"


def _configure_azure_monitor(
    chosen: TelemetrySettings, credential: TokenCredential | None, live_metrics: bool
) -> None:
    assert chosen.connection_string is not None
    if credential is None and chosen.authentication_string:
        credential = EntraAuthentication.parse(chosen.authentication_string).credential()
    if _is_loopback(ingestion_endpoint(chosen.connection_string)):
        for name, value in _LOCAL_ONLY_DEFAULTS.items():
            os.environ.setdefault(name, value)
    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", _RESOURCE_DETECTORS)

    from azure.monitor.opentelemetry import configure_azure_monitor

    # The distro's default sampler limits spans (not traces) to 5 per second, which drops the later
    # phases of a request; unless OTEL_TRACES_SAMPLER says otherwise, keep whole traces, all of them.
    sampling = {} if os.environ.get("OTEL_TRACES_SAMPLER") else {"sampling_ratio": 1.0}
    configure_azure_monitor(
        connection_string=chosen.connection_string,
        credential=credential,
        enable_live_metrics=live_metrics,
        enable_performance_counters=False,
        logger_name=LOGGER_NAME,
        instrumentation_options={name: {"enabled": False} for name in _OTHER_INSTRUMENTATIONS},
        **sampling,
    )


def _configure_otlp() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", _RESOURCE_DETECTORS)
    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logger_provider)
    logging.getLogger(LOGGER_NAME).addHandler(LoggingHandler(logger_provider=logger_provider))

    from azure.core.settings import settings as azure_settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan

    azure_settings.tracing_implementation = OpenTelemetrySpan  # as the distro does for its pipeline


def ingestion_endpoint(connection_string: str) -> str:
    """The `IngestionEndpoint` of a connection string ("" when it names none)."""
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "ingestionendpoint":
            return value.strip()
    return ""


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
