"""Deterministic speech for the emulator: the transcript it answers with and the audio it streams.

The answer to a user message is the message itself (directives removed, whitespace collapsed), spoken
as one tone per word: the pitch comes from the voice and a hash of the word, the length from the
number of characters (about 65 ms each, so a sentence lasts a few seconds). Each tone is one period
of a sine wave built once and repeated as bytes, so minutes of audio cost milliseconds.

With the ``espeak`` engine the transcript is spoken by ``espeak-ng`` when it is installed, resampled
to the realtime format (PCM16 LE, 24 kHz, mono); its bytes are whatever that espeak-ng version makes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from .scenarios import strip_directives

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
BYTES_PER_SECOND = SAMPLE_RATE * 2
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
Engine = Literal["tones", "espeak"]

EMPTY_MESSAGE_ANSWER = "Hello! How can I help you today?"
SECONDS_PER_CHARACTER = 0.065
TONE_SHARE = 0.85
AMPLITUDE = 0.3 * 32767
VOICE_BASE_HZ = {
    "alloy": 220.0,
    "ash": 110.0,
    "ballad": 131.0,
    "coral": 262.0,
    "echo": 147.0,
    "sage": 196.0,
    "shimmer": 294.0,
    "verse": 165.0,
    "marin": 247.0,
    "cedar": 123.0,
}
ESPEAK_VOICES = {
    "alloy": "en-us+f3",
    "ash": "en-us+m3",
    "ballad": "en-gb+m1",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "sage": "en-gb+f3",
    "shimmer": "en-us+f4",
    "verse": "en-us+m2",
    "marin": "en-us+f1",
    "cedar": "en-us+m4",
}
ESPEAK_WORDS_PER_MINUTE = 165


@dataclass(frozen=True)
class Speech:
    """What the emulator says: transcript, PCM16 LE 24 kHz mono audio, and where each word starts.

    ``marks`` pairs each transcript delta (a word with its leading space) with the byte offset in
    ``pcm`` where its audio begins; the emulator sends a delta just before the audio that speaks it.
    """

    transcript: str
    pcm: bytes
    marks: tuple[tuple[int, str], ...]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / BYTES_PER_SECOND


def answer_text(user_text: str) -> str:
    """The transcript the emulator answers ``user_text`` with: the text itself, tidied."""
    text = " ".join(strip_directives(user_text).split())
    return text or EMPTY_MESSAGE_ANSWER


def synthesize(
    text: str,
    voice: str = "alloy",
    *,
    seconds: float | None = None,
    speed: float = 1.0,
    engine: Engine = "tones",
) -> Speech:
    """Speak the answer to the user message ``text``; with tones, same arguments give the same bytes.

    ``seconds`` fixes the audio length exactly: the answer is repeated (and the transcript with it)
    until it is long enough, then cut. ``speed`` is the session's ``audio.output.speed``.
    """
    transcript = answer_text(text)
    if engine == "espeak" and espeak_available():
        once = _espeak_utterance(transcript, voice, speed)
    else:
        once = _tone_utterance(transcript, voice, speed)
    if seconds is None:
        return once
    return _fit_to_length(once, round(seconds * SAMPLE_RATE) * 2)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def transcript_deltas(transcript: str) -> list[str]:
    """Split a transcript the way it is streamed: words with their leading whitespace."""
    return re.findall(r"\s*\S+", transcript)


def _tone_utterance(transcript: str, voice: str, speed: float) -> Speech:
    pieces: list[bytes] = []
    marks: list[tuple[int, str]] = []
    offset = 0
    for delta in transcript_deltas(transcript):
        samples = round(len(delta) * SECONDS_PER_CHARACTER / speed * SAMPLE_RATE)
        period = _word_period(delta.strip(), voice)
        # Whole periods only: the tone starts and stops at a zero crossing, so words do not click.
        periods = round(samples * TONE_SHARE) // period
        segment = _sine_period(period) * periods + bytes(2 * (samples - periods * period))
        marks.append((offset, delta))
        pieces.append(segment)
        offset += len(segment)
    return Speech(transcript, b"".join(pieces), tuple(marks))


def _word_period(word: str, voice: str) -> int:
    """Period in samples of a word's tone: the voice's pitch raised by 0-11 semitones per word."""
    semitone = hashlib.sha256(word.lower().encode()).digest()[0] % 12
    frequency = VOICE_BASE_HZ.get(voice, VOICE_BASE_HZ["alloy"]) * 2 ** (semitone / 12)
    return round(SAMPLE_RATE / frequency)


@lru_cache(maxsize=256)
def _sine_period(period: int) -> bytes:
    wave_ = array("h", (round(AMPLITUDE * math.sin(2 * math.pi * i / period)) for i in range(period)))
    if sys.byteorder == "big":
        wave_.byteswap()
    return wave_.tobytes()


def _fit_to_length(once: Speech, target_bytes: int) -> Speech:
    """Repeat an utterance until it fills ``target_bytes``, then cut audio, marks and transcript there."""
    if not once.pcm:
        return Speech("", bytes(target_bytes), ())
    repeats = -(-target_bytes // len(once.pcm))
    marks: list[tuple[int, str]] = []
    for repeat in range(repeats):
        base = repeat * len(once.pcm)
        for position, (offset, delta) in enumerate(once.marks):
            if base + offset >= target_bytes:
                break
            spoken = " " + delta.lstrip() if repeat and position == 0 else delta
            marks.append((base + offset, spoken))
    pcm = (once.pcm * repeats)[:target_bytes]
    return Speech("".join(delta for _, delta in marks), pcm, tuple(marks))


def _espeak_utterance(transcript: str, voice: str, speed: float) -> Speech:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                ESPEAK_VOICES.get(voice, "en-us"),
                "-s",
                str(round(ESPEAK_WORDS_PER_MINUTE * speed)),
                "-w",
                str(path),
                "--",
                transcript,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
    if channels != 1 or width != 2:
        raise RuntimeError(f"espeak-ng produced {channels} channels of {width}-byte samples")
    pcm = _resample_pcm16(frames, rate, SAMPLE_RATE)
    return Speech(transcript, pcm, _proportional_marks(transcript, len(pcm)))


def _resample_pcm16(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """Linear-interpolation resampling of one utterance (seconds of audio, so a plain loop is fine)."""
    source = array("h", pcm)
    if sys.byteorder == "big":
        source.byteswap()
    if source_rate == target_rate or len(source) < 2:
        return pcm
    count = len(source) * target_rate // source_rate
    step = source_rate / target_rate
    last = len(source) - 1
    target = array("h", bytes(2 * count))
    for index in range(count):
        position = index * step
        left = min(int(position), last)
        right = min(left + 1, last)
        fraction = position - left
        target[index] = round(source[left] + (source[right] - source[left]) * fraction)
    if sys.byteorder == "big":
        target.byteswap()
    return target.tobytes()


def _proportional_marks(transcript: str, total_bytes: int) -> tuple[tuple[int, str], ...]:
    """Word start offsets spread over the audio in proportion to the characters before each word."""
    marks = []
    consumed = 0
    for delta in transcript_deltas(transcript):
        marks.append((total_bytes * consumed // max(len(transcript), 1) // 2 * 2, delta))
        consumed += len(delta)
    return tuple(marks)
