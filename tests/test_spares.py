"""Spare sessions end to end: dev hosts with `REALTIME_SPARE_SESSIONS` against emulators of their own,
over real sockets. A spare is told apart in the emulator's session records: its connection was
opened before the request began and got its first `session.update` after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
import pytest_asyncio

from devtools.stack import Stack
from realtime_speech.errors import UpstreamFailed
from realtime_speech.models import Timeline
from realtime_speech.realtime import RealtimeBackend, SessionLost, VoiceRequest, realtime_client

from .conftest import ClientEnv, SpeechHost
from .emulator_control import Emulator
from .speech_client import SpeechClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

POLL_SECONDS = 0.02
WAIT_SECONDS = 60.0  # how long a condition may take on a loaded machine before the test gives up


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def emulators(stack: Stack) -> AsyncIterator[dict[str, Emulator]]:
    with contextlib.ExitStack() as running:  # each started one is stopped, also when a later one fails
        processes = {name: running.enter_context(stack.start_emulator(f"spares-{name}")) for name in "ab"}
        async with aiohttp.ClientSession() as http:
            yield {name: Emulator(process, http) for name, process in processes.items()}


@pytest_asyncio.fixture(loop_scope="session")
async def emulator(emulators: dict[str, Emulator]) -> AsyncIterator[Emulator]:
    """Backend `a`, reset before and after the test (`b` too)."""
    for each in emulators.values():
        await each.reset()
    yield emulators["a"]
    for each in emulators.values():
        await each.reset()


async def until(condition: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Wait for `condition()` to return something truthy, and return it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not (result := await condition()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)
    return result


def question() -> dict[str, Any]:
    return {"text": f"Spare question {uuid4().hex[:10]}."}


def host_settings(emulator: Emulator, **settings: str) -> dict[str, str]:
    return {"AZURE_OPENAI_ENDPOINT": emulator.url, **settings}


def speech_lines(client: SpeechClient) -> list[dict[str, Any]]:
    """The host's one-line-per-request logs, parsed."""
    assert client.host is not None
    log = client.host.log_path.read_text(errors="replace")
    return [
        json.loads(line.split("speech ", 1)[1])
        for line in log.splitlines()
        if " realtime_speech: speech {" in line
    ]


def wav_data(wav: bytes) -> bytes:
    """The data chunk of a WAV file (PCM or G.711)."""
    at = wav.index(b"data", 12)
    size = int.from_bytes(wav[at + 4 : at + 8], "little")
    return wav[at + 8 : at + 8 + size]


async def answered(client: SpeechClient, body: dict[str, Any]) -> dict[str, Any]:
    status, answer, _ = await client.post(body)
    assert status == 200, answer
    return answer


async def test_a_request_takes_a_spare_and_asks_with_its_own_voice_and_format(
    speech_host: SpeechHost, emulator: Emulator
) -> None:
    async with speech_host(**host_settings(emulator, REALTIME_SPARE_SESSIONS="1")) as client:
        [spare] = await until(emulator.spares, "a spare")
        began = time.time()
        body = {**question(), "voice": "ash", "format": "wav-mulaw", "speed": 1.25}
        answer = await answered(client, body)
        sessions = {s["session_id"]: s for s in await emulator.sessions()}
        used = sessions[answer["session_id"]]
        assert used["session_id"] == spare["session_id"]
        assert used["opened_at"] < began <= used["first_session_update_at"]
        assert used["user_text"] == body["text"]
        assert (used["voice"], used["speed"], used["audio_format"]) == ("ash", 1.25, {"type": "audio/pcmu"})
        audio = wav_data(await client.download(answer["audio_url"]))
        assert hashlib.sha256(audio).hexdigest() == used["audio_sha256"]
        assert len(audio) == used["audio_bytes"] > 0
        assert answer["transcript"] == used["transcript"] == body["text"]
        [line] = [line for line in speech_lines(client) if line["status"] == 200]
        assert line["spare_session"] is True
        await until(emulator.spares, "a replacement spare")


async def test_a_spare_killed_by_the_service_is_replaced_and_the_request_succeeds(
    speech_host: SpeechHost, emulator: Emulator
) -> None:
    async with speech_host(**host_settings(emulator, REALTIME_SPARE_SESSIONS="1")) as client:
        [spare] = await until(emulator.spares, "a spare")
        await emulator.call("POST", "/_emulator/idle-timeout", {"seconds": 0.2})

        async def killed() -> bool:
            sessions = {s["session_id"]: s for s in await emulator.sessions()}
            return sessions[spare["session_id"]]["ended_by"] == "emulator_idle_timeout"

        await until(killed, "the service to close the spare")
        await emulator.call("POST", "/_emulator/idle-timeout", {"seconds": None})
        body = question()
        answer = await answered(client, body)
        assert answer["session_id"] != spare["session_id"]
        assert answer["transcript"] == body["text"]


async def test_a_spare_closed_before_it_answered_anything_is_session_lost(
    stack: Stack, client_env: ClientEnv, emulator: Emulator
) -> None:
    """The request's side of a dead spare: the connection ends before any event for the question,
    which the service answers with a fresh session (`SessionLost`), not an error."""
    backend = RealtimeBackend(
        "a",
        realtime_client(emulator.url, stack.emulator_api_key, None),
        "gpt-realtime",
        stack.emulator_api_key,
    )
    try:
        spare = await backend.open_spare()
        await emulator.call("POST", "/_emulator/idle-timeout", {"seconds": 0.1})

        async def killed() -> bool:
            [record] = [s for s in await emulator.sessions() if s["session_id"] == spare.spare_of]
            return record["ended_by"] == "emulator_idle_timeout"

        await until(killed, "the service to close the spare")
        request = VoiceRequest(
            text="Too late.",
            instructions="Answer.",
            voice="alloy",
            transcription_model="whisper-1",
            output_format={"type": "audio/pcm", "rate": 24000},
        )
        with pytest.raises(SessionLost):
            await spare.answer(request, _Ignored(), Timeline())
        assert issubclass(SessionLost, UpstreamFailed)
    finally:
        await backend.close()


class _Ignored:
    async def audio(self, chunk: bytes) -> None:
        raise AssertionError("no audio expected")

    async def audio_done(self) -> None:
        raise AssertionError("no audio expected")

    async def transcript_delta(self, delta: str) -> None:
        raise AssertionError("no transcript expected")

    async def input_transcript(self, transcript: str) -> None:
        raise AssertionError("no transcript expected")


async def test_no_spare_is_opened_to_a_backend_cooling_after_a_429(
    speech_host: SpeechHost, emulators: dict[str, Emulator], emulator: Emulator
) -> None:
    first, second = emulators["a"], emulators["b"]
    await first.call("POST", "/_emulator/handshake-faults", {"status": 429, "count": 1, "retry_after": 120})
    backends = [
        {"name": "a", "endpoint": first.url, "priority": 1},
        {"name": "b", "endpoint": second.url, "priority": 2},
    ]
    settings = {"AZURE_OPENAI_BACKENDS": json.dumps(backends), "REALTIME_SPARE_SESSIONS": "1"}
    async with speech_host(**settings) as client:
        [spare] = await until(second.spares, "a spare on the backend that is not cooling")
        admissions = await first.call("GET", "/_emulator/admissions")
        assert [(entry["outcome"], entry["status"]) for entry in admissions] == [("refused", 429)]
        status = await backend_status(client)
        assert status["a"]["state"] == "cooling"
        assert status["a"]["spares"] == {"count": 0, "oldest_age_seconds": None}
        assert status["b"]["spares"]["count"] == 1
        answer = await answered(client, question())
        assert (answer["backend"], answer["session_id"]) == ("b", spare["session_id"])
        assert await first.call("GET", "/_emulator/admissions") == admissions  # none since


async def backend_status(client: SpeechClient) -> dict[str, dict[str, Any]]:
    async with client.http.get(f"{client.host_url}/api/status") as response:
        return {entry["name"]: entry for entry in (await response.json())["backends"]}


async def test_spares_are_replaced_at_their_max_age(speech_host: SpeechHost, emulator: Emulator) -> None:
    settings = host_settings(emulator, REALTIME_SPARE_SESSIONS="1", REALTIME_SPARE_MAX_AGE_SECONDS="1")
    async with speech_host(**settings):
        [first] = await until(emulator.spares, "a spare")

        async def replaced() -> list[dict[str, Any]]:
            spares = await emulator.spares()
            return [s for s in spares if s["session_id"] != first["session_id"]]

        [second] = await until(replaced, "a replacement")
        [record] = [s for s in await emulator.sessions() if s["session_id"] == first["session_id"]]
        assert record["ended_by"] == "client_close"
        assert record["first_session_update_at"] is None
        assert second["opened_at"] >= record["opened_at"]


async def test_an_idle_process_closes_its_spares_until_the_next_request(
    speech_host: SpeechHost, emulator: Emulator
) -> None:
    settings = host_settings(emulator, REALTIME_SPARE_SESSIONS="2", REALTIME_SPARE_IDLE_SECONDS="1")
    async with speech_host(**settings) as client:
        spares = await until(lambda: _at_least(emulator.spares, 2), "two spares")

        async def all_closed() -> bool:
            return (await emulator.stats())["connections_open"] == 0

        await until(all_closed, "the idle process to close its spares")
        ended = {s["session_id"]: s["ended_by"] for s in await emulator.sessions()}
        assert {ended[s["session_id"]] for s in spares} == {"client_close"}
        answer = await answered(client, question())
        assert answer["session_id"] not in ended
        assert speech_lines(client)[-1]["spare_session"] is False
        await until(lambda: _at_least(emulator.spares, 2), "spares again after the request")


async def _at_least(
    spares: Callable[[], Awaitable[list[dict[str, Any]]]], count: int
) -> list[dict[str, Any]]:
    found = await spares()
    return found if len(found) >= count else []


async def test_simultaneous_requests_take_the_spares_and_the_others_connect(
    speech_host: SpeechHost, emulator: Emulator
) -> None:
    spare_count, requests = 2, 5
    async with speech_host(**host_settings(emulator, REALTIME_SPARE_SESSIONS=str(spare_count))) as client:
        spares = await until(lambda: _at_least(emulator.spares, spare_count), "the spares")
        # Replacements (and the other requests' own sessions) now take a while to open.
        await emulator.call("POST", "/_emulator/handshake-delay", {"ms": 1000})
        bodies = [question() for _ in range(requests)]
        answers = await asyncio.gather(*(answered(client, body) for body in bodies))
        assert [answer["transcript"] for answer in answers] == [body["text"] for body in bodies]
        used = [answer["session_id"] for answer in answers]
        assert len(set(used)) == requests
        assert {s["session_id"] for s in spares} <= set(used)
        lines = [line for line in speech_lines(client) if line["status"] == 200]
        assert sum(line["spare_session"] for line in lines) >= spare_count
        assert len(lines) == requests


async def test_shutdown_closes_the_spares(speech_host: SpeechHost, emulator: Emulator) -> None:
    async with speech_host(**host_settings(emulator, REALTIME_SPARE_SESSIONS="2")):
        spares = await until(lambda: _at_least(emulator.spares, 2), "two spares")
    # the host has stopped (SIGTERM): each spare was closed with a close frame, not dropped
    ended = {s["session_id"]: s["ended_by"] for s in await emulator.sessions()}
    assert [ended[s["session_id"]] for s in spares] == ["client_close", "client_close"]


async def test_with_no_spares_nothing_is_opened_before_a_request(
    speech_host: SpeechHost, emulator: Emulator
) -> None:
    before = (await emulator.stats())["connections_total"]
    async with speech_host(**host_settings(emulator)) as client:
        assert (await emulator.stats())["connections_total"] == before  # warmed up, listening
        await answered(client, question())
        assert (await emulator.stats())["connections_total"] == before + 1
        await answered(client, question())
        assert (await emulator.stats())["connections_total"] == before + 2
        assert [line["spare_session"] for line in speech_lines(client)] == [False, False]
        status = await backend_status(client)
        assert status["default"]["spares"] == {"count": 0, "oldest_age_seconds": None}
