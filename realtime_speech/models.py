"""The public contract and the shapes every layer shares: the request, the stored record, the response,
the audio facts and the request's timeline. Imports nothing of the service."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

OutputFormatName = Literal["wav", "wav-mulaw", "wav-alaw", "mp3"]
Voice = Literal["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]
VOICES: tuple[str, ...] = Voice.__args__

MAX_TEXT_CHARS = 4_000
MAX_INSTRUCTIONS_CHARS = 4_000
MAX_BODY_BYTES = 64 * 1024
MAX_OUTPUT_TOKENS = 4096  # the most a realtime response speaks
_ANY_JSON = TypeAdapter(Any)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _text(max_chars: int) -> Any:
    """A string of at most `max_chars` characters, not blank (the length is checked first)."""
    return Annotated[str, Field(max_length=max_chars), AfterValidator(_not_blank)]


def _base64_audio(value: object) -> object:
    """JSON carries the audio as base64 (checked strictly); a raw body arrives as bytes already."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("must be base64 (RFC 4648, with padding)") from None
    return value


class SpeechRequest(BaseModel):
    """What `POST /api/speech` asks: a text or a spoken question (`audio`, base64 in JSON, or the raw
    body), and how to answer. Unknown fields are rejected: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: (
        Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)] | None
    ) = None
    audio: Annotated[bytes, BeforeValidator(_base64_audio)] | None = Field(
        None, description="A spoken question: an audio file, base64 in JSON."
    )
    instructions: _text(MAX_INSTRUCTIONS_CHARS) | None = None
    voice: Voice | None = None
    format: OutputFormatName | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_OUTPUT_TOKENS)

    @model_validator(mode="after")
    def _one_question(self) -> SpeechRequest:
        if (self.text is None) == (self.audio is None):
            raise ValueError("give exactly one of text and audio")
        return self

    @staticmethod
    def json_without_audio(body: bytes) -> bool:
        """Whether `body` is JSON without `audio` (absent or null at its top level), the kind of body
        held to MAX_BODY_BYTES. A body that is not JSON is not judged here: its parse error is what
        is wrong with it, whatever its size (it may be a cut-off spoken question)."""
        try:
            value = _ANY_JSON.validate_json(body)
        except ValidationError:
            return False
        return not isinstance(value, dict) or value.get("audio") is None

    def fingerprint(self) -> str:
        """What the request asks, as a digest: equal for bodies that differ only in layout."""
        digest = hashlib.sha256(self.model_dump_json(exclude={"audio"}).encode())
        if self.audio is not None:
            digest.update(hashlib.sha256(self.audio).digest())
        return digest.hexdigest()


class AudioFacts(BaseModel):
    """What was written: the stored file's format and size."""

    format: str = Field(description="wav, wav-mulaw, wav-alaw or mp3")
    encoding: str = Field(description="pcm_s16le, mulaw, alaw or mp3")
    sample_rate: int
    channels: int
    bits_per_sample: int | None = Field(None, description="Bits per sample; None for mp3.")
    bitrate_kbps: int | None = Field(None, description="mp3 only.")
    duration_seconds: float
    bytes: int = Field(description="Size of the whole file, header included.")

    @model_serializer(mode="wrap")
    def _without_nones(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A WAV has bits per sample, an mp3 a bitrate: each shows only the fact it has."""
        return {name: value for name, value in serialize(self).items() if value is not None}


class InputAudioFacts(BaseModel):
    """A spoken question as received."""

    content_type: str
    bytes: int
    duration_seconds: float


class SpeechRecord(BaseModel):
    """One answer as stored beside its audio (and kept for an idempotency key): everything but the URL,
    which is signed anew each time the answer is handed out."""

    request_id: str
    transcript: str
    container: str
    blob_name: str
    audio: AudioFacts
    voice: str
    input_transcript: str | None = Field(None, description="What a spoken question said.")
    input_transcript_reason: str | None = Field(
        None, description="Why a spoken question has no transcript: not_received or failed."
    )
    input_blob_name: str | None = Field(None, description="The spoken question, kept as received.")
    input_audio: InputAudioFacts | None = None
    backend: str | None = Field(None, description="The model backend that answered (its pool name).")
    session_id: str | None
    response_id: str | None
    status: str
    status_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


class SpeechResult(SpeechRecord):
    """The 200 response of `POST /api/speech` (and the `speech.done` event): the record with a fresh
    read-only URL to the audio."""

    audio_url: str
    expires_at: datetime
    input_audio_url: str | None = Field(None, description="Read-only URL of the spoken question.")

    def record(self) -> SpeechRecord:
        """The result without its URL, as it is kept."""
        return SpeechRecord.model_validate(self.model_dump(include=set(SpeechRecord.model_fields)))


@dataclass(frozen=True)
class SpokenPart:
    """An audio file in a conversation as received, its media type as declared; `param` says where it
    was sent."""

    data: bytes
    param: str
    content_type: str


@dataclass(frozen=True)
class AnswerReference:
    """An earlier answer of this app, by the `audio_id` it was handed out with."""

    audio_id: str
    param: str


@dataclass(frozen=True)
class HistoryTurn:
    """An earlier message: a user's text and spoken parts, or an assistant's text or earlier answer."""

    role: Literal["user", "assistant"]
    content: tuple[str | SpokenPart | AnswerReference, ...]


@dataclass(frozen=True)
class Conversation:
    """What a conversation adds to a question: instructions (replacing REALTIME_INSTRUCTIONS), the
    turns before it, the deployment that must answer (None: any), and where the question's own audio
    was sent (for errors)."""

    instructions: str | None = None
    history: tuple[HistoryTurn, ...] = ()
    deployment: str | None = None
    question_param: str | None = None


# The phases of a request, each from one mark (None: the request's start) to the next.
PHASES = (
    ("connect", None, "connected"),
    ("first_audio", "connected", "first_audio"),
    ("stream", "first_audio", "response_done"),
    ("commit", "response_done", "committed"),
)


class Timeline:
    """Milliseconds since the request began, per named moment (connected, first_audio, ...)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.spare_session: bool | None = None
        """Whether the model session was a spare opened before the request (None: no session)."""

    def mark(self, name: str) -> None:
        """Record the first time `name` happens; later calls keep the first."""
        self.marks.setdefault(name, self.elapsed_ms())

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000, 1)

    def phases_ms(self) -> dict[str, float]:
        """How long each phase that was reached took (connect, first_audio, stream, commit)."""
        marks = {None: 0.0, **self.marks}
        return {
            name: round(marks[end] - marks[start], 1)
            for name, start, end in PHASES
            if start in marks and end in marks
        }
