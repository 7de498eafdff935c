"""The HTTP edge, in the Azure Functions HTTP streams model (a FastAPI `Request` in, a `Response` out).

`POST /api/speech` answers with JSON, or with Server-Sent Events when the caller accepts
`text/event-stream`; every failure is an RFC 9457 problem document (before the stream starts) or an
`error` event (after). What the surfaces share (body limits, request ids, the event-stream machinery,
the log line and the request span) is in `edge`. Also the warm-up and `GET /api/playground`.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from azurefunctions.extensions.http.fastapi import HTMLResponse, JSONResponse, Request, Response
from pydantic import ValidationError

from .audio_input import MEDIA_TYPES as AUDIO_MEDIA_TYPES
from .edge import (
    EVENT_STREAM,
    REQUEST_ID_HEADER,
    EventStream,
    Held,
    Outcome,
    is_json,
    media_type,
    read_body_within,
    request_id,
    respond,
    retry_after_seconds,
    speech_service,
)
from .errors import (
    InvalidRequest,
    NotConfigured,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from .models import MAX_BODY_BYTES, SpeechRequest, SpeechResult
from .settings import Settings, SettingsError, get_settings

log = logging.getLogger("realtime_speech")

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_SAFE_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,128}")
FUNCTION_KEY_PARAMETER = "code"
_AUDIO_MEMBER = re.compile(rb'"audio"\s*:\s*"')
# The page carries its own Content-Security-Policy (hashes of its inline script and style); these add
# what a meta tag cannot say.
_PLAYGROUND_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The microphone for spoken turns, from this page only; nothing else the page does not use.
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=(), usb=()",
}


async def warm_up() -> None:
    """The warm-up trigger: make the process-wide service now and let it prepare what a first request
    would wait for (`SpeechService.warm_up`). Bad settings are left for the requests to report."""
    try:
        service = await speech_service()
    except ServiceError as exc:
        log.warning("warm-up skipped: %s", exc)
        return
    await service.warm_up()


async def speech(req: Request) -> Response:
    """`POST /api/speech`: a question in; its spoken answer's URL and transcript out, as JSON or as
    the events of the answer while it is spoken."""
    outcome = Outcome.start(req, "/api/speech")

    async def handle(held: Held) -> Response:
        service = await speech_service()
        content_type = req.headers.get("content-type")
        request_options(content_type, req.query_params)  # before the body, whose size must not hide them
        key = idempotency_key(req.headers)
        held.slot = service.sessions.acquire()  # before any of the body is read
        deadline = asyncio.get_running_loop().time() + service.settings.realtime_timeout_seconds
        speech_request = await read_question(req, content_type, service.settings, deadline)
        events = wants_event_stream(req.headers.get("accept"))
        body_type = media_type(content_type)
        # a raw audio body's media type; audio in JSON is told from its bytes
        audio_type = body_type if body_type in AUDIO_MEDIA_TYPES else None
        answering = await service.start(
            speech_request,
            outcome.request_id,
            outcome.timeline,
            key,
            events=events,
            audio_type=audio_type,
            deadline=deadline,
        )
        del speech_request  # a spoken question's bytes live on only where the answer still needs them
        if events:
            headers = _replayed_header(answering.replayed)
            # it records the outcome and frees the slot when the stream ends
            return EventStream(answering, outcome, SPEECH_EVENTS, headers, held.hand_over())
        result = await answering.result()
        outcome.record(200, result=result, replayed=answering.replayed)
        return _success_response(result, outcome.request_id, answering.replayed)

    return await respond(outcome, problem_response, handle)


async def read_question(
    req: Request, content_type: str | None, settings: Settings, deadline: float
) -> SpeechRequest:
    """The request's question. Its body is read within the request's deadline (a slow upload ends in
    408) and is let go once parsed: only the question's own bytes outlive this call."""
    audio_max_bytes = settings.audio_input_max_bytes
    limit = body_limit(content_type, audio_max_bytes)
    body = await read_body_within(req, limit, deadline, settings.realtime_timeout_seconds)
    return parse_speech_request(content_type, body, req.query_params, audio_max_bytes=audio_max_bytes)


def body_limit(content_type: str | None, audio_max_bytes: int) -> int:
    """The largest body worth reading: a raw audio file, or JSON that may carry one in base64."""
    if media_type(content_type) in AUDIO_MEDIA_TYPES:
        return audio_max_bytes
    return MAX_BODY_BYTES + audio_max_bytes * 4 // 3 + 4


def request_options(content_type: str | None, query: Mapping[str, str] | None) -> dict[str, str]:
    """What the request says besides its body, checked without it: the media type is taken (415), and
    the query parameters are valid options of a raw audio body, or absent with JSON (400). `code`
    (the function key) is always allowed and is never an option."""
    body_type = media_type(content_type)
    options = {name: value for name, value in (query or {}).items() if name != FUNCTION_KEY_PARAMETER}
    if body_type in AUDIO_MEDIA_TYPES:
        _raw_audio_request(options, b"")  # the options alone; the audio is checked once it is read
        return options
    if not is_json(content_type):
        accepted = ", ".join(("application/json", *AUDIO_MEDIA_TYPES))
        got = body_type[:100] or "none"
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
    if media_type(content_type) in AUDIO_MEDIA_TYPES:
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
    retry_after = retry_after_seconds(error)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(
        error.problem(request_id),
        status_code=error.status,
        headers=headers,
        media_type="application/problem+json",
    )


def _success_response(result: SpeechResult, request_id: str, replayed: bool) -> Response:
    headers = {REQUEST_ID_HEADER: request_id, **_replayed_header(replayed)}
    return JSONResponse(result.model_dump(mode="json"), headers=headers)


def _replayed_header(replayed: bool) -> dict[str, str]:
    return {REPLAYED_HEADER: "true"} if replayed else {}


class _SpeechEvents:
    """`/api/speech`'s events: each event as it is, named by its type; a failure as an `error` event
    carrying the problem."""

    def frames(self, event: dict[str, Any]) -> Iterable[bytes]:
        return (_frame(event),)

    def error(self, error: ServiceError, request_id: str) -> bytes:
        return _frame({"type": "error", "error": error.problem(request_id)})


SPEECH_EVENTS = _SpeechEvents()


def _frame(event: dict[str, Any]) -> bytes:
    """One Server-Sent Event: its type as the event name, the whole event as JSON data."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def playground(req: Request) -> Response:
    """`GET /api/playground`: a page to try the API in a browser, when PLAYGROUND_ENABLED is true."""
    rid = request_id(req.headers)
    try:
        enabled = get_settings().playground_enabled
    except SettingsError as exc:
        return problem_response(NotConfigured(f"Missing or invalid app settings: {exc}"), rid)
    if not enabled:
        return problem_response(NotFound("The playground is off (PLAYGROUND_ENABLED)."), rid)
    return HTMLResponse(_playground_page(), headers=_PLAYGROUND_HEADERS)


def _playground_page() -> str:
    return resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
