"""Bad input, generated (hypothesis) and hand-written: always a 4xx problem document, never a 5xx,
a traceback, a model session or a blob.

The strategies build requests that are invalid by construction (each says why), so no example can
turn into a real, paid request.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_speech.errors import ServiceError
from realtime_speech.http import parse_speech_request, problem_response
from realtime_speech.models import (
    MAX_BODY_BYTES,
    MAX_INSTRUCTIONS_CHARS,
    MAX_TEXT_CHARS,
    VOICES,
    SpeechRequest,
)

from .speech_client import SpeechClient, assert_problem
from .test_speech_api import unique_text

FIELDS = ("text", "instructions", "voice")
SAFE_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,128}")
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=140)
WHITESPACE = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003\u3000"), min_size=1, max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
GOOD_TEXT = st.text(min_size=1, max_size=40).filter(str.strip)


@dataclass(frozen=True)
class BadRequest:
    """A request that must be refused with one of `statuses`, and why."""

    why: str
    body: bytes
    statuses: tuple[int, ...]
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _invalid(why: str, value: object, statuses: tuple[int, ...] = (400,)) -> BadRequest:
    return BadRequest(why, _json(value), statuses)


def _without_text(raw: bytes) -> bool:
    """True unless `raw` is a JSON object with a `text` member (without one, no body is valid)."""
    try:
        return not (isinstance(parsed := json.loads(raw), dict) and "text" in parsed)
    except (ValueError, RecursionError):
        return True


bad_requests = st.one_of(
    st.builds(
        lambda text, extra: _invalid("unknown field", {"text": text, **extra}),
        GOOD_TEXT,
        st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), JSON_VALUES, min_size=1),
    ),
    st.builds(
        lambda members: _invalid("no text", members),
        st.dictionaries(st.sampled_from(FIELDS[1:]) | st.text(max_size=8), JSON_VALUES).filter(
            lambda members: "text" not in members
        ),
    ),
    st.builds(
        lambda value: _invalid("not an object", value), JSON_VALUES.filter(lambda v: not isinstance(v, dict))
    ),
    st.builds(
        lambda value: _invalid("text of the wrong type", {"text": value}),
        JSON_VALUES.filter(lambda v: not isinstance(v, str)),
    ),
    st.builds(lambda blank: _invalid("blank text", {"text": blank}), WHITESPACE),
    st.builds(
        lambda char, extra: _invalid("text too long", {"text": char * (MAX_TEXT_CHARS + extra)}, {400, 413}),
        st.characters(exclude_categories=("Cs",)),
        st.integers(1, 12_000),
    ),
    st.builds(
        lambda text, voice: _invalid("unknown voice", {"text": text, "voice": voice}),
        GOOD_TEXT,
        (st.text(max_size=12) | JSON_VALUES).filter(lambda v: v is not None and v not in VOICES),
    ),
    st.builds(
        lambda text, instructions: _invalid("bad instructions", {"text": text, "instructions": instructions}),
        GOOD_TEXT,
        WHITESPACE
        | st.integers(1, 100).map(lambda n: "x" * (MAX_INSTRUCTIONS_CHARS + n))
        | JSON_VALUES.filter(lambda v: v is not None and not isinstance(v, str)),
    ),
    st.builds(
        lambda raw: BadRequest("not JSON, or no text member", raw, (400,)),
        st.binary(max_size=300).filter(_without_text),
    ),
    st.builds(
        lambda content_type: BadRequest("content type not JSON", _json({"text": "hi"}), (415,), content_type),
        st.none()
        | st.sampled_from(["text/plain", "application/xml", "multipart/form-data", "text/json"])
        | st.from_regex(r"[a-z]{1,12}/[a-z0-9.+-]{1,16}", fullmatch=True).filter(
            lambda t: not t.endswith("json")
        ),
    ),
    st.builds(
        lambda key: BadRequest(
            "malformed Idempotency-Key", _json({"text": "hi"}), (400,), headers={"Idempotency-Key": key}
        ),
        HEADER_TEXT.filter(lambda key: not SAFE_KEY.fullmatch(key.strip(" \t"))),
    ),
    st.builds(
        lambda padding: BadRequest("body too large", b'{"text": "hi"}' + b" " * padding, (413,)),
        st.integers(MAX_BODY_BYTES, 2 * MAX_BODY_BYTES),
    ),
)


@given(body=st.binary(max_size=2000), content_type=st.none() | HEADER_TEXT)
@settings(max_examples=400, deadline=None)
def test_parsing_anything_gives_a_request_or_a_4xx_problem(body: bytes, content_type: str | None) -> None:
    try:
        assert isinstance(parse_speech_request(content_type, body), SpeechRequest)
    except ServiceError as error:
        response = problem_response(error, "req")
        assert response.status_code in (400, 413, 415)
        assert "Traceback" not in bytes(response.body).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def untouched(speech: SpeechClient) -> AsyncIterator[SpeechClient]:
    """The `speech` host; after this module: no blob written, no model session opened, and a normal
    request still answered."""
    blobs = await speech.blob_names()
    sessions = (await speech.emulator_stats())["connections_total"]
    yield speech
    assert (await speech.emulator_stats())["connections_total"] == sessions
    assert await speech.blob_names() == blobs
    status, body, _ = await speech.post({"text": unique_text()})
    assert status == 200, body


async def assert_refused(client: SpeechClient, bad: BadRequest) -> None:
    response = await client.post_raw(bad.body, bad.content_type, **bad.headers)
    status, problem, _ = response
    assert status in bad.statuses, (bad.why, problem)
    code = {400: "invalid-request", 413: "payload-too-large", 415: "unsupported-media-type"}[status]
    assert_problem(response, status, code)
    assert 'File "' not in problem["detail"]


@given(bad=bad_requests)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_generated_bad_requests_are_refused_through_the_host(
    untouched: SpeechClient, bad: BadRequest
) -> None:
    await assert_refused(untouched, bad)


HAND_WRITTEN = [
    BadRequest("invalid UTF-8", b'{"text": "\xff\xfe"}', (400,)),
    BadRequest("lone surrogate escape", b'{"text": "\\ud800"}', (400,)),
    BadRequest("byte order mark", b'\xef\xbb\xbf{"text": "hi"}', (400,)),
    BadRequest("nested too deep", b"[" * 10_000 + b"]" * 10_000, (400,)),
    BadRequest("NaN", b'{"text": NaN}', (400,)),
    BadRequest("huge number", b'{"text": 1e999}', (400,)),
    BadRequest("empty body", b"", (400,)),
    BadRequest("only whitespace", b" \n\t ", (400,)),
    BadRequest("null text", b'{"text": null}', (400,)),
    BadRequest("voice in capitals", b'{"text": "hi", "voice": "Alloy"}', (400,)),
    BadRequest("trailing garbage", b'{"text": "hi"} {}', (400,)),
    BadRequest("form body", b"text=hi", (415,), "application/x-www-form-urlencoded"),
    BadRequest("JSON-P is not JSON", b'{"text": "hi"}', (415,), "application/jsonp"),
    BadRequest("no content type", b'{"text": "hi"}', (415,), None),
    BadRequest("one byte too many", b'{"text": "hi"}'.ljust(MAX_BODY_BYTES + 1), (413,)),
    BadRequest("key too long", b'{"text": "hi"}', (400,), headers={"Idempotency-Key": "k" * 129}),
]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("bad", HAND_WRITTEN, ids=[bad.why for bad in HAND_WRITTEN])
async def test_hand_written_bad_requests_are_refused(untouched: SpeechClient, bad: BadRequest) -> None:
    await assert_refused(untouched, bad)
