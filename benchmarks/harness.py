"""What a benchmark worker drives: the real function, a bare openai-SDK loop and bare blob calls.

Imported only inside a worker process whose environment already holds the stack's app settings
(`SSL_CERT_FILE` must be set before aiohttp is imported).
"""

from __future__ import annotations

import asyncio
import base64
import resource
import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient
from openai import AsyncOpenAI

import function_app
from devtools.driver import FunctionDriver
from realtime_speech import http
from realtime_speech.realtime import VoiceRequest, session_config
from realtime_speech.settings import get_settings
from realtime_speech.wav import WAV_HEADER_BYTES

from .records import TailRoundTrips

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
SPOKEN_TEXT = "Please read the weather report for the coast."
RECORD_BYTES = 1200
"""About the size of the JSON record the function saves beside each WAV."""


def speech_text(seconds: float, pace: float | None = None) -> str:
    """A user message the emulator answers with exactly `seconds` of audio: at full speed, or paced at
    `pace` times real time. The same text always gives the same audio."""
    scenario = f"slow pace={pace:g}" if pace is not None else "long"
    return f"[[emulator:{scenario} seconds={seconds:g}]] {SPOKEN_TEXT}"


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Outcome:
    """One call: HTTP-like status, wall seconds, and the response body (or the error's name)."""

    status: int
    seconds: float
    body: dict[str, Any]


class SpeechFunction:
    """`POST /api/speech` through the function app's ASGI app, in process (`devtools.driver`)."""

    def __init__(self) -> None:
        self._driver = FunctionDriver(function_app.app)

    async def call(self, text: str) -> Outcome:
        started = time.perf_counter()
        response = await self._driver.post_speech({"text": text})
        elapsed = time.perf_counter() - started
        return Outcome(response.status_code, elapsed, response.json())

    async def close(self) -> None:
        await self._driver.aclose()
        await (await http.speech_service()).close()


class BareRealtime:
    """The reference client: the openai SDK alone on the same emulator, deployment and session
    configuration; connect, configure, ask, collect the audio in memory, close. No storage."""

    def __init__(self, token: str) -> None:
        settings = get_settings()
        endpoint = str(settings.azure_openai_endpoint).rstrip("/")
        self._client = AsyncOpenAI(
            base_url=f"{endpoint}/openai/v1",
            websocket_base_url=f"{endpoint.replace('http', 'ws', 1)}/openai/v1",
            api_key=token,
            max_retries=0,
        )
        self._deployment = settings.azure_openai_deployment_name
        self._config = session_config(
            VoiceRequest(
                text="",
                instructions=settings.realtime_instructions,
                voice=settings.realtime_voice,
                transcription_model=settings.realtime_transcription_model,
            )
        )

    @classmethod
    async def create(cls) -> BareRealtime:
        """With one managed-identity token, fetched now, so the timed loop never waits for one."""
        async with ManagedIdentityCredential() as credential:
            token = await credential.get_token(COGNITIVE_SERVICES_SCOPE)
        return cls(token.token)

    async def call(self, text: str) -> Outcome:
        started = time.perf_counter()
        chunks: list[bytes] = []
        async with self._client.realtime.connect(model=self._deployment) as connection:
            await connection.session.update(session=self._config)  # type: ignore[arg-type]
            await connection.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            )
            await connection.response.create()
            async for event in connection:
                if event.type == "response.output_audio.delta":
                    chunks.append(base64.b64decode(event.delta))
                elif event.type == "error":
                    raise RuntimeError(f"realtime error event: {event.error.code}")
                elif event.type == "response.done":
                    break
        elapsed = time.perf_counter() - started
        return Outcome(200, elapsed, {"audio_bytes": sum(map(len, chunks))})

    async def close(self) -> None:
        await self._client.close()


class BlobProbe:
    """Bare calls to the same Azurite from the same worker: what the function's tail is made of.

    `tail_round_trips` replays the function's storage work after `response.done` without the function:
    stage the last data block and the WAV header in parallel, then `Put Block List`; then, each timed on
    its own, the upload of a record-sized JSON blob and a single `Put Blob` of the whole WAV.
    """

    def __init__(self) -> None:
        settings = get_settings()
        self._credential = ManagedIdentityCredential()
        self._service = BlobServiceClient(
            str(settings.audio_storage_account_url), credential=self._credential
        )
        self._container = self._service.get_container_client(settings.audio_container)

    async def tail_round_trips(self, tail_bytes: int) -> TailRoundTrips:
        """Milliseconds of each step; the blobs land under `bench/` in the audio container."""
        stem = f"bench/{uuid4().hex}"
        blob = self._container.get_blob_client(f"{stem}.wav")
        header_id, data_id = f"{0:08d}", f"{1:08d}"
        started = time.perf_counter()
        await asyncio.gather(
            blob.stage_block(header_id, bytes(WAV_HEADER_BYTES)),
            blob.stage_block(data_id, bytes(tail_bytes)),
        )
        staged = time.perf_counter()
        await blob.commit_block_list([header_id, data_id])
        committed = time.perf_counter()
        await self._container.upload_blob(f"{stem}.json", bytes(RECORD_BYTES), overwrite=True)
        recorded = time.perf_counter()
        await self._container.upload_blob(f"{stem}-whole.wav", bytes(WAV_HEADER_BYTES + tail_bytes))
        put = time.perf_counter()
        return TailRoundTrips(
            stage_pair_ms=(staged - started) * 1000,
            commit_ms=(committed - staged) * 1000,
            record_ms=(recorded - committed) * 1000,
            put_blob_ms=(put - recorded) * 1000,
        )

    async def commit_burst(self, count: int) -> float:
        """Seconds for `count` simultaneous `Put Block List` calls, each on its own pre-staged blob: the
        least storage work that `count` sessions ending together can do."""
        blobs = [self._container.get_blob_client(f"bench/{uuid4().hex}.wav") for _ in range(count)]
        await asyncio.gather(*(blob.stage_block(f"{0:08d}", bytes(WAV_HEADER_BYTES)) for blob in blobs))
        started = time.perf_counter()
        await asyncio.gather(*(blob.commit_block_list([f"{0:08d}"]) for blob in blobs))
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._service.close()
        await self._credential.close()


class LoopLag:
    """How late the event loop wakes a 5 ms sleeper: time spent on work that blocks every other task,
    the WebSocket readers included. Use as `async with LoopLag() as lag:`; `samples` holds (when the
    sleeper was due, in seconds since entering; how late it woke, in ms), so a stall counts for the
    moment it began."""

    INTERVAL = 0.005

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def max_ms(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest lag seen between `start` and `end` seconds after entering."""
        return max((lag for at, lag in self.samples if start <= at < end), default=0.0)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        entered = loop.time()
        while True:
            due = loop.time() + self.INTERVAL
            await asyncio.sleep(self.INTERVAL)
            self.samples.append((due - entered, (loop.time() - due) * 1000))
