"""The HTTP edge: requests in, JSON or RFC 9457 problem documents out, one log line per request.

Importing it makes every log record of the process redacted (see `logs`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Any
from uuid import uuid4

import azure.functions as func
from pydantic import ValidationError

from .errors import (
    InvalidRequest,
    NotConfigured,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from .logs import install_redaction
from .models import MAX_BODY_BYTES, SpeechRequest, Timeline
from .service import SpeechOutcome, SpeechService
from .settings import SettingsError, get_settings, settings_status

install_redaction()
log = logging.getLogger("realtime_speech")
# The Azure SDK logs every HTTP request and response at INFO; one line per request is ours to write.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

REQUEST_ID_HEADER = "x-request-id"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SAFE_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,128}")
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$", re.IGNORECASE)

_service: SpeechService | None = None
_service_loop: asyncio.AbstractEventLoop | None = None


def speech_service() -> SpeechService:
    """The process-wide service, made on first use (its async clients belong to the running loop)."""
    global _service, _service_loop
    loop = asyncio.get_running_loop()
    if _service is None or _service_loop is not loop:
        try:
            settings = get_settings()
        except SettingsError as exc:
            raise NotConfigured(f"Missing or invalid app settings: {exc}") from None
        _service, _service_loop = SpeechService(settings), loop
    return _service


async def speech(req: func.HttpRequest) -> func.HttpResponse:
    """`POST /api/speech`: text in, a read-only URL to the spoken answer and its transcript out."""
    request_id = _request_id(req)
    timeline = Timeline()
    try:
        speech_request = parse_speech_request(req)
        key = idempotency_key(req)
        outcome = await speech_service().speak(speech_request, request_id, timeline, key)
        response = _success_response(outcome, request_id)
        _log_request(request_id, 200, timeline, outcome=outcome)
    except ServiceError as exc:
        response = problem_response(exc, request_id)
        _log_request(request_id, exc.status, timeline, error=exc.code)
    except Exception:
        log.exception("request_id=%s unexpected failure", request_id)
        response = problem_response(ServiceError("The request failed unexpectedly."), request_id)
        _log_request(request_id, 500, timeline, error="internal-error")
    return response


def parse_speech_request(req: func.HttpRequest) -> SpeechRequest:
    """Validate media type, size and body, in that order; each failure names what is wrong."""
    media_type = (req.headers.get("content-type") or "").split(";", 1)[0].strip()
    if not _JSON_MEDIA_TYPE.match(media_type):
        raise UnsupportedMediaType(
            f"Send the body as application/json (got {media_type[:100] or 'no content type'})."
        )
    body = req.get_body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted.")
    try:
        return SpeechRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(_validation_detail(exc)) from None


def idempotency_key(req: func.HttpRequest) -> str | None:
    """The optional `Idempotency-Key` header, checked to be a safe token."""
    key = req.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return None
    if not _SAFE_IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(
            f"The {IDEMPOTENCY_KEY_HEADER} header must be 1-128 characters of A-Z a-z 0-9 . _ : ~ + / = -."
        )
    return key


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


def problem_response(error: ServiceError, request_id: str) -> func.HttpResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return func.HttpResponse(
        json.dumps(error.problem(request_id)),
        status_code=error.status,
        headers=headers,
        mimetype="application/problem+json",
    )


def _success_response(outcome: SpeechOutcome, request_id: str) -> func.HttpResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if outcome.replayed:
        headers[REPLAYED_HEADER] = "true"
    return func.HttpResponse(
        json.dumps(outcome.result.model_dump(mode="json")),
        status_code=200,
        headers=headers,
        mimetype="application/json",
    )


def _request_id(req: func.HttpRequest) -> str:
    """The caller's `x-request-id` when it is a safe token, else a new one."""
    given = req.headers.get(REQUEST_ID_HEADER) or ""
    return given if _SAFE_REQUEST_ID.fullmatch(given) else uuid4().hex


def _log_request(
    request_id: str,
    status: int,
    timeline: Timeline,
    *,
    outcome: SpeechOutcome | None = None,
    error: str | None = None,
) -> None:
    """One structured line per request: id, outcome, the duration of each phase reached and the
    audio's length; never a secret."""
    fields: dict[str, Any] = {"request_id": request_id, "status": status, "total_ms": timeline.elapsed_ms()}
    fields.update((f"{phase}_ms", ms) for phase, ms in timeline.phases_ms().items())
    if outcome is not None:
        fields["audio_seconds"] = outcome.result.audio.duration_seconds
        fields["response_status"] = outcome.result.status
        if outcome.replayed:
            fields["replayed"] = True
    if error:
        fields["error"] = error
    log.info("speech %s", json.dumps(fields, separators=(",", ":")))


async def health(req: func.HttpRequest) -> func.HttpResponse:
    """`GET /api/health[?probe=true]`: are the settings complete (and, probed, storage and identity up)?"""
    report: dict[str, Any] = {"status": "ok", "settings": settings_status()}
    try:
        get_settings()
    except SettingsError as exc:
        report.update(status="misconfigured", problems=exc.problems)
    if report["status"] == "ok" and req.params.get("probe", "").lower() in ("1", "true", "yes"):
        report["checks"] = await speech_service().probe()
        if any(check != "ok" for check in report["checks"].values()):
            report["status"] = "degraded"
    status = 200 if report["status"] == "ok" else 503
    return func.HttpResponse(json.dumps(report), status_code=status, mimetype="application/json")
