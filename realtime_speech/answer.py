"""One answer as the model speaks it, heard by its listeners (the stored file and the caller's events),
and `Answering`, the answer under way as the HTTP edge sees it.

`AnswerStream` is the `AnswerListener` of a realtime session. Each audio delta is encoded once into
the next bytes of the stored file (see `encoders`); those bytes go to the block writer, which stages
them while the model speaks, and, when the caller asked for Server-Sent Events, to the caller's
`EventChannel` as `speech.audio.delta`. Transcript deltas go to the channel too. So the bytes the
caller hears are exactly the bytes stored, and nothing is committed unless the whole answer arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from .encoders import AudioEncoder
from .models import AudioFacts, InputAudioFacts, SpeechResult
from .storage import BlockBlobWriter

Event = dict[str, Any]
# Events queued for one caller, in bytes of their payload: a slow reader holds at most this much
# (plus the socket buffers), and the model's WebSocket is read no faster than the caller reads.
CHANNEL_MAX_BYTES = 1024 * 1024


class EventChannel:
    """The events of one answer for one caller, bounded by size.

    `put` waits while the events not yet read exceed `max_bytes` (back-pressure, nothing dropped);
    `close` ends the channel (puts after it are ignored); `get` returns what is left, then None.
    """

    def __init__(self, max_bytes: int = CHANNEL_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._events: deque[tuple[Event, int]] = deque()
        self._bytes = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    async def put(self, event: Event, size: int = 0) -> None:
        while not self._closed and self._bytes >= self._max_bytes:
            self._writable.clear()
            await self._writable.wait()
        if not self._closed:
            self._events.append((event, size))
            self._bytes += size
            self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def get(self, idle_seconds: float | None = None) -> Event | None:
        """The next event, or None once the channel is closed and empty; TimeoutError when nothing
        came for `idle_seconds`."""
        while not self._events:
            if self._closed:
                return None
            self._readable.clear()
            async with asyncio.timeout(idle_seconds):
                await self._readable.wait()
        event, size = self._events.popleft()
        self._bytes -= size
        self._writable.set()
        return event


class AudioFile:
    """The stored audio file being written: the format's encoder feeding a block writer."""

    def __init__(self, encoder: AudioEncoder, writer: BlockBlobWriter) -> None:
        self._encoder = encoder
        self._writer = writer
        self._ended = False

    async def write(self, chunk: bytes) -> bytes:
        """Encode the model's next audio; returns the file bytes it became (maybe none yet)."""
        body = self._encoder.encode(chunk)
        if body:
            await self._writer.write(body)
        return body

    async def end(self) -> bytes:
        """The audio has ended: write what the encoder still held and hand the header to the writer,
        which starts staging the rest. Returns the last audio bytes (none when called again; a WAV's
        pad byte is stored but is not audio)."""
        if self._ended:
            return b""
        self._ended = True
        tail = self._encoder.flush()
        for body in (tail, self._encoder.trailer()):
            if body:
                await self._writer.write(body)
        self._writer.finish(self._encoder.header())
        return tail

    async def facts(self) -> AudioFacts:
        """What the whole file is, once the audio has ended."""
        await self.end()
        return self._encoder.facts()

    async def commit(self) -> None:
        """Make the file visible, in one request."""
        await self._writer.commit()

    async def abort(self) -> None:
        await self._writer.abort()


class QuestionFile:
    """A spoken question kept as received, beside its answer: staged while the model speaks,
    committed with the answer (all or nothing)."""

    def __init__(self, name: str, facts: InputAudioFacts, writer: BlockBlobWriter, data: bytes) -> None:
        self.name = name
        self.facts = facts
        self._writer = writer
        self._staged = asyncio.ensure_future(self._stage(data))

    async def _stage(self, data: bytes) -> None:
        await self._writer.write(data)
        self._writer.finish(b"")

    async def commit(self) -> None:
        await self._staged
        await self._writer.commit()

    async def abort(self) -> None:
        self._staged.cancel()
        await asyncio.gather(self._staged, return_exceptions=True)
        await self._writer.abort()


class AnswerStream:
    """Hears the realtime answer: the stored file always, the caller's channel when there is one.
    `question` is the spoken question's file, kept beside the answer."""

    def __init__(self, file: AudioFile, channel: EventChannel | None) -> None:
        self.file = file
        self.question: QuestionFile | None = None
        self._channel = channel

    async def abort(self) -> None:
        """Nothing of this answer is committed: every upload it started is cancelled."""
        await self.file.abort()
        if self.question is not None:
            await self.question.abort()

    async def audio(self, chunk: bytes) -> None:
        await self._send_audio(await self.file.write(chunk))

    async def audio_done(self) -> None:
        await self._send_audio(await self.file.end())

    async def transcript_delta(self, delta: str) -> None:
        if self._channel is not None:
            await self._channel.put({"type": "speech.transcript.delta", "delta": delta}, len(delta))

    async def input_transcript(self, transcript: str) -> None:
        if self._channel is not None:
            event = {"type": "speech.input_transcript", "transcript": transcript}
            await self._channel.put(event, len(transcript))

    async def _send_audio(self, body: bytes) -> None:
        if self._channel is not None and body:
            audio = base64.b64encode(body).decode()
            await self._channel.put({"type": "speech.audio.delta", "audio": audio}, len(audio))


class Answering:
    """One request's answer, under way or (for an idempotency key) an earlier one.

    `result()` waits for it; `events()` yields it as Server-Sent Events data: `speech.started`, the
    audio and transcript deltas as they arrive, then `speech.done` (the JSON body) or `error` (the
    problem); `abandon()` is for a caller who left (the model is cancelled, nothing is committed).
    """

    def __init__(
        self,
        deadline: float,
        work: asyncio.Future[tuple[SpeechResult, bool]],
        started: Event | None = None,
        channel: EventChannel | None = None,
    ) -> None:
        self.deadline = deadline
        """When the answer must be complete (event-loop time)."""
        self._work = work
        self._started = started
        self._channel = channel

    @classmethod
    def done(cls, deadline: float, result: SpeechResult, *, replayed: bool) -> Answering:
        work: asyncio.Future[tuple[SpeechResult, bool]] = asyncio.get_running_loop().create_future()
        work.set_result((result, replayed))
        return cls(deadline, work)

    @property
    def replayed(self) -> bool:
        """True when the result is an earlier request's (same idempotency key); known once done."""
        return self._succeeded() and self._work.result()[1]

    def failure(self) -> BaseException | None:
        """Why the answer failed, once it has (None while under way, after success, or if abandoned)."""
        if not self._work.done() or self._work.cancelled():
            return None
        return self._work.exception()

    def _succeeded(self) -> bool:
        return self._work.done() and not self._work.cancelled() and self._work.exception() is None

    async def result(self) -> SpeechResult:
        """The answer; if the waiting caller is cancelled, so is the answer."""
        try:
            return (await asyncio.shield(self._work))[0]
        except asyncio.CancelledError:
            await self.abandon()
            raise

    async def events(self, idle_seconds: float | None = None) -> AsyncIterator[Event | None]:
        """The answer's events, the last `speech.done`; None whenever nothing happened for
        `idle_seconds` (time for a keep-alive). A failure raises (the edge sends it as `error`)."""
        if self._started is not None:
            yield self._started
        while self._channel is not None:
            try:
                event = await self._channel.get(idle_seconds)
            except TimeoutError:
                yield None
                continue
            if event is None:
                break
            yield event
        yield {"type": "speech.done", **(await self.result()).model_dump(mode="json")}

    async def abandon(self) -> None:
        """Cancel the answer (the model response and every upload) and wait for its cleanup."""
        self._work.cancel()
        with contextlib.suppress(BaseException):
            await self._work
