"""One realtime session with an Azure OpenAI deployment (GA protocol, `/openai/v1/realtime`).

A `RealtimeBackend` is one deployment; `open()` connects (failures mapped to the documented errors).
A `RealtimeSession` is configured, asked and answered in one pipelined exchange: `session.update`,
the earlier turns of a conversation and the question as `conversation.item.create` (or the input
buffer), and `response.create` go out together (the service applies client events
in order), then the events are consumed as they arrive and handed to an `AnswerListener` as they
stream. Knows nothing of HTTP or storage.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import anyio
from azure.core.credentials_async import AsyncTokenCredential
from openai import AsyncOpenAI, WebSocketConnectionClosedError
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    ConversationItemCreateEvent,
    InputAudioBufferAppendEvent,
    InputAudioBufferCommitEvent,
    ResponseCancelEvent,
    ResponseCreateEvent,
    SessionUpdateEvent,
)
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .errors import (
    BackendAccessDenied,
    DeploymentNotFound,
    ServiceError,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from .identity import openai_token_provider
from .models import Timeline
from .wav import PCM16_24KHZ_MONO

CANCEL_SECONDS = 1.0
# A spoken question goes out in appends of this many bytes: well under the service's 15 MiB per event.
APPEND_CHUNK_BYTES = 256 * 1024
SERVER_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 200,
    "create_response": True,
}
# websockets waits 10 s by default for each; a stuck peer must not hold a request (or its cleanup) that long.
WEBSOCKET_OPTIONS = {"open_timeout": 10.0, "close_timeout": 2.0}


@dataclass(frozen=True)
class Turn:
    """An earlier message of a conversation, replayed before the question: text parts (str) and, for
    a user, spoken parts (bytes, PCM16 24 kHz mono). An assistant turn is its text (the service
    refuses assistant audio)."""

    role: Literal["user", "assistant"]
    content: tuple[str | bytes, ...]


def turn_item(turn: Turn) -> dict[str, Any]:
    """The conversation item of a turn."""
    content: list[dict[str, Any]] = []
    for part in turn.content:
        if isinstance(part, bytes):
            content.append({"type": "input_audio", "audio": base64.b64encode(part).decode()})
        elif turn.role == "assistant":
            content.append({"type": "output_text", "text": part})
        else:
            content.append({"type": "input_text", "text": part})
    return {"type": "message", "role": turn.role, "content": content}


@dataclass(frozen=True)
class VoiceRequest:
    """What to ask and how to answer: the user's text, the instructions, the voice, the session's audio
    output format, the speaking speed and the longest answer (in output tokens; None: no limit)."""

    text: str | None
    instructions: str
    voice: str
    transcription_model: str
    output_format: dict[str, Any]
    speed: float = 1.0
    max_output_tokens: int | None = None
    input_audio: bytes | None = None
    """A spoken question instead of `text`, in `input_format`."""
    input_format: dict[str, Any] | None = None
    input_transcript_grace_seconds: float = 5.0
    """How long after `response.done` the question's transcript is still awaited."""
    history: tuple[Turn, ...] = ()
    """The conversation before the question, oldest first."""


@dataclass(frozen=True)
class SpokenAnswer:
    transcript: str
    session_id: str | None
    response_id: str | None
    status: str
    status_reason: str | None
    usage: dict[str, Any] | None
    input_transcript: str | None = None
    input_transcript_reason: str | None = None


class AnswerListener(Protocol):
    """What hears the answer as it is spoken (the stored file, the caller's event stream)."""

    async def audio(self, chunk: bytes) -> None:
        """The next decoded audio delta, in the session's output format."""

    async def audio_done(self) -> None:
        """The audio has ended (called once, at `response.output_audio.done` or `response.done`)."""

    async def transcript_delta(self, delta: str) -> None:
        """The next piece of the answer's transcript."""

    async def input_transcript(self, transcript: str) -> None:
        """What a spoken question said (it may come before or after the answer)."""


def session_config(request: VoiceRequest) -> dict[str, Any]:
    """The GA `session.update` payload: the quickstart's configuration, audio out only. A spoken
    question is sent whole and committed by the app, so it turns server VAD off, and only a spoken
    question configures input transcription: a text question must not depend on a transcription
    deployment the backend may not have."""
    pcm = {"type": "audio/pcm", "rate": PCM16_24KHZ_MONO.sample_rate}
    audio_input: dict[str, Any] = {"format": request.input_format or pcm, "turn_detection": SERVER_VAD}
    if request.input_audio is not None:
        audio_input |= {"transcription": {"model": request.transcription_model}, "turn_detection": None}
    return {
        "type": "realtime",
        "instructions": request.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": audio_input,
            "output": {"format": request.output_format, "voice": request.voice, "speed": request.speed},
        },
        "max_output_tokens": request.max_output_tokens or "inf",
    }


def realtime_client(endpoint: str, api_key: str | None, credential: AsyncTokenCredential) -> AsyncOpenAI:
    """The process-wide realtime client of one endpoint: an Entra token per connection, or the API
    key when one is configured (local use)."""
    endpoint = endpoint.rstrip("/")
    return AsyncOpenAI(
        base_url=f"{endpoint}/openai/v1",
        websocket_base_url=f"{endpoint.replace('http', 'ws', 1)}/openai/v1",
        api_key=api_key or openai_token_provider(credential),
        max_retries=0,
    )


async def prepare_first_answer() -> None:
    """Build now what a process's first answer would otherwise wait for (about 65 ms here): the
    validators and serialisers of the client events it sends (pydantic builds them on first use) and
    the async backend the SDK looks up on every send (imported on first use)."""
    request = VoiceRequest(
        text=".",
        instructions=".",
        voice="alloy",
        transcription_model="whisper-1",
        output_format={"type": "audio/pcm", "rate": PCM16_24KHZ_MONO.sample_rate},
    )
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "."}]}
    events = (
        SessionUpdateEvent(type="session.update", session=session_config(request)),
        ConversationItemCreateEvent(type="conversation.item.create", item=item),
        InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=""),
        InputAudioBufferCommitEvent(type="input_audio_buffer.commit"),
        ResponseCreateEvent(type="response.create"),
        ResponseCancelEvent(type="response.cancel"),
    )
    for event in events:
        event.to_json(use_api_names=True, exclude_unset=True)
    anyio.get_current_task()


class RealtimeBackend:
    """One realtime deployment, reached through a process-wide client; one session per answer."""

    def __init__(self, name: str, client: AsyncOpenAI, deployment: str, api_key: str | None = None) -> None:
        self.name = name
        self._client = client
        self._deployment = deployment
        self._extra_headers = {"api-key": api_key} if api_key else {}

    async def open(self) -> RealtimeSession:
        """One connection attempt; a refusal is mapped to the error the caller would see."""
        return RealtimeSession(await self._connect())

    async def open_spare(self) -> RealtimeSession:
        """A session held open for a later request: connected, and its `session.created` received."""
        connection = await self._connect()
        try:
            async with asyncio.timeout(WEBSOCKET_OPTIONS["open_timeout"]):
                created = await connection.recv()
        except Exception as exc:
            await RealtimeSession(connection).close()
            raise UpstreamUnavailable(
                f"The realtime endpoint did not open the session ({type(exc).__name__})."
            ) from None
        if created.type != "session.created":
            await RealtimeSession(connection).close()
            raise UpstreamFailed(f"The realtime endpoint began with '{created.type}', not session.created.")
        return RealtimeSession(connection, spare_of=created.session.id)  # type: ignore[union-attr]

    async def _connect(self) -> AsyncRealtimeConnection:
        try:
            connection = await self._client.realtime.connect(
                model=self._deployment,
                extra_headers=self._extra_headers,
                websocket_connection_options=WEBSOCKET_OPTIONS,  # type: ignore[typeddict-unknown-key]
            ).enter()
        except Exception as exc:
            raise connect_error(exc) from None
        return connection

    async def close(self) -> None:
        await self._client.close()


class SessionLost(UpstreamFailed):
    """A spare session ended before the service sent anything for the question: nothing was answered,
    so a fresh session can ask again."""


class RealtimeSession:
    """One open realtime connection: asks once and streams the answer to a listener.

    A spare (`spare_of`: its session id, from the `session.created` already received) was opened
    before its request; `wait_closed()` watches it until a request takes it.
    """

    def __init__(self, connection: AsyncRealtimeConnection, spare_of: str | None = None) -> None:
        self._connection = connection
        self._answering = False
        self.spare_of = spare_of
        self._received = 0

    async def wait_closed(self) -> None:
        """Return when the connection has ended (the service closed it). Safe to cancel: no event is
        lost (a spare is sent nothing before it is asked; anything else is ignored)."""
        with suppress(Exception):
            while True:
                await self._connection.recv()

    async def answer(
        self, request: VoiceRequest, listener: AnswerListener, timeline: Timeline
    ) -> SpokenAnswer:
        """Configure the session, ask, and consume the answer's events until `response.done`."""
        connection = self._connection
        try:
            # Typed events are serialised by pydantic (about 0.1 ms); the resource helpers run the
            # SDK's parameter transform instead (about 3 ms of event-loop time per event).
            await connection.send(SessionUpdateEvent(type="session.update", session=session_config(request)))
            for turn in request.history:
                item = turn_item(turn)
                await connection.send(ConversationItemCreateEvent(type="conversation.item.create", item=item))
            await self._ask(request)
            await connection.send(ResponseCreateEvent(type="response.create"))
            self._answering = True
            answer = await _collect_answer(self._counted_events(), listener, timeline, request)
            self._answering = False
            if answer.session_id is None:
                answer = replace(answer, session_id=self.spare_of)
            return answer
        except (ConnectionClosed, WebSocketConnectionClosedError, _Ended) as exc:
            self._answering = False
            message = _ended_message(exc)
            if self.spare_of is not None and self._received == 0:
                raise SessionLost(message) from None
            raise UpstreamFailed(message) from None

    async def _counted_events(self) -> AsyncIterator[Any]:
        async for event in self._connection:
            self._received += 1
            yield event

    async def _ask(self, request: VoiceRequest) -> None:
        """The question: a user message, or the spoken question appended to the input buffer and
        committed (which makes it the conversation's user item)."""
        connection = self._connection
        if request.input_audio is None:
            content = [{"type": "input_text", "text": request.text}]
            item = {"type": "message", "role": "user", "content": content}
            await connection.send(ConversationItemCreateEvent(type="conversation.item.create", item=item))
            return
        audio = request.input_audio
        for start in range(0, len(audio), APPEND_CHUNK_BYTES):
            chunk = base64.b64encode(audio[start : start + APPEND_CHUNK_BYTES]).decode()
            await connection.send(InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=chunk))
        await connection.send(InputAudioBufferCommitEvent(type="input_audio_buffer.commit"))

    async def close(self) -> None:
        """Close the connection; an answer still under way is cancelled first (`response.cancel`), so
        the model stops spending tokens on a caller who left. Bounded: about a second at most."""
        with suppress(Exception):
            async with asyncio.timeout(CANCEL_SECONDS):
                if self._answering:
                    await self._connection.send(ResponseCancelEvent(type="response.cancel"))
                await self._connection.close()


def connect_error(exc: Exception) -> ServiceError:
    """Map a failed WebSocket handshake to the error the caller sees."""
    if isinstance(exc, ServiceError):  # e.g. the token provider could not get a token
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:  # the app's token, the same for every backend: not one backend's fault
            return UpstreamAuthFailed(
                "The realtime endpoint rejected the credentials (HTTP 401): the token is invalid, expired or "
                "for another audience, or the API key is wrong. Check the managed identity (AZURE_CLIENT_ID) "
                "or AZURE_OPENAI_API_KEY."
            )
        if status == 403:
            return BackendAccessDenied(
                "The realtime endpoint denied access (HTTP 403): the identity lacks the 'Cognitive Services "
                "OpenAI User' role on the Azure OpenAI resource."
            )
        if status == 404:
            return DeploymentNotFound(
                "The realtime endpoint refused the handshake (HTTP 404): the resource has no deployment of "
                "that name."
            )
        retry_after = _handshake_retry_after(exc)
        if status == 429:
            return UpstreamRateLimited(
                "The realtime endpoint is rate limiting (HTTP 429).", retry_after=retry_after
            )
        if status >= 500:
            return UpstreamUnavailable(
                f"The realtime endpoint failed the handshake (HTTP {status}).", retry_after=retry_after
            )
        return UpstreamFailed(f"The realtime endpoint refused the handshake (HTTP {status}).")
    if isinstance(exc, OSError | TimeoutError | ConnectionClosed | InvalidHandshake | InvalidURI):
        return UpstreamUnavailable(f"The realtime endpoint could not be reached ({type(exc).__name__}).")
    raise exc


def _handshake_retry_after(exc: Exception) -> float | None:
    """The seconds a refused handshake asks to wait: Azure's `retry-after-ms` (milliseconds) when it
    gave a number there, else `Retry-After` (seconds), else None."""
    if not isinstance(exc, InvalidStatus):
        return None
    headers = exc.response.headers
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    return _number(headers.get("Retry-After"))


def _number(value: str | None) -> float | None:
    """A header's value as a number of at least 0; None when absent or not a finite number."""
    try:
        number = float(value) if value else math.nan
    except ValueError:
        return None
    return max(0.0, number) if math.isfinite(number) else None


def _ended_message(exc: Exception) -> str:
    if isinstance(exc, _Ended):
        return "The realtime connection closed before the answer was complete."
    received = exc.rcvd if isinstance(exc, ConnectionClosed) else None
    how = f"closed it (code {received.code})" if received else "dropped it"
    return f"The realtime endpoint {how} before the answer was complete."


class _Ended(Exception):
    """The connection ended cleanly (a close frame) before the answer was complete."""


async def _collect_answer(
    events: AsyncIterator[Any], listener: AnswerListener, timeline: Timeline, request: VoiceRequest
) -> SpokenAnswer:
    """Consume server events until `response.done` (and, for a spoken question, its transcript, for
    at most the grace period after it), handing audio and transcripts to the listener."""
    session_id: str | None = None
    transcript: str | None = None
    deltas: list[str] = []
    audio_ended = False
    heard: dict[str, str | None] = {}  # the question's transcript, or why there is none
    answer: SpokenAnswer | None = None
    while answer is None or (request.input_audio is not None and not heard):
        grace = None if answer is None else request.input_transcript_grace_seconds
        try:
            async with asyncio.timeout(grace):
                event = await anext(events)
        except (StopAsyncIteration, TimeoutError):
            if answer is None:
                raise _Ended from None
            heard["reason"] = "not_received"
            break
        match event.type:
            case "response.output_audio.delta":
                timeline.mark("first_audio")
                await listener.audio(base64.b64decode(event.delta))
            case "response.output_audio.done":
                timeline.mark("audio_done")
                audio_ended = True
                await listener.audio_done()
            case "response.output_audio_transcript.delta":
                deltas.append(event.delta)
                await listener.transcript_delta(event.delta)
            case "response.output_audio_transcript.done":
                transcript = event.transcript
            case "conversation.item.input_audio_transcription.completed":
                heard["transcript"] = event.transcript
                await listener.input_transcript(event.transcript)
            case "conversation.item.input_audio_transcription.failed":
                heard["reason"] = "failed"
            case "session.created" | "session.updated":
                session_id = event.session.id  # type: ignore[union-attr]
            case "error":
                raise _error_event(event.error)
            case "response.done":
                timeline.mark("response_done")
                if not audio_ended:
                    await listener.audio_done()
                answer = _answer(event.response, session_id, transcript or "".join(deltas))
    return replace(
        answer, input_transcript=heard.get("transcript"), input_transcript_reason=heard.get("reason")
    )


def _answer(response: Any, session_id: str | None, transcript: str) -> SpokenAnswer:
    """The outcome of `response.done`; failed or cancelled responses are errors, incomplete ones kept."""
    details = response.status_details
    if response.status in ("failed", "cancelled"):
        error = details.error if details else None
        reason = f": {error.code or error.type}" if error else (f": {details.reason}" if details else "")
        raise UpstreamFailed(f"The model's response ended with status '{response.status}'{reason}.")
    if not transcript:
        transcript = _transcript_of(response)
    return SpokenAnswer(
        transcript=transcript,
        session_id=session_id,
        response_id=response.id,
        status=response.status or "completed",
        status_reason=details.reason if details else None,
        usage=response.usage.model_dump(exclude_none=True) if response.usage else None,
    )


def _transcript_of(response: Any) -> str:
    for item in response.output or []:
        for part in getattr(item, "content", None) or []:
            if getattr(part, "transcript", None):
                return part.transcript
    return ""


# Azure says "Please retry after 20 seconds."; OpenAI says "Please try again in 7.5s" (or "in 350ms").
_RETRY_IN = re.compile(r"(?:try again in|retry after)\s+(\d+(?:\.\d+)?)\s*(ms|s)", re.IGNORECASE)


def _error_event(error: Any) -> ServiceError:
    """Map a realtime `error` event; a rate limit carries the wait the service asked for."""
    message = (error.message or "")[:300]
    if error.code == "rate_limit_exceeded":
        return UpstreamRateLimited(
            f"The model's rate limit was exceeded: {message}", retry_after=_wait_asked_in(message)
        )
    return UpstreamFailed(f"The model reported an error ({error.code or error.type}): {message}")


def _wait_asked_in(message: str) -> float | None:
    match = _RETRY_IN.search(message)
    if match is None:
        return None
    return float(match[1]) / (1000 if match[2].lower() == "ms" else 1)
