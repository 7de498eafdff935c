"""Telemetry of the service: one trace, a few metrics and the log line per request, or nothing at all.

Where it goes (Azure Monitor, OTLP, or nowhere) is chosen once per process by
`telemetry_setup.configure()`; with no pipeline every helper here returns at once.

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
import functools
import re
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack
from urllib.parse import urlsplit, urlunsplit

from . import telemetry_setup
from .errors import ServiceError
from .logs import REDACTED, redact

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

Phase = Literal["connect", "stream", "commit", "sign"]

INSTRUMENTATION_NAME = "realtime_speech"
_MAX_VALUE_CHARS = 128
CLIENT_CLOSED_REQUEST = 499  # the request was cancelled (the caller left) before it was answered
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9._:+/-]*")


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


# --- the pipeline's instruments --------------------------------------------------------------------


@dataclass(frozen=True)
class _Pipeline:
    """The tracer and the metric instruments, made once a pipeline was chosen (`telemetry_setup`)."""

    tracer: Tracer
    propagator: Any
    time_to_first_audio: Any
    duration: Any
    audio_seconds: Any
    requests: Any
    tokens: Any

    @classmethod
    def create(cls) -> _Pipeline:
        """The instruments (on the global providers: the setup's, or the embedding process's)."""
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


@functools.cache
def _instruments_of_pipeline() -> _Pipeline:
    return _Pipeline.create()


def _instruments() -> _Pipeline | None:
    """The instruments once a pipeline is configured; None (at once) without one."""
    return None if telemetry_setup.mode() == "off" else _instruments_of_pipeline()


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
    pipeline = _instruments()
    if pipeline is None:
        return _NO_REQUEST
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    # With the worker's pipeline ("external"), the Functions host records the request and hands its
    # context to the invocation: this span is then a child of the host's request, not a second one.
    host_owns_request = telemetry_setup.mode() == "external"
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
    request = _current.get() if _instruments() is not None else None
    if request is not None:
        request.set(**attributes)


def record_usage(usage: Mapping[str, Any] | None) -> None:
    """Keep the model's token usage for the current request (`SpokenAnswer.usage`)."""
    request = _current.get() if _instruments() is not None else None
    if request is not None:
        request.record_usage(usage)


def phase(name: Phase) -> contextlib.AbstractContextManager[object]:
    """A child span of the current request for one phase: connect, stream, commit or sign."""
    pipeline = _instruments()
    if pipeline is None:
        return _NO_REQUEST
    return _child_span(pipeline, name, {})


def attempt(backend: str, number: int) -> contextlib.AbstractContextManager[object]:
    """A child span for one connection attempt to a backend (inside `phase("connect")`)."""
    pipeline = _instruments()
    if pipeline is None:
        return _NO_REQUEST
    return _child_span(
        pipeline, "connect attempt", {"speech.backend": _safe_value(backend), "speech.attempt": number}
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
