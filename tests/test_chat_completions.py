"""`POST /api/v1/chat/completions` and `GET /api/v1/models` through the `openai` Python package,
unmodified, against the dev host and the stand-ins: the answer, its audio and its transcript."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf
from openai import AsyncOpenAI, OpenAI

from devtools.realtime_emulator import synthesize
from devtools.stack import DEPLOYMENT_NAME

from .speech_client import SpeechClient
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
