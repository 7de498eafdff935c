"""`Idempotency-Key`: a repeated request returns the first result instead of a second model session."""

from __future__ import annotations

import asyncio
import hashlib
import json
from uuid import uuid4

import pytest

from .conftest import SpeechHost
from .speech_client import SpeechClient, assert_problem
from .test_speech_api import parse_wav, unique_text

pytestmark = pytest.mark.asyncio(loop_scope="session")

SHORT_DEADLINE_SECONDS = 8


def new_key() -> dict[str, str]:
    return {"Idempotency-Key": f"order-{uuid4()}"}


async def sessions_asked(client: SpeechClient, text: str) -> int:
    return sum(session["user_text"] == text for session in await client.emulator_sessions())


async def test_a_repeated_request_replays_the_first_result_with_a_fresh_url(speech: SpeechClient) -> None:
    text, key = unique_text(), new_key()
    first = await speech.post({"text": text, "voice": "ash"}, headers=key)
    await asyncio.sleep(1)  # a SAS has a one-second resolution: the replay's must differ
    again = await speech.post({"voice": "ash", "text": text}, request_id="the-retry", headers=key)
    assert first[0] == again[0] == 200
    assert "Idempotent-Replayed" not in first[2] and again[2]["Idempotent-Replayed"] == "true"
    unsigned = {"audio_url", "expires_at"}
    assert {k: v for k, v in again[1].items() if k not in unsigned} == {
        k: v for k, v in first[1].items() if k not in unsigned
    }
    assert again[1]["request_id"] == first[1]["request_id"] and again[2]["x-request-id"] == "the-retry"
    assert again[1]["audio_url"] != first[1]["audio_url"]
    assert again[1]["expires_at"] > first[1]["expires_at"]
    assert await speech.download(again[1]["audio_url"]) == await speech.download(first[1]["audio_url"])
    assert await sessions_asked(speech, text) == 1


async def test_the_same_key_with_another_body_is_a_422(speech: SpeechClient) -> None:
    text, key = unique_text(), new_key()
    assert (await speech.post({"text": text}, headers=key))[0] == 200
    blobs = await speech.blob_names()
    problem = assert_problem(
        await speech.post({"text": text, "voice": "sage"}, headers=key), 422, "idempotency-key-reused"
    )
    assert "different request body" in problem["detail"]
    assert await speech.blob_names() == blobs
    assert await sessions_asked(speech, text) == 1


async def test_concurrent_duplicates_share_one_session(speech: SpeechClient) -> None:
    text, key = unique_text("[[emulator:slow pace=8]] Take your time with"), new_key()
    wavs_before = await speech.wav_names()
    answers = await asyncio.gather(*(speech.post({"text": text}, headers=key) for _ in range(8)))
    assert [status for status, _, _ in answers] == [200] * 8
    assert len({body["blob_name"] for _, body, _ in answers}) == 1
    assert sorted(headers.get("Idempotent-Replayed", "false") for _, _, headers in answers) == [
        "false",
        *["true"] * 7,
    ]
    assert await sessions_asked(speech, text) == 1
    assert len(await speech.wav_names() - wavs_before) == 1


async def test_a_failed_first_attempt_is_not_kept(speech: SpeechClient) -> None:
    text, key = unique_text(), new_key()
    await speech.refuse_handshakes(403, 1)
    assert_problem(await speech.post({"text": text}, headers=key), 502, "upstream-auth-failed")
    status, body, headers = await speech.post({"text": text}, headers=key)
    assert status == 200, body
    assert "Idempotent-Replayed" not in headers
    session = await speech.emulator_session(text)
    _, pcm = parse_wav(await speech.download(body["audio_url"]))
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]


@pytest.mark.parametrize("scenario", ["error_mid", "drop"])
async def test_a_failure_after_the_session_opened_leaves_the_key_free_for_a_retry(
    speech_host: SpeechHost, scenario: str
) -> None:
    """The answer fails in its own task, after `start` has returned: the key is settled there, so an
    immediate retry opens a new session instead of waiting for the deadline on an owner that is gone."""
    async with speech_host(REALTIME_TIMEOUT_SECONDS=str(SHORT_DEADLINE_SECONDS)) as speech:
        text, key = unique_text(), new_key()
        await speech.script_sessions(scenario, 1)
        assert_problem(await speech.post({"text": text}, headers=key), 502, "upstream-failed")
        status, body, headers = await speech.post({"text": text}, headers=key)
        assert status == 200, body
        assert "Idempotent-Replayed" not in headers
        sessions = [s for s in await speech.emulator_sessions() if s["user_text"] == text]
        assert [session["scenario"] for session in sessions] == [scenario, "normal"]
        assert await speech.download(body["audio_url"])


async def test_another_instance_replays_the_kept_result(
    speech: SpeechClient, api_key_speech: SpeechClient
) -> None:
    """Two processes on the same storage account, as two instances of the app would be."""
    text, key = unique_text(), new_key()
    first = await speech.post({"text": text}, headers=key)
    again = await api_key_speech.post({"text": text}, headers=key)
    assert first[0] == again[0] == 200
    assert again[2]["Idempotent-Replayed"] == "true"
    assert again[1]["blob_name"] == first[1]["blob_name"]
    assert await sessions_asked(speech, text) == 1


async def test_instances_racing_on_one_key_give_one_result(
    speech: SpeechClient, api_key_speech: SpeechClient
) -> None:
    """Both instances find no record and pay for a session; the first to keep its answer wins, and
    the other returns that answer and deletes its own."""
    text, key = unique_text("[[emulator:slow pace=2]] At the same time,"), new_key()
    wavs_before = await speech.wav_names()
    answers = await asyncio.gather(
        *(client.post({"text": text}, headers=key) for client in (speech, api_key_speech))
    )
    assert [status for status, _, _ in answers] == [200, 200]
    assert answers[0][1]["blob_name"] == answers[1][1]["blob_name"]
    assert [headers.get("Idempotent-Replayed") for _, _, headers in answers].count("true") == 1
    assert await sessions_asked(speech, text) == 2
    assert await speech.wav_names() - wavs_before == {answers[0][1]["blob_name"]}


async def test_the_record_holds_a_digest_of_the_key_never_the_key_or_a_url(speech: SpeechClient) -> None:
    key = new_key()
    status, body, _ = await speech.post({"text": unique_text()}, headers=key)
    assert status == 200
    digest = hashlib.sha256(key["Idempotency-Key"].encode()).hexdigest()
    record = await speech.read_json_blob(f"idempotency/{digest}.json")
    assert record["result"]["blob_name"] == body["blob_name"]
    stored = json.dumps(record)
    assert key["Idempotency-Key"] not in stored and "sig=" not in stored and "audio_url" not in stored


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "ünïcode", "semi;colon"])
async def test_a_malformed_key_is_a_400(speech: SpeechClient, key: str) -> None:
    text = unique_text()
    problem = assert_problem(
        await speech.post({"text": text}, headers={"Idempotency-Key": key}), 400, "invalid-request"
    )
    assert "Idempotency-Key" in problem["detail"]
    assert await sessions_asked(speech, text) == 0


async def test_bad_audio_with_a_used_key_is_refused_for_what_it_is(speech: SpeechClient) -> None:
    """The question is checked before the key is looked up: corrupt audio sent with a key already used
    for another body is a 400 for the audio (not a 422 for the key), and changes nothing."""
    text, key = unique_text(), new_key()
    assert (await speech.post({"text": text}, headers=key))[0] == 200
    blobs = await speech.blob_names()
    sessions = len(await speech.emulator_sessions())
    not_audio = b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64)
    problem = assert_problem(await speech.post_raw(not_audio, "audio/wav", **key), 400, "invalid-request")
    assert "WAV" in problem["detail"]
    assert await speech.blob_names() == blobs
    assert len(await speech.emulator_sessions()) == sessions
