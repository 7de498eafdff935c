"""The output formats of a spoken answer, decided in one place: what the realtime session is asked to
send, how its audio becomes the stored file, and that file's content type, extension and facts.

| format      | session output format       | file                                                  |
|-------------|-----------------------------|-------------------------------------------------------|
| `wav`       | `audio/pcm`, 24 kHz         | PCM16 24 kHz mono WAV: the deltas as they are         |
| `wav-mulaw` | `audio/pcmu` (G.711, 8 kHz) | mu-law WAV (format tag 7): the deltas as they are     |
| `wav-alaw`  | `audio/pcma` (G.711, 8 kHz) | A-law WAV (format tag 6): the deltas as they are      |
| `mp3`       | `audio/pcm`, 24 kHz         | MPEG-2 Layer III, 24 kHz mono, constant bitrate, LAME |

An encoder turns the model's audio into the file's body as it arrives (`encode`, then `flush`: for
a G.711 WAV of odd length, the RIFF pad byte), and knows the header, which goes before the body, only
at the end (`header`).

MP3 as `lameenc` writes it: bare MPEG frames, no ID3v1/ID3v2 tag and no Xing/Info/LAME tag frame
(lameenc turns LAME's VBR tag off, and no ID3 fields are set); LAME's version string may appear
inside frames' ancillary bits, which decoders ignore. Without the LAME tag a decoder cannot trim the
encoder delay: decoded audio starts with about 1105 samples (46 ms) of near silence and ends with
padding up to the last 576-sample frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import lameenc

from .models import AudioFacts
from .settings import MP3_BITRATES_KBPS
from .wav import ALAW_8KHZ_MONO, MULAW_8KHZ_MONO, PCM16_24KHZ_MONO, PcmFormat, wav_header, wav_padding

# LAME's quality (2 best and slowest, 7 fastest). For speech at 48 kbps, 5 is as faithful as 2
# (measured: the same signal-to-noise ratio, about 20 dB) for 40-65 % less CPU.
MP3_QUALITY = 5
# The realtime session's audio formats (audio.input.format / audio.output.format); do not mutate.
PCM_SESSION_FORMAT = {"type": "audio/pcm", "rate": PCM16_24KHZ_MONO.sample_rate}
MULAW_SESSION_FORMAT = {"type": "audio/pcmu"}
ALAW_SESSION_FORMAT = {"type": "audio/pcma"}


class AudioEncoder(Protocol):
    def encode(self, chunk: bytes) -> bytes:
        """The next bytes of the file's body for the model's next audio (b"" while buffering)."""
        ...

    def flush(self) -> bytes:
        """The rest of the audio, once it has ended. Raises ValueError if the stream of model audio
        was impossible (it ended inside a sample)."""
        ...

    def trailer(self) -> bytes:
        """What ends the body after the audio (a WAV's pad byte after odd-sized data; else b"")."""
        ...

    def header(self) -> bytes:
        """What goes before the body, known only at the end (b"" when the format has none)."""
        ...

    def facts(self) -> AudioFacts:
        """What was written: header and body."""
        ...


class WavEncoder:
    """The model's PCM or G.711 bytes as the `data` chunk of a WAV, unchanged."""

    def __init__(self, name: str, encoding: str, pcm: PcmFormat) -> None:
        self._name = name
        self._encoding = encoding
        self._pcm = pcm
        self._data_bytes = 0

    def encode(self, chunk: bytes) -> bytes:
        self._data_bytes += len(chunk)
        return chunk

    def flush(self) -> bytes:
        if self._data_bytes % self._pcm.bytes_per_frame:
            raise ValueError(f"the audio ended inside a sample ({self._data_bytes} bytes)")
        return b""

    def trailer(self) -> bytes:
        return wav_padding(self._data_bytes)

    def header(self) -> bytes:
        return wav_header(self._data_bytes, self._pcm)

    def facts(self) -> AudioFacts:
        pcm = self._pcm
        return AudioFacts(
            format=self._name,
            encoding=self._encoding,
            sample_rate=pcm.sample_rate,
            channels=pcm.channels,
            bits_per_sample=pcm.bits_per_sample,
            duration_seconds=round(pcm.duration_seconds(self._data_bytes), 3),
            bytes=pcm.header_bytes + self._data_bytes + len(wav_padding(self._data_bytes)),
        )


class Mp3Encoder:
    """PCM16 24 kHz mono into MP3 frames, each returned as soon as LAME has it.

    Holds at most one byte of a sample split across chunks; LAME's own buffers are fixed (a few
    frames), so memory does not grow with the length of the audio.
    """

    def __init__(self, bitrate_kbps: int) -> None:
        if bitrate_kbps not in MP3_BITRATES_KBPS:
            raise ValueError(f"{bitrate_kbps} kbps is not an MPEG-2 Layer III bitrate")
        self._bitrate_kbps = bitrate_kbps
        self._lame = lameenc.Encoder()
        self._lame.set_bit_rate(bitrate_kbps)
        self._lame.set_in_sample_rate(PCM16_24KHZ_MONO.sample_rate)
        self._lame.set_out_sample_rate(PCM16_24KHZ_MONO.sample_rate)
        self._lame.set_channels(1)
        self._lame.set_quality(MP3_QUALITY)
        self._lame.silence()
        self._split_sample = b""
        self._samples = 0
        self._bytes = 0

    def encode(self, chunk: bytes) -> bytes:
        data = self._split_sample + chunk if self._split_sample else chunk
        whole = len(data) - len(data) % 2
        self._split_sample = data[whole:]
        if not whole:
            return b""
        self._samples += whole // 2
        return self._count(self._lame.encode(data if whole == len(data) else data[:whole]))

    def flush(self) -> bytes:
        if self._split_sample:
            raise ValueError(f"the audio ended inside a sample ({self._samples * 2 + 1} bytes)")
        return self._count(self._lame.flush()) if self._samples else b""

    def trailer(self) -> bytes:
        return b""

    def header(self) -> bytes:
        return b""

    def facts(self) -> AudioFacts:
        return AudioFacts(
            format="mp3",
            encoding="mp3",
            sample_rate=PCM16_24KHZ_MONO.sample_rate,
            channels=1,
            bits_per_sample=None,
            bitrate_kbps=self._bitrate_kbps,
            duration_seconds=round(self._samples / PCM16_24KHZ_MONO.sample_rate, 3),
            bytes=self._bytes,
        )

    def _count(self, frames: bytearray) -> bytes:
        self._bytes += len(frames)
        return bytes(frames)


@dataclass(frozen=True)
class OutputFormat:
    """One value of the request option `format`."""

    name: str
    session_format: dict[str, object]  # the session's audio.output.format; do not mutate
    content_type: str
    extension: str
    encoding: str  # AudioFacts.encoding
    wav: PcmFormat | None  # what the WAV holds; None for mp3

    def encoder(self, *, mp3_bitrate_kbps: int) -> AudioEncoder:
        """A new encoder for one answer (`mp3_bitrate_kbps`: the setting AUDIO_MP3_BITRATE_KBPS)."""
        if self.wav is None:
            return Mp3Encoder(mp3_bitrate_kbps)
        return WavEncoder(self.name, self.encoding, self.wav)


DEFAULT_OUTPUT_FORMAT = "wav"
OUTPUT_FORMATS: Mapping[str, OutputFormat] = MappingProxyType(
    {
        output.name: output
        for output in (
            OutputFormat("wav", PCM_SESSION_FORMAT, "audio/wav", ".wav", "pcm_s16le", PCM16_24KHZ_MONO),
            OutputFormat("wav-mulaw", MULAW_SESSION_FORMAT, "audio/wav", ".wav", "mulaw", MULAW_8KHZ_MONO),
            OutputFormat("wav-alaw", ALAW_SESSION_FORMAT, "audio/wav", ".wav", "alaw", ALAW_8KHZ_MONO),
            OutputFormat("mp3", PCM_SESSION_FORMAT, "audio/mpeg", ".mp3", "mp3", None),
        )
    }
)
