"""The realtime emulator over real sockets, driven by the real openai SDK.

Every server event received is validated strictly against the SDK's ``RealtimeServerEvent`` types,
and may carry no field the SDK does not know (apart from the session's id/object/expires_at, which
the service sends and the SDK's request type does not declare).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import numpy as np
import pydantic
import pytest
import soundfile
import soxr
from openai import AsyncOpenAI, Omit
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from devtools.certs import ensure_dev_certs
from devtools.process import PORT_PLACEHOLDER, REPO_ROOT, ServiceProcess, free_port, http_probe
from devtools.realtime_emulator import SAMPLE_RATE, encode_audio, hear, heard_text, synthesize

API_KEY = "emulator-test-key-" + secrets.token_hex(8)
AUDIENCE = "https://cognitiveservices.azure.com"
TENANT = "72f988bf-0000-4000-8000-000000000001"
OBJECT_ID = "0b1c2d3e-0000-4000-8000-000000000002"
APP_ID = "5a6b7c8d-0000-4000-8000-000000000003"
MODEL = "gpt-realtime"
QUESTION = "Please assist the user with a short answer."
SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
SERVICE_FIELDS_UNKNOWN_TO_SDK = {"session.id", "session.object", "session.expires_at"}
STARTUP_QUOTA = {"max_sessions": 50, "requests_per_minute": 1000}
"""The emulator's quota from its command line: high enough never to refuse the other tests."""
QUICKSTART_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "You are a helpful assistant. You respond by voice and text.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "transcription": {"model": "whisper-1"},
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "create_response": True,
            },
        },
        "output": {"voice": "coral", "format": {"type": "audio/pcm", "rate": 24000}},
    },
}


# ---------------------------------------------------------------------------------------------------------
# The emulator process, keys and certificates


@dataclass(frozen=True)
class Keys:
    signing: bytes
    foreign: bytes
    """A key the emulator does not trust, for forged tokens."""


@dataclass(frozen=True)
class Emulator:
    service: ServiceProcess
    tls_port: int
    ca_file: Path

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def http(self) -> str:
        return self.service.url

    @property
    def log_path(self) -> Path:
        return self.service.log_path

    def client(self, api_key: Any = API_KEY, *, tls: bool = False) -> AsyncOpenAI:
        base = f"wss://127.0.0.1:{self.tls_port}" if tls else f"ws://127.0.0.1:{self.port}"
        return AsyncOpenAI(
            websocket_base_url=f"{base}/openai/v1", api_key=api_key, base_url=f"{self.http}/v1"
        )

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-state")


@pytest.fixture(scope="module")
def keys(state_dir: Path) -> Keys:
    trusted = ensure_dev_certs(state_dir / "trusted")
    foreign = ensure_dev_certs(state_dir / "foreign")
    return Keys(trusted.token_signing_key.read_bytes(), foreign.token_signing_key.read_bytes())


@pytest.fixture(scope="module")
def emulator(keys: Keys, state_dir: Path) -> Iterator[Emulator]:
    certs = ensure_dev_certs(state_dir / "trusted")
    tls_port = free_port()
    argv = [
        *(
            sys.executable,
            "-m",
            "devtools.realtime_emulator",
            "--port",
            PORT_PLACEHOLDER,
            "--host",
            "127.0.0.1",
        ),
        *(f"--api-key={API_KEY}", "--token-public-key", str(certs.token_signing_public_key)),
        *(
            "--tls-port",
            str(tls_port),
            "--tls-cert",
            str(certs.server_cert),
            "--tls-key",
            str(certs.server_key),
        ),
        *("--max-sessions", str(STARTUP_QUOTA["max_sessions"])),
        *("--requests-per-minute", str(STARTUP_QUOTA["requests_per_minute"])),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    service = ServiceProcess(
        "emulator", argv, probe=http_probe("/_emulator/health"), log_dir=state_dir, env=env
    )
    with service:
        yield Emulator(service, tls_port, certs.ca_file)
    assert "realtime emulator stopped" in service.log_tail(), service.log_tail()


def make_token(private_pem: bytes, *, audience: str = AUDIENCE, expires_in: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in,
        "oid": OBJECT_ID,
        "tid": TENANT,
        "appid": APP_ID,
    }
    return jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": "test-signing-key"})


# ---------------------------------------------------------------------------------------------------------
# Receiving and checking events


def unknown_fields(model: pydantic.BaseModel, path: str = "") -> set[str]:
    """Fields of a parsed event that its SDK type does not declare, as dotted paths."""
    found = {f"{path}{name}" for name in (model.model_extra or {})}
    for name in type(model).model_fields:
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, pydantic.BaseModel):
                found |= unknown_fields(child, f"{path}{name}.")
    return found


def checked(raw: bytes | str) -> dict[str, Any]:
    """Decode a server event and validate it strictly against the SDK's types."""
    event = json.loads(raw)
    parsed = SERVER_EVENT.validate_python(event, strict=True)
    assert unknown_fields(parsed) <= SERVICE_FIELDS_UNKNOWN_TO_SDK, event["type"]
    return event


async def receive(connection: AsyncRealtimeConnection, within: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        return checked(await connection.recv_bytes())


async def collect(
    connection: AsyncRealtimeConnection,
    events: list[dict[str, Any]],
    until: Callable[[dict[str, Any]], bool],
    within: float = 20.0,
) -> list[dict[str, Any]]:
    """Append received events to ``events`` until one satisfies ``until``; returns ``events``."""
    async with asyncio.timeout(within):
        while True:
            event = checked(await connection.recv_bytes())
            events.append(event)
            if until(event):
                return events


def never(event: dict[str, Any]) -> bool:
    return False


def is_type(*types: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] in types


@dataclass
class Turn:
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    @property
    def audio_chunks(self) -> list[bytes]:
        return [
            base64.b64decode(event["delta"])
            for event in self.events
            if event["type"] == "response.output_audio.delta"
        ]

    @property
    def audio(self) -> bytes:
        return b"".join(self.audio_chunks)

    @property
    def transcript_deltas(self) -> str:
        return "".join(
            event["delta"]
            for event in self.events
            if event["type"] == "response.output_audio_transcript.delta"
        )

    def last(self, type_: str) -> dict[str, Any]:
        return [event for event in self.events if event["type"] == type_][-1]


@asynccontextmanager
async def connected(
    emulator: Emulator, *, client: AsyncOpenAI | None = None, **query: str
) -> AsyncIterator[tuple[AsyncRealtimeConnection, dict[str, Any]]]:
    """A realtime connection (scenario parameters as query) and its ``session.created`` event."""
    client = client or emulator.client()
    async with client.realtime.connect(model=MODEL, extra_query=query) as connection:
        created = await receive(connection)
        assert created["type"] == "session.created"
        yield connection, created


async def send_question(connection: AsyncRealtimeConnection, text: str) -> None:
    await connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await connection.response.create()


async def ask(
    connection: AsyncRealtimeConnection, text: str, *, until: Callable[[dict[str, Any]], bool] | None = None
) -> Turn:
    """Send a user message and ``response.create``; collect events up to ``response.done`` (or ``until``)."""
    await send_question(connection, text)
    turn = Turn()
    await collect(connection, turn.events, until or is_type("response.done"))
    return turn


async def session_records(emulator: Emulator) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{emulator.http}/_emulator/sessions") as response:
        assert response.status == 200
        return await response.json()


async def session_record(emulator: Emulator, session_id: str) -> dict[str, Any]:
    return next(record for record in await session_records(emulator) if record["session_id"] == session_id)


async def control(emulator: Emulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{emulator.http}{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def refused(emulator: Emulator, client: AsyncOpenAI | None = None, **query: str) -> InvalidStatus:
    """Attempt a connection that the emulator must refuse at the handshake; returns the SDK's error."""
    with pytest.raises(InvalidStatus) as caught:
        async with (client or emulator.client()).realtime.connect(model=MODEL, extra_query=query):
            pass
    return caught.value


async def ended_record(emulator: Emulator, session_id: str) -> dict[str, Any]:
    """The session's record once the emulator has noticed that the connection ended (it answers
    `wait_idle` as soon as no session is open; the bound is only a safety net)."""
    status, stats = await control(emulator, "GET", "/_emulator/stats?wait_idle=30")
    assert status == 200 and stats["connections_open"] == 0, stats
    record = await session_record(emulator, session_id)
    assert record["ended_by"] is not None, f"session {session_id} did not end"
    return record


# ---------------------------------------------------------------------------------------------------------
# The full exchange

EXPECTED_HEAD = [
    "session.updated",
    "conversation.item.added",
    "conversation.item.done",
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
EXPECTED_TAIL = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


@pytest.mark.parametrize("key_header", ["authorization-bearer", "api-key"])
async def test_text_in_audio_out_with_an_api_key(emulator: Emulator, key_header: str) -> None:
    if key_header == "api-key":
        client = emulator.client(api_key="not-the-key")
        connect = client.realtime.connect(
            model=MODEL, extra_headers={"api-key": API_KEY, "Authorization": Omit()}
        )
    else:
        connect = emulator.client().realtime.connect(model=MODEL)
    async with connect as connection:
        created = await receive(connection)
        await connection.session.update(session=QUICKSTART_SESSION)
        turn = Turn()
        await collect(connection, turn.events, is_type("session.updated"))
        turn.events += (await ask(connection, QUESTION)).events

    expected = synthesize(QUESTION, "coral")
    assert turn.types[: len(EXPECTED_HEAD)] == EXPECTED_HEAD
    assert turn.types[-len(EXPECTED_TAIL) :] == EXPECTED_TAIL
    assert set(turn.types[len(EXPECTED_HEAD) : -len(EXPECTED_TAIL)]) == {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
    }
    assert turn.audio == expected.pcm
    assert 2.0 < expected.seconds < 5.0
    assert [len(chunk) for chunk in turn.audio_chunks[:3]] == [4800, 7200, 12000]
    assert max(len(chunk) for chunk in turn.audio_chunks) == 12000
    assert turn.transcript_deltas == expected.transcript == QUESTION
    assert turn.last("response.output_audio_transcript.done")["transcript"] == QUESTION

    response = turn.last("response.done")["response"]
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0] == {"type": "output_audio", "transcript": QUESTION}
    assert response["audio"]["output"]["voice"] == "coral"
    usage = response["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_token_details"]["audio_tokens"] == pytest.approx(expected.seconds * 20, abs=1)
    assert usage["output_token_details"]["text_tokens"] == pytest.approx(len(QUESTION) / 4, abs=1)
    assert usage["input_token_details"]["text_tokens"] > len(QUICKSTART_SESSION["instructions"]) / 4

    record = await ended_record(emulator, created["session"]["id"])
    assert record["auth"] == {"kind": "api-key", "claims": {}}
    assert record["model"] == MODEL
    assert record["session"]["instructions"] == QUICKSTART_SESSION["instructions"]
    assert record["session"]["audio"]["output"]["voice"] == "coral"
    assert record["session"]["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert record["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert record["client_event_types"] == ["session.update", "conversation.item.create", "response.create"]
    assert record["user_text"] == QUESTION
    assert record["transcript"] == QUESTION
    assert record["audio_bytes"] == len(expected.pcm)
    assert record["audio_sha256"] == hashlib.sha256(expected.pcm).hexdigest()
    assert record["response_id"] == response["id"]
    assert record["response_status"] == "completed"
    assert record["ended_by"] == "client_close"
    assert API_KEY not in json.dumps(record)


async def test_session_created_carries_the_services_defaults(emulator: Emulator) -> None:
    async with connected(emulator) as (_, created):
        session = created["session"]
    assert session["id"].startswith("sess_")
    assert session["type"] == "realtime"
    assert session["model"] == MODEL
    assert session["instructions"]
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "speed": 1.0,
    }
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["expires_at"] > time.time()


async def test_same_text_and_voice_give_the_same_bytes_over_two_sessions(emulator: Emulator) -> None:
    audio = []
    for _ in range(2):
        async with connected(emulator) as (connection, _):
            audio.append((await ask(connection, "Same words, same sound.")).audio)
    assert audio[0] == audio[1] == synthesize("Same words, same sound.", "alloy").pcm


async def test_text_only_responses_stream_text_events(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        await receive(connection)
        turn = await ask(connection, "Write it down.")
    assert "response.output_audio.delta" not in turn.types
    assert turn.last("response.output_text.done")["text"] == "Write it down."
    assert turn.last("response.done")["response"]["output"][0]["content"][0]["type"] == "output_text"


async def test_out_of_band_response_with_its_own_input_and_voice(emulator: Emulator) -> None:
    text = "Outside the conversation."
    async with connected(emulator) as (connection, _):
        await connection.response.create(
            response={
                "conversation": "none",
                "input": [
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
                ],
                "audio": {"output": {"voice": "ash"}},
                "metadata": {"purpose": "test"},
            }
        )
        turn = Turn()
        await collect(connection, turn.events, is_type("response.done"))
    assert "conversation.item.added" not in turn.types
    assert turn.audio == synthesize(text, "ash").pcm
    response = turn.last("response.done")["response"]
    assert response["conversation_id"] is None
    assert response["metadata"] == {"purpose": "test"}
    assert response["audio"]["output"]["voice"] == "ash"


# ---------------------------------------------------------------------------------------------------------
# Authentication at the handshake


@pytest.mark.parametrize("audience", [AUDIENCE, AUDIENCE + "/"])
async def test_entra_token_for_cognitive_services_is_accepted(
    emulator: Emulator, keys: Keys, audience: str
) -> None:
    token = make_token(keys.signing, audience=audience)

    async def token_provider() -> str:
        return token

    async with connected(emulator, client=emulator.client(api_key=token_provider)) as (connection, created):
        turn = await ask(connection, "Signed in with a token.")
    assert turn.last("response.done")["response"]["status"] == "completed"
    record = await session_record(emulator, created["session"]["id"])
    assert record["auth"] == {
        "kind": "entra",
        "claims": {
            "aud": audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "oid": OBJECT_ID,
            "tid": TENANT,
            "appid": APP_ID,
        },
    }
    assert token not in json.dumps(record)


@pytest.mark.parametrize(
    "credential",
    ["forged signature", "wrong audience", "expired", "garbage", "wrong api key", "none"],
)
async def test_bad_credentials_are_refused_with_401(emulator: Emulator, keys: Keys, credential: str) -> None:
    tokens = {
        "forged signature": lambda: make_token(keys.foreign),
        "wrong audience": lambda: make_token(keys.signing, audience="https://storage.azure.com"),
        "expired": lambda: make_token(keys.signing, expires_in=-120),
        "garbage": lambda: "not.a.token",
        "wrong api key": lambda: "not-the-key",
    }
    if credential == "none":
        client = emulator.client(api_key="unused")
        with pytest.raises(InvalidStatus) as caught:
            async with client.realtime.connect(model=MODEL, extra_headers={"Authorization": Omit()}):
                pass
        error = caught.value
    else:
        error = await refused(emulator, emulator.client(api_key=tokens[credential]()))
    assert error.response.status_code == 401
    body = json.loads(error.response.body)
    assert body["error"]["code"] == "401"
    assert body["error"]["message"]


async def test_api_key_header_with_the_wrong_key_is_refused(emulator: Emulator) -> None:
    client = emulator.client(api_key="unused")
    with pytest.raises(InvalidStatus) as caught:
        async with client.realtime.connect(
            model=MODEL, extra_headers={"api-key": "wrong", "Authorization": Omit()}
        ):
            pass
    assert caught.value.response.status_code == 401
    assert "subscription key" in json.loads(caught.value.response.body)["error"]["message"]


async def test_credentials_never_reach_the_log(emulator: Emulator, keys: Keys) -> None:
    token = make_token(keys.signing)

    async def token_provider() -> str:
        return token

    session_ids = []
    for client in (emulator.client(), emulator.client(api_key=token_provider)):
        async with connected(emulator, client=client) as (connection, created):
            await ask(connection, "Keep my secrets.")
        session_ids.append(created["session"]["id"])
    for session_id in session_ids:
        await ended_record(emulator, session_id)  # logged as it ends
    log = emulator.log_path.read_text()
    assert all(f"session {session_id} ended" in log for session_id in session_ids)
    assert API_KEY not in log
    assert token not in log and "eyJ" not in log


# ---------------------------------------------------------------------------------------------------------
# session.update validation


@pytest.mark.parametrize(
    ("update", "code", "param"),
    [
        ({"audio": {"output": {"voice": "nova"}}}, "invalid_value", "session.audio.output.voice"),
        (
            {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "invalid_value",
            "session.audio.output.format.rate",
        ),
        (
            {"audio": {"input": {"format": {"type": "audio/wav"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"audio": {"output": {"format": {"type": "audio/pcmu", "rate": 8000}}}},
            "unknown_parameter",
            "session.audio.output.format.rate",
        ),
        ({"voice": "alloy"}, "unknown_parameter", "session.voice"),
        (
            {"audio": {"output": {"voice": "alloy", "pitch": 2}}},
            "unknown_parameter",
            "session.audio.output.pitch",
        ),
        ({"instructions": 42}, "invalid_type", "session.instructions"),
        ({"audio": {"output": {"speed": 3}}}, "decimal_above_max_value", "session.audio.output.speed"),
        ({"output_modalities": ["audio", "text"]}, "array_above_max_length", "session.output_modalities"),
        ({"max_output_tokens": 0}, "integer_below_min_value", "session.max_output_tokens"),
        ({"tools": "all"}, "invalid_value", "session.tools"),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "high"}}}},
            "invalid_type",
            "session.audio.input.turn_detection.threshold",
        ),
    ],
)
async def test_invalid_session_update_is_an_error_and_changes_nothing(
    emulator: Emulator, update: dict[str, Any], code: str, param: str
) -> None:
    async with connected(emulator) as (connection, created):
        await connection.send(
            {"type": "session.update", "event_id": "evt_client_1", "session": {"type": "realtime", **update}}
        )  # type: ignore[arg-type]
        error = await receive(connection)
        await connection.session.update(session={"type": "realtime"})
        unchanged = await receive(connection)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "evt_client_1"
    assert error["error"]["message"]
    assert unchanged["type"] == "session.updated"
    assert unchanged["session"] == created["session"]
    record = await session_record(emulator, created["session"]["id"])
    assert record["error_codes"] == [code]
    assert record["session"] == created["session"]


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ("not json", "invalid_json", None),
        ({"type": "session.nope"}, "invalid_value", "type"),
        ({"type": "response.create", "response": {"voice": "alloy"}}, "unknown_parameter", "response.voice"),
        ({"type": "response.cancel"}, "response_cancel_not_active", None),
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty", None),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}},
            "missing_required_parameter",
            "item.content",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "item_1",
                "content_index": 0,
                "audio_end_ms": 0,
            },
            "unsupported_by_emulator",
            "type",
        ),
    ],
)
async def test_malformed_or_unsupported_client_events_get_error_events(
    emulator: Emulator, event: Any, code: str, param: str | None
) -> None:
    async with connected(emulator) as (connection, _):
        if isinstance(event, str):
            await connection.send_raw(event)
        else:
            await connection.send(event)
        error = await receive(connection)
    assert (error["type"], error["error"]["code"], error["error"]["param"]) == ("error", code, param)


async def test_session_update_without_type_is_missing_a_required_parameter(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await connection.send({"type": "session.update", "session": {"instructions": "Hi."}})  # type: ignore[arg-type]
        error = await receive(connection)
    assert (error["error"]["code"], error["error"]["param"]) == ("missing_required_parameter", "session.type")


async def test_partial_session_update_merges_into_the_session(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, created):
        await connection.session.update(session={"type": "realtime", "audio": {"output": {"voice": "marin"}}})
        updated = (await receive(connection))["session"]
    assert updated["audio"]["output"] == {**created["session"]["audio"]["output"], "voice": "marin"}
    assert updated["audio"]["input"] == created["session"]["audio"]["input"]


async def test_voice_cannot_change_once_the_assistant_has_spoken(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await ask(connection, "Speak first.")
        await connection.session.update(session={"type": "realtime", "audio": {"output": {"voice": "verse"}}})
        error = await receive(connection)
    assert error["error"]["code"] == "cannot_update_voice"


async def test_a_second_response_while_one_is_active_is_refused(emulator: Emulator) -> None:
    async with connected(emulator, scenario="slow", pace="20") as (connection, _):
        await send_question(connection, "One at a time.")
        await connection.response.create()
        events: list[dict[str, Any]] = []
        await collect(connection, events, is_type("response.done"))
    errors = [event["error"]["code"] for event in events if event["type"] == "error"]
    assert errors == ["conversation_already_has_active_response"]


async def test_history_items_are_kept_in_order_and_the_last_user_message_is_answered(
    emulator: Emulator,
) -> None:
    spoken = synthesize("An earlier spoken turn.").pcm
    history = [
        {"role": "user", "content": [{"type": "input_text", "text": "First question."}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "First answer."}]},
        {"role": "user", "content": [{"type": "input_audio", "audio": base64.b64encode(spoken).decode()}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Second answer."}]},
    ]
    async with connected(emulator) as (connection, created):
        events: list[dict[str, Any]] = []
        for item in history:
            await connection.conversation.item.create(item={"type": "message", **item})
            await collect(connection, events, is_type("conversation.item.done"))
        turn = await ask(connection, "The last question.")
    assert turn.transcript_deltas == "The last question."
    record = await ended_record(emulator, created["session"]["id"])
    assert [(item["role"], item["content"][0]["type"]) for item in record["items"]] == [
        ("user", "input_text"),
        ("assistant", "output_text"),
        ("user", "input_audio"),
        ("assistant", "output_text"),
        ("user", "input_text"),
        ("assistant", "output_audio"),
    ]
    assert record["items"][2]["content"][0] == {
        "type": "input_audio",
        "audio_bytes": len(spoken),
        "audio_sha256": hashlib.sha256(spoken).hexdigest(),
    }
    assert record["items"][3]["content"][0]["text"] == "Second answer."
    assert record["items"][5]["content"][0]["transcript"] == "The last question."


async def test_assistant_audio_parts_are_refused_as_the_service_does(emulator: Emulator) -> None:
    audio = base64.b64encode(synthesize("Spoken before.").pcm).decode()
    item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_audio", "audio": audio, "transcript": "Spoken before."}],
    }
    async with connected(emulator) as (connection, created):
        await connection.conversation.item.create(item=item)
        error = await receive(connection)
    assert error["type"] == "error"
    assert error["error"]["code"] == "missing_required_parameter"
    assert error["error"]["param"] == "item.content[0].text"
    assert (await ended_record(emulator, created["session"]["id"]))["items"] == []


# ---------------------------------------------------------------------------------------------------------
# Scenarios

SCENARIO_TEXT = "Tell me a story about a small emulator that could."


def cut(speech_pcm: bytes, at: float) -> bytes:
    return speech_pcm[: int(len(speech_pcm) * at) // 2 * 2]


async def test_error_mid_sends_an_error_after_some_audio_and_no_response_done(emulator: Emulator) -> None:
    full = synthesize(SCENARIO_TEXT).pcm
    async with connected(emulator, scenario="error_mid", at="0.4") as (connection, created):
        turn = await ask(connection, SCENARIO_TEXT, until=is_type("error"))
        with pytest.raises(TimeoutError):
            await receive(connection, within=0.3)
        retry = await ask(connection, "[[emulator:normal]] Again, please.")
    error = turn.last("error")["error"]
    assert (error["type"], error["code"]) == ("server_error", None)
    assert "response.done" not in turn.types
    assert turn.audio == cut(full, 0.4) and 0 < len(turn.audio) < len(full)
    assert retry.last("response.done")["response"]["status"] == "completed"
    assert (await session_record(emulator, created["session"]["id"]))["scenario"] == "normal"


async def test_drop_closes_the_connection_without_a_close_frame(emulator: Emulator) -> None:
    full = synthesize(SCENARIO_TEXT).pcm
    turn = Turn()
    async with connected(emulator, scenario="drop", at="0.3") as (connection, created):
        await send_question(connection, SCENARIO_TEXT)
        with pytest.raises(ConnectionClosedError) as closed:
            await collect(connection, turn.events, never)
    assert closed.value.rcvd is None, "the emulator must not send a close frame"
    assert turn.audio == cut(full, 0.3) and len(turn.audio) > 0
    assert "response.done" not in turn.types
    record = await ended_record(emulator, created["session"]["id"])
    assert record["ended_by"] == "emulator_drop"
    assert record["response_status"] == "in_progress"
    assert record["audio_bytes"] == len(turn.audio)


async def test_stall_goes_quiet_until_the_client_cancels(emulator: Emulator) -> None:
    full = synthesize(SCENARIO_TEXT).pcm
    async with connected(emulator, scenario="stall", at="0.5") as (connection, _):
        await send_question(connection, SCENARIO_TEXT)
        turn = Turn()
        with pytest.raises(TimeoutError):
            await collect(connection, turn.events, never, within=0.5)
        assert turn.audio == cut(full, 0.5)
        assert "response.done" not in turn.types
        await connection.response.cancel()
        await collect(connection, turn.events, is_type("response.done"))
    response = turn.last("response.done")["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"]["reason"] == "client_cancelled"


@pytest.mark.parametrize(
    ("directive", "status", "details"),
    [
        (
            "[[emulator:incomplete at=0.25]]",
            "incomplete",
            {"type": "incomplete", "reason": "max_output_tokens"},
        ),
        ("[[emulator:cancelled at=0.25]]", "cancelled", {"type": "cancelled", "reason": "client_cancelled"}),
        (
            "[[emulator:cancelled at=0.25 reason=turn_detected]]",
            "cancelled",
            {"type": "cancelled", "reason": "turn_detected"},
        ),
    ],
)
async def test_cut_short_responses_end_with_their_status(
    emulator: Emulator, directive: str, status: str, details: dict[str, str]
) -> None:
    text = f"{SCENARIO_TEXT} {directive}"
    full = synthesize(text)
    async with connected(emulator) as (connection, _):
        turn = await ask(connection, text)
    response = turn.last("response.done")["response"]
    assert (response["status"], response["status_details"]) == (status, details)
    assert turn.audio == cut(full.pcm, 0.25)
    assert response["output"][0]["status"] == "incomplete"
    assert response["output"][0]["content"][0]["transcript"] == turn.transcript_deltas
    assert full.transcript.startswith(turn.transcript_deltas) and turn.transcript_deltas != full.transcript


async def test_failed_ends_with_a_server_error_in_status_details(emulator: Emulator) -> None:
    async with connected(emulator, scenario="failed") as (connection, _):
        turn = await ask(connection, SCENARIO_TEXT)
    response = turn.last("response.done")["response"]
    assert response["status"] == "failed"
    assert response["status_details"]["type"] == "failed"
    assert response["status_details"]["error"]["type"] == "server_error"
    assert turn.audio == cut(synthesize(SCENARIO_TEXT).pcm, 0.5)


async def test_max_output_tokens_cuts_the_answer_as_incomplete(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await connection.session.update(session={"type": "realtime", "max_output_tokens": 20})
        await receive(connection)
        turn = await ask(connection, SCENARIO_TEXT)
    response = turn.last("response.done")["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"]["reason"] == "max_output_tokens"
    assert response["usage"]["output_tokens"] <= 20
    assert 0 < len(turn.audio) < len(synthesize(SCENARIO_TEXT).pcm)


async def test_rate_limit_answers_with_an_error_instead_of_a_response(emulator: Emulator) -> None:
    async with connected(emulator, scenario="rate_limit") as (connection, created):
        turn = await ask(connection, SCENARIO_TEXT, until=is_type("error"))
    assert turn.last("error")["error"]["code"] == "rate_limit_exceeded"
    assert "response.created" not in turn.types
    record = await session_record(emulator, created["session"]["id"])
    assert record["error_codes"] == ["rate_limit_exceeded"]
    assert record["response_id"] is None


async def test_slow_paces_audio_against_the_clock(emulator: Emulator) -> None:
    seconds, pace = 4.0, 2.0  # paced: 2 s, against well under 100 ms at full speed
    elapsed: dict[str, float] = {}
    for scenario in ("normal", "slow"):
        query = {"scenario": scenario, "seconds": str(seconds)} | (
            {"pace": str(pace)} if scenario == "slow" else {}
        )
        async with connected(emulator, **query) as (connection, _):
            started = time.monotonic()
            turn = await ask(connection, SCENARIO_TEXT)
            elapsed[scenario] = time.monotonic() - started
        assert len(turn.audio) == seconds * SAMPLE_RATE * 2
    assert elapsed["slow"] >= 0.9 * seconds / pace  # never sooner (a busy machine only slows it)
    assert elapsed["normal"] < elapsed["slow"]  # both in one run: a busy machine slows both


async def test_client_cancel_stops_a_slow_response(emulator: Emulator) -> None:
    async with connected(emulator, scenario="slow", pace="2") as (connection, _):
        turn = await ask(connection, SCENARIO_TEXT, until=is_type("response.output_audio.delta"))
        await connection.response.cancel()
        await collect(connection, turn.events, is_type("response.done"))
    response = turn.last("response.done")["response"]
    assert response["status"] == "cancelled"
    assert len(turn.audio) < len(synthesize(SCENARIO_TEXT).pcm)


async def test_long_sends_exactly_the_requested_seconds_of_audio(emulator: Emulator) -> None:
    text = "[[emulator:long seconds=300]] Read the whole chapter aloud."
    expected = synthesize(text, seconds=300)
    async with connected(emulator) as (connection, created):
        turn = await ask(connection, text)
    assert len(turn.audio) == 300 * SAMPLE_RATE * 2 == len(expected.pcm)
    assert turn.audio == expected.pcm
    assert (
        turn.last("response.done")["response"]["output"][0]["content"][0]["transcript"] == expected.transcript
    )
    record = await session_record(emulator, created["session"]["id"])
    assert (record["scenario"], record["scenario_params"]) == ("long", {"seconds": 300.0})
    assert record["user_text"] == text


@pytest.mark.parametrize(
    "text", ["[[emulator:nap]]", "Go [[emulator:slow pace]]", "[[emulator:handshake_429]]"]
)
async def test_bad_directives_are_reported_on_the_item(emulator: Emulator, text: str) -> None:
    async with connected(emulator) as (connection, _):
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        )
        error = await receive(connection)
    assert error["error"]["code"] == "invalid_emulator_directive"
    assert error["error"]["param"] == "item.content[0].text"


async def test_unknown_scenario_in_the_query_is_a_bad_request(emulator: Emulator) -> None:
    error = await refused(emulator, scenario="nap")
    assert error.response.status_code == 400


# ---------------------------------------------------------------------------------------------------------
# Handshake faults and control routes


@pytest.mark.parametrize(
    ("status", "retry_after", "retry_after_ms"),
    [
        (429, "1", "1000"),
        (400, None, None),
        (401, None, None),
        (404, None, None),
        (500, None, None),
        (503, "1", None),
    ],
)
async def test_handshake_scenarios_refuse_with_their_status(
    emulator: Emulator, status: int, retry_after: str | None, retry_after_ms: str | None
) -> None:
    error = await refused(emulator, scenario=f"handshake_{status}")
    assert error.response.status_code == status
    assert error.response.headers.get("Retry-After") == retry_after
    assert error.response.headers.get("retry-after-ms") == retry_after_ms
    assert json.loads(error.response.body)["error"]["message"]


async def test_a_missing_deployment_is_refused_as_azure_refuses_it(emulator: Emulator) -> None:
    error = await refused(emulator, scenario="handshake_404")
    body = json.loads(error.response.body)["error"]
    assert (error.response.status_code, body["code"]) == (404, "DeploymentNotFound")
    assert "deployment for this resource does not exist" in body["message"]


async def test_injected_handshake_faults_refuse_the_next_handshakes(emulator: Emulator) -> None:
    _, before = await control(emulator, "GET", "/_emulator/stats")
    status, fault = await control(
        emulator, "POST", "/_emulator/handshake-faults", {"status": 429, "count": 2, "retry_after": 7}
    )
    assert (status, fault) == (200, {"status": 429, "remaining": 2, "retry_after": 7, "retry_after_ms": 7000})
    for _ in range(2):
        error = await refused(emulator)
        assert error.response.status_code == 429
        assert error.response.headers["Retry-After"] == "7"
        assert error.response.headers["retry-after-ms"] == "7000"
        assert json.loads(error.response.body)["error"]["code"] == "429"
    async with connected(emulator) as (_, created):
        assert created["session"]["id"]
        _, during = await control(emulator, "GET", "/_emulator/stats")
    assert during["connections_open"] >= 1
    assert during["handshake_refusals"] == before["handshake_refusals"] + 2
    assert during["handshake_refusals_by_status"]["429"] >= 2
    assert during["connections_total"] == before["connections_total"] + 1
    assert during["handshake_faults_pending"] is None


async def test_stats_can_wait_until_no_session_is_open(emulator: Emulator) -> None:
    async with connected(emulator):
        waiting = asyncio.create_task(control(emulator, "GET", "/_emulator/stats?wait_idle=60"))
        _, during = await control(emulator, "GET", "/_emulator/stats")
        assert during["connections_open"] >= 1
        assert not waiting.done(), "answered while a session was open"
    assert await waiting == (200, {**during, "connections_open": 0})
    assert await control(emulator, "GET", "/_emulator/stats?wait_idle=soon") == (
        400,
        {"error": "wait_idle must be a number of seconds"},
    )


async def test_a_handshake_fault_can_ask_for_a_wait_in_milliseconds(emulator: Emulator) -> None:
    status, fault = await control(
        emulator, "POST", "/_emulator/handshake-faults", {"status": 429, "count": 1, "retry_after_ms": 250}
    )
    assert (status, fault) == (200, {"status": 429, "remaining": 1, "retry_after": 1, "retry_after_ms": 250})
    error = await refused(emulator)
    assert (error.response.headers["Retry-After"], error.response.headers["retry-after-ms"]) == ("1", "250")


@pytest.mark.parametrize(
    "body",
    [
        {"status": 418},
        {"status": 429, "retry_after": 1, "retry_after_ms": 1000},
        {"status": 429, "retry_after_ms": -1},
    ],
)
async def test_handshake_fault_requests_are_checked(emulator: Emulator, body: dict[str, int]) -> None:
    status, _ = await control(emulator, "POST", "/_emulator/handshake-faults", body)
    assert status == 400


async def test_a_handshake_delay_holds_every_handshake_until_it_is_reset(emulator: Emulator) -> None:
    assert await control(emulator, "POST", "/_emulator/handshake-delay", {"ms": 300}) == (200, {"ms": 300})
    try:
        assert await control(emulator, "GET", "/_emulator/handshake-delay") == (200, {"ms": 300})
        started = time.monotonic()
        async with connected(emulator) as (_, created):
            waited = time.monotonic() - started
            assert created["session"]["id"]
        error = await refused(emulator, scenario="handshake_503")
        assert error.response.status_code == 503
        _, stats = await control(emulator, "GET", "/_emulator/stats")
        assert stats["handshake_delay_ms"] == 300
    finally:
        await control(emulator, "POST", "/_emulator/handshake-delay", {"ms": 0})
    assert waited >= 0.3  # a lower bound: the delay is never skipped
    assert await control(emulator, "GET", "/_emulator/handshake-delay") == (200, {"ms": 0})


@pytest.mark.parametrize(
    "body", [{"ms": -1}, {"ms": "150"}, {"ms": True}, {"ms": 60_001}, {}, {"ms": 1, "extra": 2}, [1]]
)
async def test_handshake_delay_requests_are_checked(emulator: Emulator, body: Any) -> None:
    status, _ = await control(emulator, "POST", "/_emulator/handshake-delay", body)
    assert status == 400
    assert await control(emulator, "GET", "/_emulator/handshake-delay") == (200, {"ms": 0})


async def test_an_idle_session_is_closed_and_a_busy_one_is_not(emulator: Emulator) -> None:
    """A session held open without a client event ends at the idle timeout with a close frame; the
    record tells when it opened and that no `session.update` ever came."""
    assert await control(emulator, "POST", "/_emulator/idle-timeout", {"seconds": 0.5}) == (
        200,
        {"seconds": 0.5},
    )
    try:
        async with connected(emulator) as (idle, created):
            with pytest.raises(ConnectionClosedOK) as closed:
                await receive(idle)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        record = await ended_record(emulator, created["session"]["id"])
        assert record["ended_by"] == "emulator_idle_timeout"
        assert record["first_session_update_at"] is None
        assert record["opened_at"] < record["ended_at"]
        async with connected(emulator, scenario="slow", pace="1", seconds="1") as (busy, created):
            await busy.session.update(session={"type": "realtime", "instructions": "Slowly."})
            turn = await ask(busy, "Held longer than the idle timeout by its answer.")
        assert turn.last("response.done")["response"]["status"] == "completed"
        record = await ended_record(emulator, created["session"]["id"])
        assert record["ended_by"] == "client_close"
        assert record["opened_at"] <= record["first_session_update_at"] <= record["ended_at"]
    finally:
        await control(emulator, "POST", "/_emulator/idle-timeout", {"seconds": None})
    assert await control(emulator, "GET", "/_emulator/idle-timeout") == (200, {"seconds": None})


@pytest.mark.parametrize("body", [{"seconds": 0}, {"seconds": -1}, {"seconds": "1"}, {}, None])
async def test_idle_timeout_requests_are_checked(emulator: Emulator, body: Any) -> None:
    status, _ = await control(emulator, "POST", "/_emulator/idle-timeout", body)
    assert status == 400


async def test_injected_scenario_faults_script_the_next_connections(emulator: Emulator) -> None:
    status, fault = await control(emulator, "POST", "/_emulator/scenario-faults", {"scenario": "drop"})
    assert (status, fault) == (200, {"scenario": "drop", "remaining": 1})
    ids = []
    for _ in range(2):
        async with connected(emulator) as (_, created):
            ids.append(created["session"]["id"])
    scenarios = {record["session_id"]: record["scenario"] for record in await session_records(emulator)}
    assert [scenarios[session_id] for session_id in ids] == ["drop", "normal"]


@pytest.mark.parametrize("body", [{"scenario": "handshake_429"}, {"scenario": "nope"}, {"count": 1}])
async def test_scenario_fault_requests_are_checked(emulator: Emulator, body: dict[str, Any]) -> None:
    assert (await control(emulator, "POST", "/_emulator/scenario-faults", body))[0] == 400


async def test_health_and_clearing_the_session_log(emulator: Emulator) -> None:
    assert await control(emulator, "GET", "/_emulator/health") == (200, {"status": "ok"})
    async with connected(emulator):
        pass
    assert await session_records(emulator)
    status, body = await control(emulator, "DELETE", "/_emulator/sessions")
    assert status == 200 and body["cleared"] >= 1
    assert await session_records(emulator) == []


# ---------------------------------------------------------------------------------------------------------
# TLS listener


async def test_tls_listener_serves_wss_with_the_test_ca(emulator: Emulator) -> None:
    client = emulator.client(tls=True)
    connect = client.realtime.connect(
        model=MODEL, websocket_connection_options={"ssl": emulator.tls_context()}
    )
    async with connect as connection:
        created = await receive(connection)
        turn = await ask(connection, "Over TLS.")
    assert created["type"] == "session.created"
    assert turn.audio == synthesize("Over TLS.").pcm


# ---------------------------------------------------------------------------------------------------------
# The pure synthesis function


def test_synthesis_is_deterministic_and_depends_on_text_and_voice() -> None:
    first = synthesize("Hello there, general listener.", "alloy")
    assert first == synthesize("Hello there, general listener.", "alloy")
    assert first.pcm != synthesize("Hello there, general listener.", "ash").pcm
    assert first.pcm != synthesize("Hello there, general listener!", "alloy").pcm
    assert len(first.pcm) % 2 == 0
    assert first.transcript == "Hello there, general listener."
    assert "".join(delta for _, delta in first.marks) == first.transcript


def test_synthesis_of_minutes_is_exact_and_repeats_one_utterance() -> None:
    once = synthesize("A long answer.", "sage")
    speech = synthesize("A long answer.", "sage", seconds=600)
    assert len(speech.pcm) == 600 * SAMPLE_RATE * 2
    # Minutes cost one utterance's synthesis: the rest is that audio repeated, then cut.
    repeats = -(-len(speech.pcm) // len(once.pcm))
    assert speech.pcm == (once.pcm * repeats)[: len(speech.pcm)]
    assert speech.transcript.startswith("A long answer. A long answer.")


def test_speed_shortens_the_audio() -> None:
    normal = synthesize("Faster, please.", "echo")
    fast = synthesize("Faster, please.", "echo", speed=1.5)
    assert len(fast.pcm) == pytest.approx(len(normal.pcm) / 1.5, rel=0.01)


def test_espeak_speaks_the_transcript_as_24khz_pcm() -> None:
    speech = synthesize("This is real speech.", "alloy", engine="espeak")
    assert speech.transcript == "This is real speech."
    assert 0.5 < speech.seconds < 5
    assert len(speech.pcm) % 2 == 0
    assert speech.pcm != synthesize("This is real speech.", "alloy").pcm
    assert [delta for _, delta in speech.marks] == ["This", " is", " real", " speech."]


def test_help_documents_the_scenarios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devtools.realtime_emulator", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in ("normal", "error_mid", "drop", "stall", "incomplete", "failed", "cancelled", "rate_limit"):
        assert name in result.stdout
    assert "[[emulator:NAME key=value ...]]" in result.stdout
    assert "/_emulator/handshake-faults" in result.stdout
    for option in ("--handshake-delay-ms", "--idle-timeout-seconds", "/_emulator/idle-timeout"):
        assert option in result.stdout
    for name in ("transcript_late", "transcript_never", "transcript_failed", "delay="):
        assert name in result.stdout
    for route in ("/_emulator/quota", "/_emulator/admissions", "/_emulator/sessions/ID/input_audio"):
        assert route in result.stdout


# ---------------------------------------------------------------------------------------------------------
# Spoken input: the input audio buffer, committed items, input transcription

AUDIO_QUESTION = "What is the weather like in Lisbon today?"
PUSH_TO_TALK: dict[str, Any] = {
    "type": "realtime",
    "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
}
COMPLETED = "conversation.item.input_audio_transcription.completed"
TRANSCRIPTION_DELTA = "conversation.item.input_audio_transcription.delta"
APPEND_BYTES = 9600


def first(events: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    return next(event for event in events if event["type"] == type_)


async def configure(connection: AsyncRealtimeConnection, session: dict[str, Any]) -> dict[str, Any]:
    """``session.update``; returns the updated session."""
    await connection.session.update(session=session)  # type: ignore[arg-type]
    updated = await receive(connection)
    assert updated["type"] == "session.updated", updated
    return updated["session"]


async def append(connection: AsyncRealtimeConnection, audio: bytes) -> None:
    for start in range(0, len(audio), APPEND_BYTES):
        chunk = audio[start : start + APPEND_BYTES]
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


async def speak(connection: AsyncRealtimeConnection, audio: bytes) -> None:
    """Push-to-talk: append the audio in chunks, then commit it."""
    await append(connection, audio)
    await connection.input_audio_buffer.commit()


async def input_audio_route(emulator: Emulator, session_id: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{emulator.http}/_emulator/sessions/{session_id}/input_audio") as response,
    ):
        return response.status, await response.read()


def audio_tokens(byte_count: int, bytes_per_second: int) -> int:
    """The documented rule: 20 audio tokens per second, one per started 50 ms."""
    return math.ceil(byte_count * 20 / bytes_per_second)


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe"])
async def test_committed_audio_becomes_a_transcribed_user_item_and_is_answered(
    emulator: Emulator, model: str
) -> None:
    spoken = synthesize(AUDIO_QUESTION, "marin").pcm
    session = {
        **PUSH_TO_TALK,
        "audio": {"input": {"turn_detection": None, "transcription": {"model": model}}},
    }
    async with connected(emulator) as (connection, created):
        updated = await configure(connection, session)
        await speak(connection, spoken)
        turn = Turn()
        await collect(connection, turn.events, is_type(COMPLETED))
        await connection.response.create()
        await collect(connection, turn.events, is_type("response.done"))
    session_id = created["session"]["id"]

    assert updated["audio"]["input"]["turn_detection"] is None
    heard = turn.types[: turn.types.index("response.created")]
    assert heard[:3] == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert set(heard[3:-1]) == {TRANSCRIPTION_DELTA} and heard[-1] == COMPLETED
    committed = first(turn.events, "input_audio_buffer.committed")
    assert committed["previous_item_id"] is None
    item = first(turn.events, "conversation.item.added")["item"]
    assert item["id"] == committed["item_id"]
    assert (item["type"], item["role"], item["status"]) == ("message", "user", "completed")
    assert item["content"] == [{"type": "input_audio", "transcript": None}]
    deltas = [event for event in turn.events if event["type"] == TRANSCRIPTION_DELTA]
    assert all((d["item_id"], d["content_index"]) == (item["id"], 0) for d in deltas)
    assert "".join(delta["delta"] for delta in deltas) == AUDIO_QUESTION
    completed = turn.last(COMPLETED)
    assert (completed["item_id"], completed["content_index"]) == (item["id"], 0)
    assert completed["transcript"] == AUDIO_QUESTION
    audio_in_tokens = audio_tokens(len(spoken), SAMPLE_RATE * 2)
    if model == "whisper-1":
        assert completed["usage"] == {"type": "duration", "seconds": round(len(spoken) / SAMPLE_RATE / 2, 3)}
    else:
        text_out = math.ceil(len(AUDIO_QUESTION) / 4)
        assert completed["usage"] == {
            "type": "tokens",
            "input_tokens": audio_in_tokens,
            "output_tokens": text_out,
            "total_tokens": audio_in_tokens + text_out,
            "input_token_details": {"audio_tokens": audio_in_tokens, "text_tokens": 0},
        }

    assert turn.audio == synthesize(AUDIO_QUESTION, "alloy").pcm
    assert turn.transcript_deltas == AUDIO_QUESTION
    response = turn.last("response.done")["response"]
    assert response["status"] == "completed"
    assert response["usage"]["input_token_details"]["audio_tokens"] == audio_in_tokens

    record = await session_record(emulator, session_id)
    assert record["user_text"] == AUDIO_QUESTION
    assert record["input_audio"] == [
        {
            "item_id": item["id"],
            "format": {"type": "audio/pcm", "rate": 24000},
            "bytes": len(spoken),
            "samples": len(spoken) // 2,
            "seconds": len(spoken) / 48000,
            "sha256": hashlib.sha256(spoken).hexdigest(),
            "heard": AUDIO_QUESTION,
            "transcript": AUDIO_QUESTION,
        }
    ]
    assert record["client_event_types"].count("input_audio_buffer.append") == math.ceil(
        len(spoken) / APPEND_BYTES
    )
    assert await input_audio_route(emulator, session_id) == (200, spoken)


def through_16khz(pcm: bytes) -> bytes:
    down = soxr.resample(np.frombuffer(pcm, dtype="<i2"), 24000, 16000)
    return soxr.resample(down, 16000, 24000).astype("<i2").tobytes()


def through_mp3(pcm: bytes) -> bytes:
    encoded = io.BytesIO()
    soundfile.write(encoded, np.frombuffer(pcm, dtype="<i2"), 24000, format="MP3")
    samples, rate = soundfile.read(io.BytesIO(encoded.getvalue()), dtype="int16")
    assert rate == 24000
    return samples.astype("<i2").tobytes()


ROUND_TRIPS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "pcm 24 kHz": ("audio/pcm", lambda pcm: pcm),
    "pcm through 16 kHz": ("audio/pcm", through_16khz),
    "pcm through mp3": ("audio/pcm", through_mp3),
    "g711 u-law": ("audio/pcmu", lambda pcm: encode_audio(pcm, "audio/pcmu")),
    "g711 a-law": ("audio/pcma", lambda pcm: encode_audio(pcm, "audio/pcma")),
}


@pytest.mark.parametrize("path", list(ROUND_TRIPS))
async def test_an_answer_sent_back_in_is_heard_as_its_text(emulator: Emulator, path: str) -> None:
    text = "Turn left at the café, then go 200 m north!"
    input_format, transform = ROUND_TRIPS[path]
    audio = transform(synthesize(text, "ash", speed=1.25).pcm)
    session = {**PUSH_TO_TALK, "audio": {**PUSH_TO_TALK["audio"]}}
    session["audio"]["input"] = {**session["audio"]["input"], "format": {"type": input_format}}
    async with connected(emulator) as (connection, created):
        await configure(connection, session)
        await speak(connection, audio)
        turn = Turn()
        await collect(connection, turn.events, is_type(COMPLETED))
        await connection.response.create()
        await collect(connection, turn.events, is_type("response.done"))
    assert turn.last(COMPLETED)["transcript"] == text
    assert turn.transcript_deltas == text
    record = await session_record(emulator, created["session"]["id"])
    entry = record["input_audio"][0]
    assert entry["format"]["type"] == input_format
    assert entry["samples"] == len(audio) // (2 if input_format == "audio/pcm" else 1)
    assert entry["sha256"] == hashlib.sha256(audio).hexdigest()


def noise(seconds: float) -> bytes:
    samples = np.random.default_rng(7).normal(0, 3000, round(seconds * SAMPLE_RATE))
    return samples.astype("<i2").tobytes()


async def test_audio_that_is_not_the_emulators_tones_is_heard_by_its_duration(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await configure(connection, PUSH_TO_TALK)
        await speak(connection, noise(1.5))
        turn = Turn()
        await collect(connection, turn.events, is_type(COMPLETED))
        await connection.response.create()
        await collect(connection, turn.events, is_type("response.done"))
    assert turn.last(COMPLETED)["transcript"] == "Unrecognized audio of 1.5 seconds."
    assert turn.transcript_deltas == "Unrecognized audio of 1.5 seconds."


async def test_clear_empties_the_buffer(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, _):
        await append(connection, synthesize("Never mind.").pcm)
        await connection.input_audio_buffer.clear()
        cleared = await receive(connection)
        await connection.input_audio_buffer.commit()
        error = await receive(connection)
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"


@pytest.mark.parametrize(
    ("events", "code", "param"),
    [
        ([{"type": "input_audio_buffer.append", "audio": "not base64!"}], "invalid_value", "audio"),
        (
            [
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(2400)).decode()},
                {"type": "input_audio_buffer.commit"},
            ],
            "input_audio_buffer_commit_empty",
            None,
        ),
        (
            [
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(4801)).decode()},
                {"type": "input_audio_buffer.commit"},
            ],
            "invalid_value",
            None,
        ),
    ],
    ids=["bad base64", "under 100 ms", "half a sample"],
)
async def test_bad_input_audio_gets_error_events(
    emulator: Emulator, events: list[dict[str, Any]], code: str, param: str | None
) -> None:
    async with connected(emulator) as (connection, created):
        for event in events:
            await connection.send({**event, "event_id": "evt_audio"})  # type: ignore[arg-type]
        error = await receive(connection)
        with pytest.raises(TimeoutError):
            await receive(connection, within=0.2)
    assert error["type"] == "error"
    assert (error["error"]["type"], error["error"]["code"], error["error"]["param"]) == (
        "invalid_request_error",
        code,
        param,
    )
    assert error["error"]["event_id"] == "evt_audio" and error["error"]["message"]
    record = await session_record(emulator, created["session"]["id"])
    assert record["input_audio"] == []
    assert (await input_audio_route(emulator, created["session"]["id"]))[0] == 404


async def test_g711_input_is_recorded_byte_for_byte(emulator: Emulator) -> None:
    audio = encode_audio(synthesize("Call me back.").pcm, "audio/pcmu")
    session = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    async with connected(emulator) as (connection, created):
        await configure(connection, session)
        await speak(connection, audio)
        events: list[dict[str, Any]] = []
        await collect(connection, events, is_type("conversation.item.done"))
        with pytest.raises(TimeoutError):
            await receive(connection, within=0.3)  # no transcription configured, no response asked
    record = await session_record(emulator, created["session"]["id"])
    assert [event["type"] for event in events] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert record["input_audio"][0] | {"item_id": None} == {
        "item_id": None,
        "format": {"type": "audio/pcmu"},
        "bytes": len(audio),
        "samples": len(audio),
        "seconds": len(audio) / 8000,
        "sha256": hashlib.sha256(audio).hexdigest(),
        "heard": "Call me back.",
        "transcript": None,
    }
    assert await input_audio_route(emulator, created["session"]["id"]) == (200, audio)


async def test_transcript_late_sends_the_transcription_after_response_done(emulator: Emulator) -> None:
    instructions = "Answer briefly. [[emulator:transcript_late delay=0.5]]"
    async with connected(emulator) as (connection, created):
        await configure(connection, {**PUSH_TO_TALK, "instructions": instructions})
        await speak(connection, synthesize(AUDIO_QUESTION).pcm)
        await connection.response.create()
        turn = Turn()
        await collect(connection, turn.events, is_type("response.done"))
        done_at = time.monotonic()
        await collect(connection, turn.events, is_type(COMPLETED))
        late_by = time.monotonic() - done_at
    done = turn.types.index("response.done")
    assert TRANSCRIPTION_DELTA not in turn.types[:done] and COMPLETED not in turn.types[:done]
    assert turn.last(COMPLETED)["transcript"] == AUDIO_QUESTION
    assert late_by >= 0.4  # held for its delay (a busy machine can only make it later)
    assert turn.transcript_deltas == AUDIO_QUESTION, "the answer does not wait for the transcription"
    record = await session_record(emulator, created["session"]["id"])
    assert (record["scenario"], record["scenario_params"]) == ("transcript_late", {"delay": 0.5})
    assert record["input_audio"][0]["transcript"] == AUDIO_QUESTION


async def test_transcript_never_sends_no_transcription(emulator: Emulator) -> None:
    async with connected(emulator, scenario="transcript_never") as (connection, created):
        await configure(connection, PUSH_TO_TALK)
        await speak(connection, synthesize(AUDIO_QUESTION).pcm)
        await connection.response.create()
        turn = Turn()
        await collect(connection, turn.events, is_type("response.done"))
        with pytest.raises(TimeoutError):
            await collect(connection, turn.events, never, within=0.8)
    assert not {TRANSCRIPTION_DELTA, COMPLETED} & set(turn.types)
    assert turn.transcript_deltas == AUDIO_QUESTION
    record = await session_record(emulator, created["session"]["id"])
    assert record["input_audio"][0]["transcript"] is None


async def test_transcript_failed_sends_the_failure_instead_of_the_transcription(emulator: Emulator) -> None:
    instructions = "Answer briefly. [[emulator:transcript_failed]]"
    async with connected(emulator) as (connection, created):
        await configure(connection, {**PUSH_TO_TALK, "instructions": instructions})
        await speak(connection, synthesize(AUDIO_QUESTION).pcm)
        await connection.response.create()
        turn = Turn()
        await collect(connection, turn.events, is_type("response.done"))
        with pytest.raises(TimeoutError):
            await collect(connection, turn.events, never, within=0.5)
    assert not {TRANSCRIPTION_DELTA, COMPLETED} & set(turn.types)
    failed = turn.last("conversation.item.input_audio_transcription.failed")
    committed = turn.last("input_audio_buffer.committed")
    assert (failed["item_id"], failed["content_index"]) == (committed["item_id"], 0)
    assert failed["error"]["code"] == "audio_unintelligible" and failed["error"]["message"]
    assert turn.transcript_deltas == AUDIO_QUESTION, "the answer does not depend on the transcription"
    record = await session_record(emulator, created["session"]["id"])
    assert record["scenario"] == "transcript_failed"
    assert record["input_audio"][0]["transcript"] is None


async def test_a_malformed_directive_in_the_instructions_is_an_error(emulator: Emulator) -> None:
    async with connected(emulator) as (connection, created):
        await connection.session.update(session={"type": "realtime", "instructions": "[[emulator:late]]"})
        error = await receive(connection)
    assert (error["error"]["code"], error["error"]["param"]) == (
        "invalid_emulator_directive",
        "session.instructions",
    )
    record = await session_record(emulator, created["session"]["id"])
    assert record["session"] == created["session"]


# ---------------------------------------------------------------------------------------------------------
# Output formats, speed, max_output_tokens

FORMAT_TEXT = "Your table for four is booked at eight."


@pytest.mark.parametrize(("where", "output_format"), [("session", "audio/pcmu"), ("response", "audio/pcma")])
async def test_g711_output_is_the_speech_resampled_and_coded(
    emulator: Emulator, where: str, output_format: str
) -> None:
    expected = encode_audio(synthesize(FORMAT_TEXT, "sage").pcm, output_format)
    output = {"voice": "sage", "format": {"type": output_format}}
    async with connected(emulator) as (connection, created):
        if where == "session":
            await configure(connection, {"type": "realtime", "audio": {"output": output}})
            turn = await ask(connection, FORMAT_TEXT)
        else:
            await configure(connection, {"type": "realtime", "audio": {"output": {"voice": "sage"}}})
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": FORMAT_TEXT}],
                }
            )
            await connection.response.create(
                response={"audio": {"output": {"format": {"type": output_format}}}}
            )
            turn = Turn()
            await collect(connection, turn.events, is_type("response.done"))
    assert turn.audio == expected
    assert len(expected) == pytest.approx(len(synthesize(FORMAT_TEXT).pcm) / 6, abs=2)
    assert [len(chunk) for chunk in turn.audio_chunks[:3]] == [800, 1200, 2000]
    assert max(len(chunk) for chunk in turn.audio_chunks) == 2000
    response = turn.last("response.done")["response"]
    assert response["audio"]["output"]["format"] == {"type": output_format}
    assert response["usage"]["output_token_details"]["audio_tokens"] == audio_tokens(len(expected), 8000)
    record = await session_record(emulator, created["session"]["id"])
    assert record["audio_format"] == {"type": output_format}
    assert (record["voice"], record["speed"]) == ("sage", 1.0)
    assert record["audio_bytes"] == len(expected)
    assert record["audio_sha256"] == hashlib.sha256(expected).hexdigest()
    assert record["usage"] == response["usage"]


@pytest.mark.parametrize("speed", [0.5, 1.5])
async def test_speed_divides_the_duration(emulator: Emulator, speed: float) -> None:
    async with connected(emulator) as (connection, created):
        await configure(connection, {"type": "realtime", "audio": {"output": {"speed": speed}}})
        turn = await ask(connection, FORMAT_TEXT)
    normal = synthesize(FORMAT_TEXT).pcm
    assert turn.audio == synthesize(FORMAT_TEXT, speed=speed).pcm
    assert len(turn.audio) == len(FORMAT_TEXT) * 2 * round(1560 / speed)
    assert len(turn.audio) == pytest.approx(len(normal) / speed, rel=0.01)
    assert (await session_record(emulator, created["session"]["id"]))["speed"] == speed


def token_cut(text: str, output_format: str, max_tokens: int) -> tuple[int, str, int]:
    """The documented token rule, worked out independently: the cut (in bytes of the output format),
    the transcript sent, and the output tokens it costs."""
    speech = synthesize(text)
    audio = encode_audio(speech.pcm, output_format)
    ratio = len(speech.pcm) / len(audio)
    step = 2400 if output_format == "audio/pcm" else 400

    def sent(length: int) -> tuple[str, int]:
        transcript = "".join(delta for offset, delta in speech.marks if offset // ratio < length)
        return transcript, math.ceil(len(transcript) / 4) + audio_tokens(length, int(48000 / ratio))

    best = (0, *sent(0))
    for steps in range(1, math.ceil(len(audio) / step) + 1):
        length = min(steps * step, len(audio))
        transcript, cost = sent(length)
        if cost > max_tokens:
            break
        best = (length, transcript, cost)
    return best


@pytest.mark.parametrize(
    ("session_limit", "response_limit", "output_format"),
    [(30, None, "audio/pcm"), (4096, 25, "audio/pcmu"), (20, "inf", "audio/pcm")],
)
async def test_max_output_tokens_cuts_by_the_token_rule(
    emulator: Emulator, session_limit: int, response_limit: int | str | None, output_format: str
) -> None:
    session = {"type": "realtime", "max_output_tokens": session_limit}
    session["audio"] = {"output": {"format": {"type": output_format}}}
    async with connected(emulator) as (connection, _):
        await configure(connection, session)
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": SCENARIO_TEXT}],
            }
        )
        params = {} if response_limit is None else {"max_output_tokens": response_limit}
        await connection.response.create(response=params)  # type: ignore[arg-type]
        turn = Turn()
        await collect(connection, turn.events, is_type("response.done"))
    full = encode_audio(synthesize(SCENARIO_TEXT).pcm, output_format)
    response = turn.last("response.done")["response"]
    usage = response["usage"]
    if response_limit == "inf":
        assert response["status"] == "completed" and turn.audio == full
        return
    length, transcript, cost = token_cut(SCENARIO_TEXT, output_format, response_limit or session_limit)
    assert 0 < length < len(full)
    assert (response["status"], response["status_details"]) == (
        "incomplete",
        {"type": "incomplete", "reason": "max_output_tokens"},
    )
    assert turn.audio == full[:length]
    assert turn.transcript_deltas == transcript
    assert usage["output_tokens"] == cost <= (response_limit or session_limit)
    assert usage["output_token_details"] == {
        "text_tokens": math.ceil(len(transcript) / 4),
        "audio_tokens": audio_tokens(length, 48000 if output_format == "audio/pcm" else 8000),
    }


# ---------------------------------------------------------------------------------------------------------
# Quota at the handshake and the admissions log


@asynccontextmanager
async def quota(emulator: Emulator, **limits: int | None) -> AsyncIterator[dict[str, Any]]:
    """The emulator with these limits and an empty admissions log; its startup quota again afterwards."""
    assert (await control(emulator, "DELETE", "/_emulator/admissions"))[0] == 200
    status, body = await control(emulator, "POST", "/_emulator/quota", limits)
    assert status == 200, body
    try:
        yield body
    finally:
        await control(emulator, "POST", "/_emulator/quota", STARTUP_QUOTA)
        await control(emulator, "DELETE", "/_emulator/admissions")


async def admissions(emulator: Emulator) -> list[dict[str, Any]]:
    status, body = await control(emulator, "GET", "/_emulator/admissions")
    assert status == 200
    return body


def outcomes(log: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["outcome"], e["status"], e["reason"], e["retry_after"], e["open_sessions"]) for e in log]


async def test_the_command_line_sets_the_quota(emulator: Emulator) -> None:
    status, body = await control(emulator, "GET", "/_emulator/quota")
    assert status == 200
    assert {name: body[name] for name in STARTUP_QUOTA} == STARTUP_QUOTA


async def test_max_sessions_refuses_a_handshake_while_the_limit_is_open(emulator: Emulator) -> None:
    started = time.time()
    async with quota(emulator, max_sessions=1) as limits:
        async with connected(emulator) as (_, created):
            error = await refused(emulator)
        await ended_record(emulator, created["session"]["id"])
        async with connected(emulator):
            pass
        log = await admissions(emulator)
    assert (limits["max_sessions"], limits["requests_per_minute"]) == (
        1,
        STARTUP_QUOTA["requests_per_minute"],
    )
    assert error.response.status_code == 429
    assert (error.response.headers["Retry-After"], error.response.headers["retry-after-ms"]) == ("1", "1000")
    body = json.loads(error.response.body)
    assert body["error"]["code"] == "429" and "concurrent sessions" in body["error"]["message"]
    assert outcomes(log) == [
        ("admitted", 101, None, None, 0),
        ("refused", 429, "max_sessions", 1, 1),
        ("admitted", 101, None, None, 0),
    ]
    times = [entry["time"] for entry in log]
    assert started <= times[0] <= times[1] <= times[2] <= time.time()


async def test_requests_per_minute_refuses_until_the_oldest_leaves_the_minute(emulator: Emulator) -> None:
    async with quota(emulator, max_sessions=None, requests_per_minute=2):
        for _ in range(2):
            async with connected(emulator):
                pass
        first_admitted = (await admissions(emulator))[0]["time"]
        error = await refused(emulator)
        _, state = await control(emulator, "GET", "/_emulator/quota")
        log = await admissions(emulator)
        assert await control(emulator, "DELETE", "/_emulator/admissions") == (200, {"cleared": 3})
        assert await admissions(emulator) == []
        async with connected(emulator) as (_, created):
            assert created["session"]["id"]
    retry_after = int(error.response.headers["Retry-After"])
    retry_after_ms = int(error.response.headers["retry-after-ms"])
    assert error.response.status_code == 429
    assert retry_after == math.ceil(first_admitted + 60 - log[-1]["time"]) and 55 <= retry_after <= 60
    assert retry_after == math.ceil(retry_after_ms / 1000) and log[-1]["retry_after_ms"] == retry_after_ms
    assert json.loads(error.response.body)["error"]["code"] == "429"
    assert (state["max_sessions"], state["requests_per_minute"], state["admitted_last_minute"]) == (
        None,
        2,
        2,
    )
    assert [entry[:4] for entry in outcomes(log)] == [
        ("admitted", 101, None, None),
        ("admitted", 101, None, None),
        ("refused", 429, "requests_per_minute", retry_after),
    ]


async def test_every_refused_handshake_is_in_the_admissions_log(emulator: Emulator) -> None:
    async with quota(emulator):
        await refused(emulator, emulator.client(api_key="not-the-key"))
        await refused(emulator, scenario="handshake_503", retry_after="4")
        log = await admissions(emulator)
    assert [entry[:4] for entry in outcomes(log)] == [
        ("refused", 401, "unauthorized", None),
        ("refused", 503, "scenario", 4),
    ]


@pytest.mark.parametrize(
    "body",
    [{"max_sessions": -1}, {"max_session": 1}, [1], {"requests_per_minute": "5"}, {"max_sessions": True}],
)
async def test_quota_requests_are_checked(emulator: Emulator, body: Any) -> None:
    status, _ = await control(emulator, "POST", "/_emulator/quota", body)
    assert status == 400
    _, unchanged = await control(emulator, "GET", "/_emulator/quota")
    assert {name: unchanged[name] for name in STARTUP_QUOTA} == STARTUP_QUOTA


# ---------------------------------------------------------------------------------------------------------
# The pure audio functions: tones that carry text, G.711


@pytest.mark.parametrize("voice", ["alloy", "ash", "shimmer"])
@pytest.mark.parametrize("speed", [0.25, 1.0, 1.5])
def test_tones_read_back_as_the_text_that_made_them(voice: str, speed: float) -> None:
    text = "Grüße, 東京! Price: 5€ (approx.) ~ ok?"
    speech = synthesize(text, voice, speed=speed)
    assert hear(speech.pcm, "audio/pcm") == text
    assert hear(encode_audio(speech.pcm, "audio/pcma"), {"type": "audio/pcma"}) == text
    assert heard_text(through_16khz(speech.pcm), "audio/pcm") == text


def test_audio_without_tones_reads_as_nothing() -> None:
    assert hear(noise(2.0), "audio/pcm") is None
    assert hear(bytes(48000), "audio/pcm") is None
    assert heard_text(bytes(8000 * 3), "audio/pcmu") == "Unrecognized audio of 3.0 seconds."


def test_duration_is_one_slot_per_character_over_the_speed() -> None:
    for speed in (0.25, 0.8, 1.0, 1.5):
        assert len(synthesize("Twelve chars", speed=speed).pcm) == 12 * 2 * round(1560 / speed)
    assert len(synthesize("é").pcm) == 7 * 2 * 1560, "a character outside ASCII takes seven symbols"


def test_g711_encoding_is_soxr_then_libsndfile() -> None:
    pcm = synthesize(FORMAT_TEXT).pcm
    resampled = soxr.resample(np.frombuffer(pcm, dtype="<i2"), 24000, 8000)
    for output_format, subtype in (("audio/pcmu", "ULAW"), ("audio/pcma", "ALAW")):
        expected = io.BytesIO()
        soundfile.write(expected, resampled, 8000, format="RAW", subtype=subtype)
        assert encode_audio(pcm, output_format) == expected.getvalue()
        assert encode_audio(pcm, {"type": output_format}) == expected.getvalue()
    assert encode_audio(pcm, "audio/pcm") == pcm
