"""README promises checked end to end, through a function host against the stand-ins: idempotency for
event streams and spoken questions, the media types taken, the event stream's headers and keep-alive,
the log line's `replayed`, a failed input transcription, and each app setting's effect as the model
emulator, Blob Storage and the signed URLs see it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import pytest_asyncio

from devtools.process import free_port
from devtools.realtime_emulator import synthesize
from devtools.stack import Stack
from devtools.tcp_proxy import TcpProxy
from realtime_speech.wav import WAV_HEADER_BYTES

from .conftest import SpeechHost
from .speech_client import SpeechClient, assert_problem
from .test_audio_input import _reference_pcm as model_pcm
from .test_speech_api import parse_wav, unique_text
from .test_speech_audio_in import (
    _resampled,
    _written,
    assert_question_kept,
    emulator_session,
    post_body,
    received_audio,
    spoken_answer,
)
from .test_speech_formats import sas_params

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNSIGNED = {"audio_url", "expires_at", "input_audio_url"}


def new_key() -> str:
    return f"promise-{uuid4()}"


def without_urls(body: dict) -> dict:
    return {name: value for name, value in body.items() if name not in UNSIGNED | {"type"}}


# --- Server-Sent Events ----------------------------------------------------------------------------------


async def test_an_event_stream_is_not_buffered_by_proxies(speech: SpeechClient) -> None:
    stream = await speech.stream({"text": unique_text()})
    assert stream.status == 200 and stream.types[-1] == "speech.done"
    assert stream.headers["X-Accel-Buffering"] == "no"
    assert stream.headers["Cache-Control"] == "no-cache"


async def test_a_repeated_key_with_an_event_stream_is_one_speech_done_and_logged_as_replayed(
    speech: SpeechClient,
) -> None:
    text, key = unique_text("Stream it twice:"), new_key()
    first_id, again_id = f"sse-first-{uuid4().hex}", f"sse-again-{uuid4().hex}"
    first = await speech.stream({"text": text}, {"Idempotency-Key": key, "x-request-id": first_id})
    again = await speech.stream({"text": text}, {"Idempotency-Key": key, "x-request-id": again_id})
    assert first.status == again.status == 200
    assert first.types[0] == "speech.started" and "Idempotent-Replayed" not in first.headers
    assert again.types == ["speech.done"]
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["x-request-id"] == again_id
    assert again.headers["X-Accel-Buffering"] == "no"
    assert without_urls(again.last()) == without_urls(first.last())
    assert again.last()["request_id"] == first_id  # the body is the first answer
    assert await speech.download(again.last()["audio_url"]) == await speech.download(
        first.last()["audio_url"]
    )
    assert sum(s["user_text"] == text for s in await speech.emulator_sessions()) == 1
    first_line, again_line = await speech.request_outcome(first_id), await speech.request_outcome(again_id)
    assert "replayed" not in first_line and first_line["stream"] is True
    assert again_line["replayed"] is True and again_line["stream"] is True and again_line["status"] == 200


async def test_a_replayed_json_answer_is_logged_as_replayed(speech: SpeechClient) -> None:
    body, key = {"text": unique_text()}, {"Idempotency-Key": new_key()}
    first_id, again_id = f"json-first-{uuid4().hex}", f"json-again-{uuid4().hex}"
    assert (await speech.post(body, first_id, key))[0] == 200
    assert (await speech.post(body, again_id, key))[2]["Idempotent-Replayed"] == "true"
    first_line, again_line = await speech.request_outcome(first_id), await speech.request_outcome(again_id)
    assert "replayed" not in first_line and "stream" not in first_line
    assert again_line["replayed"] is True and again_line["status"] == 200


# --- spoken questions ------------------------------------------------------------------------------------


async def spoken_sessions(client: SpeechClient, heard: str) -> int:
    """Sessions that heard `heard` in input audio (a text question's session has none)."""
    return sum(s["input_audio"] != [] and s["user_text"] == heard for s in await client.emulator_sessions())


async def test_a_spoken_question_with_a_repeated_key_is_replayed_and_other_audio_is_a_422(
    speech: SpeechClient,
) -> None:
    said, wav = await spoken_answer(speech)
    _, other_wav = await spoken_answer(speech)
    key = {"Idempotency-Key": new_key()}
    status, first, headers = await speech.post_raw(wav, "audio/wav", **key)
    assert status == 200, first
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await speech.post_raw(wav, "audio/wav", **key)
    assert status == 200, again
    assert headers["Idempotent-Replayed"] == "true"
    assert without_urls(again) == without_urls(first)
    assert await speech.download(again["input_audio_url"]) == wav
    as_json = {"audio": base64.b64encode(wav).decode()}  # the same question, sent another way
    status, in_json, headers = await speech.post(as_json, headers=key)
    assert status == 200 and headers["Idempotent-Replayed"] == "true", in_json
    assert in_json["blob_name"] == first["blob_name"]
    assert await spoken_sessions(speech, said["transcript"]) == 1

    blobs = await speech.blob_names()
    sessions = len(await speech.emulator_sessions())
    problem = assert_problem(
        await speech.post_raw(other_wav, "audio/wav", **key), 422, "idempotency-key-reused"
    )
    assert "different request" in problem["detail"]
    assert await speech.blob_names() == blobs
    assert len(await speech.emulator_sessions()) == sessions


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
async def test_a_raw_ogg_body_is_a_spoken_question(speech: SpeechClient, subtype: str) -> None:
    text = unique_text("Ogg")
    spoken = _written(_resampled(synthesize(text).pcm, 48_000), 48_000, "OGG", subtype)
    status, answer, _ = await post_body(speech, spoken, "audio/ogg")
    assert status == 200, answer
    expected = model_pcm(spoken).tobytes()
    assert await received_audio(speech, answer["session_id"]) == expected
    assert answer["input_transcript"] == answer["transcript"] == text  # heard through the lossy codec
    assert answer["input_blob_name"].endswith(".question.ogg")
    await assert_question_kept(speech, answer, spoken, "audio/ogg", len(expected) / 48_000)


@pytest.mark.parametrize("as_events", [False, True], ids=["json", "events"])
async def test_a_failed_input_transcription_answers_with_reason_failed(
    speech: SpeechClient, as_events: bool
) -> None:
    _, wav = await spoken_answer(speech)
    body = {"audio": base64.b64encode(wav).decode(), "instructions": "[[emulator:transcript_failed]] Hi."}
    if as_events:
        stream = await speech.stream(body)
        assert stream.status == 200 and stream.types[-1] == "speech.done", stream.problem
        assert "speech.input_transcript" not in stream.types
        answer = stream.last()
    else:
        status, answer, _ = await speech.post(body)
        assert status == 200, answer
    assert answer["input_transcript"] is None and answer["input_transcript_reason"] == "failed"
    assert answer["status"] == "completed" and answer["transcript"]
    session = await emulator_session(speech, answer)
    assert session["scenario"] == "transcript_failed" and session["input_audio"][0]["transcript"] is None
    record = await speech.read_json_blob(answer["blob_name"].removesuffix(".wav") + ".json")
    assert (record["input_transcript"], record["input_transcript_reason"]) == (None, "failed")


# --- media types --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/vnd.example+json", "application/merge-patch+json; charset=utf-8"]
)
async def test_a_structured_json_media_type_is_json(speech: SpeechClient, content_type: str) -> None:
    text = unique_text()
    status, body, _ = await speech.post_raw(json.dumps({"text": text}).encode(), content_type)
    assert status == 200, body
    assert body["transcript"] == (await speech.emulator_session(text))["transcript"]


# --- app settings -------------------------------------------------------------------------------------------

SPEED = 1.25
MAX_OUTPUT_TOKENS = 40
INSTRUCTIONS = "Answer as a lighthouse keeper would."
MP3_KBPS = 96
BLOCK_BYTES = 64 * 1024
URL_TTL_MINUTES = 7
STREAM_DEADLINE_SECONDS = 13  # room for one keep-alive (10 s) during a stall
KEEP_ALIVE_SECONDS = 10
# MPEG-2 Layer III bitrates (kbps) by the frame header's index
MPEG2_L3_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def configured(stack: Stack, speech_host: SpeechHost) -> AsyncIterator[tuple[SpeechClient, TcpProxy]]:
    """One host with every setting below changed from its default, and a pool of two: `down` (first
    priority, a proxy to nothing) and `up` (the stack's emulator)."""
    async with TcpProxy(free_port()) as down:
        backends = [
            {"name": "down", "endpoint": f"http://127.0.0.1:{down.port}", "priority": 1},
            {"name": "up", "endpoint": stack.openai_endpoint, "priority": 2},
        ]
        async with speech_host(
            AZURE_OPENAI_BACKENDS=json.dumps(backends),
            AZURE_OPENAI_CIRCUIT_FAILURES="1",
            AZURE_OPENAI_CIRCUIT_COOLDOWN_SECONDS="3600",
            REALTIME_SPEED=str(SPEED),
            REALTIME_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT_TOKENS),
            REALTIME_INSTRUCTIONS=INSTRUCTIONS,
            REALTIME_TIMEOUT_SECONDS=str(STREAM_DEADLINE_SECONDS),
            AUDIO_MP3_BITRATE_KBPS=str(MP3_KBPS),
            AUDIO_BLOCK_SIZE_BYTES=str(BLOCK_BYTES),
            AUDIO_URL_TTL_MINUTES=str(URL_TTL_MINUTES),
        ) as client:
            yield client, down


async def answered(client: SpeechClient, body: dict) -> dict:
    status, answer, _ = await client.post(body)
    assert status == 200, answer
    return answer


async def test_circuit_failures_setting_opens_the_circuit_after_one_failure(
    configured: tuple[SpeechClient, TcpProxy],
) -> None:
    client, down = configured
    answers = [await answered(client, {"text": unique_text(), "max_output_tokens": 4096}) for _ in range(3)]
    assert [answer["backend"] for answer in answers] == ["up"] * 3
    assert down.stats()["accepted"] == 1  # the first failure opened it (3 in a row by default)


async def test_speed_setting_is_the_default_speed(configured: tuple[SpeechClient, TcpProxy]) -> None:
    client, _ = configured
    text = unique_text("Speak at the configured speed about")
    default = await answered(client, {"text": text, "max_output_tokens": 4096})
    normal = await answered(client, {"text": text, "max_output_tokens": 4096, "speed": 1.0})
    speeds = sorted(s["speed"] for s in await client.emulator_sessions() if s["user_text"] == text)
    assert speeds == [1.0, SPEED]
    ratio = normal["audio"]["duration_seconds"] / default["audio"]["duration_seconds"]
    assert ratio == pytest.approx(SPEED, rel=0.02)


async def test_max_output_tokens_setting_cuts_answers_unless_the_request_says_otherwise(
    configured: tuple[SpeechClient, TcpProxy],
) -> None:
    client, _ = configured
    text = unique_text("A long story, please, about the sea and")
    cut = await answered(client, {"text": text})
    assert (cut["status"], cut["status_reason"]) == ("incomplete", "max_output_tokens")
    assert cut["usage"]["output_tokens"] <= MAX_OUTPUT_TOKENS
    whole = await answered(client, {"text": text, "max_output_tokens": 4096})
    assert whole["status"] == "completed" and whole["usage"]["output_tokens"] > MAX_OUTPUT_TOKENS
    limits = sorted(
        s["session"]["max_output_tokens"] for s in await client.emulator_sessions() if s["user_text"] == text
    )
    assert limits == [MAX_OUTPUT_TOKENS, 4096]


async def test_instructions_setting_is_the_default_instructions(
    configured: tuple[SpeechClient, TcpProxy],
) -> None:
    client, _ = configured
    text = unique_text()
    await answered(client, {"text": text})
    await answered(client, {"text": text, "instructions": "Be brief."})
    sent = sorted(
        s["session"]["instructions"] for s in await client.emulator_sessions() if s["user_text"] == text
    )
    assert sent == sorted([INSTRUCTIONS, "Be brief."])


def mp3_frame_bitrates(mp3: bytes) -> list[int]:
    """The bitrate (kbps) of each MPEG-2 Layer III frame at 24 kHz, walking the file frame by frame."""
    bitrates, position = [], 0
    while position < len(mp3):
        header = mp3[position : position + 4]
        assert header[0] == 0xFF and header[1] & 0xFE == 0xF2, f"no MPEG-2 Layer III frame at {position}"
        assert (header[2] >> 2) & 0b11 == 1, "not 24 kHz"
        kbps = MPEG2_L3_KBPS[header[2] >> 4]
        bitrates.append(kbps)
        position += 72 * kbps * 1000 // 24_000 + ((header[2] >> 1) & 1)
    assert position == len(mp3)
    return bitrates


async def test_mp3_bitrate_setting_is_the_bitrate_of_every_frame(
    configured: tuple[SpeechClient, TcpProxy],
) -> None:
    client, _ = configured
    answer = await answered(client, {"text": unique_text(), "format": "mp3"})
    assert answer["audio"]["bitrate_kbps"] == MP3_KBPS
    bitrates = mp3_frame_bitrates(await client.download(answer["audio_url"]))
    assert len(bitrates) > 1 and set(bitrates) == {MP3_KBPS}


async def test_block_size_setting_bounds_the_staged_blocks(configured: tuple[SpeechClient, TcpProxy]) -> None:
    """Six seconds of PCM (288,000 bytes) are one Put Blob with the default 1 MiB blocks; with
    64 KiB blocks they are staged as several blocks of at most 64 KiB (plus one audio delta)."""
    client, _ = configured
    text = unique_text("[[emulator:long seconds=6]] Tell me about")
    answer = await answered(client, {"text": text, "max_output_tokens": 4096})
    header, *blocks = await client.committed_blocks(answer["blob_name"])
    assert header == WAV_HEADER_BYTES and sum(blocks) == 6 * 48_000
    assert len(blocks) >= 4 and max(blocks) <= BLOCK_BYTES + 12_000  # a delta is at most 250 ms
    _, pcm = parse_wav(await client.download(answer["audio_url"]))
    assert hashlib.sha256(pcm).hexdigest() == (await client.emulator_session(text))["audio_sha256"]


async def test_url_ttl_setting_is_the_lifetime_of_the_urls(configured: tuple[SpeechClient, TcpProxy]) -> None:
    client, _ = configured
    before = datetime.now(UTC).replace(microsecond=0)
    answer = await answered(client, {"text": unique_text()})
    after = datetime.now(UTC)
    expiry = datetime.fromisoformat(sas_params(answer["audio_url"])["se"].replace("Z", "+00:00"))
    assert expiry == datetime.fromisoformat(answer["expires_at"])
    assert before + timedelta(minutes=URL_TTL_MINUTES) <= expiry <= after + timedelta(minutes=URL_TTL_MINUTES)


async def test_a_keep_alive_comes_after_ten_seconds_without_an_event(
    configured: tuple[SpeechClient, TcpProxy],
) -> None:
    """The model stalls: audio, then silence until the deadline (13 s), so exactly one keep-alive
    comes, after the last delta and before the deadline's error event, ten seconds after that delta."""
    client, _ = configured
    stream = await client.stream({"text": f"[[emulator:stall]] {unique_text()}", "max_output_tokens": 4096})
    assert stream.status == 200 and stream.types[-1] == "error", stream.problem
    assert stream.last()["error"]["status"] == 504
    assert "speech.audio.delta" in stream.types
    assert stream.comments == ["keep-alive"]
    [(events_before, arrived)] = stream.comments_at
    assert events_before == len(stream.events) - 1  # after every delta, before the error
    assert arrived - stream.arrivals[events_before - 1] >= KEEP_ALIVE_SECONDS - 1  # one second of slack
