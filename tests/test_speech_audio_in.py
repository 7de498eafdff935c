"""Spoken questions end to end: raw audio bodies and base64 in JSON through the dev host, what the model
emulator received (converted to 24 kHz PCM16, or G.711 passed through), the question kept beside its
answer, the bad-audio corpus refused before any session, the request's shape, and the input
transcript's grace period."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
import soxr

from devtools.realtime_emulator import synthesize
from realtime_speech.settings import Settings

from .audio_corpus import BadAudio, BadSpokenRequest, bad_inputs, bad_requests
from .conftest import SpeechHost
from .speech_client import Response, SpeechClient, assert_problem
from .test_audio_input import _reference_pcm as model_pcm
from .test_speech_api import parse_wav, unique_text
from .test_speech_formats import g711_wav, sas_params

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_SECONDS = 5.0
MAX_BYTES = 2 * 1024 * 1024
GRACE_SECONDS = 1.0
DEFAULT_GRACE_SECONDS = Settings.model_fields["input_transcript_grace_seconds"].default
PCM_24K = {"type": "audio/pcm", "rate": 24_000}
BAD = bad_inputs(max_seconds=MAX_SECONDS)
BAD_REQUESTS = bad_requests(max_bytes=MAX_BYTES)
# Corpus cases whose error comes from the bytes alone, so that they fail the same way as base64 in JSON.
BAD_AS_JSON_TOO = ("wav-truncated", "flac-garbage", "wav-6-channels", "ogg-truncated", "mulaw-too-long")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A host with small audio limits (cheap over-long and oversized cases) and a short grace period."""
    async with speech_host(
        AUDIO_INPUT_MAX_SECONDS=f"{MAX_SECONDS:g}",
        AUDIO_INPUT_MAX_BYTES=str(MAX_BYTES),
        INPUT_TRANSCRIPT_GRACE_SECONDS=f"{GRACE_SECONDS:g}",
    ) as client:
        yield client


async def post_body(
    client: SpeechClient, body: bytes, content_type: str, *, headers: Mapping[str, str] = {}, **query: str
) -> Response:
    """POST `body` as `content_type` with `query` parameters (which `SpeechClient.post_raw` has not)
    and `headers`."""
    url = f"{client.host_url}/api/speech"
    headers = {"Content-Type": content_type, **headers}
    async with client.http.post(url, data=body, headers=headers, params=query) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None, r.headers


def as_json(audio: bytes, **fields: Any) -> bytes:
    return json.dumps({"audio": base64.b64encode(audio).decode(), **fields}).encode()


async def spoken_answer(client: SpeechClient) -> tuple[dict[str, Any], bytes]:
    """A text question's answer and its WAV: tones the emulator hears as the answer's transcript."""
    status, body, _ = await client.post({"text": unique_text("Say back")})
    assert status == 200, body
    return body, await client.download(body["audio_url"])


async def emulator_session(client: SpeechClient, answer: dict[str, Any]) -> dict[str, Any]:
    """The emulator's record of the session that gave `answer` (a spoken question's heard text is
    also the text question's, so sessions are told apart by id)."""
    [session] = [s for s in await client.emulator_sessions() if s["session_id"] == answer["session_id"]]
    return session


async def received_audio(client: SpeechClient, session_id: str) -> bytes:
    """The exact bytes the emulator got in the session's committed input audio."""
    async with client.http.get(f"{client.emulator_url}/_emulator/sessions/{session_id}/input_audio") as r:
        assert r.status == 200, await r.text()
        return await r.read()


async def assert_question_kept(
    client: SpeechClient, answer: dict[str, Any], sent: bytes, content_type: str, seconds: float
) -> None:
    """The question is stored as sent beside its answer (read-only URL, its content type), and the
    record beside the answer has the same input fields as the answer."""
    extension = {"audio/wav": ".wav", "audio/flac": ".flac", "audio/mpeg": ".mp3", "audio/ogg": ".ogg"}[
        content_type
    ]
    assert answer["input_blob_name"] == str(
        PurePosixPath(answer["blob_name"]).with_suffix(f".question{extension}")
    )
    assert answer["input_audio"] == {
        "content_type": content_type,
        "bytes": len(sent),
        "duration_seconds": seconds,
    }
    url = answer["input_audio_url"]
    assert sas_params(url)["sp"] == "r" and sas_params(url)["rsct"] == content_type
    async with client.http.get(url, ssl=client.tls) as response:
        assert response.status == 200 and response.content_type == content_type
        assert await response.read() == sent
    assert await client.put_with_sas(url, b"overwrite") == 403
    assert {answer["blob_name"], answer["input_blob_name"]} <= await client.blob_names()
    record = await client.read_json_blob(str(PurePosixPath(answer["blob_name"]).with_suffix(".json")))
    inputs = ("input_transcript", "input_transcript_reason", "input_blob_name", "input_audio")
    assert {name: record[name] for name in inputs} == {name: answer[name] for name in inputs}
    assert "input_audio_url" not in record


async def assert_answer_heard(
    client: SpeechClient, first: dict[str, Any], wav: bytes, answer: dict[str, Any]
) -> None:
    """`answer` is the emulator's answer to `wav`, the first answer's audio: heard as its transcript,
    received as its PCM, answered with that transcript's tones; the question kept."""
    _, pcm = parse_wav(wav)
    heard = first["transcript"]
    assert answer["input_transcript"] == heard and answer["input_transcript_reason"] is None
    assert answer["transcript"] == heard  # the emulator answers what it heard by repeating it
    _, reply = parse_wav(await client.download(answer["audio_url"]))
    assert reply == synthesize(heard, answer["voice"]).pcm
    session = await emulator_session(client, answer)
    [entry] = session["input_audio"]
    assert (entry["format"], entry["bytes"], entry["heard"], entry["transcript"]) == (
        PCM_24K,
        len(pcm),
        heard,
        heard,
    )
    assert session["session"]["audio"]["input"]["turn_detection"] is None
    assert session["session"]["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert await received_audio(client, session["session_id"]) == pcm  # 24 kHz PCM16 mono: as it was
    await assert_question_kept(client, answer, wav, "audio/wav", len(pcm) / 48_000)


async def test_an_answer_asked_back_as_a_raw_wav_is_heard_answered_and_kept(speech: SpeechClient) -> None:
    first, wav = await spoken_answer(speech)
    status, answer, headers = await post_body(speech, wav, "audio/wav", voice="verse", code="anything")
    assert status == 200, answer
    assert headers["Content-Type"].startswith("application/json")
    assert answer["voice"] == "verse" and answer["status"] == "completed"
    await assert_answer_heard(speech, first, wav, answer)


async def test_an_answer_asked_back_as_base64_in_json_is_heard_answered_and_kept(
    speech: SpeechClient,
) -> None:
    first, wav = await spoken_answer(speech)
    status, answer, _ = await post_body(speech, as_json(wav, voice="sage"), "application/json", code="k")
    assert status == 200, answer
    assert answer["voice"] == "sage"
    await assert_answer_heard(speech, first, wav, answer)


async def test_a_streamed_answer_to_a_spoken_question_sends_its_input_transcript(
    speech: SpeechClient,
) -> None:
    first, wav = await spoken_answer(speech)
    stream = await speech.stream({"audio": base64.b64encode(wav).decode()})
    assert stream.status == 200, stream.problem
    [heard] = [event for event in stream.events if event["type"] == "speech.input_transcript"]
    assert heard == {"type": "speech.input_transcript", "transcript": first["transcript"]}
    assert stream.types[0] == "speech.started" and stream.types[-1] == "speech.done"
    assert stream.audio() == synthesize(first["transcript"]).pcm
    await assert_answer_heard(speech, first, wav, stream.last())


def _float_samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


def _resampled(pcm: bytes, rate: int) -> np.ndarray:
    return soxr.resample(_float_samples(pcm), 24_000, rate, quality="HQ")


def _written(samples: np.ndarray, rate: int, container: str, subtype: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, subtype, format=container)
    return out.getvalue()


def _stereo_48k(pcm: bytes) -> bytes:
    left = _resampled(pcm, 48_000)
    return _written(np.stack([left, left * 0.5], axis=1), 48_000, "WAV", "PCM_16")


CONVERSIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "wav-stereo-48k": ("audio/wav", _stereo_48k),
    "wav-mono-8k": ("audio/x-wav", lambda pcm: _written(_resampled(pcm, 8_000), 8_000, "WAV", "PCM_16")),
    "wav-float-16k": ("audio/wav", lambda pcm: _written(_resampled(pcm, 16_000), 16_000, "WAV", "FLOAT")),
    "flac-44k": ("audio/flac", lambda pcm: _written(_resampled(pcm, 44_100), 44_100, "FLAC", "PCM_16")),
    "mp3-48k": (
        "audio/mpeg",
        lambda pcm: _written(_resampled(pcm, 48_000), 48_000, "MP3", "MPEG_LAYER_III"),
    ),
}


@pytest.mark.parametrize("name", CONVERSIONS)
async def test_other_rates_channels_and_codecs_reach_the_model_as_24_khz_pcm16(
    speech: SpeechClient, name: str
) -> None:
    content_type, build = CONVERSIONS[name]
    text = unique_text("Convert")
    spoken = synthesize(text)
    data = build(spoken.pcm)
    status, answer, _ = await post_body(speech, data, content_type)
    assert status == 200, answer
    expected = model_pcm(data).tobytes()
    session = await emulator_session(speech, answer)
    [entry] = session["input_audio"]
    assert entry["format"] == PCM_24K and entry["bytes"] == len(expected) == len(spoken.pcm)
    assert await received_audio(speech, answer["session_id"]) == expected
    assert entry["heard"] == answer["input_transcript"] == spoken.transcript
    canonical = "audio/wav" if content_type == "audio/x-wav" else content_type
    await assert_question_kept(speech, answer, data, canonical, len(expected) / 48_000)


@pytest.mark.parametrize(("subtype", "session_type"), [("ULAW", "audio/pcmu"), ("ALAW", "audio/pcma")])
async def test_a_g711_wav_reaches_the_model_unchanged_in_its_native_format(
    speech: SpeechClient, subtype: str, session_type: str
) -> None:
    spoken = synthesize(unique_text("Telephone"))
    wav = _written(_resampled(spoken.pcm, 8_000), 8_000, "WAV", subtype)
    _, chunk = g711_wav(wav)
    status, answer, _ = await post_body(speech, wav, "audio/wav")
    assert status == 200, answer
    session = await emulator_session(speech, answer)
    assert session["session"]["audio"]["input"]["format"] == {"type": session_type}
    [entry] = session["input_audio"]
    assert entry["format"] == {"type": session_type} and entry["bytes"] == len(chunk)
    assert await received_audio(speech, answer["session_id"]) == chunk
    assert entry["heard"] == answer["input_transcript"] == spoken.transcript
    await assert_question_kept(speech, answer, wav, "audio/wav", len(chunk) / 8_000)


async def assert_refused_before_any_session(
    client: SpeechClient,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
    query: Mapping[str, str] = {},
    headers: Mapping[str, str] = {},
) -> dict[str, Any]:
    """The body gets its problem, no model session was opened and nothing was written."""
    sessions_before = len(await client.emulator_sessions())
    blobs_before = await client.blob_names()
    problem = assert_problem(
        await post_body(client, body, content_type, headers=headers, **query), status, code
    )
    assert len(await client.emulator_sessions()) == sessions_before
    assert await client.blob_names() == blobs_before
    return problem


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.name)
async def test_bad_audio_is_refused_before_any_session(limited: SpeechClient, case: BadAudio) -> None:
    """Raw with its content type; a case without one goes as base64 in JSON (told from its bytes)."""
    if case.content_type is None:
        body, content_type = as_json(case.data), "application/json"
    else:
        body, content_type = case.data, case.content_type
    problem = await assert_refused_before_any_session(limited, body, content_type, case.status, case.code)
    assert case.detail in problem["detail"]


@pytest.mark.parametrize("name", BAD_AS_JSON_TOO)
async def test_bad_audio_in_json_is_refused_like_the_raw_body(limited: SpeechClient, name: str) -> None:
    [case] = [case for case in BAD if case.name == name]
    body = as_json(case.data, voice="ash")
    problem = await assert_refused_before_any_session(
        limited, body, "application/json", case.status, case.code
    )
    assert case.detail in problem["detail"]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.name)
async def test_a_request_is_refused_for_its_real_problem_before_any_session(
    limited: SpeechClient, case: BadSpokenRequest
) -> None:
    """Neither a large JSON body carrying audio nor a body over its limit hides what else is wrong."""
    problem = await assert_refused_before_any_session(
        limited, case.body, case.content_type, case.status, case.code, case.query, case.headers
    )
    assert case.detail in problem["detail"]
    assert "without audio" not in problem["detail"]


def _short_loud_wav(size: int) -> bytes:
    """A WAV of about `size` bytes lasting well under MAX_SECONDS (192 kHz stereo float)."""
    frames = (size - 80) // 8
    noise = np.random.default_rng(5).uniform(-0.5, 0.5, (frames, 2)).astype(np.float32)
    return _written(noise, 192_000, "WAV", "FLOAT")


async def test_a_raw_body_over_the_byte_limit_is_413_naming_it(limited: SpeechClient) -> None:
    problem = await assert_refused_before_any_session(
        limited, _short_loud_wav(MAX_BYTES + 1000), "audio/wav", 413, "payload-too-large"
    )
    assert f"at most {MAX_BYTES} " in problem["detail"]


async def test_base64_audio_over_the_byte_limit_is_413_too(limited: SpeechClient) -> None:
    """The limit is the question's: base64 in JSON carries no more than a raw body may."""
    wav = _short_loud_wav(MAX_BYTES + 1000)
    problem = await assert_refused_before_any_session(
        limited, as_json(wav), "application/json", 413, "payload-too-large"
    )
    assert str(MAX_BYTES) in problem["detail"]
    huge = b'{"audio": "' + b"A" * (MAX_BYTES * 2) + b'"}'
    await assert_refused_before_any_session(limited, huge, "application/json", 413, "payload-too-large")


async def test_a_question_within_the_small_limits_is_answered(limited: SpeechClient) -> None:
    first, wav = await spoken_answer(limited)
    status, answer, _ = await post_body(limited, as_json(wav), "application/json")
    assert status == 200, answer
    assert answer["input_transcript"] == first["transcript"]


@pytest.mark.parametrize(
    ("body", "content_type", "query", "phrase"),
    [
        pytest.param(
            b'{"text": "hi", "audio": "UklGRg=="}', "application/json", {}, "exactly one", id="both"
        ),
        pytest.param(b'{"voice": "ash"}', "application/json", {}, "exactly one", id="neither"),
        pytest.param(b'{"audio": "not base64!"}', "application/json", {}, "base64", id="bad-base64"),
        pytest.param(b'{"audio": "UklGRg"}', "application/json", {}, "base64", id="base64-unpadded"),
        pytest.param(b"RIFF", "audio/wav", {"colour": "blue"}, "colour", id="unknown-query-parameter"),
        pytest.param(b"RIFF", "audio/wav", {"voice": "robot"}, "voice", id="bad-query-value"),
        pytest.param(b"RIFF", "audio/wav", {"text": "hi"}, "exactly one", id="text-in-the-query"),
        pytest.param(
            b'{"text": "hi"}', "application/json", {"voice": "ash"}, "Query parameters", id="json-query"
        ),
        pytest.param(
            b'{"text": "hi"}',
            "application/json",
            {"code": "k", "format": "mp3"},
            "Query",
            id="json-query-and-code",
        ),
    ],
)
async def test_a_malformed_request_is_400_before_any_session(
    limited: SpeechClient, body: bytes, content_type: str, query: dict[str, str], phrase: str
) -> None:
    problem = await assert_refused_before_any_session(
        limited, body, content_type, 400, "invalid-request", query
    )
    assert phrase in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "hi"}' + b" " * (64 * 1024), id="valid-text-padded"),
        pytest.param(b"{}" + b" " * (64 * 1024), id="no-question-padded"),
        pytest.param(b'{"text": "hi", "voice": "robot"}' + b" " * (64 * 1024), id="invalid-padded"),
    ],
)
async def test_a_json_body_without_audio_over_64_kib_is_413(limited: SpeechClient, body: bytes) -> None:
    problem = await assert_refused_before_any_session(
        limited, body, "application/json", 413, "payload-too-large"
    )
    assert str(64 * 1024) in problem["detail"]


async def test_the_function_key_parameter_is_taken_with_either_body(speech: SpeechClient) -> None:
    status, body, _ = await post_body(
        speech, json.dumps({"text": unique_text()}).encode(), "application/json", code="k"
    )
    assert status == 200, body
    _, wav = await spoken_answer(speech)
    status, body, _ = await post_body(speech, wav, "audio/wav", code="k", format="mp3", speed="1.25")
    assert status == 200, body
    assert body["audio"]["format"] == "mp3" and body["input_transcript"]
    assert (await emulator_session(speech, body))["speed"] == 1.25


async def test_a_late_input_transcript_is_awaited(speech: SpeechClient) -> None:
    first, wav = await spoken_answer(speech)
    instructions = "[[emulator:transcript_late delay=0.5]] Answer briefly."
    status, answer, _ = await post_body(speech, wav, "audio/wav", instructions=instructions)
    assert status == 200, answer
    assert answer["input_transcript"] == first["transcript"] and answer["input_transcript_reason"] is None
    assert answer["timings_ms"]["signed"] - answer["timings_ms"]["response_done"] >= 500
    _, pcm = parse_wav(wav)
    await assert_question_kept(speech, answer, wav, "audio/wav", len(pcm) / 48_000)


async def test_an_input_transcript_that_never_comes_ends_the_wait_after_the_grace_period(
    limited: SpeechClient,
) -> None:
    _, wav = await spoken_answer(limited)
    status, normal, _ = await post_body(limited, wav, "audio/wav")
    assert status == 200, normal
    status, answer, _ = await post_body(
        limited, wav, "audio/wav", instructions="[[emulator:transcript_never]] Hi."
    )
    assert status == 200, answer
    assert answer["input_transcript"] is None and answer["input_transcript_reason"] == "not_received"
    assert answer["transcript"] == normal["transcript"]  # the answer itself is whole
    waited_ms = answer["timings_ms"]["signed"] - answer["timings_ms"]["response_done"]
    # The configured grace, then the commit: at least the grace, and short of the default's 5 s.
    assert GRACE_SECONDS * 1000 <= waited_ms < DEFAULT_GRACE_SECONDS * 1000
    await assert_question_kept(limited, answer, wav, "audio/wav", normal["input_audio"]["duration_seconds"])


@pytest.mark.parametrize("scenario", ["drop", "error_mid", "failed"])
async def test_an_answer_that_fails_keeps_neither_the_answer_nor_the_question(
    speech: SpeechClient, scenario: str
) -> None:
    _, wav = await spoken_answer(speech)
    blobs_before = await speech.blob_names()
    sessions_before = len(await speech.emulator_sessions())
    response = await post_body(speech, wav, "audio/wav", instructions=f"[[emulator:{scenario}]] Hi.")
    assert_problem(response, 502, "upstream-failed")
    await speech.assert_sessions_closed()
    [session] = (await speech.emulator_sessions())[sessions_before:]
    assert session["scenario"] == scenario and len(session["input_audio"]) == 1  # it failed answering
    assert await speech.blob_names() == blobs_before
