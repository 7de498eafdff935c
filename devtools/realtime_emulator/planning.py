"""Planning a response: what ``response.create`` asked for, what will be said, and how much of it.

The token rule: an answer costs one audio token per started 50 ms of audio sent (20 per second,
rounded up; none for a text-only answer) plus the text tokens of the transcript sent (a word's delta
goes out just before its audio; ``ceil(characters / 4)``). With ``max_output_tokens`` below the cost of
the whole answer, the answer is cut after the largest whole number of 50 ms steps whose cost fits, and
ends ``incomplete`` (reason ``max_output_tokens``) with that cost as its output usage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import protocol
from .audio_formats import PCM, AudioFormat, audio_format, encode_audio
from .scenarios import CUT_SCENARIOS, Scenario
from .speech import Speech

FIRST_CHUNK_SECONDS = (0.1, 0.15)
CHUNK_SECONDS_CAP = 0.25
"""Audio deltas as the service streams them: 100 ms, 150 ms, then 250 ms (4800, 7200, 12000 bytes of
PCM 24 kHz; 800, 1200, 2000 bytes of G.711)."""


@dataclass(frozen=True)
class ResponseRequest:
    """What a ``response.create`` asks for, fixed when it arrives."""

    user_text: str
    scenario: Scenario
    settings: dict[str, Any]
    speed: float
    input_tokens: tuple[int, int]
    conversation_id: str | None
    """None for an out-of-band response (``conversation: "none"``)."""

    @property
    def audio(self) -> bool:
        return self.settings["output_modalities"] == ["audio"]

    @property
    def in_conversation(self) -> bool:
        return self.conversation_id is not None

    @property
    def output_format(self) -> AudioFormat:
        return audio_format(self.settings["format"])


@dataclass(frozen=True)
class Plan(ResponseRequest):
    """A request with its speech in the output format, and how much of it to send before the scenario
    acts (``limit``, in bytes of ``output_audio``)."""

    speech: Speech
    output_audio: bytes
    limit: int
    cut_by_token_limit: bool

    @property
    def marks(self) -> tuple[tuple[int, str], ...]:
        """The speech's word marks, as offsets in ``output_audio``."""
        return output_marks(self.speech, self.output_format)


def plan_response(request: ResponseRequest, speech: Speech) -> Plan:
    """How much of the speech to send: all of it, the scenario's share, or what ``max_output_tokens``
    allows (the response then ends ``incomplete``)."""
    output_format = request.output_format
    output_audio = encode_audio(speech.pcm, output_format.type)
    limit = len(output_audio)
    if request.scenario.name in CUT_SCENARIOS:
        limit = _whole_samples(int(len(output_audio) * request.scenario.at), output_format)
    allowed = token_limited_length(
        speech, output_format, len(output_audio), request.settings["max_output_tokens"], request.audio
    )
    return Plan(
        **vars(request),
        speech=speech,
        output_audio=output_audio,
        limit=min(limit, allowed),
        cut_by_token_limit=allowed < limit,
    )


def token_limited_length(
    speech: Speech, output_format: AudioFormat, total: int, max_output_tokens: int | str, audio: bool
) -> int:
    """The longest prefix (in bytes of the encoded audio, ``total`` long) whose output tokens fit
    ``max_output_tokens``: the whole answer, or a whole number of 50 ms steps."""
    if not isinstance(max_output_tokens, int):
        return total
    step = output_format.bytes_per_second // protocol.AUDIO_TOKENS_PER_SECOND
    steps = -(-total // step)
    marks = output_marks(speech, output_format)

    def fits(count: int) -> bool:
        return sum(output_tokens(marks, min(count * step, total), output_format, audio)) <= max_output_tokens

    low, high = 0, steps  # fits(low) always holds: nothing sent costs nothing
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return min(low * step, total)


def output_tokens(
    marks: tuple[tuple[int, str], ...], limit: int, output_format: AudioFormat, audio: bool
) -> tuple[int, int]:
    """Text and audio output tokens of an answer sent up to byte ``limit`` of its encoded audio."""
    text = "".join(delta for offset, delta in marks if offset < limit)
    audio_tokens = protocol.audio_tokens(limit, output_format.bytes_per_second) if audio else 0
    return protocol.text_tokens(text), audio_tokens


def output_marks(speech: Speech, output_format: AudioFormat) -> tuple[tuple[int, str], ...]:
    """Word marks of the speech (offsets in its PCM) as offsets in the same audio in another format."""
    if output_format == PCM:
        return speech.marks
    return tuple(
        (offset // PCM.sample_bytes * output_format.rate // PCM.rate * output_format.sample_bytes, delta)
        for offset, delta in speech.marks
    )


def audio_chunks(limit: int, output_format: AudioFormat) -> Iterator[tuple[int, int]]:
    """Audio chunk boundaries: small first chunks, growing to a cap, as the service streams them."""
    sizes = [output_format.byte_count(seconds) for seconds in FIRST_CHUNK_SECONDS]
    cap = output_format.byte_count(CHUNK_SECONDS_CAP)
    start = 0
    index = 0
    while start < limit:
        size = sizes[index] if index < len(sizes) else cap
        end = min(start + size, limit)
        yield start, end
        start = end
        index += 1


def _whole_samples(byte_count: int, output_format: AudioFormat) -> int:
    return byte_count // output_format.sample_bytes * output_format.sample_bytes
