"""The 44-byte RIFF/WAVE header for PCM audio, written once the data length is known."""

from __future__ import annotations

import struct
from dataclasses import dataclass

WAV_HEADER_BYTES = 44


@dataclass(frozen=True)
class PcmFormat:
    """Uncompressed little-endian PCM, as the realtime API streams it (`audio/pcm`)."""

    sample_rate: int = 24_000
    channels: int = 1
    bits_per_sample: int = 16

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * self.bits_per_sample // 8

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.bytes_per_frame

    def duration_seconds(self, data_bytes: int) -> float:
        return data_bytes / self.bytes_per_second


PCM16_24KHZ_MONO = PcmFormat()


def wav_header(data_bytes: int, pcm: PcmFormat = PCM16_24KHZ_MONO) -> bytes:
    """The canonical header of a WAV file whose `data` chunk holds `data_bytes` bytes of `pcm` audio."""
    if data_bytes < 0 or data_bytes % pcm.bytes_per_frame:
        raise ValueError(f"PCM data length {data_bytes} is not a whole number of frames")
    if data_bytes > 0xFFFFFFFF - (WAV_HEADER_BYTES - 8):
        raise ValueError("PCM data too long for a RIFF file")
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # size of the PCM fmt chunk
        1,  # WAVE_FORMAT_PCM
        pcm.channels,
        pcm.sample_rate,
        pcm.bytes_per_second,
        pcm.bytes_per_frame,
        pcm.bits_per_sample,
        b"data",
        data_bytes,
    )
