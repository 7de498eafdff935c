"""Deterministic speech for the emulator: the transcript it answers with and the audio it streams.

The answer to a user message is the message itself (directives removed, whitespace collapsed), spoken
in tones that carry its text (see :mod:`.tones`): one two-tone symbol per character, each in a slot of
``round(1560 / speed)`` samples (65 ms at speed 1.0, so a sentence lasts a few seconds and the audio
lasts ``1 / speed`` times as long at another speed), under a hum at the voice's pitch. A tone is built
once per symbol, slot length and voice and reused as bytes, so minutes of audio cost milliseconds, and
:func:`hear` reads the text back from the audio, even resampled or G.711-coded.

With the ``espeak`` engine the transcript is spoken by ``espeak-ng`` when it is installed, resampled
to the realtime format (PCM16 LE, 24 kHz, mono); its bytes are whatever that espeak-ng version makes,
and they do not read back as text.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import tones
from .audio_formats import PCM_RATE, audio_format, decode_audio, resample_pcm16
from .scenarios import strip_directives

log = logging.getLogger(__name__)

SAMPLE_RATE = PCM_RATE
BYTES_PER_SECOND = SAMPLE_RATE * 2
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
Engine = Literal["tones", "espeak"]

EMPTY_MESSAGE_ANSWER = "Hello! How can I help you today?"
UNRECOGNIZED_AUDIO = "Unrecognized audio of {seconds:.1f} seconds."
SECONDS_PER_CHARACTER = 0.065
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
    slot_samples = round(SECONDS_PER_CHARACTER / speed * SAMPLE_RATE)
    hum_hz = VOICE_BASE_HZ.get(voice, VOICE_BASE_HZ["alloy"])
    pieces: list[bytes] = []
    marks: list[tuple[int, str]] = []
    offset = 0
    for delta in transcript_deltas(transcript):
        marks.append((offset, delta))
        for symbol in tones.symbols(delta):
            pieces.append(tones.tone_slot(symbol, slot_samples, hum_hz, SAMPLE_RATE))
            offset += 2 * slot_samples
    return Speech(transcript, b"".join(pieces), tuple(marks))


def hear(raw: bytes, input_format: dict[str, Any] | str) -> str | None:
    """The text that the emulator's tones spell in ``raw`` audio of a realtime input format, or None
    when it is not such audio."""
    return tones.read_tones(decode_audio(raw, input_format), audio_format(input_format).rate)


def heard_text(raw: bytes, input_format: dict[str, Any] | str) -> str:
    """What the emulator hears in input audio: the text its tones spell (so an answer it spoke, sent
    back in as PCM, resampled or G.711-coded, is heard as the text that made it), else
    ``Unrecognized audio of S seconds.`` with S the audio's duration to a tenth of a second."""
    heard = hear(raw, input_format)
    if heard is not None:
        return heard
    return UNRECOGNIZED_AUDIO.format(seconds=audio_format(input_format).seconds(len(raw)))


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
    pcm = resample_pcm16(frames, rate, SAMPLE_RATE)
    return Speech(transcript, pcm, _proportional_marks(transcript, len(pcm)))


def _proportional_marks(transcript: str, total_bytes: int) -> tuple[tuple[int, str], ...]:
    """Word start offsets spread over the audio in proportion to the characters before each word."""
    marks = []
    consumed = 0
    for delta in transcript_deltas(transcript):
        marks.append((total_bytes * consumed // max(len(transcript), 1) // 2 * 2, delta))
        consumed += len(delta)
    return tuple(marks)
