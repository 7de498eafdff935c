"""`POST /api/v1/chat/completions` and `GET /api/v1/models` through the `openai` Python package,
unmodified, against the dev host and the stand-ins: the answer, its audio and its transcript."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from azure.storage.blob.aio import BlobServiceClient
from openai import (
    APIError,
    APIStatusError,
    AsyncOpenAI,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    OpenAI,
    RateLimitError,
)

from devtools.realtime_emulator import synthesize
from devtools.stack import DEPLOYMENT_NAME, Stack
from realtime_speech.errors import InvalidRequest
from realtime_speech.models import AnswerReference, AudioFacts, SpeechRecord
from realtime_speech.service import audio_id, earlier_transcript, record_name
from realtime_speech.storage import MIN_BLOCK_BYTES, AudioStore

from .audio_corpus import encode, speech_like
from .conftest import SpeechHost
from .speech_client import SpeechClient
from .test_limits import sessions_in_flight, until_no_session
from .test_speech_api import parse_wav, unique_text
from .test_speech_formats import best_correlation

pytestmark = pytest.mark.asyncio(loop_scope="session")

AUDIO_ID = re.compile(r"audio_\d{8}[0-9a-f]{32}")
FUNCTION_KEY = {"x-functions-key": "a-local-key"}


def sync_client(speech: SpeechClient) -> OpenAI:
    return OpenAI(
        base_url=f"{speech.host_url}/api/v1", api_key="unused", default_headers=FUNCTION_KEY, max_retries=0
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(speech: SpeechClient) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=f"{speech.host_url}/api/v1", api_key="unused", default_headers=FUNCTION_KEY, max_retries=0
    ) as openai_client:
        yield openai_client


def ask(text: str, **options: Any) -> dict[str, Any]:
    """The arguments of one spoken answer to `text`."""
    return {
        "model": DEPLOYMENT_NAME,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "messages": [{"role": "user", "content": text}],
        **options,
    }


def assert_is_the_models_answer(audio: Any, session: dict[str, Any], pcm: bytes) -> None:
    """The transcript and the samples are exactly what the model (the emulator) sent."""
    assert audio.transcript == session["transcript"] != ""
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert len(pcm) == session["audio_bytes"] > 0


async def test_the_sync_client_gets_a_wav_equal_to_the_models_audio(speech: SpeechClient) -> None:
    text = unique_text()
    with sync_client(speech) as openai_client:
        completion = await asyncio.to_thread(openai_client.chat.completions.create, **ask(text))
    session = await speech.emulator_session(text)
    [choice] = completion.choices
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == DEPLOYMENT_NAME
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content is None
    audio = choice.message.audio
    assert AUDIO_ID.fullmatch(audio.id)
    wav = base64.b64decode(audio.data)
    params, pcm = parse_wav(wav)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 24000)
    assert_is_the_models_answer(audio, session, pcm)
    assert await speech.download(audio.model_extra["url"]) == wav
    usage = completion.usage
    assert usage.prompt_tokens == session["usage"]["input_tokens"]
    assert usage.completion_tokens == session["usage"]["output_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (
        usage.completion_tokens_details.audio_tokens
        == session["usage"]["output_token_details"]["audio_tokens"]
    )
    assert (
        usage.completion_tokens_details.text_tokens == session["usage"]["output_token_details"]["text_tokens"]
    )
    assert usage.prompt_tokens_details.text_tokens == session["usage"]["input_token_details"]["text_tokens"]


async def test_the_async_client_gets_raw_pcm16(speech: SpeechClient, client: AsyncOpenAI) -> None:
    text = unique_text()
    completion = await client.chat.completions.create(
        **ask(text, audio={"voice": "coral", "format": "pcm16"})
    )
    session = await speech.emulator_session(text)
    audio = completion.choices[0].message.audio
    pcm = base64.b64decode(audio.data)
    assert_is_the_models_answer(audio, session, pcm)
    assert pcm == synthesize(text, "coral").pcm
    _, stored = parse_wav(await speech.download(audio.model_extra["url"]))  # kept as a WAV
    assert stored == pcm


async def test_an_mp3_answer_decodes_to_the_models_audio(speech: SpeechClient, client: AsyncOpenAI) -> None:
    text = unique_text()
    completion = await client.chat.completions.create(**ask(text, audio={"voice": "alloy", "format": "mp3"}))
    audio = completion.choices[0].message.audio
    data = base64.b64decode(audio.data)
    assert data == await speech.download(audio.model_extra["url"])
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000
    reference = np.frombuffer(synthesize(text, "alloy").pcm, dtype="<i2").astype(np.float32) / 32768
    assert best_correlation(reference, samples) > 0.95
    assert audio.transcript == (await speech.emulator_session(text))["transcript"]


async def test_stream_true_sends_the_chunks_in_order(speech: SpeechClient, client: AsyncOpenAI) -> None:
    text = unique_text()
    stream = await client.chat.completions.create(
        **ask(
            text,
            audio={"voice": "alloy", "format": "pcm16"},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    chunks = [chunk async for chunk in stream]
    session = await speech.emulator_session(text)
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    *answer, finish, usage = chunks
    first = answer[0].choices[0].delta
    audio = [chunk.choices[0].delta.audio.to_dict() for chunk in answer]  # the fields as sent
    assert first.role == "assistant" and first.content is None and AUDIO_ID.fullmatch(audio[0]["id"])
    assert sum("id" in piece for piece in audio) == 1
    assert sum("expires_at" in piece for piece in audio) == 1
    assert set(audio[-1]) == {"expires_at", "url"} and isinstance(audio[-1]["expires_at"], int)
    data = [piece["data"] for piece in audio if "data" in piece]
    decoded = [base64.b64decode(piece) for piece in data]
    assert all(len(piece) % 6 == 0 for piece in decoded[:-1]) and len(decoded[-1]) % 2 == 0
    pcm = b"".join(decoded)
    assert base64.b64decode("".join(data)) == pcm  # joined as strings, it is the same audio
    transcript = "".join(piece.get("transcript", "") for piece in audio)
    assert transcript == session["transcript"] != ""
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert finish.choices[0].delta.model_dump(exclude_none=True) == {}
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.total_tokens == session["usage"]["total_tokens"]
    _, stored = parse_wav(await speech.download(audio[-1]["url"]))
    assert stored == pcm


async def test_a_spoken_question_streamed_says_what_was_heard_once(
    speech: SpeechClient, client: AsyncOpenAI
) -> None:
    """The extension `input_transcript` comes once, in a chunk of its own with an empty delta; a text
    question's chunks never carry it."""
    earlier = (await client.chat.completions.create(**ask(unique_text("Hear back")))).choices[0].message
    spoken = {"type": "input_audio", "input_audio": {"data": earlier.audio.data, "format": "wav"}}
    arguments = ask("unused", audio={"voice": "alloy", "format": "pcm16"}, stream=True)
    arguments["messages"] = [{"role": "user", "content": [spoken]}]
    chunks = [chunk async for chunk in await client.chat.completions.create(**arguments)]
    heard = [chunk for chunk in chunks if "input_transcript" in (chunk.model_extra or {})]
    assert [chunk.model_extra["input_transcript"] for chunk in heard] == [earlier.audio.transcript]
    assert heard[0].choices[0].delta.model_dump(exclude_none=True) == {}
    text_chunks = await client.chat.completions.create(
        **ask(unique_text(), audio={"voice": "alloy", "format": "pcm16"}, stream=True)
    )
    assert not [chunk async for chunk in text_chunks if chunk.model_extra]


async def test_the_stream_helpers_final_completion_is_whole(
    speech: SpeechClient, client: AsyncOpenAI
) -> None:
    text = unique_text()
    arguments = ask(text, audio={"voice": "alloy", "format": "pcm16"})
    async with client.chat.completions.stream(**arguments) as stream:
        final = await stream.get_final_completion()
    session = await speech.emulator_session(text)
    audio = final.choices[0].message.audio
    assert final.choices[0].finish_reason == "stop"
    assert AUDIO_ID.fullmatch(audio.id)
    assert time.time() < audio.expires_at < time.time() + 2 * 3600  # sent once, not summed
    assert_is_the_models_answer(audio, session, base64.b64decode(audio.data))


async def test_models_lists_each_deployment(client: AsyncOpenAI) -> None:
    models = [model async for model in client.models.list()]
    assert [model.id for model in models] == [DEPLOYMENT_NAME]
    assert models[0].object == "model" and isinstance(models[0].created, int)


# --- conversations -------------------------------------------------------------------------------------


async def test_three_turns_send_earlier_answers_back_by_id_and_as_text(
    speech: SpeechClient, client: AsyncOpenAI
) -> None:
    system = {"role": "system", "content": "Answer briefly."}
    first_text, second_text, third_text = unique_text("First,"), unique_text("Second,"), unique_text("Third,")
    turn = ask(first_text)
    turn["messages"] = [system, *turn["messages"]]
    first = (await client.chat.completions.create(**turn)).choices[0].message
    turn["messages"] += [
        {"role": "assistant", "audio": {"id": first.audio.id}},
        {"role": "user", "content": second_text},
    ]
    second = (await client.chat.completions.create(**turn)).choices[0].message
    turn["messages"] += [
        {"role": "assistant", "content": second.audio.transcript},
        {"role": "user", "content": [{"type": "text", "text": third_text}]},
    ]
    third = (await client.chat.completions.create(**turn)).choices[0].message

    session = await speech.emulator_session(third_text)
    assert third.audio.transcript == session["transcript"] == third_text  # the answer to the last question
    assert session["session"]["instructions"] == "Answer briefly."
    said = [
        (item["role"], item["content"][0].get("text") or item["content"][0].get("transcript"))
        for item in session["items"]
    ]
    assert said == [
        ("user", first_text),
        ("assistant", first.audio.transcript),
        ("user", second_text),
        ("assistant", second.audio.transcript),
        ("user", third_text),
        ("assistant", third.audio.transcript),
    ]
    kinds = [item["content"][0]["type"] for item in session["items"]]
    assert kinds == ["input_text", "output_text", "input_text", "output_text", "input_text", "output_audio"]


async def test_a_spoken_user_turn_is_heard(speech: SpeechClient, client: AsyncOpenAI) -> None:
    earlier = (await client.chat.completions.create(**ask(unique_text("Say back")))).choices[0].message
    wav = base64.b64decode(earlier.audio.data)
    spoken = {"type": "input_audio", "input_audio": {"data": earlier.audio.data, "format": "wav"}}
    before = {"type": "text", "text": "Listen:"}
    arguments = ask("unused")
    arguments["messages"] = [
        {"role": "user", "content": [spoken]},  # an earlier spoken turn
        {"role": "assistant", "content": "Heard."},
        {"role": "user", "content": [before, spoken]},  # the question
    ]
    completion = await client.chat.completions.create(**arguments)
    heard = earlier.audio.transcript
    assert completion.choices[0].message.audio.transcript == heard  # the emulator repeats what it heard
    assert completion.model_extra == {"input_transcript": heard}  # this app's extension
    [session] = [s for s in await speech.emulator_sessions() if s["input_audio"] and s["user_text"] == heard]
    _, pcm = parse_wav(wav)
    history = session["items"][0]["content"][0]
    assert (history["type"], history["audio_bytes"], history["audio_sha256"]) == (
        "input_audio",
        len(pcm),
        hashlib.sha256(pcm).hexdigest(),
    )
    assert [item["content"][0].get("text") for item in session["items"][1:3]] == ["Heard.", "Listen:"]
    [entry] = session["input_audio"]
    assert entry["heard"] == entry["transcript"] == heard and entry["bytes"] == len(pcm)


# --- refusals --------------------------------------------------------------------------------------------


def with_messages(*messages: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {**ask("unused", **options), "messages": list(messages)}


USER = {"role": "user", "content": "Hello."}
NOT_AUDIO = base64.b64encode(b"this is not audio at all" * 10).decode()
UNKNOWN_ID = "audio_20260101" + "0" * 32
G711 = base64.b64encode(encode(speech_like(1.0, 8_000), 8_000, "WAV", "ULAW")).decode()
FLAC = base64.b64encode(encode(speech_like(1.0, 16_000), 16_000, "FLAC", "PCM_16")).decode()


def spoken_message(data: str, fmt: str = "wav") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": data, "format": fmt}}],
    }


LONG = "word " * 780  # 3900 characters


@pytest.mark.parametrize(
    ("arguments", "status", "param"),
    [
        pytest.param({**ask("x"), "modalities": ["text"]}, 400, "modalities", id="text-only"),
        pytest.param(
            {k: v for k, v in ask("x").items() if k != "modalities"}, 400, "modalities", id="no-modalities"
        ),
        pytest.param({k: v for k, v in ask("x").items() if k != "audio"}, 400, "audio", id="no-audio"),
        pytest.param(ask("x", audio={"voice": "fable", "format": "wav"}), 400, "audio.voice", id="voice"),
        pytest.param(ask("x", audio={"voice": "alloy", "format": "flac"}), 400, "audio.format", id="format"),
        pytest.param(ask("x", stream=True), 400, "audio.format", id="stream-wav"),
        pytest.param(ask("x", n=2), 400, "n", id="n"),
        pytest.param(
            ask("x", tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", id="tools"
        ),
        pytest.param(
            ask("x", response_format={"type": "json_object"}), 400, "response_format", id="format-json"
        ),
        pytest.param(ask("x", logprobs=True), 400, "logprobs", id="logprobs"),
        pytest.param(ask("x", stop=["."]), 400, "stop", id="stop"),
        pytest.param(ask("x", stream_options={"include_usage": True}), 400, "stream_options", id="options"),
        pytest.param(ask("x", extra_body={"frobnicate": 1}), 400, "frobnicate", id="unknown"),
        pytest.param(ask("x", model="gpt-unknown"), 404, "model", id="model"),
        pytest.param(ask("x", max_completion_tokens=5000), 400, "max_completion_tokens", id="tokens"),
        pytest.param(with_messages(), 400, "messages", id="no-messages"),
        pytest.param(with_messages(*[USER] * 101), 400, "messages", id="too-many"),
        pytest.param(
            with_messages(USER, {"role": "assistant", "content": "Hi."}), 400, "messages[1].role", id="last"
        ),
        pytest.param(
            with_messages({"role": "tool", "content": "x", "tool_call_id": "1"}),
            400,
            "messages[0].role",
            id="tool",
        ),
        pytest.param(
            with_messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
            400,
            "messages[0].content[0]",
            id="image",
        ),
        pytest.param(
            with_messages(
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}}],
                }
            ),
            400,
            "messages[0].content[0].input_audio.data",
            id="base64",
        ),
        pytest.param(
            with_messages(
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": NOT_AUDIO, "format": "wav"}}],
                }
            ),
            400,
            "messages[0].content[0].input_audio.data",
            id="not-audio",
        ),
        pytest.param(
            with_messages(USER, {"role": "assistant", "audio": {"id": UNKNOWN_ID}}, USER),
            400,
            "messages[1].audio.id",
            id="unknown-id",
        ),
        pytest.param(
            with_messages(USER, {"role": "assistant", "audio": {"id": "audio_../../x"}}, USER),
            400,
            "messages[1].audio.id",
            id="malformed-id",
        ),
        pytest.param(
            with_messages(spoken_message(G711)), 400, "messages[0].content[0].input_audio.data", id="g711"
        ),
        pytest.param(
            with_messages(spoken_message(FLAC)), 400, "messages[0].content[0].input_audio.data", id="flac"
        ),
        pytest.param(
            with_messages(spoken_message(FLAC), {"role": "assistant", "content": "Heard."}, USER),
            400,
            "messages[0].content[0].input_audio.data",
            id="flac-in-history",
        ),
        pytest.param(
            with_messages({"role": "user", "content": "x" * 4001}),
            400,
            "messages[0].content",
            id="long-question",
        ),
        pytest.param(
            with_messages(*[{"role": "user", "content": LONG}] * 26),
            413,
            "messages[25].content",
            id="text-limit",
        ),
        pytest.param(with_messages(*[{"role": "user", "content": LONG}] * 25), 400, "messages", id="context"),
    ],
)
async def test_a_bad_request_names_its_param_and_opens_no_session(
    speech: SpeechClient, client: AsyncOpenAI, arguments: dict[str, Any], status: int, param: str
) -> None:
    before = (await speech.emulator_stats())["connections_total"]
    with pytest.raises(APIStatusError) as raised:
        await client.chat.completions.create(**arguments)
    error = raised.value
    assert (error.status_code, error.body["param"]) == (status, param), error.body
    assert set(error.body) == {"message", "type", "param", "code"}
    assert error.response.headers["x-should-retry"] == "false"
    assert isinstance(
        error, NotFoundError if status == 404 else (BadRequestError if status == 400 else APIStatusError)
    )
    assert (await speech.emulator_stats())["connections_total"] == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b'{"model": "gpt-realtime", "max_tokens": NaN}', "application/json", 400, id="nan"),
        pytest.param(b'{"model": "gpt-realtime", "model": "other"}', "application/json", 400, id="duplicate"),
        pytest.param(b'{"a": ' * 30 + b"1" + b"}" * 30, "application/json", 400, id="depth"),
        pytest.param(b'{"a": ' * 5000 + b"1" + b"}" * 5000, "application/json", 400, id="recursion"),
        pytest.param(b'{"model": ', "application/json", 400, id="truncated"),
        pytest.param(b"[]", "application/json", 400, id="not-an-object"),
        pytest.param(b'{"model": "gpt-realtime"}', "text/plain", 415, id="media-type"),
    ],
)
async def test_a_body_that_is_not_strict_json_is_refused(
    speech: SpeechClient, body: bytes, content_type: str, status: int
) -> None:
    before = (await speech.emulator_stats())["connections_total"]
    url = f"{speech.host_url}/api/v1/chat/completions"
    async with speech.http.post(url, data=body, headers={"Content-Type": content_type}) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (await speech.emulator_stats())["connections_total"] == before


# --- upstream failures and callers who leave -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [(429, RateLimitError, 1), (503, InternalServerError, 1)],
)
async def test_a_refused_handshake_is_its_documented_status_with_retry_headers(
    speech: SpeechClient, client: AsyncOpenAI, status: int, error_type: type[APIStatusError], retry_after: int
) -> None:
    await speech.refuse_handshakes(status, 4, retry_after=retry_after)
    try:
        with pytest.raises(error_type) as raised:
            await client.chat.completions.create(**ask(unique_text()))
    finally:
        await speech.refuse_handshakes(status, 0)  # none left, also when the request stopped early
    response = raised.value.response
    assert response.status_code == status
    assert response.headers["x-should-retry"] == "true"
    assert int(response.headers["retry-after-ms"]) == 1000 * int(response.headers["Retry-After"]) > 0
    assert raised.value.body["type"] == ("rate_limit_error" if status == 429 else "server_error")


@pytest.mark.parametrize("scenario", ["error_mid", "drop"])
async def test_a_model_failure_is_a_502_or_an_error_event_mid_stream(
    speech: SpeechClient, client: AsyncOpenAI, scenario: str
) -> None:
    before = await speech.blob_names()
    with pytest.raises(InternalServerError) as raised:
        await client.chat.completions.create(**ask(f"[[emulator:{scenario}]] {unique_text()}"))
    assert raised.value.status_code == 502 and raised.value.body["code"] == "upstream_failed"
    stream = await client.chat.completions.create(
        **ask(
            f"[[emulator:{scenario}]] {unique_text()}",
            audio={"voice": "alloy", "format": "pcm16"},
            stream=True,
        )
    )
    received = []
    with pytest.raises(APIError, match=r"model|realtime") as failed:
        async for chunk in stream:
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"  # the stream had begun
    assert failed.value.body["code"] == "upstream_failed"
    await speech.assert_sessions_closed()
    assert await speech.blob_names() == before


async def test_a_caller_who_leaves_mid_stream_cancels_the_answer_and_commits_nothing(
    speech: SpeechClient, client: AsyncOpenAI
) -> None:
    text = f"[[emulator:slow pace=1 seconds=30]] {unique_text('Leave while I talk about')}"
    before = await speech.blob_names()
    stream = await client.chat.completions.create(
        **ask(text, audio={"voice": "alloy", "format": "pcm16"}, stream=True)
    )
    async for chunk in stream:
        if chunk.choices[0].delta.audio.to_dict().get("data"):
            break
    await stream.close()
    await speech.assert_sessions_closed()
    session = await speech.emulator_session(text)
    assert "response.cancel" in session["client_event_types"]
    assert await speech.blob_names() == before


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A host that takes at most 64 KiB and 1 s of audio."""
    async with speech_host(AUDIO_INPUT_MAX_BYTES=str(64 * 1024), AUDIO_INPUT_MAX_SECONDS="1") as host:
        yield host


async def test_the_audio_and_body_limits_hold_for_all_messages_together(limited: SpeechClient) -> None:
    short = encode(speech_like(0.6, 24_000), 24_000, "WAV", "PCM_16")  # 28.8 kB, 0.6 s
    long = encode(speech_like(1.5, 8_000), 8_000, "WAV", "PCM_16")  # 24 kB, 1.5 s
    cases = [
        (
            with_messages(spoken_message(base64.b64encode(long).decode())),
            413,
            "messages[0].content[0].input_audio.data",
        ),
        (with_messages(*[spoken_message(base64.b64encode(short).decode())] * 3), 413, "messages"),  # 86 kB
        (
            with_messages(
                spoken_message(base64.b64encode(short).decode()),
                USER,
                spoken_message(base64.b64encode(short).decode()),
            ),
            413,
            "messages",
        ),  # 1.2 s
    ]
    before = (await limited.emulator_stats())["connections_total"]
    async with AsyncOpenAI(base_url=f"{limited.host_url}/api/v1", api_key="unused", max_retries=0) as client:
        for arguments, status, param in cases:
            with pytest.raises(APIStatusError) as raised:
                await client.chat.completions.create(**arguments)
            assert (raised.value.status_code, raised.value.body["param"]) == (status, param), (
                raised.value.body
            )
    url = f"{limited.host_url}/api/v1/chat/completions"
    oversized = b'{"model": "' + b"x" * 900_000 + b'"}'
    async with limited.http.post(
        url, data=oversized, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"
    assert (await limited.emulator_stats())["connections_total"] == before


# --- the openai npm package ------------------------------------------------------------------------------

NODE_CLIENT = Path(__file__).with_name("chat_completions_client.mjs")


async def test_the_openai_npm_package_gets_the_models_audio(speech: SpeechClient) -> None:
    text = unique_text("From node,")
    node = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_CLIENT),
        f"{speech.host_url}/api/v1",
        DEPLOYMENT_NAME,
        text,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            out, err = await node.communicate()
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    assert node.returncode == 0, err.decode()
    created, streamed = (json.loads(line) for line in out.decode().splitlines())
    sessions = [s for s in await speech.emulator_sessions() if s["user_text"] == text]
    assert len(sessions) == 2 and sessions[0]["audio_sha256"] == sessions[1]["audio_sha256"]
    session = sessions[0]
    for answer in (created, streamed):
        assert answer["completion_id"].startswith("chatcmpl-") and answer["finish_reason"] == "stop"
        assert AUDIO_ID.fullmatch(answer["id"]) and answer["transcript"] == session["transcript"] == text
        assert time.time() < answer["expires_at"] < time.time() + 2 * 3600
    wav = base64.b64decode(created["data"])
    _, pcm = parse_wav(wav)
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert await speech.download(created["url"]) == wav
    assert base64.b64decode(streamed["data"]) == pcm  # the pieces joined by the stream helper


# --- the README's examples -------------------------------------------------------------------------------

README = Path(__file__).parents[1] / "README.md"


def readme_example(name: str, base_url: str) -> str:
    """The code block after `<!-- example: name -->` in the README, pointed at `base_url`."""
    match = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, name
    return match[1].replace("http://localhost:7071/api/v1", base_url)


@pytest.mark.parametrize(
    ("name", "command"),
    [("chat-python", (sys.executable, "-c")), ("chat-javascript", ("node", "--input-type=module", "-e"))],
)
async def test_the_readmes_client_examples_run_as_written(
    speech: SpeechClient, tmp_path: Path, name: str, command: tuple[str, ...]
) -> None:
    code = readme_example(name, f"{speech.host_url}/api/v1")
    # node resolves packages from the working directory's node_modules; the example's files go to tmp_path
    cwd = tmp_path if name == "chat-python" else Path(__file__).parents[1]
    process = await asyncio.create_subprocess_exec(
        *command, code, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    printed = out.decode()
    assert "Tell me about the sea." in printed and "And rivers?" in printed  # the emulator's answers
    if name == "chat-python":
        assert parse_wav((tmp_path / "answer.wav").read_bytes())[1]
        assert re.search(r"\n(\d+) bytes of PCM", printed) and " 0 bytes" not in printed


# --- models ----------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")  # its spares are closed with it, before other tests
async def two_models(stack: Stack, speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A pool of two deployments on the emulator, `gpt-realtime` first by priority, then
    `gpt-realtime-mini`, with spare sessions."""
    backends = [
        {"name": "full", "endpoint": stack.openai_endpoint, "deployment": "gpt-realtime", "priority": 1},
        {"name": "mini", "endpoint": stack.openai_endpoint, "deployment": "gpt-realtime-mini", "priority": 2},
    ]
    settings = {
        "AZURE_OPENAI_BACKENDS": json.dumps(backends),
        "AZURE_OPENAI_ENDPOINT": None,
        "REALTIME_SPARE_SESSIONS": "2",  # spares of both deployments are open; each model takes its own
    }
    async with speech_host(**settings) as host:
        yield host


async def test_each_deployment_is_a_model_answered_only_by_its_backends(two_models: SpeechClient) -> None:
    async with AsyncOpenAI(
        base_url=f"{two_models.host_url}/api/v1", api_key="unused", max_retries=0
    ) as client:
        listed = [model.id async for model in client.models.list()]
        texts = {model: unique_text(f"Ask {model}") for model in listed}
        for model, text in texts.items():
            completion = await client.chat.completions.create(**{**ask(text), "model": model})
            assert completion.model == model
    assert listed == ["gpt-realtime", "gpt-realtime-mini"]
    for model, text in texts.items():
        assert (await two_models.emulator_session(text))["model"] == model


async def test_max_completion_tokens_cuts_the_answer_with_finish_reason_length(
    speech: SpeechClient, client: AsyncOpenAI
) -> None:
    text = unique_text("Cut me short while you talk about")
    ignored = {"temperature": 0.7, "seed": 7, "user": "someone", "metadata": {"k": "v"}, "top_p": 0.9}
    raw = await client.chat.completions.with_raw_response.create(
        **ask(text, max_completion_tokens=5, **ignored), extra_headers={"x-request-id": "chat-cut-1"}
    )
    assert raw.headers["x-request-id"] == "chat-cut-1"
    completion = raw.parse()
    session = await speech.emulator_session(text)
    assert session["session"]["max_output_tokens"] == 5
    assert session["response_status"] == "incomplete"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.audio.transcript == session["transcript"]


async def test_an_audio_id_is_valid_for_its_urls_lifetime_from_when_its_record_was_written(
    blob_service: BlobServiceClient,
) -> None:
    blob_name = f"{datetime.now(UTC):%Y/%m/%d}/{uuid4().hex}.wav"
    facts = AudioFacts(
        format="wav", encoding="pcm_s16le", sample_rate=24000, channels=1, duration_seconds=1.0, bytes=48044
    )
    record = SpeechRecord(
        request_id="r",
        transcript="Said before.",
        container="audio",
        blob_name=blob_name,
        audio=facts,
        voice="alloy",
        session_id=None,
        response_id=None,
        status="completed",
    )
    hour = AudioStore(blob_service, "audio", MIN_BLOCK_BYTES, timedelta(hours=1))
    assert await hour.save_record(record_name(blob_name), record.model_dump(mode="json"))
    reference = AnswerReference(audio_id(blob_name), "messages[1].audio.id")
    assert AUDIO_ID.fullmatch(reference.audio_id)
    assert await earlier_transcript(hour, reference) == "Said before."
    expired = AudioStore(blob_service, "audio", MIN_BLOCK_BYTES, timedelta(0))
    with pytest.raises(InvalidRequest) as raised:
        await earlier_transcript(expired, reference)
    assert raised.value.param == "messages[1].audio.id"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short_deadline(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A host whose deadline is just past one keep-alive interval (10 s)."""
    async with speech_host(REALTIME_TIMEOUT_SECONDS="12") as host:
        yield host


async def test_a_silent_stream_gets_keep_alives_then_the_deadline_as_an_error_event(
    short_deadline: SpeechClient,
) -> None:
    body = ask(
        f"[[emulator:stall at=0.2]] {unique_text()}", audio={"voice": "alloy", "format": "pcm16"}, stream=True
    )
    url = f"{short_deadline.host_url}/api/v1/chat/completions"
    async with short_deadline.http.post(url, json=body) as response:
        assert response.status == 200
        lines = [line.decode().strip() async for line in response.content if line.strip()]
    assert ": keep-alive" in lines
    assert lines[-1].startswith('data: {"error"') and "data: [DONE]" not in lines
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "deadline_exceeded" and error["type"] == "server_error"
    await short_deadline.assert_sessions_closed()


async def test_past_max_concurrent_sessions_a_chat_request_gets_429_and_a_stream_frees_its_slot(
    speech_host: SpeechHost,
) -> None:
    async with (
        speech_host(MAX_CONCURRENT_SESSIONS="1") as host,
        AsyncOpenAI(base_url=f"{host.host_url}/api/v1", api_key="unused", max_retries=0) as client,
    ):
        held = await client.chat.completions.create(
            **ask(
                f"[[emulator:stall]] {unique_text()}",
                audio={"voice": "alloy", "format": "pcm16"},
                stream=True,
            )
        )
        first = await anext(aiter(held))
        with pytest.raises(RateLimitError) as refused:
            await client.chat.completions.create(**ask(unique_text()))
        sessions = await sessions_in_flight(host)
        await held.close()
        await until_no_session(host)
        after = await client.chat.completions.create(**ask(unique_text("The slot is free again:")))
    assert first.choices[0].delta.role == "assistant"
    assert refused.value.body["code"] == "too_many_sessions"
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "true" and headers["retry-after-ms"] == "1000"
    assert sessions == {"active": 1, "limit": 1}
    assert after.choices[0].finish_reason == "stop"
