"""The HTTP edge, in the Azure Functions HTTP streams model (a FastAPI `Request` in, a `Response` out).

`POST /api/speech` answers with JSON, or with Server-Sent Events when the caller accepts
`text/event-stream`; every failure is an RFC 9457 problem document (before the stream starts) or an
`error` event (after). This is the only place where errors become responses, and it writes one log
line per request. Importing it makes every log record of the process redacted (see `logs`).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from uuid import uuid4

from azurefunctions.extensions.http.fastapi import (
    HTMLResponse,
    JSONResponse,
    Request,
    Response,
    StreamingResponse,
)
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from . import telemetry
from .answer import Answering
from .audio_input import MEDIA_TYPES as AUDIO_MEDIA_TYPES
from .errors import (
    InvalidRequest,
    NotConfigured,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    UnsupportedMediaType,
)
from .limits import SessionSlot
from .logs import install_redaction
from .models import MAX_BODY_BYTES, SpeechRequest, SpeechResult, Timeline
from .service import SpeechService
from .settings import Settings, SettingsError, get_settings

install_redaction()
telemetry.configure()
log = logging.getLogger("realtime_speech")
# The Azure SDK logs every HTTP request and response at INFO; one line per request is ours to write.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

REQUEST_ID_HEADER = "x-request-id"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
EVENT_STREAM = "text/event-stream"
KEEP_ALIVE_SECONDS = 10.0
# A stream whose caller stops reading is cut this long after the request's deadline (the answer
# itself has ended by then, with nothing committed).
STREAM_GRACE_SECONDS = 5.0
CLIENT_CLOSED_REQUEST = 499
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SAFE_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,128}")
FUNCTION_KEY_PARAMETER = "code"
_AUDIO_MEMBER = re.compile(rb'"audio"\s*:\s*"')
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$", re.IGNORECASE)
# The page carries its own Content-Security-Policy (hashes of its inline script and style); these add
# what a meta tag cannot say.
_PLAYGROUND_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

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


async def warm_up() -> None:
    """The warm-up trigger: make the process-wide service now and let it prepare what a first request
    would wait for (`SpeechService.warm_up`). Bad settings are left for the requests to report."""
    try:
        service = await speech_service()
    except ServiceError as exc:
        log.warning("warm-up skipped: %s", exc)
        return
    await service.warm_up()


async def _close_quietly(service: SpeechService) -> None:
    """Close a service whose loop is gone; its connections may already be unusable."""
    try:
        await service.close()
    except Exception as exc:  # its transports belonged to a closed loop
        log.debug("closing the previous service failed: %s", type(exc).__name__)


async def speech(req: Request) -> Response:
    """`POST /api/speech`: a question in; its spoken answer's URL and transcript out, as JSON or as
    the events of the answer while it is spoken."""
    request_id = _request_id(req.headers)
    trace = telemetry.start_request(
        "POST", "/api/speech", req.headers, request_id=request_id, url=str(req.url)
    )
    outcome = Outcome(request_id, Timeline(), trace)
    slot: SessionSlot | None = None
    try:
        service = await speech_service()
        content_type = req.headers.get("content-type")
        request_options(content_type, req.query_params)  # before the body, whose size must not hide them
        key = idempotency_key(req.headers)
        slot = service.sessions.acquire()  # before any of the body is read
        deadline = asyncio.get_running_loop().time() + service.settings.realtime_timeout_seconds
        speech_request = await read_question(req, content_type, service.settings, deadline)
        events = wants_event_stream(req.headers.get("accept"))
        media_type = _media_type(content_type)
        # a raw audio body's media type; audio in JSON is told from its bytes
        audio_type = media_type if media_type in AUDIO_MEDIA_TYPES else None
        answering = await service.start(
            speech_request,
            request_id,
            outcome.timeline,
            key,
            events=events,
            audio_type=audio_type,
            deadline=deadline,
        )
        del speech_request  # a spoken question's bytes live on only where the answer still needs them
        if events:
            stream, slot = SpeechEventStream(answering, outcome, slot), None  # freed when the stream ends
            return stream
        result = await answering.result()
        outcome.record(200, result=result, replayed=answering.replayed)
        return _success_response(result, request_id, answering.replayed)
    except ClientDisconnect:  # the caller left while sending the body
        outcome.record(CLIENT_CLOSED_REQUEST, error="client-closed-request")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except ServiceError as exc:
        outcome.record(exc.status, error=exc.code)
        return problem_response(exc, request_id)
    except Exception:
        log.exception("request_id=%s unexpected failure", request_id)
        outcome.record(500, error="internal-error")
        return problem_response(ServiceError("The request failed unexpectedly."), request_id)
    finally:
        if slot is not None:
            slot.release()


async def read_question(
    req: Request, content_type: str | None, settings: Settings, deadline: float
) -> SpeechRequest:
    """The request's question. Its body is read within the request's deadline (a slow upload ends in
    408) and is let go once parsed: only the question's own bytes outlive this call."""
    audio_max_bytes = settings.audio_input_max_bytes
    try:
        async with asyncio.timeout_at(deadline):
            body = await read_body(req, body_limit(content_type, audio_max_bytes))
    except TimeoutError:
        raise RequestTimeout(
            f"The body did not arrive within {settings.realtime_timeout_seconds:g} s "
            "(REALTIME_TIMEOUT_SECONDS bounds the whole request, the upload included)."
        ) from None
    return parse_speech_request(content_type, body, req.query_params, audio_max_bytes=audio_max_bytes)


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


def body_limit(content_type: str | None, audio_max_bytes: int) -> int:
    """The largest body worth reading: a raw audio file, or JSON that may carry one in base64."""
    if _media_type(content_type) in AUDIO_MEDIA_TYPES:
        return audio_max_bytes
    return MAX_BODY_BYTES + audio_max_bytes * 4 // 3 + 4


def request_options(content_type: str | None, query: Mapping[str, str] | None) -> dict[str, str]:
    """What the request says besides its body, checked without it: the media type is taken (415), and
    the query parameters are valid options of a raw audio body, or absent with JSON (400). `code`
    (the function key) is always allowed and is never an option."""
    media_type = _media_type(content_type)
    options = {name: value for name, value in (query or {}).items() if name != FUNCTION_KEY_PARAMETER}
    if media_type in AUDIO_MEDIA_TYPES:
        _raw_audio_request(options, b"")  # the options alone; the audio is checked once it is read
        return options
    if not _JSON_MEDIA_TYPE.match(media_type):
        accepted = ", ".join(("application/json", *AUDIO_MEDIA_TYPES))
        got = media_type[:100] or "none"
        raise UnsupportedMediaType(f"The content type must be one of {accepted} (got {got}).")
    if options:
        raise InvalidRequest(
            "Query parameters are only for raw audio bodies; put the options in the JSON body."
        )
    return options


def parse_speech_request(
    content_type: str | None,
    body: bytes | bytearray,
    query: Mapping[str, str] | None = None,
    *,
    audio_max_bytes: int | None = None,
) -> SpeechRequest:
    """Validate media type and options, size and body, in that order; each failure names what is wrong.

    JSON carries every option (and a spoken question as base64 `audio`); a raw audio body carries the
    question and its options come as query parameters. Only JSON without `audio` is held to 64 KiB:
    JSON with `audio` is validated like any other, its audio then held to `audio_max_bytes`.
    """
    options = request_options(content_type, query)
    if _media_type(content_type) in AUDIO_MEDIA_TYPES:
        return _raw_audio_request(options, body)
    request = _large_spoken_question(body) if len(body) > MAX_BODY_BYTES else None
    if request is None:
        if len(body) > MAX_BODY_BYTES and SpeechRequest.json_without_audio(body):
            raise PayloadTooLarge(
                f"The body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted without audio."
            )
        request = _validated(lambda: SpeechRequest.model_validate_json(body))
    if audio_max_bytes is not None and request.audio is not None and len(request.audio) > audio_max_bytes:
        raise PayloadTooLarge(
            f"The audio is {len(request.audio)} bytes; at most {audio_max_bytes} are accepted."
        )
    return request


def _large_spoken_question(body: bytes | bytearray) -> SpeechRequest | None:
    """A large JSON body's valid spoken question, its `audio` decoded from base64 straight out of the
    body: the base64 text never becomes a string of its own (which would hold the audio once more
    while it is decoded). None for anything else (escapes in the value, `audio` named twice or not at
    the top level, not strict base64, another problem), which the plain parse then reports as usual."""
    members = list(_AUDIO_MEMBER.finditer(body))
    if len(members) != 1:
        return None
    start = members[0].end()
    end = body.find(b'"', start)
    if end == -1 or body.find(b"\\", start, end) != -1:
        return None
    try:
        audio = binascii.a2b_base64(memoryview(body)[start:end], strict_mode=True)
        rest = SpeechRequest.model_validate_json(body[:start] + body[end:])  # with "audio": ""
    except (binascii.Error, ValidationError):
        return None
    return rest.model_copy(update={"audio": audio})


def _raw_audio_request(options: Mapping[str, str], audio: bytes | bytearray) -> SpeechRequest:
    return _validated(lambda: SpeechRequest.model_validate({**options, "audio": audio}, strict=False))


def _validated(parse: Callable[[], SpeechRequest]) -> SpeechRequest:
    try:
        return parse()
    except ValidationError as exc:
        raise InvalidRequest(_validation_detail(exc)) from None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The optional `Idempotency-Key` header, checked to be a safe token."""
    key = headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return None
    if not _SAFE_IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(
            f"The {IDEMPOTENCY_KEY_HEADER} header must be 1-128 characters of A-Z a-z 0-9 . _ : ~ + / = -."
        )
    return key


def wants_event_stream(accept: str | None) -> bool:
    """True when the caller accepts `text/event-stream` (with a non-zero quality)."""
    for item in (accept or "").split(","):
        media_type, *params = (part.strip() for part in item.split(";"))
        if media_type.lower() == EVENT_STREAM:
            quality = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
            with contextlib.suppress(ValueError):
                return float(quality) > 0
    return False


def _validation_detail(exc: ValidationError) -> str:
    """One sentence per problem, naming the field; never echoing the input."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["type"] == "json_invalid":
            return f"The body is not valid JSON ({error['ctx'].get('error', 'parse error')})."
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = (
            "is not a known field"
            if error["type"] == "extra_forbidden"
            else error["msg"].removeprefix("Value error, ")
        )
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def problem_response(error: ServiceError, request_id: str) -> Response:
    headers = {REQUEST_ID_HEADER: request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(
        error.problem(request_id),
        status_code=error.status,
        headers=headers,
        media_type="application/problem+json",
    )


def _success_response(result: SpeechResult, request_id: str, replayed: bool) -> Response:
    headers = {REQUEST_ID_HEADER: request_id}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse(result.model_dump(mode="json"), headers=headers)


class SpeechEventStream(StreamingResponse):
    """The Server-Sent Events of one answer.

    Besides streaming, it watches the connection: a caller who leaves abandons the answer at once
    (the model is cancelled, nothing is committed; logged as 499), and a stream whose caller stops
    reading is cut `STREAM_GRACE_SECONDS` after the answer's deadline (the answer itself has ended by
    then, with nothing committed).
    """

    def __init__(self, answering: Answering, outcome: Outcome, slot: SessionSlot | None = None) -> None:
        headers = {
            REQUEST_ID_HEADER: outcome.request_id,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
        if answering.replayed:
            headers[REPLAYED_HEADER] = "true"
        super().__init__(self._frames(), media_type=EVENT_STREAM, headers=headers)
        self._answering = answering
        self._request_id = outcome.request_id
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
        events = self._answering.events(KEEP_ALIVE_SECONDS)
        try:
            async for event in events:
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                if event["type"] == "speech.done":
                    self._outcome = (200, await self._answering.result(), None)
                yield _frame(event)
        except ServiceError as exc:
            self._outcome = (exc.status, None, exc.code)
            yield _frame({"type": "error", "error": exc.problem(self._request_id)})
        except Exception:
            log.exception("request_id=%s unexpected failure while streaming", self._request_id)
            error = ServiceError("The request failed unexpectedly.")
            self._outcome = (500, None, error.code)
            yield _frame({"type": "error", "error": error.problem(self._request_id)})

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


def _frame(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event: its type as the event name, the whole event as JSON data."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def _request_id(headers: Mapping[str, str]) -> str:
    """The caller's `x-request-id` when it is a safe token, else a new one."""
    given = headers.get(REQUEST_ID_HEADER) or ""
    return given if _SAFE_REQUEST_ID.fullmatch(given) else uuid4().hex


@dataclass(frozen=True)
class Outcome:
    """Where a request's outcome goes: one structured log line and its telemetry (span and metrics)."""

    request_id: str
    timeline: Timeline
    trace: telemetry.RequestTelemetry | telemetry.NoRequest

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


async def playground(req: Request) -> Response:
    """`GET /api/playground`: a page to try the API in a browser, when PLAYGROUND_ENABLED is true."""
    request_id = _request_id(req.headers)
    try:
        enabled = get_settings().playground_enabled
    except SettingsError as exc:
        return problem_response(NotConfigured(f"Missing or invalid app settings: {exc}"), request_id)
    if not enabled:
        return problem_response(NotFound("The playground is off (PLAYGROUND_ENABLED)."), request_id)
    return HTMLResponse(_playground_page(), headers=_PLAYGROUND_HEADERS)


def _playground_page() -> str:
    return resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
