"""Pure code of the failure behaviour, without I/O: error mapping, Retry-After, redaction, phases."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from realtime_speech.errors import (
    BackendAccessDenied,
    BackendMisconfigured,
    DeploymentNotFound,
    InvalidRequest,
    ServiceError,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from realtime_speech.http import idempotency_key
from realtime_speech.logs import REDACTED, WITHHELD, install_redaction, redact, redact_record
from realtime_speech.models import SpeechRequest, Timeline
from realtime_speech.realtime import _error_event, connect_error

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZSJ9.c2lnbmF0dXJlLXZhbHVl"


def refused(status: int, retry_after: str | None = None, retry_after_ms: str | None = None) -> InvalidStatus:
    headers = Headers()
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return InvalidStatus(Response(status, "refused", headers))


@pytest.mark.parametrize(
    ("exc", "expected", "retry_after"),
    [
        (refused(401), UpstreamAuthFailed, None),
        (refused(403), BackendAccessDenied, None),
        (refused(404), DeploymentNotFound, None),
        (refused(400), UpstreamFailed, None),
        (refused(429, "0"), UpstreamRateLimited, 0.0),
        (refused(429, "1", "250"), UpstreamRateLimited, 0.25),
        (refused(429, retry_after_ms="1500"), UpstreamRateLimited, 1.5),
        (refused(429, "2", "soon"), UpstreamRateLimited, 2.0),
        (refused(503, "3", "2500"), UpstreamUnavailable, 2.5),
        (refused(429), UpstreamRateLimited, 5.0),
        (refused(503, "7"), UpstreamUnavailable, 7.0),
        (refused(500), UpstreamUnavailable, 5.0),
        (ConnectionRefusedError(111, "refused"), UpstreamUnavailable, 5.0),
        (TimeoutError(), UpstreamUnavailable, 5.0),
    ],
)
def test_handshake_failures_map_to_their_errors(
    exc: Exception, expected: type[ServiceError], retry_after: float | None
) -> None:
    error = connect_error(exc)
    assert type(error) is expected
    assert error.retry_after == retry_after


def test_401_and_403_say_which_side_is_wrong() -> None:
    assert "token" in connect_error(refused(401)).detail
    assert "role" in connect_error(refused(403)).detail


def test_only_a_403_or_404_says_the_backend_is_misconfigured() -> None:
    """A 401 is the app's own credential, the same token for every backend: not one backend's fault."""
    misconfigured = {
        status: isinstance(connect_error(refused(status)), BackendMisconfigured)
        for status in (400, 401, 403, 404)
    }
    assert misconfigured == {400: False, 401: False, 403: True, 404: True}
    assert (connect_error(refused(403)).status, connect_error(refused(403)).code) == (
        502,
        "upstream-auth-failed",
    )
    assert (connect_error(refused(404)).status, connect_error(refused(404)).code) == (502, "upstream-failed")


def test_every_error_a_caller_should_retry_later_carries_retry_after() -> None:
    for error_class in ServiceError.__subclasses__():
        error = error_class("detail")
        assert (error.retry_after is not None) == (error.status in (429, 503)), error_class


@pytest.mark.parametrize(
    ("message", "wait"),
    [
        ("Please retry after 20 seconds.", 20.0),
        ("Rate limit reached. Please try again in 7.5s. Visit ...", 7.5),
        ("Please try again in 350ms.", 0.35),
        ("Rate limit reached.", 5.0),
    ],
)
def test_a_rate_limit_event_passes_on_the_wait_it_asks_for(message: str, wait: float) -> None:
    error = _error_event(SimpleNamespace(code="rate_limit_exceeded", type="tokens", message=message))
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == pytest.approx(wait)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"> Authorization: Bearer {JWT}", JWT),
        ("> Authorization: Bearer plain-api-key-123", "plain-api-key-123"),
        (f"token={JWT} in a repr", JWT),
        ("https://acct.blob.core.windows.net/audio/a.wav?sv=2024&sp=r&sig=abc%2Bdef%3D&se=x", "abc%2Bdef%3D"),
        ("> api-key: k3y-value", "k3y-value"),
        ("{'api-key': 'k3y-value'}", "k3y-value"),
        ('"x-identity-header": "h3ader"', "h3ader"),
        ("POST /api/speech?code=funct10nkey&x=1", "funct10nkey"),
        ("DefaultEndpointsProtocol=https;AccountKey=s3cret==;EndpointSuffix=x", "s3cret=="),
        ('{"access_token": "opaque-token"}', "opaque-token"),
    ],
)
def test_redaction_removes_each_kind_of_secret(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert REDACTED in redacted


def test_redaction_keeps_what_is_not_a_secret() -> None:
    text = (
        'speech {"request_id":"r-1","status":429,"error":"upstream-rate-limited"} '
        "GET /audio/a.wav?sv=2024&sp=r&se=2026 code 1006 signature ok"
    )
    assert redact(text) == text


def test_log_records_are_redacted_with_their_arguments_and_traceback() -> None:
    install_redaction()
    install_redaction()  # once is enough; a second call changes nothing
    stream = io.StringIO()
    logger = logging.getLogger("tests.redaction")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"handshake with Bearer {JWT}")
        except ValueError:
            logger.error("connect failed, api-key=%s", "k3y-value", exc_info=True)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "k3y-value" not in output and JWT not in output
    assert "connect failed, api-key=REDACTED" in output
    assert "ValueError: handshake with Bearer REDACTED" in output and "Traceback" in output


def test_a_record_that_cannot_be_redacted_is_withheld() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("secret-thing",), None)
    redact_record(record)
    assert record.getMessage() == WITHHELD


def test_phases_are_the_durations_between_marks() -> None:
    timeline = Timeline()
    timeline.marks.update(connected=10.0, first_audio=25.5, response_done=100.0, committed=130.0)
    assert timeline.phases_ms() == {"connect": 10.0, "first_audio": 15.5, "stream": 74.5, "commit": 30.0}
    failed = Timeline()
    failed.marks.update(connected=12.0, first_audio=20.0)
    assert failed.phases_ms() == {"connect": 12.0, "first_audio": 8.0}


def test_the_fingerprint_ignores_layout_but_not_content() -> None:
    def fingerprint(body: str) -> str:
        return SpeechRequest.model_validate_json(body).fingerprint()

    assert fingerprint('{"text": "hi", "voice": "ash"}') == fingerprint('{ "voice":"ash","text":"hi" }')
    assert fingerprint('{"text": "hi"}') == fingerprint('{"text": "hi", "voice": null}')
    assert fingerprint('{"text": "hi"}') != fingerprint('{"text": "hi", "voice": "ash"}')
    assert fingerprint('{"text": "hi"}') != fingerprint('{"text": "hi "}')


@pytest.mark.parametrize("key", ["order-1\n", "a b", "", "k" * 129, "ключ"])
def test_a_malformed_idempotency_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        idempotency_key({"Idempotency-Key": key})
