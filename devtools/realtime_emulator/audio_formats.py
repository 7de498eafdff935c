"""The realtime audio formats: PCM16 24 kHz, and G.711 u-law / A-law at 8 kHz.

The emulator speaks in PCM16 LE 24 kHz mono; :func:`encode_audio` turns that into a session's output
format (for G.711: soxr resampling to 8 kHz, then libsndfile's u-law / A-law coding), and
:func:`decode_audio` turns input audio back into samples. Both are pure: same bytes in, same bytes out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import soxr

PCM_RATE = 24_000
G711_RATE = 8_000


@dataclass(frozen=True)
class AudioFormat:
    """One realtime audio format: its ``type``, sample rate, and bytes per sample."""

    type: str
    rate: int
    sample_bytes: int
    subtype: str

    @property
    def bytes_per_second(self) -> int:
        return self.rate * self.sample_bytes

    def byte_count(self, seconds: float) -> int:
        """Bytes of ``seconds`` of audio, a whole number of samples."""
        return round(seconds * self.rate) * self.sample_bytes

    def seconds(self, byte_count: int) -> float:
        return byte_count / self.bytes_per_second


FORMATS = {
    "audio/pcm": AudioFormat("audio/pcm", PCM_RATE, 2, "PCM_16"),
    "audio/pcmu": AudioFormat("audio/pcmu", G711_RATE, 1, "ULAW"),
    "audio/pcma": AudioFormat("audio/pcma", G711_RATE, 1, "ALAW"),
}
PCM = FORMATS["audio/pcm"]


def audio_format(session_format: dict[str, Any] | str) -> AudioFormat:
    """The format of a session's ``audio.*.format`` object (or its ``type``)."""
    name = session_format if isinstance(session_format, str) else session_format["type"]
    return FORMATS[name]


def encode_audio(pcm: bytes, output_format: dict[str, Any] | str) -> bytes:
    """PCM16 LE 24 kHz mono in the given output format: the same bytes for PCM, else resampled to
    8 kHz (soxr, high quality) and G.711-coded (libsndfile)."""
    target = audio_format(output_format)
    if target == PCM:
        return pcm
    samples = soxr.resample(np.frombuffer(pcm, dtype="<i2"), PCM.rate, target.rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, target.rate, format="RAW", subtype=target.subtype)
    return buffer.getvalue()


def decode_audio(raw: bytes, input_format: dict[str, Any] | str) -> np.ndarray:
    """Samples (float, -1..1) of raw audio in a realtime format, at that format's rate."""
    source = audio_format(input_format)
    if source == PCM:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768
    samples, _ = soundfile.read(
        io.BytesIO(raw), format="RAW", subtype=source.subtype, samplerate=source.rate, channels=1
    )
    return samples


def resample_pcm16(pcm: bytes, source_rate: int, target_rate: int) -> bytes:
    """PCM16 LE mono at another sample rate (soxr, high quality)."""
    if source_rate == target_rate:
        return pcm
    samples = soxr.resample(np.frombuffer(pcm, dtype="<i2"), source_rate, target_rate)
    return samples.astype("<i2").tobytes()
