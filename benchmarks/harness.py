"""What a benchmark worker drives: the real function, a bare openai-SDK loop and bare blob calls.

Imported only inside a worker process whose environment already holds the stack's app settings
(`SSL_CERT_FILE` must be set before aiohttp is imported).
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import time
from dataclasses import dataclass
from typing import Any, Self
from uuid import uuid4

import aiohttp
import numpy as np
import psutil
import soxr
from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient
from openai import AsyncOpenAI

import function_app
from devtools.driver import FunctionDriver
from devtools.realtime_emulator import encode_audio, synthesize
from realtime_speech import http
from realtime_speech.audio_input import MODEL_RATE
from realtime_speech.encoders import OUTPUT_FORMATS, OutputFormat
from realtime_speech.realtime import VoiceRequest, session_config
from realtime_speech.settings import get_settings
from realtime_speech.wav import WAV_HEADER_BYTES
from tests.audio_corpus import encode as encode_sound

from .records import TailRoundTrips

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
SPOKEN_TEXT = "Please read the weather report for the coast."
RECORD_BYTES = 1200
"""About the size of the JSON record the function saves beside each WAV."""
EVENT_STREAM_HEADERS = {"Accept": "text/event-stream"}
TONE_SECONDS_PER_CHARACTER = 0.065


def speech_text(seconds: float, pace: float | None = None) -> str:
    """A user message the emulator answers with exactly `seconds` of audio: at full speed, or paced at
    `pace` times real time. The same text always gives the same audio."""
    scenario = f"slow pace={pace:g}" if pace is not None else "long"
    return f"[[emulator:{scenario} seconds={seconds:g}]] {SPOKEN_TEXT}"


def question_text(seconds: float) -> str:
    """A question the emulator's tones speak in about `seconds` (one 65 ms symbol per character)."""
    characters = round(seconds / TONE_SECONDS_PER_CHARACTER)
    return " ".join([SPOKEN_TEXT] * (characters // len(SPOKEN_TEXT) + 1))[:characters].strip()


def model_audio(seconds: float, output: OutputFormat = OUTPUT_FORMATS["wav"]) -> bytes:
    """`seconds` of the emulator's speech in the session audio format of `output` (what the model
    sends for that format: PCM16 24 kHz, or G.711 at 8 kHz)."""
    return encode_audio(synthesize(SPOKEN_TEXT, seconds=seconds).pcm, output.session_format)


def model_deltas(audio: bytes, seconds: float) -> list[bytes]:
    """`audio` (lasting `seconds`) cut as the emulator sends it: 100 ms, 150 ms, then 250 ms a delta."""
    per_second = len(audio) / seconds
    sizes = [round(per_second * share) for share in (0.1, 0.15)]
    chunks, offset = [], 0
    while offset < len(audio):
        size = sizes.pop(0) if sizes else round(per_second * 0.25)
        chunks.append(audio[offset : offset + size])
        offset += size
    return chunks


@dataclass(frozen=True)
class SpokenInput:
    """A spoken question as a caller would upload it."""

    name: str
    content_type: str
    data: bytes


def spoken_inputs(text: str) -> list[SpokenInput]:
    """`text` spoken by the emulator's tones (which it hears back as `text`), in each kind of file a
    caller may send: WAV 48 kHz stereo, WAV 16 kHz mono, FLAC 44.1 kHz, MP3 24 kHz 48 kbps, Ogg Vorbis
    48 kHz."""
    pcm = synthesize(text).pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768

    def at(rate: int, channels: int = 1) -> np.ndarray:
        resampled = soxr.resample(samples, MODEL_RATE, rate)
        return np.repeat(resampled[:, None], channels, axis=1)

    mp3 = OUTPUT_FORMATS["mp3"].encoder(mp3_bitrate_kbps=48)
    return [
        SpokenInput("WAV 48 kHz stereo", "audio/wav", encode_sound(at(48_000, 2), 48_000, "WAV", "PCM_16")),
        SpokenInput("WAV 16 kHz mono", "audio/wav", encode_sound(at(16_000), 16_000, "WAV", "PCM_16")),
        SpokenInput("FLAC 44.1 kHz", "audio/flac", encode_sound(at(44_100), 44_100, "FLAC", "PCM_16")),
        SpokenInput("MP3 24 kHz 48 kbps", "audio/mpeg", mp3.encode(pcm) + mp3.flush()),
        SpokenInput("Ogg Vorbis 48 kHz", "audio/ogg", encode_sound(at(48_000), 48_000, "OGG", "VORBIS")),
    ]


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports `ru_maxrss` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Outcome:
    """One call: HTTP-like status, wall seconds, the response body (or the error's name), and the
    seconds until its first audio reached the caller (None when the call does not say)."""

    status: int
    seconds: float
    body: dict[str, Any]
    first_audio: float | None = None
    retry_after: float | None = None
    """The `Retry-After` of a refusal, in seconds."""


class SpeechFunction:
    """`POST /api/speech` through the function app's ASGI app, in process (`devtools.driver`)."""

    def __init__(self) -> None:
        self._driver = FunctionDriver(function_app.app)

    async def call(self, text: str, **options: str) -> Outcome:
        """A written question, with more request `options` (e.g. `format`)."""
        return await self._timed(json={"text": text, **options})

    async def ask_aloud(self, audio: bytes, content_type: str) -> Outcome:
        """A spoken question: the audio file as the raw body."""
        return await self._timed(content=audio, headers={"Content-Type": content_type})

    async def _timed(self, **request: Any) -> Outcome:
        started = time.perf_counter()
        response = await self._driver.post_speech(**request)
        elapsed = time.perf_counter() - started
        retry_after = response.headers.get("retry-after")
        return Outcome(
            response.status_code,
            elapsed,
            response.json(),
            retry_after=None if retry_after is None else float(retry_after),
        )

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
                output_format=dict(OUTPUT_FORMATS["wav"].session_format),
                speed=settings.realtime_speed,
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
        first_audio: float | None = None
        chunks: list[bytes] = []
        async with self._client.realtime.connect(model=self._deployment) as connection:
            await connection.session.update(session=self._config)  # type: ignore[arg-type]
            await connection.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            )
            await connection.response.create()
            async for event in connection:
                if event.type == "response.output_audio.delta":
                    first_audio = first_audio or time.perf_counter() - started
                    chunks.append(base64.b64decode(event.delta))
                elif event.type == "error":
                    raise RuntimeError(f"realtime error event: {event.error.code}")
                elif event.type == "response.done":
                    break
        elapsed = time.perf_counter() - started
        return Outcome(200, elapsed, {"audio_bytes": sum(map(len, chunks))}, first_audio)

    async def close(self) -> None:
        await self._client.close()


class HostedFunction:
    """`POST /api/speech` through a dev host over a socket (`Stack.start_host`): a JSON answer, or the
    answer's Server-Sent Events read as they arrive. Only the events' names are parsed, and the data
    of the final one, so a reader of many streams keeps up."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/api/speech"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900))

    async def call(self, text: str) -> Outcome:
        """The JSON answer."""
        started = time.perf_counter()
        async with self._http.post(self._url, json={"text": text}) as response:
            body = await response.json(content_type=None)
        return Outcome(response.status, time.perf_counter() - started, body)

    async def stream(self, text: str) -> Outcome:
        """The whole event stream; the body is the data of its last event (`speech.done` or `error`)."""
        return await self._events(text, stop_after_audio=None)

    async def stall(self, text: str, seconds: float) -> Outcome:
        """Read the stream up to its first audio, then stop reading for `seconds` and hang up. The
        body holds how many bytes of audio events' data had been read by then."""
        return await self._events(text, stop_after_audio=seconds)

    async def _events(self, text: str, stop_after_audio: float | None) -> Outcome:
        started = time.perf_counter()
        first_audio: float | None = None
        name, data, audio_bytes = "", b"", 0
        async with self._http.post(self._url, json={"text": text}, headers=EVENT_STREAM_HEADERS) as response:
            if response.status != 200:
                return Outcome(response.status, time.perf_counter() - started, await response.json())
            async for line in response.content:
                if line.startswith(b"event: "):
                    name = line[7:].strip().decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
                    if name != "speech.audio.delta":
                        continue
                    audio_bytes += len(data)
                    if first_audio is None:
                        first_audio = time.perf_counter() - started
                        if stop_after_audio is not None:
                            await asyncio.sleep(stop_after_audio)
                            response.close()
                            body = {"audio_event_bytes": audio_bytes}
                            return Outcome(200, time.perf_counter() - started, body, first_audio)
        final = json.loads(data) if name in ("speech.done", "error") else {"type": name or "no event"}
        status = 200 if name == "speech.done" else 0
        return Outcome(status, time.perf_counter() - started, final, first_audio)

    async def close(self) -> None:
        await self._http.close()


class HostedChat:
    """`POST /api/v1/chat/completions` through a dev host over a socket: a non-streamed `wav` answer
    read and counted (not kept), or `stream: true` chunks read as they arrive, noting when the first
    `data` piece came. `history` earlier messages go before the question."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/api/v1/chat/completions"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900))
        self._model = get_settings().azure_openai_deployment_name

    def _body(self, text: str, fmt: str, history: int, stream: bool) -> dict[str, Any]:
        earlier = [
            {"role": "user" if turn % 2 == 0 else "assistant", "content": f"{SPOKEN_TEXT} (turn {turn})"}
            for turn in range(history)
        ]
        return {
            "model": self._model,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": fmt},
            "messages": [*earlier, {"role": "user", "content": text}],
            "stream": stream,
        }

    async def call(self, text: str) -> Outcome:
        """The whole `chat.completion`; the body holds how many bytes it had."""
        started = time.perf_counter()
        size = 0
        async with self._http.post(self._url, json=self._body(text, "wav", 0, False)) as response:
            async for piece in response.content.iter_any():
                size += len(piece)
        return Outcome(response.status, time.perf_counter() - started, {"body_bytes": size})

    async def stream(self, text: str, history: int = 0) -> Outcome:
        """The chunks up to `[DONE]` (status 200) or an error event (status 0)."""
        started = time.perf_counter()
        first_audio: float | None = None
        async with self._http.post(self._url, json=self._body(text, "pcm16", history, True)) as response:
            if response.status != 200:
                return Outcome(response.status, time.perf_counter() - started, await response.json())
            async for line in response.content:
                if first_audio is None and b'"data":"' in line:
                    first_audio = time.perf_counter() - started
                elif line.startswith(b"data: [DONE]"):
                    return Outcome(200, time.perf_counter() - started, {}, first_audio)
                elif line.startswith(b'data: {"error"'):
                    break
        return Outcome(0, time.perf_counter() - started, {"type": "error"}, first_audio)

    async def close(self) -> None:
        await self._http.close()


class Sampler:
    """Runs `_watch()` in the background for the duration of an `async with` block."""

    _task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class RssWatch(Sampler):
    """Samples another process's RSS every `INTERVAL` seconds: `async with RssWatch(pid) as watch:`,
    then `watch.peak` and `watch.samples` ((seconds since entering, bytes))."""

    INTERVAL = 0.02

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)

    async def _watch(self) -> None:
        entered = time.perf_counter()
        while True:
            self.samples.append((round(time.perf_counter() - entered, 3), self.rss()))
            await asyncio.sleep(self.INTERVAL)


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


class LoopLag(Sampler):
    """How late the event loop wakes a 5 ms sleeper: time spent on work that blocks every other task,
    the WebSocket readers included. Use as `async with LoopLag() as lag:`; `samples` holds (when the
    sleeper was due, in seconds since entering; how late it woke, in ms), so a stall counts for the
    moment it began."""

    INTERVAL = 0.005

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

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
