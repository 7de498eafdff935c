"""One spoken answer from an Azure OpenAI realtime deployment (GA protocol, `/openai/v1/realtime`).

The session is configured, asked and answered in one pipelined exchange: `session.update`,
`conversation.item.create` and `response.create` go out together (the service applies client events
in order), then the events are consumed as they arrive. Audio is handed to a sink as it streams.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from openai import AsyncOpenAI, WebSocketConnectionClosedError
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import ConversationItemCreateEvent, ResponseCreateEvent, SessionUpdateEvent
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .errors import (
    ServiceError,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from .models import Timeline
from .wav import PCM16_24KHZ_MONO

AudioSink = Callable[[bytes], Awaitable[None]]

CONNECT_ATTEMPTS = 4
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 4.0
# websockets waits 10 s by default for each; a stuck peer must not hold a request (or its cleanup) that long.
WEBSOCKET_OPTIONS = {"open_timeout": 10.0, "close_timeout": 2.0}


@dataclass(frozen=True)
class VoiceRequest:
    """What to say and how: the user's text, the instructions and the voice."""

    text: str
    instructions: str
    voice: str
    transcription_model: str


@dataclass(frozen=True)
class SpokenAnswer:
    transcript: str
    session_id: str | None
    response_id: str | None
    status: str
    status_reason: str | None
    usage: dict[str, Any] | None


def session_config(request: VoiceRequest) -> dict[str, Any]:
    """The GA `session.update` payload: the quickstart's configuration, audio out only."""
    pcm = {"type": "audio/pcm", "rate": PCM16_24KHZ_MONO.sample_rate}
    return {
        "type": "realtime",
        "instructions": request.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": pcm,
                "transcription": {"model": request.transcription_model},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "create_response": True,
                },
            },
            "output": {"format": pcm, "voice": request.voice},
        },
    }


class RealtimeSpeaker:
    """Opens one realtime session per answer on a process-wide client."""

    def __init__(self, client: AsyncOpenAI, deployment: str, extra_headers: dict[str, str]) -> None:
        self._client = client
        self._deployment = deployment
        self._extra_headers = extra_headers

    async def speak(
        self,
        request: VoiceRequest,
        on_audio: AudioSink,
        on_audio_end: Callable[[], None],
        deadline: float,
        timeline: Timeline,
    ) -> SpokenAnswer:
        """Ask for a spoken answer; audio goes to `on_audio`, `on_audio_end` marks its end.

        `deadline` (event-loop time) bounds the connection retries; the caller enforces it overall.
        """
        connection = await self._open(deadline)
        timeline.mark("connected")
        try:
            # Typed events are serialised by pydantic (about 0.1 ms); the resource helpers run the
            # SDK's parameter transform instead (about 3 ms of event-loop time per event).
            await connection.send(SessionUpdateEvent(type="session.update", session=session_config(request)))
            await connection.send(
                ConversationItemCreateEvent(
                    type="conversation.item.create",
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": request.text}],
                    },
                )
            )
            await connection.send(ResponseCreateEvent(type="response.create"))
            return await _collect_answer(connection, on_audio, on_audio_end, timeline)
        except (ConnectionClosed, WebSocketConnectionClosedError) as exc:
            received = exc.rcvd if isinstance(exc, ConnectionClosed) else None
            how = f"closed it (code {received.code})" if received else "dropped it"
            raise UpstreamFailed(f"The realtime endpoint {how} before the answer was complete.") from None
        finally:
            await connection.close()

    async def _open(self, deadline: float) -> AsyncRealtimeConnection:
        """Connect, retrying refusals that happen before any output with backoff and jitter; the
        endpoint's `Retry-After` replaces the backoff. No retry would end after the deadline."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                return await self._client.realtime.connect(
                    model=self._deployment,
                    extra_headers=self._extra_headers,
                    websocket_connection_options=WEBSOCKET_OPTIONS,  # type: ignore[typeddict-unknown-key]
                ).enter()
            except Exception as exc:
                error = connect_error(exc)
                asked = _handshake_retry_after(exc)
                delay = asked if asked is not None else _backoff(attempt)
                if not _retryable(error) or attempt == CONNECT_ATTEMPTS or loop.time() + delay >= deadline:
                    raise error from None
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff."""
    return random.uniform(0, min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**attempt))


def _retryable(error: ServiceError) -> bool:
    return isinstance(error, UpstreamRateLimited | UpstreamUnavailable)


def connect_error(exc: Exception) -> ServiceError:
    """Map a failed WebSocket handshake to the error the caller sees."""
    if isinstance(exc, ServiceError):  # e.g. the token provider could not get a token
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return UpstreamAuthFailed(
                "The realtime endpoint rejected the credentials (HTTP 401): the token is invalid, expired or "
                "for another audience, or the API key is wrong. Check the managed identity (AZURE_CLIENT_ID) "
                "or AZURE_OPENAI_API_KEY."
            )
        if status == 403:
            return UpstreamAuthFailed(
                "The realtime endpoint denied access (HTTP 403): the identity lacks the 'Cognitive Services "
                "OpenAI User' role on the Azure OpenAI resource."
            )
        if status == 404:
            return UpstreamFailed("The realtime endpoint answered 404: check the deployment name.")
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
    """The seconds a refused handshake's `Retry-After` asks for, if it gave a number."""
    if not isinstance(exc, InvalidStatus):
        return None
    value = exc.response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


async def _collect_answer(
    connection: AsyncRealtimeConnection,
    on_audio: AudioSink,
    on_audio_end: Callable[[], None],
    timeline: Timeline,
) -> SpokenAnswer:
    """Consume server events until `response.done`, streaming audio into the sink."""
    session_id: str | None = None
    transcript: str | None = None
    deltas: list[str] = []
    async for event in connection:
        match event.type:
            case "response.output_audio.delta":
                timeline.mark("first_audio")
                await on_audio(base64.b64decode(event.delta))
            case "response.output_audio.done":
                timeline.mark("audio_done")
                on_audio_end()
            case "response.output_audio_transcript.delta":
                deltas.append(event.delta)
            case "response.output_audio_transcript.done":
                transcript = event.transcript
            case "session.created" | "session.updated":
                session_id = event.session.id  # type: ignore[union-attr]
            case "error":
                raise _error_event(event.error)
            case "response.done":
                timeline.mark("response_done")
                on_audio_end()
                return _answer(event.response, session_id, transcript or "".join(deltas))
    raise UpstreamFailed("The realtime connection closed before the answer was complete.")


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
