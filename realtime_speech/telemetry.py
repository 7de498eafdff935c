"""Telemetry of the service: one trace, a few metrics and the log line per request, or nothing at all.

`configure()` runs once per process and picks the pipeline from the settings:

- `APPLICATIONINSIGHTS_CONNECTION_STRING`: the Azure Monitor OpenTelemetry distro. With
  `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` (`Authorization=AAD[;ClientId=<id>]`) the exporter
  authenticates with the managed identity (user-assigned when a client id is given). Live metrics are
  off unless asked, performance counters are off, and of the distro's instrumentations only the Azure
  SDK's is on, so storage calls appear as spans below ours and nothing else adds requests.
- otherwise `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP/HTTP export of traces, metrics and logs with the plain SDK.
- otherwise nothing is configured, OpenTelemetry is not even imported, and every helper returns at once.

If the Functions worker configured OpenTelemetry itself (`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`),
its providers are used as they are: configuring a second pipeline would export everything twice.
The standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`,
`OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_TRACES_SAMPLER`, ...) apply to both pipelines. With a loopback
ingestion endpoint (the local stand-in), statsbeat and the SDK's remote configuration are turned off
unless set explicitly, so nothing reaches Microsoft's endpoints during development.

The API speaks of the service, not of OpenTelemetry:

    with telemetry.request_span("POST", "/api/speech", req.headers, request_id=rid) as request:
        with telemetry.phase("connect"):
            with telemetry.attempt("east", 1):
                ...
        telemetry.set_attributes(backend="east", voice="alloy")
        telemetry.record_usage(answer.usage)
        request.end(200, first_audio_ms=timeline.marks.get("first_audio"))

Only allow-listed, token-like values can be attached (see `Attributes`): the text, the transcript,
a token, a key or a SAS never can. The per-request log line of the `realtime_speech` logger is
exported through the same pipeline with the trace and span ids of the request, after the redaction
`logs.install_redaction` applies to every record. The context managers are synchronous and safe in
coroutines: OpenTelemetry keeps the current span in a context variable of the running task.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack
from urllib.parse import urlsplit, urlunsplit

from .errors import ServiceError
from .logs import REDACTED, redact
from .settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from opentelemetry.trace import Span, Tracer

Mode = Literal["off", "azure-monitor", "otlp", "external"]
Phase = Literal["connect", "stream", "commit", "sign"]

LOGGER_NAME = "realtime_speech"
INSTRUMENTATION_NAME = "realtime_speech"
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
_MAX_VALUE_CHARS = 128
CLIENT_CLOSED_REQUEST = 499  # the request was cancelled (the caller left) before it was answered
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9._:+/-]*")

log = logging.getLogger(LOGGER_NAME)


class Attributes(TypedDict, total=False):
    """What may be attached to a request: names of the service's own vocabulary, token-like values."""

    request_id: str
    voice: str
    format: str
    backend: str
    response_status: str
    audio_seconds: float
    problem_type: str
    http_status: int
    spare_session: bool


_ATTRIBUTE_NAMES: dict[str, str] = {
    "request_id": "speech.request_id",
    "voice": "speech.voice",
    "format": "speech.format",
    "backend": "speech.backend",
    "response_status": "speech.response_status",
    "audio_seconds": "speech.audio_seconds",
    # not error.type: the Azure Monitor exporter keeps standard attributes out of customDimensions
    "problem_type": "speech.problem_type",
    "http_status": "http.response.status_code",
    "spare_session": "speech.spare_session",
}
# (direction, modality): the path of the count in the model's usage; the modality is None for the total.
_USAGE_COUNTS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("input", None): ("input_tokens",),
    ("input", "text"): ("input_token_details", "text_tokens"),
    ("input", "audio"): ("input_token_details", "audio_tokens"),
    ("input", "cached"): ("input_token_details", "cached_tokens"),
    ("output", None): ("output_tokens",),
    ("output", "text"): ("output_token_details", "text_tokens"),
    ("output", "audio"): ("output_token_details", "audio_tokens"),
}
_MODALITIES = ("text", "audio")


# --- configuration ---------------------------------------------------------------------------------


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
_pipeline: _Pipeline | None = None


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
    global _mode, _pipeline
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
            _pipeline = _Pipeline.create()
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
    if _pipeline is None:
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


# --- the pipeline's instruments --------------------------------------------------------------------


@dataclass(frozen=True)
class _Pipeline:
    """The tracer and the metric instruments, made once `configure()` chose a pipeline."""

    tracer: Tracer
    propagator: Any
    time_to_first_audio: Any
    duration: Any
    audio_seconds: Any
    requests: Any
    tokens: Any

    @classmethod
    def create(cls) -> _Pipeline:
        from opentelemetry import metrics, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        meter = metrics.get_meter(INSTRUMENTATION_NAME)
        return cls(
            tracer=trace.get_tracer(INSTRUMENTATION_NAME),
            propagator=TraceContextTextMapPropagator(),
            time_to_first_audio=meter.create_histogram(
                "speech.time_to_first_audio", unit="ms", description="From the request to the first audio"
            ),
            duration=meter.create_histogram(
                "speech.duration", unit="ms", description="The whole request, answer or error"
            ),
            audio_seconds=meter.create_histogram(
                "speech.audio.duration", unit="s", description="Length of the audio answered"
            ),
            requests=meter.create_counter(
                "speech.requests", unit="{request}", description="Requests by outcome and backend"
            ),
            tokens=meter.create_counter(
                "speech.tokens", unit="{token}", description="Model tokens by direction and modality"
            ),
        )


# --- one request -----------------------------------------------------------------------------------


@dataclass
class RequestTelemetry:
    """The telemetry of the request in progress: its span and what it measured."""

    _pipeline: _Pipeline
    _span: Span
    _started: float = field(default_factory=time.perf_counter)
    _backend: str = "none"
    _format: str | None = None
    _usage: dict[tuple[str, str | None], int] = field(default_factory=dict)
    _ended: bool = False

    def set(self, **attributes: Unpack[Attributes]) -> None:
        """Attach allow-listed facts (see `Attributes`) to the request span."""
        for name, value in _checked(attributes).items():
            self._span.set_attribute(_ATTRIBUTE_NAMES[name], value)
        if isinstance(attributes.get("backend"), str):
            self._backend = _safe_value(attributes["backend"])
        if isinstance(attributes.get("format"), str):
            self._format = _safe_value(attributes["format"])

    def record_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Keep the model's token counts (input/output, text/audio when known); only integers are read."""
        for (direction, modality), path in _USAGE_COUNTS.items():
            count = _count_at(usage, path)
            if count is not None:
                self._usage[direction, modality] = count
                suffix = f".{modality}" if modality else ""
                self._span.set_attribute(f"speech.tokens.{direction}{suffix}", count)

    def end(
        self,
        http_status: int,
        *,
        problem_type: str | None = None,
        first_audio_ms: float | None = None,
        audio_seconds: float | None = None,
        response_status: str | None = None,
    ) -> None:
        """Record the outcome: span status and attributes, and the request's metrics (once)."""
        if self._ended:
            return
        self._ended = True
        self.set(http_status=http_status)
        if response_status is not None:
            self.set(response_status=response_status)
        if audio_seconds is not None:
            self.set(audio_seconds=audio_seconds)
        if problem_type is not None:
            self.set(problem_type=problem_type)
        if first_audio_ms is not None:
            self._span.set_attribute("speech.first_audio_ms", first_audio_ms)
        if http_status >= 400:  # like Application Insights: a request answered >= 400 did not succeed
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, _safe_value(problem_type or str(http_status))))
        self._record_metrics(http_status, problem_type, first_audio_ms, audio_seconds)

    def close(self) -> None:
        """End the span (once); a request that never recorded its outcome counts as a success."""
        if self._span.is_recording():
            self.end(200)
            self._span.end()

    def current(self) -> contextlib.AbstractContextManager[object]:
        """Make the request's span current (for a log line written outside the function call)."""
        from opentelemetry import trace

        return trace.use_span(self._span, end_on_exit=False)

    def _record_metrics(
        self,
        http_status: int,
        problem_type: str | None,
        first_audio_ms: float | None,
        audio_seconds: float | None,
    ) -> None:
        pipeline, backend = self._pipeline, {"backend": self._backend}
        outcome = _safe_value(problem_type) if problem_type else ("ok" if http_status < 400 else "error")
        pipeline.requests.add(1, {"outcome": outcome, "http_status": http_status, **backend})
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        pipeline.duration.record(elapsed_ms, {"outcome": outcome, **backend})
        if first_audio_ms is not None:
            pipeline.time_to_first_audio.record(first_audio_ms, backend)
        if audio_seconds is not None:
            pipeline.audio_seconds.record(audio_seconds, {"format": self._format or "unknown", **backend})
        for direction in ("input", "output"):
            for modality, count in _token_split(self._usage, direction).items():
                pipeline.tokens.add(count, {"direction": direction, "modality": modality, **backend})


class NoRequest:
    """What the helpers return with telemetry off: accepts every call, does nothing."""

    __slots__ = ()

    def __enter__(self) -> NoRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, **attributes: Unpack[Attributes]) -> None:
        return None

    def record_usage(self, usage: Mapping[str, Any] | None) -> None:
        return None

    def end(self, http_status: int, **outcome: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def current(self) -> NoRequest:
        return self


_NO_REQUEST = NoRequest()
_current: ContextVar[RequestTelemetry | None] = ContextVar("realtime_speech_request", default=None)


@contextlib.contextmanager
def request_span(
    method: str,
    route: str,
    headers: Mapping[str, str],
    *,
    request_id: str | None = None,
    url: str | None = None,
) -> Iterator[RequestTelemetry | NoRequest]:
    """The request's span for the duration of a block (see `start_request`). Leaving the block
    without `end()` records a 500 `internal-error` if an exception escapes, else a success."""
    request = start_request(method, route, headers, request_id=request_id, url=url)
    try:
        yield request
    except BaseException as exc:
        request.end(_http_status(exc), problem_type=_problem_type(exc))
        raise
    finally:
        request.close()


def start_request(
    method: str,
    route: str,
    headers: Mapping[str, str],
    *,
    request_id: str | None = None,
    url: str | None = None,
) -> RequestTelemetry | NoRequest:
    """The request's SERVER span `"<method> <route>"`, continuing the caller's W3C trace
    (`traceparent`/`tracestate` in `headers`, a case-insensitive mapping or one with lowercase keys;
    without them, the current context), until `close()`: it becomes current for this task and the
    tasks it starts, so it can outlive the function call (a stream). When the Functions worker
    configured OpenTelemetry ("external"), the host already records the request: the span is
    INTERNAL, below the context the worker attached. `url` is recorded without its query string
    (which may carry a function key)."""
    pipeline = _pipeline
    if pipeline is None:
        return _NO_REQUEST
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    # With the worker's pipeline ("external"), the Functions host records the request and hands its
    # context to the invocation: this span is then a child of the host's request, not a second one.
    host_owns_request = _mode == "external"
    names = () if host_owns_request else ("traceparent", "tracestate")
    carrier = {name: value for name in names if (value := headers.get(name))}
    attributes: dict[str, str] = {"http.request.method": method, "http.route": route}
    if url:
        attributes.update(_url_attributes(url))
    span = pipeline.tracer.start_span(
        f"{method} {route}",
        context=pipeline.propagator.extract(carrier, context=context.get_current()),
        kind=SpanKind.INTERNAL if host_owns_request else SpanKind.SERVER,
        attributes=attributes,
    )
    request = RequestTelemetry(pipeline, span)
    if request_id:
        request.set(request_id=request_id)
    # Current for the rest of this task and every task it creates (they copy the context); the
    # request's task ends with it, so nothing is detached.
    _current.set(request)
    context.attach(trace.set_span_in_context(span))
    return request


def set_attributes(**attributes: Unpack[Attributes]) -> None:
    """Attach allow-listed facts to the current request's span (nothing outside a request).

    A name outside `Attributes` is a TypeError even with telemetry off, so a mistake shows in every run.
    """
    if not attributes.keys() <= _ATTRIBUTE_NAMES.keys():
        _checked(attributes)  # raises, naming the offending names
    request = _current.get() if _pipeline is not None else None
    if request is not None:
        request.set(**attributes)


def record_usage(usage: Mapping[str, Any] | None) -> None:
    """Keep the model's token usage for the current request (`SpokenAnswer.usage`)."""
    request = _current.get() if _pipeline is not None else None
    if request is not None:
        request.record_usage(usage)


def phase(name: Phase) -> contextlib.AbstractContextManager[object]:
    """A child span of the current request for one phase: connect, stream, commit or sign."""
    if _pipeline is None:
        return _NO_REQUEST
    return _child_span(_pipeline, name, {})


def attempt(backend: str, number: int) -> contextlib.AbstractContextManager[object]:
    """A child span for one connection attempt to a backend (inside `phase("connect")`)."""
    if _pipeline is None:
        return _NO_REQUEST
    return _child_span(
        _pipeline, "connect attempt", {"speech.backend": _safe_value(backend), "speech.attempt": number}
    )


@contextlib.contextmanager
def _child_span(pipeline: _Pipeline, name: str, attributes: dict[str, Any]) -> Iterator[object]:
    with pipeline.tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            from opentelemetry.trace import Status, StatusCode

            problem = _problem_type(exc)
            span.set_attribute(_ATTRIBUTE_NAMES["problem_type"], problem)
            span.set_status(Status(StatusCode.ERROR, problem))
            raise


# --- values ----------------------------------------------------------------------------------------


def _checked(attributes: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    unknown = attributes.keys() - _ATTRIBUTE_NAMES.keys()
    if unknown:
        raise TypeError(f"not an allowed telemetry attribute: {', '.join(sorted(unknown))}")
    checked: dict[str, str | int | float | bool] = {}
    for name, value in attributes.items():
        if isinstance(value, str):
            checked[name] = _safe_value(value)
        elif isinstance(value, int | float):  # a bool is a flag, such as spare_session
            checked[name] = value
        elif value is not None:
            raise TypeError(f"telemetry attribute {name} must be a string, a number or a flag")
    return checked


def _safe_value(value: str) -> str:
    """A short token-like string as it is; anything else (free text, secrets) is not sent."""
    value = value[:_MAX_VALUE_CHARS]
    if not _TOKEN_LIKE.fullmatch(value):
        return "invalid"
    return value if redact(value) == value else REDACTED


def _problem_type(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return exc.code
    return "internal-error" if isinstance(exc, Exception) else "cancelled"


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        return exc.status
    return 500 if isinstance(exc, Exception) else CLIENT_CLOSED_REQUEST


def _count_at(usage: Mapping[str, Any] | None, path: tuple[str, ...]) -> int | None:
    value: Any = usage
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _token_split(usage: Mapping[tuple[str, str | None], int], direction: str) -> dict[str, int]:
    """A direction's tokens by modality when the details are known, else all of them as "unknown"."""
    split = {m: usage[direction, m] for m in _MODALITIES if (direction, m) in usage}
    total = usage.get((direction, None))
    if total is not None and sum(split.values()) < total:
        split["unknown"] = total - sum(split.values())
    return split


def _url_attributes(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    address = f"{host}:{parts.port}" if parts.port else host  # never user info, query or fragment
    attributes = {"url.full": urlunsplit((parts.scheme, address, parts.path, "", ""))}
    if parts.scheme:
        attributes["url.scheme"] = parts.scheme
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    return attributes
