"""RIFF/WAVE files: the header written once the data length is known, and a strict reader of the layout.

Two kinds of WAV are written: linear PCM (`audio/pcm` from the model, the canonical 44-byte header) and
G.711 (`audio/pcmu`, `audio/pcma`: format tags 7 and 6), which as non-PCM formats carry an 18-byte
`fmt ` chunk and a `fact` chunk with the sample count (58-byte header). The reader checks that the
chunk sizes of a received WAV agree with its bytes, which libsndfile does not insist on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

WAV_HEADER_BYTES = 44  # the header of a linear PCM WAV
_RIFF_MAX = 0xFFFFFFFF
_UNKNOWN_SIZE = 0xFFFFFFFF
# Format tags whose block align and byte rate follow from channels, rate and bits per sample.
_FIXED_FRAME_TAGS = (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW)


@dataclass(frozen=True)
class PcmFormat:
    """Fixed-size frames of pulse-code-modulated audio: linear PCM (format tag 1, little-endian, as the
    realtime API streams `audio/pcm`) or G.711 companded PCM (A-law 6, mu-law 7, 8 bits)."""

    sample_rate: int = 24_000
    channels: int = 1
    bits_per_sample: int = 16
    format_tag: int = WAVE_FORMAT_PCM

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * self.bits_per_sample // 8

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.bytes_per_frame

    @property
    def header_bytes(self) -> int:
        """44 for linear PCM; 58 for the others (two more `fmt ` bytes and a 12-byte `fact` chunk)."""
        return WAV_HEADER_BYTES if self.format_tag == WAVE_FORMAT_PCM else WAV_HEADER_BYTES + 14

    def duration_seconds(self, data_bytes: int) -> float:
        return data_bytes / self.bytes_per_second


PCM16_24KHZ_MONO = PcmFormat()
MULAW_8KHZ_MONO = PcmFormat(sample_rate=8_000, bits_per_sample=8, format_tag=WAVE_FORMAT_MULAW)
ALAW_8KHZ_MONO = PcmFormat(sample_rate=8_000, bits_per_sample=8, format_tag=WAVE_FORMAT_ALAW)


def wav_header(data_bytes: int, pcm: PcmFormat = PCM16_24KHZ_MONO) -> bytes:
    """The header of a WAV file whose `data` chunk holds `data_bytes` bytes of `pcm` audio.

    The RIFF size counts the pad byte that follows odd-sized data (see `wav_padding`).
    """
    if data_bytes < 0 or data_bytes % pcm.bytes_per_frame:
        raise ValueError(f"PCM data length {data_bytes} is not a whole number of frames")
    padded = data_bytes + len(wav_padding(data_bytes))
    if padded > _RIFF_MAX - (pcm.header_bytes - 8):
        raise ValueError("PCM data too long for a RIFF file")
    fmt = struct.pack(
        "<HHIIHH",
        pcm.format_tag,
        pcm.channels,
        pcm.sample_rate,
        pcm.bytes_per_second,
        pcm.bytes_per_frame,
        pcm.bits_per_sample,
    )
    fact = b""
    if pcm.format_tag != WAVE_FORMAT_PCM:
        fmt += struct.pack("<H", 0)  # cbSize: no extra format bytes
        fact = _chunk(b"fact", struct.pack("<I", data_bytes // pcm.bytes_per_frame))
    body = _chunk(b"fmt ", fmt) + fact + struct.pack("<4sI", b"data", data_bytes)
    return struct.pack("<4sI4s", b"RIFF", 4 + len(body) + padded, b"WAVE") + body


def wav_padding(data_bytes: int) -> bytes:
    """What follows a `data` chunk of `data_bytes` bytes: RIFF chunks are padded to an even size."""
    return b"\x00" if data_bytes % 2 else b""


def _chunk(chunk_id: bytes, payload: bytes) -> bytes:
    return struct.pack("<4sI", chunk_id, len(payload)) + payload


@dataclass(frozen=True)
class WavLayout:
    """Where a received WAV's audio is and how it is encoded, as its `fmt ` chunk says."""

    format_tag: int  # for WAVE_FORMAT_EXTENSIBLE, the tag of its sub-format
    channels: int
    sample_rate: int
    bits_per_sample: int
    data_offset: int
    data_bytes: int


def read_wav_layout(data: bytes) -> WavLayout:
    """The layout of a RIFF/WAVE file, after checking that its sizes agree with its bytes.

    The RIFF chunk must span the file (only the pad byte after odd-sized last data may be missing) and
    every chunk in it must fit; `fmt ` must come before `data`; for PCM, float and G.711, the block
    align and byte rate must follow from the format and the data must be whole frames. A size of
    0xFFFFFFFF (what streaming writers leave when they cannot seek back) means "up to the end of the
    file". Raises ValueError saying what disagrees, with sizes only.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("it does not start with a RIFF/WAVE header")
    riff_size = int.from_bytes(data[4:8], "little")
    end = len(data) if riff_size == _UNKNOWN_SIZE else 8 + riff_size
    if end not in (len(data), len(data) + 1):
        raise ValueError(f"its RIFF header declares {end} bytes but the file has {len(data)}")
    fmt: tuple[int, ...] | None = None
    found: tuple[int, int] | None = None  # offset and size of the data chunk
    position = 12
    while position + 8 <= end:
        chunk_id, size = struct.unpack_from("<4sI", data, position)
        body = position + 8
        if chunk_id == b"data" and size == _UNKNOWN_SIZE:
            size = len(data) - body
        elif body + size > end:
            raise ValueError(f"a chunk declares {size} bytes but only {max(0, end - body)} follow it")
        if chunk_id == b"fmt " and fmt is None:
            fmt = _read_fmt(data[body : body + size])
        elif chunk_id == b"data" and found is None:
            if fmt is None:
                raise ValueError("its data chunk comes before any fmt chunk")
            found = (body, size)
        position = body + size + size % 2
    if position < min(end, len(data)):
        raise ValueError(f"{min(end, len(data)) - position} stray bytes follow its last chunk")
    if position < end:  # one byte more than the file, and no odd-sized last chunk to explain it
        raise ValueError(f"its RIFF header declares {end} bytes but the file has {len(data)}")
    if fmt is None or found is None:
        raise ValueError("it has no fmt chunk" if fmt is None else "it has no data chunk")
    return _layout(fmt, *found)


def _read_fmt(chunk: bytes) -> tuple[int, ...]:
    """(format tag, channels, rate, byte rate, block align, bits) of a `fmt ` chunk."""
    if len(chunk) < 16:
        raise ValueError(f"its fmt chunk has {len(chunk)} bytes, fewer than 16")
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(chunk) < 40:
            raise ValueError(f"its extensible fmt chunk has {len(chunk)} bytes, fewer than 40")
        tag = int.from_bytes(chunk[24:26], "little")  # the sub-format GUID starts with the tag
    return tag, channels, rate, byte_rate, block_align, bits


def _layout(fmt: tuple[int, ...], data_offset: int, data_bytes: int) -> WavLayout:
    tag, channels, rate, byte_rate, block_align, bits = fmt
    if tag in _FIXED_FRAME_TAGS:
        frame = channels * ((bits + 7) // 8)
        if channels == 0 or bits == 0 or block_align != frame or byte_rate != rate * frame:
            raise ValueError(
                f"its fmt chunk is inconsistent (block align {block_align} and byte rate {byte_rate} "
                f"for {channels} channels of {bits} bits at {rate} Hz)"
            )
        if data_bytes % frame:
            raise ValueError(f"its data chunk of {data_bytes} bytes is not a whole number of frames")
    return WavLayout(tag, channels, rate, bits, data_offset, data_bytes)
