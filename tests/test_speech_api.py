"""POST /api/speech end to end: dev host → function → emulator, identity endpoint and Azurite."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import wave
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import aiohttp
import pytest

from realtime_speech.models import MAX_BODY_BYTES
from realtime_speech.storage import MIN_BLOCK_BYTES

from .speech_client import SpeechClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAV_HEADER = 44
MIB = 1024 * 1024


def unique_text(prefix: str = "Tell me about") -> str:
    return f"{prefix} {uuid4().hex[:12]}."


def parse_wav(data: bytes) -> tuple[wave._wave_params, bytes]:
    """The WAV's parameters and PCM, after checking the RIFF sizes are exact."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[36:40] == b"data"
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    assert int.from_bytes(data[40:44], "little") == len(data) - WAV_HEADER
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getparams(), wav.readframes(wav.getnframes())


async def test_text_in_gives_a_wav_equal_to_the_models_audio(speech: SpeechClient) -> None:
    text = unique_text()
    status, body, headers = await speech.post({"text": text})
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    session = await speech.emulator_session(text)

    wav = await speech.download(body["audio_url"])
    params, pcm = parse_wav(wav)
    assert (params.nchannels, params.sampwidth, params.framerate, params.comptype) == (1, 2, 24000, "NONE")
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert len(pcm) == session["audio_bytes"] > 0
    assert body["transcript"] == session["transcript"] != ""
    assert body["audio"] == {
        "format": "wav",
        "encoding": "pcm_s16le",
        "sample_rate": 24000,
        "channels": 1,
        "bits_per_sample": 16,
        "duration_seconds": round(len(pcm) / 48000, 3),
        "bytes": len(wav),
    }
    assert body["session_id"] == session["session_id"]
    assert body["response_id"] == session["response_id"]
    assert body["status"] == "completed" and body["usage"]["total_tokens"] > 0
    assert body["container"] == "audio" and body["blob_name"].endswith(".wav")


async def test_the_url_is_a_read_only_user_delegation_sas_expiring_as_configured(
    speech: SpeechClient,
) -> None:
    before = datetime.now(UTC)
    status, body, _ = await speech.post({"text": unique_text()})
    assert status == 200, body
    query = parse_qs(urlsplit(body["audio_url"]).query)
    assert query["sp"] == ["r"]
    assert "skoid" in query and "sktid" in query  # signed with a user-delegation key
    assert query["spr"] == ["https"]
    expiry = datetime.fromisoformat(query["se"][0].replace("Z", "+00:00"))
    assert expiry == datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(minutes=60) - timedelta(seconds=2) <= expiry
    assert expiry <= datetime.now(UTC) + timedelta(minutes=60)
    assert "attachment" in query["rscd"][0] and query["rsct"] == ["audio/wav"]

    refused = await speech.put_with_sas(body["audio_url"], b"overwrite")
    assert refused == 403
    assert len(await speech.download(body["audio_url"])) == body["audio"]["bytes"]  # unchanged


async def test_the_record_beside_the_wav_holds_the_outcome(speech: SpeechClient) -> None:
    text = unique_text()
    status, body, _ = await speech.post({"text": text, "voice": "sage"}, request_id="rec-" + uuid4().hex)
    assert status == 200, body
    record = await speech.read_json_blob(body["blob_name"].removesuffix(".wav") + ".json")
    assert record["request_id"] == body["request_id"]
    assert record["transcript"] == body["transcript"]
    assert record["voice"] == "sage" and record["usage"] == body["usage"]
    assert "audio_url" not in record and "sig=" not in json.dumps(record)


async def test_the_model_saw_a_managed_identity_token_and_the_requested_session(
    speech: SpeechClient,
) -> None:
    text = unique_text()
    status, body, _ = await speech.post(
        {"text": text, "voice": "coral", "instructions": "Answer in one sentence."}
    )
    assert status == 200, body
    session = await speech.emulator_session(text)
    assert session["auth"]["kind"] == "entra"
    assert session["auth"]["claims"]["aud"] == "https://cognitiveservices.azure.com"
    assert session["auth"]["claims"]["iss"].startswith("https://sts.windows.net/")
    config = session["session"]
    assert config["instructions"] == "Answer in one sentence."
    assert config["audio"]["output"]["voice"] == "coral"
    assert config["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert config["audio"]["input"]["transcription"] is None  # nothing spoken, nothing to transcribe
    assert config["output_modalities"] == ["audio"]


async def test_defaults_come_from_settings(speech: SpeechClient) -> None:
    text = unique_text()
    status, body, _ = await speech.post({"text": text})
    assert status == 200, body
    session = await speech.emulator_session(text)
    assert body["voice"] == session["session"]["audio"]["output"]["voice"] == "alloy"
    assert session["session"]["instructions"] == "You are a helpful assistant. You respond by voice and text."


async def test_with_an_api_key_the_model_sees_the_key(api_key_speech: SpeechClient) -> None:
    text = unique_text()
    status, body, _ = await api_key_speech.post({"text": text})
    assert status == 200, body
    session = await api_key_speech.emulator_session(text)
    assert session["auth"]["kind"] == "api-key"


async def test_request_id_is_taken_from_the_caller_and_echoed(speech: SpeechClient) -> None:
    status, body, headers = await speech.post({"text": unique_text()}, request_id="caller-id-123")
    assert status == 200
    assert body["request_id"] == headers["x-request-id"] == "caller-id-123"
    status, body, headers = await speech.post({"text": unique_text()}, request_id="bad id\twith spaces")
    assert body["request_id"] == headers["x-request-id"] != "bad id\twith spaces"


async def test_long_audio_is_spread_over_several_blocks(speech: SpeechClient) -> None:
    text = unique_text("[[emulator:long seconds=240]] Tell me a long story")
    status, body, _ = await speech.post({"text": text})
    assert status == 200, body
    session = await speech.emulator_session(text)
    assert session["audio_bytes"] == 240 * 48000
    header, *data_blocks = await speech.committed_blocks(body["blob_name"])
    assert header == 44 and sum(data_blocks) == session["audio_bytes"]
    assert len(data_blocks) >= 11  # 11.52 MB in blocks of at most 1 MiB (plus one audio chunk)
    assert max(data_blocks) <= MIB + 256 * 1024
    assert min(data_blocks[:-1]) >= MIN_BLOCK_BYTES
    wav = await speech.download(body["audio_url"])
    _, pcm = parse_wav(wav)
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert body["audio"]["duration_seconds"] == 240.0


async def test_audio_streamed_in_real_time_is_staged_while_it_streams(speech: SpeechClient) -> None:
    text = unique_text("[[emulator:slow pace=20 seconds=40]] Take your time with")
    status, body, _ = await speech.post({"text": text})
    assert status == 200, body
    _, *data_blocks = await speech.committed_blocks(body["blob_name"])
    assert sum(data_blocks) == 40 * 48000
    # After the first full block, small blocks go out as audio arrives: only a small tail is left
    # for the end, not the rest of the WAV.
    assert data_blocks[0] >= MIB
    assert len(data_blocks) >= 5
    assert data_blocks[-1] < 2 * MIN_BLOCK_BYTES


async def test_a_short_answer_is_written_with_one_request(speech: SpeechClient) -> None:
    status, body, _ = await speech.post({"text": unique_text()})
    assert status == 200, body
    assert body["audio"]["bytes"] < MIB
    assert await speech.committed_blocks(body["blob_name"]) == []  # one Put Blob, no staged blocks


async def test_concurrent_requests_each_get_their_own_answer(speech: SpeechClient) -> None:
    texts = [unique_text(f"Question {n} about") for n in range(20)]
    results = await asyncio.gather(*(speech.post({"text": text}) for text in texts))
    assert [status for status, _, _ in results] == [200] * 20
    assert len({body["blob_name"] for _, body, _ in results}) == 20
    sessions = await speech.emulator_sessions()
    for text, (_, body, _) in zip(texts, results, strict=True):
        session = next(s for s in sessions if s["user_text"] == text)
        _, pcm = parse_wav(await speech.download(body["audio_url"]))
        assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
        assert body["transcript"] == session["transcript"]


BAD_INPUTS = [
    pytest.param(b'{"text": "hi"', "application/json", 400, id="malformed-json"),
    pytest.param(b'["text"]', "application/json", 400, id="not-an-object"),
    pytest.param(b'{"text": 1}', "application/json", 400, id="wrong-type"),
    pytest.param(b'{"text": " \\n "}', "application/json", 400, id="blank-text"),
    pytest.param(b'{"text": "' + b"a" * 4001 + b'"}', "application/json", 400, id="text-too-long"),
    pytest.param(b'{"text": "hi", "voice": "robot"}', "application/json", 400, id="unknown-voice"),
    pytest.param(b'{"text": "hi", "speed": 2}', "application/json", 400, id="unknown-field"),
    pytest.param(b'{"text": "hi"}', "text/plain", 415, id="not-json"),
    pytest.param(b"{}" + b" " * MAX_BODY_BYTES, "application/json", 413, id="too-large"),
]


@pytest.mark.parametrize(("body", "content_type", "expected"), BAD_INPUTS)
async def test_bad_input_gets_its_4xx_and_writes_nothing(
    speech: SpeechClient, body: bytes, content_type: str, expected: int
) -> None:
    blobs_before = await speech.blob_names()
    sessions_before = len(await speech.emulator_sessions())
    status, problem, headers = await speech.post_raw(body, content_type)
    assert status == expected
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == expected
    assert problem["type"].startswith("urn:realtime-speech:problem:")
    assert problem["title"] and problem["detail"] and problem["request_id"]
    assert "Traceback" not in json.dumps(problem)
    assert await speech.blob_names() == blobs_before
    assert len(await speech.emulator_sessions()) == sessions_before


async def test_status_reports_settings_without_secrets(api_key_speech: SpeechClient) -> None:
    url = f"{api_key_speech.host_url}/api/status"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        report = await response.json()
        assert response.status == 200, report
    assert report["status"] == "ok"
    assert report["settings"]["AZURE_OPENAI_API_KEY"] == "set"
    assert report["settings"]["AUDIO_CONTAINER"] in ("set", "default")
    assert report["checks"] == {"storage": "ok", "identity": "ok"}
    assert api_key_speech.api_key not in json.dumps(report)
