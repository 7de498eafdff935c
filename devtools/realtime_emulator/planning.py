"""Planning a response: what ``response.create`` asked for, what will be said, and how much of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import protocol
from .scenarios import CUT_SCENARIOS, Scenario
from .speech import Speech

FIRST_CHUNK_SIZES = (4800, 7200)
CHUNK_SIZE_CAP = 12000
TOKEN_LIMIT_STEP_BYTES = 2400


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


@dataclass(frozen=True)
class Plan(ResponseRequest):
    """A request with its speech, and how much of it to send before the scenario acts."""

    speech: Speech
    limit: int
    cut_by_token_limit: bool


def plan_response(request: ResponseRequest, speech: Speech) -> Plan:
    """How much of the speech to send: all of it, the scenario's share, or what ``max_output_tokens``
    allows (the response then ends ``incomplete``)."""
    limit = len(speech.pcm)
    if request.scenario.name in CUT_SCENARIOS:
        limit = int(len(speech.pcm) * request.scenario.at) // 2 * 2
    allowed = token_limited_length(speech, request.settings["max_output_tokens"], request.audio)
    cut_by_token_limit = allowed < limit
    return Plan(
        **vars(request), speech=speech, limit=min(limit, allowed), cut_by_token_limit=cut_by_token_limit
    )


def token_limited_length(speech: Speech, max_output_tokens: int | str, audio: bool) -> int:
    """The longest prefix of the speech (in audio bytes) whose output tokens fit ``max_output_tokens``."""
    if not isinstance(max_output_tokens, int):
        return len(speech.pcm)
    needed = output_tokens(speech, len(speech.pcm), audio)
    if needed <= max_output_tokens:
        return len(speech.pcm)
    allowed = int(len(speech.pcm) * max_output_tokens / needed) // 2 * 2
    while allowed > 0 and output_tokens(speech, allowed, audio) > max_output_tokens:
        allowed = max(allowed - TOKEN_LIMIT_STEP_BYTES, 0)
    return allowed


def audio_chunks(limit: int) -> Iterator[tuple[int, int]]:
    """Audio chunk boundaries: small first chunks, growing to a cap, as the service streams them."""
    start = 0
    index = 0
    while start < limit:
        size = FIRST_CHUNK_SIZES[index] if index < len(FIRST_CHUNK_SIZES) else CHUNK_SIZE_CAP
        end = min(start + size, limit)
        yield start, end
        start = end
        index += 1


def output_tokens(speech: Speech, limit: int, audio: bool) -> int:
    """Output tokens of the speech up to byte ``limit``: its transcript, and its audio if spoken."""
    text = "".join(delta for offset, delta in speech.marks if offset < limit)
    return protocol.text_tokens(text) + (protocol.audio_tokens(limit) if audio else 0)
