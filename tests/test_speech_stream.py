"""POST /api/speech with `Accept: text/event-stream`: the answer streamed while the model speaks, and
still kept in Blob Storage. Through the dev host (uvicorn) against the stand-ins, over real sockets."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .conftest import SpeechHost
from .speech_client import EventStream, SpeechClient
from .test_speech_api import parse_wav, unique_text
from .test_speech_errors import assert_answers

pytestmark = pytest.mark.asyncio(loop_scope="session")

STARTED_FIELDS = {"type", "request_id", "blob_name", "format", "encoding", "sample_rate", "channels"}
# Per request, not per answer: these differ between two requests for the same text.
PER_REQUEST = {"type", "request_id", "blob_name", "audio_url", "expires_at", "session_id", "response_id"}
STREAM_DEADLINE_SECONDS = 12


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short_stream(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A host whose deadline is just past one keep-alive interval (10 s)."""
    async with speech_host(REALTIME_TIMEOUT_SECONDS=str(STREAM_DEADLINE_SECONDS)) as client:
        yield client


def assert_well_formed(stream: EventStream) -> None:
    """200 as an event stream: `speech.started` first, deltas, then one final event."""
    assert stream.status == 200, stream.problem
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.types[0] == "speech.started"
    assert set(stream.types[1:-1]) <= {"speech.audio.delta", "speech.transcript.delta"}
    assert stream.types[-1] in ("speech.done", "error")


async def test_events_arrive_in_order_and_the_audio_is_the_stored_wav(speech: SpeechClient) -> None:
    text = unique_text("Stream me an answer about")
    stream = await speech.stream({"text": text, "voice": "sage"}, {"x-request-id": "sse-1"})
    assert_well_formed(stream)
    started, done = stream.events[0], stream.last()
    assert started.keys() >= STARTED_FIELDS and started["request_id"] == "sse-1"
    assert (started["format"], started["encoding"], started["sample_rate"]) == ("wav", "pcm_s16le", 24000)
    assert (started["channels"], started["bits_per_sample"]) == (1, 16)
    assert done["type"] == "speech.done" and done["blob_name"] == started["blob_name"]
    assert stream.headers["x-request-id"] == "sse-1" == done["request_id"]

    _, pcm = parse_wav(await speech.download(done["audio_url"]))
    session = await speech.emulator_session(text)
    assert stream.audio() == pcm and hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    deltas = "".join(e["delta"] for e in stream.events if e["type"] == "speech.transcript.delta")
    assert deltas == done["transcript"] == session["transcript"]
    assert done["audio"]["bytes"] == len(pcm) + 44 and done["voice"] == "sage"
    assert started["blob_name"] in await speech.wav_names()


async def test_speech_done_is_the_json_answer(speech: SpeechClient) -> None:
    text = unique_text("Compare the two views of")
    stream = await speech.stream({"text": text})
    status, body, _ = await speech.post({"text": text})
    assert status == 200
    done = stream.last()
    assert done.keys() - {"type"} == body.keys()
    assert {k: v for k, v in done.items() if k not in PER_REQUEST | {"timings_ms"}} == {
        k: v for k, v in body.items() if k not in PER_REQUEST | {"timings_ms"}
    }
    assert done["timings_ms"].keys() == body["timings_ms"].keys()


async def test_the_first_audio_reaches_the_caller_while_the_model_still_speaks(speech: SpeechClient) -> None:
    # The model stalls after part of its audio and ends its answer only when cancelled, which the app
    # does only once the caller has left: audio that reached the caller was sent while the model spoke.
    text = f"[[emulator:stall]] {unique_text()}"
    stream = await speech.stream({"text": text}, read_until="speech.audio.delta")
    assert stream.status == 200 and stream.types[0] == "speech.started", stream.problem
    assert stream.types[-1] == "speech.audio.delta" and stream.audio()
    await speech.assert_sessions_closed()
    session = await speech.emulator_session(text)
    assert session["response_status"] == "cancelled" and "response.cancel" in session["client_event_types"]


@pytest.mark.parametrize(
    ("status", "count", "code", "expected"),
    [
        (429, 4, "upstream-rate-limited", 429),
        (401, 1, "upstream-auth-failed", 502),
        (503, 4, "upstream-unavailable", 503),
    ],
)
async def test_a_refused_handshake_keeps_its_status_before_any_stream(
    speech: SpeechClient, status: int, count: int, code: str, expected: int
) -> None:
    await speech.refuse_handshakes(status, count, retry_after=0 if status != 401 else None)
    try:
        stream = await speech.stream({"text": unique_text()})
    finally:
        await speech.refuse_handshakes(status, 0)
    assert stream.status == expected and not stream.events
    assert stream.headers["Content-Type"].startswith("application/problem+json")
    assert stream.problem["type"] == f"urn:realtime-speech:problem:{code}"
    if expected in (429, 503):
        assert int(stream.headers["Retry-After"]) >= 1
    await assert_answers(speech)


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [("[[emulator:error_mid]]", 502, "upstream-failed"), ("[[emulator:drop]]", 502, "upstream-failed")],
)
async def test_a_failure_after_the_stream_began_is_an_error_event_and_commits_nothing(
    speech: SpeechClient, directive: str, status: int, code: str
) -> None:
    before = await speech.blob_names()
    stream = await speech.stream({"text": f"{directive} {unique_text()}"}, {"x-request-id": "sse-fail"})
    assert_well_formed(stream)
    assert "speech.audio.delta" in stream.types
    error = stream.last()
    assert error["type"] == "error"
    problem = error["error"]
    assert problem["type"] == f"urn:realtime-speech:problem:{code}" and problem["status"] == status
    assert problem["request_id"] == "sse-fail" and problem["title"] and problem["detail"]
    await speech.assert_sessions_closed()
    assert await speech.blob_names() == before
    await assert_answers(speech)


async def test_a_stall_gets_keep_alives_then_the_deadline_error(short_stream: SpeechClient) -> None:
    before = await short_stream.blob_names()
    stream = await short_stream.stream({"text": f"[[emulator:stall]] {unique_text()}"})
    assert_well_formed(stream)
    assert "keep-alive" in stream.comments
    problem = stream.last()["error"]
    assert problem["type"] == "urn:realtime-speech:problem:deadline-exceeded" and problem["status"] == 504
    # Not before the deadline; the upper bound only catches a deadline not kept at all.
    assert STREAM_DEADLINE_SECONDS - 0.5 < stream.arrivals[-1] < 2 * STREAM_DEADLINE_SECONDS
    await short_stream.assert_sessions_closed()
    assert await short_stream.blob_names() == before


async def test_a_caller_who_leaves_cancels_the_model_and_commits_nothing(speech: SpeechClient) -> None:
    # The model stalls mid-answer and never ends it by itself: its session closes only if the app cancels.
    text = f"[[emulator:stall]] {unique_text('Leave while I talk about')}"
    before = await speech.blob_names()
    stream = await speech.stream(
        {"text": text}, {"x-request-id": "sse-leaves"}, read_until="speech.audio.delta"
    )
    assert stream.types[-1] == "speech.audio.delta"
    await speech.assert_sessions_closed()
    session = await speech.emulator_session(text)
    assert "response.cancel" in session["client_event_types"]
    outcome = await speech.request_outcome("sse-leaves")  # logged once the request has ended
    assert (outcome["status"], outcome["error"]) == (499, "client-closed-request")
    assert await speech.blob_names() == before
    await assert_answers(speech)


async def test_a_caller_who_stops_reading_ends_at_the_deadline(short_stream: SpeechClient) -> None:
    """The host's memory meanwhile is measured by the `stream_memory` benchmark (a stalled reader)."""
    client = short_stream
    before = await client.blob_names()
    body = b'{"text": "[[emulator:long seconds=300]] Read me nothing."}'
    request = (
        f"POST /api/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    port = int(client.host_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as caller:
        caller.sendall(request)
        caller.settimeout(10)
        received = bytearray()
        while b"event: speech.audio.delta" not in received:
            chunk = caller.recv(4096)
            assert chunk, "the stream ended before its first audio"
            received += chunk
        # 300 s of audio (19 MB as base64) cannot fit in the socket's buffers: the caller reads no more
        # until the answer has ended at its deadline, which closes its model session.
        await client.assert_sessions_closed()
        while b"event: error" not in received[-65536:]:  # what was buffered, then the deadline's error
            chunk = caller.recv(65536)
            assert chunk, "the stream ended without its error event"
            received += chunk
        assert b"deadline-exceeded" in received[-65536:]
    assert await client.blob_names() == before
    await assert_answers(client)
