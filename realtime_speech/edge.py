"""What every HTTP surface shares (the `/api/speech` contract and the OpenAI-compatible one): the
process-wide service, bodies read within limits, request ids, the event-stream machinery (keep-alives,
a caller who leaves cancels the answer, a reader who stalls is cut), and the per-request log line and
telemetry span. A surface parses its own requests and renders its own answers and errors.

Importing it makes every log record of the process redacted (see `logs`) and sets telemetry up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import uuid4

from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from . import telemetry, telemetry_setup
from .answer import Answering, Event
from .errors import NotConfigured, PayloadTooLarge, RequestTimeout, ServiceError
from .limits import SessionSlot
from .logs import install_redaction
from .models import SpeechResult, Timeline
from .service import SpeechService
from .settings import SettingsError, get_settings

install_redaction()
telemetry_setup.configure()
log = logging.getLogger("realtime_speech")
# The Azure SDK logs every HTTP request and response at INFO; one line per request is ours to write.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

REQUEST_ID_HEADER = "x-request-id"
EVENT_STREAM = "text/event-stream"
KEEP_ALIVE = b": keep-alive\n\n"
KEEP_ALIVE_SECONDS = 10.0
# A stream whose caller stops reading is cut this long after the request's deadline (the answer
# itself has ended by then, with nothing committed).
STREAM_GRACE_SECONDS = 5.0
CLIENT_CLOSED_REQUEST = telemetry.CLIENT_CLOSED_REQUEST  # a caller who left, as nginx logs it
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$", re.IGNORECASE)

_service: SpeechService | None = None
_service_loop: asyncio.AbstractEventLoop | None = None


async def speech_service() -> SpeechService:
    """The process-wide service, made on first use (its async clients belong to the running loop);
    a service left from another event loop is closed and replaced."""
    global _service, _service_loop
    loop = asyncio.get_running_loop()
    if _service is None or _service_loop is not loop:
        try:
            settings = get_settings()
        except SettingsError as exc:
            raise NotConfigured(f"Missing or invalid app settings: {exc}") from None
        previous, _service, _service_loop = _service, SpeechService.from_settings(settings), loop
        if previous is not None:
            await _close_quietly(previous)
    return _service


async def _close_quietly(service: SpeechService) -> None:
    """Close a service whose loop is gone; its connections may already be unusable."""
    try:
        await service.close()
    except Exception as exc:  # its transports belonged to a closed loop
        log.debug("closing the previous service failed: %s", type(exc).__name__)


async def read_body(req: Request, limit: int) -> bytearray:
    """The request body, refused as soon as it grows past `limit` bytes.

    One growing buffer, handed over as it is: a large one is a single mapping that goes back to the
    system when it is let go, where a list of chunks joined at the end would hold the body twice and
    leave the chunks' memory to the allocator's heap."""
    declared = req.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; at most {limit} are accepted.")
    body = bytearray()
    async for chunk in req.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The body is over {limit} bytes; at most {limit} are accepted.")
    return body


async def read_body_within(req: Request, limit: int, deadline: float, timeout_seconds: float) -> bytearray:
    """`read_body` within the request's deadline (event-loop time): a slow upload ends in 408."""
    try:
        async with asyncio.timeout_at(deadline):
            return await read_body(req, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The body did not arrive within {timeout_seconds:g} s "
            "(REALTIME_TIMEOUT_SECONDS bounds the whole request, the upload included)."
        ) from None


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lowercased, without parameters ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """`application/json` or a `+json` type."""
    return bool(_JSON_MEDIA_TYPE.match(media_type(content_type)))


def request_id(headers: Mapping[str, str]) -> str:
    """The caller's `x-request-id` when it is a safe token, else a new one."""
    given = headers.get(REQUEST_ID_HEADER) or ""
    return given if _SAFE_REQUEST_ID.fullmatch(given) else uuid4().hex


def retry_after_seconds(error: ServiceError) -> int | None:
    """The whole seconds of `Retry-After` for an error a caller should retry later."""
    return None if error.retry_after is None else max(1, math.ceil(error.retry_after))


@dataclass(frozen=True)
class Outcome:
    """Where a request's outcome goes: one structured log line and its telemetry (span and metrics).
    `surface` names the API it came through when it is not `/api/speech`."""

    request_id: str
    timeline: Timeline
    trace: telemetry.RequestTelemetry | telemetry.NoRequest
    surface: str | None = field(default=None)

    @classmethod
    def start(cls, req: Request, route: str, surface: str | None = None) -> Outcome:
        """A request's outcome-to-be: its id (see `request_id`), its timeline and its span."""
        rid = request_id(req.headers)
        trace = telemetry.start_request(req.method, route, req.headers, request_id=rid, url=str(req.url))
        return cls(rid, Timeline(), trace, surface)

    def record(
        self,
        status: int,
        *,
        result: SpeechResult | None = None,
        error: str | None = None,
        replayed: bool = False,
        stream: bool = False,
    ) -> None:
        """Log id, outcome, the duration of each phase reached and the audio's length (never a
        secret), and end the request's telemetry with the same facts."""
        timeline = self.timeline
        fields: dict[str, Any] = {"request_id": self.request_id, "status": status}
        if self.surface:
            fields["surface"] = self.surface
        fields["total_ms"] = timeline.elapsed_ms()
        fields.update((f"{phase}_ms", ms) for phase, ms in timeline.phases_ms().items())
        if result is not None:
            fields["audio_seconds"] = result.audio.duration_seconds
            fields["response_status"] = result.status
            fields["backend"] = result.backend
        if timeline.spare_session is not None:
            fields["spare_session"] = timeline.spare_session
        if replayed:
            fields["replayed"] = True
        if stream:
            fields["stream"] = True
        if error:
            fields["error"] = error
        with self.trace.current():  # correlated, also when a stream ends after the function returned
            log.info("speech %s", json.dumps(fields, separators=(",", ":")))
        self.trace.end(
            status,
            problem_type=error,
            first_audio_ms=timeline.marks.get("first_audio"),
            audio_seconds=result.audio.duration_seconds if result else None,
            response_status=result.status if result else None,
        )
        self.trace.close()


class Held:
    """What a request holds while its handler runs: its session slot, released when the handler ends
    unless a stream has taken it over (the stream releases it when it ends)."""

    slot: SessionSlot | None = None

    def hand_over(self) -> SessionSlot | None:
        slot, self.slot = self.slot, None
        return slot


ErrorResponse = Callable[[ServiceError, str], Response]


async def respond(
    outcome: Outcome, error_response: ErrorResponse, handle: Callable[[Held], Awaitable[Response]]
) -> Response:
    """Run a surface's `handle` and turn what can go wrong into that surface's error responses: a
    caller who left while sending the body (499), a ServiceError (its status), anything else (500,
    logged); each recorded as the request's outcome. The session slot is released on the way out."""
    held = Held()
    try:
        return await handle(held)
    except ClientDisconnect:
        outcome.record(CLIENT_CLOSED_REQUEST, error="client-closed-request")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except ServiceError as exc:
        outcome.record(exc.status, error=exc.code)
        return error_response(exc, outcome.request_id)
    except Exception:
        log.exception("request_id=%s unexpected failure", outcome.request_id)
        outcome.record(500, error="internal-error")
        return error_response(ServiceError("The request failed unexpectedly."), outcome.request_id)
    finally:
        if held.slot is not None:
            held.slot.release()


class StreamRenderer(Protocol):
    """How a surface writes an answer's events (see `Answering.events`) as Server-Sent Events."""

    def frames(self, event: Event) -> Iterable[bytes]:
        """The frames of one event (maybe none); the last event is `speech.done`."""

    def error(self, error: ServiceError, request_id: str) -> bytes:
        """The frame that ends a stream with a failure."""


class EventStream(StreamingResponse):
    """The Server-Sent Events of one answer, as a surface renders them.

    Besides streaming, it watches the connection: a caller who leaves abandons the answer at once
    (the model is cancelled, nothing is committed; logged as 499), a comment is sent after
    `KEEP_ALIVE_SECONDS` of silence, and a stream whose caller stops reading is cut
    `STREAM_GRACE_SECONDS` after the answer's deadline (the answer itself has ended by then, with
    nothing committed). The request's `slot` (MAX_CONCURRENT_SESSIONS) is freed when it ends.
    """

    def __init__(
        self,
        answering: Answering,
        outcome: Outcome,
        renderer: StreamRenderer,
        headers: Mapping[str, str] | None = None,
        slot: SessionSlot | None = None,
    ) -> None:
        sent = {REQUEST_ID_HEADER: outcome.request_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(self._frames(), media_type=EVENT_STREAM, headers={**sent, **(headers or {})})
        self._answering = answering
        self._renderer = renderer
        self._record = outcome
        self._slot = slot
        self._outcome: tuple[int, SpeechResult | None, str | None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        left = asyncio.ensure_future(_until_disconnected(receive))
        try:
            async with asyncio.timeout_at(self._answering.deadline + STREAM_GRACE_SECONDS):
                await asyncio.wait({stream, left}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for task in (stream, left):
                task.cancel()
            await asyncio.gather(stream, left, return_exceptions=True)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            try:
                await self._finish()
            finally:
                if self._slot is not None:
                    self._slot.release()

    async def _frames(self) -> AsyncIterator[bytes]:
        request_id = self._record.request_id
        try:
            async for event in self._answering.events(KEEP_ALIVE_SECONDS):
                if event is None:
                    yield KEEP_ALIVE
                    continue
                if event["type"] == "speech.done":
                    self._outcome = (200, await self._answering.result(), None)
                for frame in self._renderer.frames(event):
                    yield frame
        except ServiceError as exc:
            self._outcome = (exc.status, None, exc.code)
            yield self._renderer.error(exc, request_id)
        except Exception:
            log.exception("request_id=%s unexpected failure while streaming", request_id)
            error = ServiceError("The request failed unexpectedly.")
            self._outcome = (500, None, error.code)
            yield self._renderer.error(error, request_id)

    async def _finish(self) -> None:
        """After the stream: abandon an answer the caller did not wait for, and log the outcome (the
        answer's own failure when the caller never read it, e.g. a deadline)."""
        if self._outcome is None:
            failure = self._answering.failure()
            if isinstance(failure, ServiceError):
                self._outcome = (failure.status, None, failure.code)
            else:
                await self._answering.abandon()
                self._outcome = (CLIENT_CLOSED_REQUEST, None, "client-closed-request")
        status, result, error = self._outcome
        self._record.record(
            status, result=result, error=error, replayed=self._answering.replayed, stream=True
        )


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
