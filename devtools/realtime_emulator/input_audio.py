"""The input audio buffer: audio the client appends, then commits as a user message or clears.

What the emulator hears in committed audio is :func:`~.speech.heard_text`; the transcription of a
committed item is that same text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from . import protocol
from .audio_formats import audio_format
from .validation import RequestError

MIN_COMMIT_SECONDS = 0.1


@dataclass(frozen=True)
class CommittedAudio:
    """One committed buffer: the user message item it became, its format and bytes, what was heard."""

    item_id: str
    format: dict[str, Any]
    raw: bytes
    heard: str

    @property
    def samples(self) -> int:
        return len(self.raw) // audio_format(self.format).sample_bytes

    @property
    def seconds(self) -> float:
        return audio_format(self.format).seconds(len(self.raw))

    @property
    def audio_tokens(self) -> int:
        return protocol.audio_tokens(len(self.raw), audio_format(self.format).bytes_per_second)

    def as_record(self) -> dict[str, Any]:
        """The session record's entry (the bytes themselves are served by a control route)."""
        return {
            "item_id": self.item_id,
            "format": self.format,
            "bytes": len(self.raw),
            "samples": self.samples,
            "seconds": self.seconds,
            "sha256": hashlib.sha256(self.raw).hexdigest(),
            "heard": self.heard,
        }


class InputAudioBuffer:
    """The audio appended since the last commit or clear."""

    def __init__(self) -> None:
        self._audio = bytearray()

    def append(self, encoded: str) -> None:
        try:
            self._audio += base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise RequestError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio"
            ) from None

    def clear(self) -> None:
        self._audio.clear()

    def take(self, input_format: dict[str, Any]) -> bytes:
        """The buffered audio, checked for the input format; the buffer is then empty."""
        source = audio_format(input_format)
        if len(self._audio) < source.byte_count(MIN_COMMIT_SECONDS):
            milliseconds = source.seconds(len(self._audio)) * 1000
            raise RequestError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {milliseconds:.2f}ms of audio.",
            )
        if len(self._audio) % source.sample_bytes:
            raise RequestError(
                "invalid_value",
                f"Error committing input audio buffer: {len(self._audio)} bytes is not a whole number of "
                f"{source.sample_bytes}-byte samples of {source.type}.",
            )
        raw = bytes(self._audio)
        self._audio.clear()
        return raw


def transcription_usage(committed: CommittedAudio, transcript: str, model: str) -> dict[str, Any]:
    """Usage of an input transcription: by duration for whisper models, else by tokens."""
    if model.startswith("whisper"):
        return {"type": "duration", "seconds": round(committed.seconds, 3)}
    output_tokens = protocol.text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": committed.audio_tokens,
        "output_tokens": output_tokens,
        "total_tokens": committed.audio_tokens + output_tokens,
        "input_token_details": {"audio_tokens": committed.audio_tokens, "text_tokens": 0},
    }
