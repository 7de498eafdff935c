"""Spoken-question audio for tests, built at test time (no binary files): good inputs of every accepted
kind and a corpus of bad ones, each with the error, status and problem code it must give.

Deterministic: the same call returns the same bytes (libsndfile's random Ogg serial number and the
time in its float WAVs' PEAK chunk are fixed). End-to-end tests can use `bad_inputs(max_seconds=...)`
with the service's AUDIO_INPUT_MAX_SECONDS, `bad_requests(max_bytes=...)` with its
AUDIO_INPUT_MAX_BYTES, and `good_inputs()`.

Non-finite samples (NaN, infinities) can only be stored in a float WAV (float32 or float64, plain or
WAVE_FORMAT_EXTENSIBLE): FLAC holds integers only, MP3, Vorbis and Opus hold coded spectra, G.711
holds 8-bit codes, and the containers that hold float samples besides WAV (AIFF-C, CAF, AU, Wave64,
RF64) are refused before anything is decoded.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import lameenc
import numpy as np
import soundfile as sf

from realtime_speech.errors import InvalidRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType
from realtime_speech.models import MAX_BODY_BYTES
from realtime_speech.wav import PcmFormat, wav_header

OGG_SERIAL = 0x5EED


@dataclass(frozen=True)
class BadAudio:
    name: str
    data: bytes
    content_type: str | None
    error: type[ServiceError]
    detail: str  # words the problem's detail must contain

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code


@dataclass(frozen=True)
class BadSpokenRequest:
    """A whole request to `POST /api/speech` (body, content type, query, headers) and its problem."""

    name: str
    body: bytes
    content_type: str
    error: type[ServiceError]
    detail: str  # words the problem's detail must contain
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code


@dataclass(frozen=True)
class GoodAudio:
    name: str
    data: bytes
    content_type: str | None
    session_type: str  # audio/pcm, audio/pcmu or audio/pcma
    canonical_type: str
    extension: str


def speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic voice-like float32 signal, [frames, channels]: a gliding pitch with formant-
    weighted harmonics (one period tabulated, then read at the pitch's phase), syllables at 4 Hz and
    a little noise; each channel at a different pitch."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    period = _voice_period(rate)
    columns = []
    for channel in range(channels):
        pitch = (120 + 40 * channel) * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))
        cycles = np.cumsum(pitch) / rate
        voice = period[(cycles * len(period)).astype(np.int64) % len(period)]
        syllables = np.clip(np.sin(2 * np.pi * 4 * t + channel), 0, None) ** 0.5
        columns.append(0.15 * voice * syllables + 0.003 * rng.standard_normal(len(t)))
    return np.stack(columns, axis=1).astype(np.float32)


def _voice_period(rate: int, points: int = 4096) -> np.ndarray:
    """One period of the harmonics of a 130 Hz voice below `rate`'s Nyquist, peaked at three formants."""
    phase = 2 * np.pi * np.arange(points) / points
    period = np.zeros(points)
    for harmonic in range(1, 30):
        frequency = harmonic * 130
        if frequency < rate / 2 - 500:
            weight = sum(np.exp(-(((frequency - f) / 150) ** 2)) for f in (700, 1200, 2600)) + 0.05
            period += weight / harmonic**0.5 * np.sin(harmonic * phase)
    return period


def encode(samples: np.ndarray, rate: int, container: str, subtype: str) -> bytes:
    """`samples` written by libsndfile as one file in memory."""
    out = io.BytesIO()
    channels = samples.shape[1] if samples.ndim == 2 else 1
    with sf.SoundFile(out, "w", rate, channels, subtype, format=container) as file:
        for start in range(0, len(samples), 8_192):  # libvorbis crashes on one large write
            file.write(samples[start : start + 8_192])
    data = out.getvalue()
    if container == "OGG":
        return _with_ogg_serial(data, OGG_SERIAL)
    peak = data.find(b"PEAK", 0, 200)  # libsndfile's float WAVs carry a PEAK chunk with the time
    return data if peak < 0 else _set_u32(data, peak + 12, 0)


def _lame_mp3(samples: np.ndarray, rate: int) -> bytes:
    """A bare MP3 (no Xing/Info header) from lameenc, mono."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(64)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.silence()
    pcm = np.clip(np.rint(samples[:, 0] * 32767), -32768, 32767).astype("<i2").tobytes()
    return bytes(encoder.encode(pcm) + encoder.flush())


def good_inputs() -> list[GoodAudio]:
    voice = speech_like
    return [
        _good("wav-stereo-48k", encode(voice(1.5, 48_000, 2), 48_000, "WAV", "PCM_16"), "audio/wav"),
        _good("wav-mono-8k", encode(voice(1.2, 8_000), 8_000, "WAV", "PCM_16"), "audio/x-wav"),
        _good("wav-float-16k", encode(voice(1.0, 16_000), 16_000, "WAV", "FLOAT"), "audio/wav"),
        _good("wav-24bit-44k", encode(voice(0.8, 44_100), 44_100, "WAV", "PCM_24"), "audio/wav; codecs=1"),
        _good("wav-u8-22k", encode(voice(0.8, 22_050), 22_050, "WAV", "PCM_U8"), "audio/wav"),
        _good("wav-pcm16-24k", encode(voice(1.0, 24_000), 24_000, "WAV", "PCM_16"), "audio/wav"),
        _good("wavex-stereo-32k", encode(voice(0.8, 32_000, 2), 32_000, "WAVEX", "PCM_16"), "audio/wav"),
        _good(
            "wav-streamed", _streamed_wav(encode(voice(0.6, 16_000), 16_000, "WAV", "PCM_16")), "audio/wav"
        ),
        _good("flac-stereo-44k", encode(voice(1.2, 44_100, 2), 44_100, "FLAC", "PCM_16"), "audio/flac"),
        _good("flac-detected", encode(voice(0.8, 16_000), 16_000, "FLAC", "PCM_24"), None),
        _good("mp3-44k", encode(voice(1.5, 44_100), 44_100, "MP3", "MPEG_LAYER_III"), "audio/mpeg"),
        _good("mp3-bare-24k", _lame_mp3(voice(1.0, 24_000), 24_000), None),
        _good("ogg-vorbis-48k", encode(voice(1.2, 48_000, 2), 48_000, "OGG", "VORBIS"), "audio/ogg"),
        _good("ogg-opus-48k", encode(voice(1.0, 48_000), 48_000, "OGG", "OPUS"), "audio/ogg"),
        _good("g711-mulaw", encode(voice(1.0, 8_000), 8_000, "WAV", "ULAW"), "audio/wav", "audio/pcmu"),
        _good("g711-alaw", encode(voice(1.0, 8_000), 8_000, "WAV", "ALAW"), None, "audio/pcma"),
    ]


def _good(name: str, data: bytes, content_type: str | None, session_type: str = "audio/pcm") -> GoodAudio:
    canonical, extension = {
        b"RIFF": ("audio/wav", ".wav"),
        b"fLaC": ("audio/flac", ".flac"),
        b"OggS": ("audio/ogg", ".ogg"),
    }.get(data[:4], ("audio/mpeg", ".mp3"))
    return GoodAudio(name, data, content_type, session_type, canonical, extension)


def bad_inputs(max_seconds: float = 5.0) -> list[BadAudio]:
    """At least 25 bad inputs; the over-long ones last `max_seconds` + 1 s."""
    voice = speech_like(0.5, 16_000)
    wav = encode(voice, 16_000, "WAV", "PCM_16")
    flac = encode(voice, 16_000, "FLAC", "PCM_16")
    vorbis = encode(speech_like(2.0, 16_000), 16_000, "OGG", "VORBIS")
    mp3 = encode(speech_like(2.0, 16_000), 16_000, "MP3", "MPEG_LAYER_III")
    noise = np.random.default_rng(7).bytes(4000)
    long_seconds = max_seconds + 1
    cases = [
        # what the bytes are
        BadAudio("empty", b"", "audio/wav", InvalidRequest, "empty"),
        BadAudio("empty-detected", b"", None, InvalidRequest, "empty"),
        BadAudio("text-content-type", wav, "text/plain", UnsupportedMediaType, "content type"),
        BadAudio("octet-stream", wav, "application/octet-stream", UnsupportedMediaType, "content type"),
        BadAudio("aac-content-type", wav, "audio/aac", UnsupportedMediaType, "content type"),
        BadAudio("noise-as-wav", noise, "audio/wav", InvalidRequest, "not a valid WAV"),
        BadAudio("noise-detected", noise, None, InvalidRequest, "recognised format"),
        BadAudio("flac-sent-as-wav", flac, "audio/wav", InvalidRequest, "says WAV but the audio is FLAC"),
        BadAudio("wav-sent-as-mpeg", wav, "audio/mpeg", InvalidRequest, "says MP3 but the audio is WAV"),
        BadAudio(
            "aiff-detected", encode(voice, 16_000, "AIFF", "PCM_16"), None, UnsupportedMediaType, "AIFF"
        ),
        BadAudio("caf-as-wav", encode(voice, 16_000, "CAF", "PCM_16"), "audio/wav", InvalidRequest, "CAF"),
        BadAudio("mp4-detected", b"\x00\x00\x00\x18ftypM4A " + noise, None, UnsupportedMediaType, "MP4"),
        BadAudio("aac-detected", b"\xff\xf1\x50\x80" + noise, None, UnsupportedMediaType, "AAC"),
        BadAudio("webm-detected", b"\x1a\x45\xdf\xa3" + noise, None, UnsupportedMediaType, "WebM"),
        BadAudio("amr-detected", b"#!AMR\n" + noise, None, UnsupportedMediaType, "AMR"),
        BadAudio("empty-aac", b"", "audio/aac", UnsupportedMediaType, "content type"),
        *(
            BadAudio(
                f"{container.lower()}-detected",
                encode(voice, 16_000, container, "PCM_16"),
                None,
                UnsupportedMediaType,
                name,
            )
            for container, name in (("AU", "Sun AU"), ("W64", "Wave64"), ("RF64", "RF64"))
        ),
        # broken WAVs
        BadAudio("riff-header-only", _riff_size_fixed(wav[:12]), "audio/wav", InvalidRequest, "no fmt chunk"),
        BadAudio("wav-cut-in-header", wav[:30], "audio/wav", InvalidRequest, "RIFF header declares"),
        BadAudio(
            "wav-truncated", _riff_size_fixed(wav[: len(wav) // 2]), "audio/wav", InvalidRequest, "only"
        ),
        BadAudio(
            "wav-riff-size-too-big", _set_u32(wav, 4, len(wav)), "audio/wav", InvalidRequest, "declares"
        ),
        BadAudio("wav-trailing-bytes", wav + bytes(100), "audio/wav", InvalidRequest, "declares"),
        BadAudio("wav-data-size-too-small", _set_u32(wav, 40, 1000), "audio/wav", InvalidRequest, "chunk"),
        BadAudio(
            "wav-partial-frame",
            _pcm_wav(PcmFormat(16_000), bytes(1001)),
            "audio/wav",
            InvalidRequest,
            "frames",
        ),
        BadAudio("wav-lying-block-align", _set_u16(wav, 32, 4), "audio/wav", InvalidRequest, "inconsistent"),
        BadAudio(
            "wav-lying-byte-rate", _set_u32(wav, 28, 48_000), "audio/wav", InvalidRequest, "inconsistent"
        ),
        BadAudio("wav-zero-channels", _set_u16(wav, 22, 0), None, InvalidRequest, "inconsistent"),
        BadAudio("wav-no-frames", _pcm_wav(PcmFormat(16_000), b""), "audio/wav", InvalidRequest, "no frames"),
        BadAudio(
            "wav-no-data-chunk", _riff_size_fixed(wav[:36]), "audio/wav", InvalidRequest, "no data chunk"
        ),
        BadAudio("wav-stray-bytes", _riff_size_fixed(wav + b"abc"), "audio/wav", InvalidRequest, "stray"),
        BadAudio("wav-data-before-fmt", _riff(wav[36:], wav[12:36]), "audio/wav", InvalidRequest, "before"),
        BadAudio(
            "wav-short-fmt",
            _riff(wav[12:16] + b"\x0e\x00\x00\x00" + wav[20:34], wav[36:]),
            "audio/wav",
            InvalidRequest,
            "fmt chunk has 14 bytes",
        ),
        # shapes out of range
        BadAudio(
            "wav-6-channels",
            encode(speech_like(0.2, 16_000, 6), 16_000, "WAV", "PCM_16"),
            "audio/wav",
            InvalidRequest,
            "6 channels",
        ),
        BadAudio(
            "flac-6-channels",
            encode(speech_like(0.2, 16_000, 6), 16_000, "FLAC", "PCM_16"),
            "audio/flac",
            InvalidRequest,
            "6 channels",
        ),
        BadAudio("wav-1-hz", _pcm_wav(PcmFormat(1), bytes(200)), "audio/wav", InvalidRequest, "1 Hz"),
        BadAudio(
            "wav-10-mhz",
            _pcm_wav(PcmFormat(10_000_000), bytes(20_000)),
            "audio/wav",
            InvalidRequest,
            "10000000 Hz",
        ),
        BadAudio(
            "wav-4-khz", _pcm_wav(PcmFormat(4_000), bytes(8_000)), "audio/wav", InvalidRequest, "4000 Hz"
        ),
        BadAudio(
            "wav-384-khz",
            _pcm_wav(PcmFormat(384_000), bytes(7_680)),
            "audio/wav",
            InvalidRequest,
            "384000 Hz",
        ),
        BadAudio(
            "mulaw-16-khz",
            encode(speech_like(0.3, 16_000), 16_000, "WAV", "ULAW"),
            "audio/wav",
            InvalidRequest,
            "G.711",
        ),
        BadAudio(
            "alaw-stereo",
            encode(speech_like(0.3, 8_000, 2), 8_000, "WAV", "ALAW"),
            "audio/wav",
            InvalidRequest,
            "G.711",
        ),
        BadAudio(
            "mulaw-6-channels",
            encode(speech_like(0.2, 8_000, 6), 8_000, "WAV", "ULAW"),
            "audio/wav",
            InvalidRequest,
            "G.711",
        ),
        # samples that are not numbers: the file is corrupt
        *_non_finite_cases(),
        # codecs not taken
        BadAudio(
            "wav-ima-adpcm",
            encode(voice, 16_000, "WAV", "IMA_ADPCM"),
            "audio/wav",
            UnsupportedMediaType,
            "IMA ADPCM",
        ),
        BadAudio(
            "wav-gsm610",
            encode(speech_like(0.5, 8_000), 8_000, "WAV", "GSM610"),
            "audio/wav",
            UnsupportedMediaType,
            "GSM 6.10",
        ),
        BadAudio("wav-mp3-inside", _set_u16(wav, 20, 0x55), "audio/wav", UnsupportedMediaType, "MP3"),
        BadAudio(
            "ogg-speex",
            _ogg_page(b"Speex   1.2" + bytes(69), flags=0x02),
            "audio/ogg",
            UnsupportedMediaType,
            "Speex",
        ),
        # broken compressed files
        BadAudio("flac-garbage", b"fLaC" + noise, "audio/flac", InvalidRequest, "could not be decoded"),
        BadAudio("flac-unknown-length", _without_flac_length(flac), "audio/flac", InvalidRequest, "length"),
        BadAudio("flac-truncated", flac[: len(flac) // 2], "audio/flac", InvalidRequest, "FLAC"),
        BadAudio("ogg-truncated", vorbis[: len(vorbis) * 9 // 10], "audio/ogg", InvalidRequest, "truncated"),
        # broken before its codec can be told: broken (400), not an unknown codec (415)
        BadAudio("ogg-garbage", b"OggS" + noise, "audio/ogg", InvalidRequest, "The Ogg audio is"),
        BadAudio("ogg-cut-in-first-page", vorbis[:20], None, InvalidRequest, "malformed"),
        BadAudio(
            "ogg-no-frames",
            encode(np.zeros((0, 1), np.float32), 16_000, "OGG", "VORBIS"),
            "audio/ogg",
            InvalidRequest,
            "no frames",
        ),
        BadAudio("mp3-truncated", mp3[: len(mp3) // 2], "audio/mpeg", InvalidRequest, "truncated"),
        BadAudio("mp3-id3-only", _id3_tag(), "audio/mpeg", InvalidRequest, "MP3"),
        # a header that declares more than the file holds: the file is short, not too long
        BadAudio(
            "flac-declares-too-long",
            _with_flac_length(flac, int(long_seconds * 16_000)),
            "audio/flac",
            InvalidRequest,
            "could not be decoded",  # libsndfile fails to read past the end
        ),
        BadAudio(
            "mp3-declares-too-long",
            _with_xing_frames(mp3, int(long_seconds * 16_000 / 576) + 100),
            "audio/mpeg",
            InvalidRequest,
            "truncated",
        ),
        BadAudio(
            "ogg-declares-too-long",
            _with_last_granule(vorbis, int(long_seconds * 16_000)),
            "audio/ogg",
            InvalidRequest,
            "truncated",
        ),
        # too long
        BadAudio(
            "wav-too-long",
            _pcm_wav(PcmFormat(8_000, bits_per_sample=8), bytes(int(long_seconds * 8_000))),
            "audio/wav",
            PayloadTooLarge,
            f"limit of {max_seconds:g} s",
        ),
        BadAudio(
            "flac-too-long",
            encode(np.zeros((int(long_seconds * 8_000), 1), np.float32), 8_000, "FLAC", "PCM_16"),
            "audio/flac",
            PayloadTooLarge,
            f"limit of {max_seconds:g} s",
        ),
        BadAudio(
            "mulaw-too-long",
            encode(np.zeros((int(long_seconds * 8_000), 1), np.float32), 8_000, "WAV", "ULAW"),
            "audio/wav",
            PayloadTooLarge,
            f"limit of {max_seconds:g} s",
        ),
    ]
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def _non_finite_cases() -> list[BadAudio]:
    """Float WAVs (32 and 64-bit, plain and extensible, mono and stereo, with and without resampling)
    holding NaN, +inf, -inf or a double beyond the float range; one as base64 in JSON."""
    mono, stereo = speech_like(0.5, 16_000), speech_like(2.0, 48_000, 2)
    cases = [
        ("wav-float-nan", mono, 16_000, "WAV", "FLOAT", {(4_000, 0): np.nan}, "audio/wav"),
        ("wav-float-inf", mono, 16_000, "WAV", "FLOAT", {(10, 0): np.inf}, "audio/wav"),
        ("wav-float-minus-inf", mono, 16_000, "WAV", "FLOAT", {(7_999, 0): -np.inf}, "audio/wav"),
        ("wav-float-nan-24k", speech_like(0.5, 24_000), 24_000, "WAV", "FLOAT", {(0, 0): np.nan}, None),
        ("wav-double-nan", mono, 16_000, "WAV", "DOUBLE", {(123, 0): np.nan}, "audio/wav"),
        ("wav-double-inf", mono, 16_000, "WAV", "DOUBLE", {(4_567, 0): np.inf}, "audio/wav"),
        ("wav-double-beyond-float", mono, 16_000, "WAV", "DOUBLE", {(42, 0): -1e300}, "audio/wav"),
        ("wavex-float-inf", mono, 16_000, "WAVEX", "FLOAT", {(300, 0): np.inf}, "audio/wav"),
        # in the right channel of the second block decoded; left + right would be NaN once mixed
        ("wav-float-stereo-late", stereo, 48_000, "WAV", "FLOAT", {(90_000, 1): np.inf}, "audio/wav"),
        (
            "wav-float-stereo-opposite-infinities",
            stereo,
            48_000,
            "WAV",
            "FLOAT",
            {(5, 0): np.inf, (5, 1): -np.inf},
            "audio/wav",
        ),
    ]
    return [
        BadAudio(
            name,
            encode(_spoiled(samples, values), rate, container, subtype),
            content_type,
            InvalidRequest,
            "not finite",
        )
        for name, samples, rate, container, subtype, values, content_type in cases
    ]


def _spoiled(samples: np.ndarray, values: Mapping[tuple[int, int], float]) -> np.ndarray:
    """`samples` as float64 with the given (frame, channel) samples replaced."""
    spoiled = samples.astype(np.float64)
    for (frame, channel), value in values.items():
        spoiled[frame, channel] = value
    return spoiled


def bad_requests(max_bytes: int) -> list[BadSpokenRequest]:
    """Requests with a spoken question whose real problem a cheaper or louder check could hide: JSON
    over 64 KiB carrying `audio` and something else wrong (a 400, not a 413 "without audio"), and what
    is known before the body is read (content type, query options, headers) against a body over its
    limit. `max_bytes` is the service's AUDIO_INPUT_MAX_BYTES."""
    wav = encode(speech_like(1.0, 48_000), 48_000, "WAV", "PCM_16")  # base64: over 64 KiB
    non_finite = _spoiled(speech_like(0.5, 48_000), {(100, 0): np.nan})
    json_limit = MAX_BODY_BYTES + max_bytes * 4 // 3 + 4
    over_audio_limit = b"RIFF" + bytes(max_bytes)
    json_over_its_limit = _audio_json(bytes(max_bytes + MAX_BODY_BYTES))
    assert len(_audio_json(wav)) > MAX_BODY_BYTES and len(json_over_its_limit) > json_limit
    cases = [
        BadSpokenRequest(
            "large-json-text-and-audio",
            _audio_json(wav, text="Hi"),
            "application/json",
            InvalidRequest,
            "exactly one",
        ),
        BadSpokenRequest(
            "large-json-unknown-voice",
            _audio_json(wav, voice="robot"),
            "application/json",
            InvalidRequest,
            "voice",
        ),
        BadSpokenRequest(
            "large-json-speed-as-string",
            _audio_json(wav, speed="1.0"),
            "application/json",
            InvalidRequest,
            "speed",
        ),
        BadSpokenRequest(
            "large-json-unknown-field",
            _audio_json(wav, colour="blue"),
            "application/json",
            InvalidRequest,
            "colour",
        ),
        BadSpokenRequest(
            "large-json-audio-not-base64",
            json.dumps({"audio": "not base64! " * 8_000}).encode(),
            "application/json",
            InvalidRequest,
            "base64",
        ),
        BadSpokenRequest(
            "large-json-cut-short",
            _audio_json(wav)[:-2],
            "application/json",
            InvalidRequest,
            "not valid JSON",
        ),
        BadSpokenRequest(
            "large-json-non-finite-audio",
            _audio_json(encode(non_finite, 48_000, "WAV", "FLOAT")),
            "application/json",
            InvalidRequest,
            "not finite",
        ),
        BadSpokenRequest(
            "text-plain-over-the-json-limit",
            b"x" * (json_limit + 1),
            "text/plain",
            UnsupportedMediaType,
            "content type",
        ),
        BadSpokenRequest(
            "json-over-its-limit-with-query-options",
            json_over_its_limit,
            "application/json",
            InvalidRequest,
            "Query parameters",
            query={"format": "mp3"},
        ),
        BadSpokenRequest(
            "raw-audio-over-its-limit-with-an-unknown-voice",
            over_audio_limit,
            "audio/wav",
            InvalidRequest,
            "voice",
            query={"voice": "robot"},
        ),
        BadSpokenRequest(
            "raw-audio-over-its-limit-with-text-in-the-query",
            over_audio_limit,
            "audio/wav",
            InvalidRequest,
            "exactly one",
            query={"text": "Hi"},
        ),
        BadSpokenRequest(
            "raw-audio-over-its-limit-with-a-malformed-idempotency-key",
            over_audio_limit,
            "audio/wav",
            InvalidRequest,
            "Idempotency-Key",
            headers={"Idempotency-Key": "not a token!"},
        ),
    ]
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def _audio_json(audio: bytes, **fields: object) -> bytes:
    return json.dumps({"audio": base64.b64encode(audio).decode(), **fields}).encode()


def _pcm_wav(pcm: PcmFormat, data: bytes) -> bytes:
    """A WAV with `data` as its data chunk whatever it holds (a partial frame included)."""
    header = wav_header(len(data) - len(data) % pcm.bytes_per_frame, pcm)
    return _set_u32(_set_u32(header, 4, 36 + len(data)), 40, len(data)) + data


def _set_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<H", value) + data[offset + 2 :]


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4 :]


def _riff(*chunks: bytes) -> bytes:
    """A RIFF/WAVE file of the given chunks (headers included), in that order."""
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_size_fixed(data: bytes) -> bytes:
    """A cut WAV whose RIFF size was fixed up to the cut (its data chunk still declares more)."""
    return _set_u32(data, 4, len(data) - 8)


def _streamed_wav(data: bytes) -> bytes:
    """A WAV as a writer that cannot seek back leaves it: RIFF and data sizes 0xFFFFFFFF."""
    return _set_u32(_set_u32(data, 4, 0xFFFFFFFF), 40, 0xFFFFFFFF)


def _without_flac_length(data: bytes) -> bytes:
    """A FLAC whose STREAMINFO total sample count is 0 (unknown), as written to a pipe."""
    return _with_flac_length(data, 0)


def _with_flac_length(data: bytes, frames: int) -> bytes:
    """A FLAC whose STREAMINFO declares `frames` frames, whatever it holds."""
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # rate, channels, bits, total
    return data[:18] + (fields | frames).to_bytes(8, "big") + data[26:]


def _with_xing_frames(data: bytes, frames: int) -> bytes:
    """An MP3 whose Xing/Info header declares `frames` MPEG frames, whatever it holds."""
    xing = data.find(b"Xing", 0, 200)
    assert xing > 0 and data[xing + 7] & 1, "libsndfile's MP3 carries a Xing header with a frame count"
    return data[: xing + 8] + struct.pack(">I", frames) + data[xing + 12 :]


def _with_last_granule(data: bytes, granule: int) -> bytes:
    """An Ogg stream whose last page's granule position (the stream's length) is `granule`."""
    *pages, last = _ogg_pages(data)
    struct.pack_into("<q", last, 6, granule)
    return b"".join([*pages, _with_crc(last)])


def _id3_tag() -> bytes:
    """An ID3v2.4 tag with one title frame and nothing after it."""
    frame = b"TIT2" + struct.pack(">I", 6) + b"\x00\x00" + b"\x03hello"
    size = len(frame)
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + frame


def _with_ogg_serial(data: bytes, serial: int) -> bytes:
    """The Ogg pages of `data` with their stream serial number set to `serial` (CRCs recomputed)."""
    pages = _ogg_pages(data)
    for page in pages:
        struct.pack_into("<I", page, 14, serial)
    return b"".join(_with_crc(page) for page in pages)


def _ogg_pages(data: bytes) -> list[bytearray]:
    pages = []
    position = 0
    while position < len(data):
        table_end = position + 27 + data[position + 26]
        page_end = table_end + sum(data[position + 27 : table_end])
        pages.append(bytearray(data[position:page_end]))
        position = page_end
    return pages


def _ogg_page(packet: bytes, *, flags: int) -> bytes:
    """One Ogg page holding one packet (shorter than 255 bytes)."""
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, OGG_SERIAL, 0, 0, 1) + bytes([len(packet)])
    return bytes(_with_crc(bytearray(header + packet)))


def _with_crc(page: bytearray) -> bytearray:
    struct.pack_into("<I", page, 22, 0)
    struct.pack_into("<I", page, 22, _ogg_crc(bytes(page)))
    return page


def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_crc(data: bytes) -> int:
    """The CRC-32 of an Ogg page (polynomial 0x04C11DB7, no reflection, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc
