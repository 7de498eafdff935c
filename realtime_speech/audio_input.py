"""A spoken question: the received audio file checked and turned into what the realtime session takes,
before any model session is opened.

Accepted: WAV (PCM 8/16/24/32-bit or float), MP3, FLAC and Ogg (Vorbis or Opus), sent as `audio/wav`,
`audio/x-wav`, `audio/mpeg`, `audio/flac` or `audio/ogg`, or with no content type (base64 in JSON),
when the format is told from the bytes. libsndfile decodes; channels are mixed to mono as
(left + right) / 2; soxr (HQ) resamples to 24 kHz; samples become PCM16 as round(x * 32768), clipped.
A G.711 WAV (mu-law or A-law, 8 kHz mono) is passed through as it is: the session takes
`audio/pcmu` / `audio/pcma` natively.

What is wrong with the audio decides the status:
- 415 (UnsupportedMediaType): a kind of audio not taken: the content type, the container (AIFF,
  MP4, ...) or the codec (ADPCM or MP3 inside WAV, MPEG Layer I/II, Ogg Speex or FLAC, ...).
- 400 (InvalidRequest): audio that is broken, inconsistent or out of range: empty, corrupt,
  truncated, no frames, sizes that disagree with the bytes, a content type that disagrees with the
  bytes, more than 2 channels, a sample rate outside 8-192 kHz, G.711 other than 8 kHz mono, a
  length the file does not declare, a decoded sample that is not a finite number (NaN, an infinity,
  or a float64 beyond the float32 range).
- 413 (PayloadTooLarge): longer than `max_seconds` (the limit is named), as decoded: a header that
  declares more than the file holds is a truncated file (400), not a long one.

libsndfile is lenient with truncated WAV and Ogg files (it decodes what is there), so the WAV's chunk
sizes (`wav.read_wav_layout`), the Ogg pages and the decoded length against the declared one are
checked here. The decoded samples are checked before they are mixed, resampled or converted, whatever
the container and decoder: only a float WAV can store a NaN, but any decoder's output is checked.
When several things are wrong, the check that names the precise problem comes first (a G.711 WAV's
own shape rule before the general one). Details name the problem, never the data.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from .encoders import ALAW_SESSION_FORMAT, MULAW_SESSION_FORMAT, PCM_SESSION_FORMAT
from .errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from .wav import (
    PCM16_24KHZ_MONO,
    WAVE_FORMAT_ALAW,
    WAVE_FORMAT_IEEE_FLOAT,
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    WavLayout,
    read_wav_layout,
)

MODEL_RATE = PCM16_24KHZ_MONO.sample_rate
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 2
G711_RATE = 8_000
_DECODE_BLOCK_FRAMES = 1 << 16
_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count when a file does not declare its length
# libsndfile's MP3 length is an estimate that gapless trimming can miss by encoder delay and padding.
_MP3_LENGTH_SLACK_FRAMES = 2 * 1152


@dataclass(frozen=True)
class SpokenQuestion:
    audio: bytes  # what the session receives: PCM16 LE 24 kHz mono, or G.711 bytes as sent
    session_format: dict[str, object]  # audio.input.format
    duration_seconds: float
    original: bytes  # the bytes as received
    content_type: str  # the canonical media type of what was received
    extension: str


@dataclass(frozen=True)
class _Container:
    name: str
    content_type: str
    extension: str
    libsndfile_formats: frozenset[str]
    subtypes: frozenset[str]  # the libsndfile subtypes decoded


_WAV = _Container(
    "WAV",
    "audio/wav",
    ".wav",
    frozenset({"WAV", "WAVEX"}),
    frozenset({"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}),
)
_MP3 = _Container("MP3", "audio/mpeg", ".mp3", frozenset({"MP3"}), frozenset({"MPEG_LAYER_III"}))
_FLAC = _Container(
    "FLAC", "audio/flac", ".flac", frozenset({"FLAC"}), frozenset({"PCM_S8", "PCM_16", "PCM_24"})
)
_OGG = _Container("Ogg", "audio/ogg", ".ogg", frozenset({"OGG"}), frozenset({"VORBIS", "OPUS"}))
_CONTAINERS = {container.name: container for container in (_WAV, _MP3, _FLAC, _OGG)}
MEDIA_TYPES: Mapping[str, str] = {
    "audio/wav": "WAV",
    "audio/x-wav": "WAV",
    "audio/mpeg": "MP3",
    "audio/flac": "FLAC",
    "audio/ogg": "Ogg",
}
_ACCEPTED = "WAV, MP3, FLAC or Ogg (Vorbis or Opus)"

# Containers recognised by their first bytes but not taken.
_UNSUPPORTED_SIGNATURES = (
    (0, b"FORM", "AIFF"),
    (0, b"caff", "CAF"),
    (0, b".snd", "Sun AU"),
    (0, b"RF64", "RF64"),
    (0, b"riff\x2e\x91\xcf\x11", "Wave64"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (4, b"ftyp", "MP4"),
    (0, b"#!AMR", "AMR"),
)
_WAV_CODECS = {
    0x0002: "Microsoft ADPCM",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
}
_OGG_CODECS = (
    (b"\x01vorbis", "Vorbis"),
    (b"OpusHead", "Opus"),
    (b"\x7fFLAC", "FLAC"),
    (b"Speex   ", "Speex"),
    (b"\x80theora", "Theora"),
)


def decode_question(data: bytes, content_type: str | None, *, max_seconds: float) -> SpokenQuestion:
    """Check `data` (of `content_type`, or told from the bytes when None) and turn it into the
    session's input audio. Raises InvalidRequest, UnsupportedMediaType or PayloadTooLarge.

    CPU-bound (decoding and resampling): run it in a worker thread.
    """
    container = _container(data, content_type)
    if container is _WAV:
        layout = _wav_layout(data)
        if layout.format_tag in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
            return _g711_question(data, layout, max_seconds)
    elif container is _OGG:
        _check_ogg(data)
    return _decoded_question(data, container, max_seconds)


def _container(data: bytes, content_type: str | None) -> _Container:
    """The container that `content_type` names and the bytes confirm (told from the bytes when None)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type and media_type not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"The content type is not an accepted audio type ({', '.join(MEDIA_TYPES)})."
        )
    if not data:
        raise InvalidRequest("The audio is empty.")
    found = _sniff(data)
    if media_type:
        expected = _CONTAINERS[MEDIA_TYPES[media_type]]
        if found is None:
            raise InvalidRequest(
                f"The audio is not a valid {expected.name} file: it has no {expected.name} header."
            )
        if found != expected.name:
            raise InvalidRequest(f"The content type says {expected.name} but the audio is {found}.")
        return expected
    if found is None:
        raise InvalidRequest(f"The audio is not in a recognised format: send {_ACCEPTED}.")
    if found not in _CONTAINERS:
        raise UnsupportedMediaType(f"{found} audio is not supported: send {_ACCEPTED}.")
    return _CONTAINERS[found]


def _sniff(data: bytes) -> str | None:
    """The container the first bytes announce, supported or not; None when they announce none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "Ogg"
    if data[:3] == b"ID3" or _is_mpeg_audio_frame(data[:4]):
        return "MP3"
    if data[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return "AAC"
    for offset, signature, name in _UNSUPPORTED_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    return None


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """Whether `head` is an MPEG audio frame header: sync, and no reserved version, layer, bitrate or rate."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3


def _wav_layout(data: bytes) -> WavLayout:
    """The WAV's layout, once its sizes, codec, channels and rate are acceptable (G.711's channels
    and rate are checked against its own rule, by `_g711_question`)."""
    try:
        layout = read_wav_layout(data)
    except ValueError as exc:
        raise InvalidRequest(f"The WAV file is malformed: {exc}.") from None
    tag = layout.format_tag
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        codec = _WAV_CODECS.get(tag, f"format tag 0x{tag:04X}")
        raise UnsupportedMediaType(
            f"WAV audio encoded as {codec} is not supported: send PCM, float or G.711."
        )
    if tag not in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        _check_shape(layout.channels, layout.sample_rate)
    return layout


def _g711_question(data: bytes, layout: WavLayout, max_seconds: float) -> SpokenQuestion:
    """A mu-law or A-law WAV's data bytes, unchanged, for the session's native G.711 input."""
    if (layout.sample_rate, layout.channels, layout.bits_per_sample) != (G711_RATE, 1, 8):
        raise InvalidRequest(
            f"G.711 audio must be 8-bit mono at {G711_RATE} Hz; this is {layout.bits_per_sample}-bit "
            f"with {layout.channels} channel(s) at {layout.sample_rate} Hz."
        )
    if layout.data_bytes == 0:
        raise InvalidRequest("The WAV audio has no frames.")
    duration = layout.data_bytes / G711_RATE
    _check_duration(duration, max_seconds)
    mulaw = layout.format_tag == WAVE_FORMAT_MULAW
    return SpokenQuestion(
        audio=data[layout.data_offset : layout.data_offset + layout.data_bytes],
        session_format=dict(MULAW_SESSION_FORMAT if mulaw else ALAW_SESSION_FORMAT),
        duration_seconds=duration,
        original=data,
        content_type=_WAV.content_type,
        extension=_WAV.extension,
    )


def _check_ogg(data: bytes) -> None:
    """An Ogg stream's pages are whole, it carries Vorbis or Opus and its last page ends the stream.
    The pages come first: the codec of a broken stream cannot be told."""
    last_flags = _last_ogg_page_flags(data)
    codec = _ogg_codec(data)
    if codec not in ("Vorbis", "Opus"):
        raise UnsupportedMediaType(f"Ogg audio encoded as {codec} is not supported: send Ogg Vorbis or Opus.")
    if not last_flags & 0x04:
        raise InvalidRequest("The Ogg audio is truncated: it ends without its end-of-stream page.")


def _last_ogg_page_flags(data: bytes) -> int:
    """The header flags of the last Ogg page, once every page is found whole."""
    position = flags = 0
    while position < len(data):
        if data[position : position + 4] != b"OggS" or position + 27 > len(data):
            raise InvalidRequest("The Ogg audio is malformed: it has bytes that are not an Ogg page.")
        table_end = position + 27 + data[position + 26]
        page_end = table_end + sum(data[position + 27 : table_end])
        if page_end > len(data):
            raise InvalidRequest("The Ogg audio is truncated: its last page is cut short.")
        flags, position = data[position + 5], page_end
    return flags


def _ogg_codec(data: bytes) -> str:
    """The codec named by the first packet of the first Ogg page."""
    if len(data) < 27:
        return "an unknown codec"
    packet = data[27 + data[26] :]
    return next((name for magic, name in _OGG_CODECS if packet.startswith(magic)), "an unknown codec")


def _decoded_question(data: bytes, container: _Container, max_seconds: float) -> SpokenQuestion:
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            declared = _check_decodable(audio, container)
            pcm, decoded = _model_pcm(audio, max_seconds)
    except sf.SoundFileError as exc:
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else type(exc).__name__
        reason = reason.removeprefix("Error : ").rstrip(".")  # libsndfile's message, never the data
        raise InvalidRequest(f"The {container.name} audio could not be decoded ({reason}).") from None
    if decoded == 0:
        raise InvalidRequest(f"The {container.name} audio has no frames.")
    slack = _MP3_LENGTH_SLACK_FRAMES if container is _MP3 else 0
    if decoded + slack < declared:
        raise InvalidRequest(
            f"The {container.name} audio is truncated: it declares {declared} frames but holds {decoded}."
        )
    return SpokenQuestion(
        audio=pcm,
        session_format=dict(PCM_SESSION_FORMAT),
        duration_seconds=len(pcm) / PCM16_24KHZ_MONO.bytes_per_second,
        original=data,
        content_type=container.content_type,
        extension=container.extension,
    )


def _check_decodable(audio: sf.SoundFile, container: _Container) -> int:
    """What libsndfile sees is `container` with a codec, shape and declared length taken; returns
    the declared number of frames. The declared length is not held against `max_seconds`: a header
    can declare more than its file holds, so the limit is applied to what is decoded."""
    if audio.format not in container.libsndfile_formats:
        raise InvalidRequest(f"The audio is not a valid {container.name} file.")
    if audio.subtype not in container.subtypes:
        codec = sf.available_subtypes().get(audio.subtype, audio.subtype)
        raise UnsupportedMediaType(f"{container.name} audio encoded as {codec} is not supported.")
    _check_shape(audio.channels, audio.samplerate)
    if audio.frames == _UNKNOWN_LENGTH:
        raise InvalidRequest(
            f"The {container.name} audio does not declare its length, as when it is written to a pipe: "
            "write it to a file first."
        )
    if audio.frames == 0:
        raise InvalidRequest(f"The {container.name} audio has no frames.")
    return audio.frames


def _model_pcm(audio: sf.SoundFile, max_seconds: float) -> tuple[bytes, int]:
    """The whole audio as PCM16 24 kHz mono, decoded block by block (so that a file holding more than
    it declares stops at the limit), and how many frames were decoded. libsndfile gives float32: a
    float64 sample beyond its range becomes an infinity, and is refused with the NaNs."""
    rate = audio.samplerate
    resampler = None if rate == MODEL_RATE else soxr.ResampleStream(rate, MODEL_RATE, 1, dtype="float32")
    blocks: list[np.ndarray] = []
    decoded = 0
    while len(block := audio.read(_DECODE_BLOCK_FRAMES, dtype="float32", always_2d=True)):
        _check_finite(block, decoded)
        decoded += len(block)
        _check_duration(decoded / rate, max_seconds)
        mono = block[:, 0] if block.shape[1] == 1 else (block[:, 0] + block[:, 1]) * 0.5
        blocks.append(_pcm16(mono if resampler is None else resampler.resample_chunk(mono)))
    if resampler is not None:
        blocks.append(_pcm16(resampler.resample_chunk(np.zeros(0, np.float32), last=True)))
    return b"".join(blocks), decoded  # straight from the arrays' buffers, one copy


def _check_finite(block: np.ndarray, first_frame: int) -> None:
    """Every decoded sample of `block` (frames from `first_frame`) is a number: NaN and infinities are
    no samples, so the file is corrupt (converted, they would reach the model as clicks or silence)."""
    frames_bad = ~np.isfinite(block).all(axis=1)
    if frames_bad.any():
        frame = first_frame + int(np.argmax(frames_bad))
        raise InvalidRequest(
            f"The audio is corrupt: frame {frame} holds a sample that is not finite "
            "(NaN, an infinity, or a 64-bit float beyond the 32-bit range)."
        )


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) as little-endian PCM16: round(x * 32768), clipped."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2")


def _check_shape(channels: int, sample_rate: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidRequest(f"The audio has {channels} channels: 1 (mono) or 2 (stereo) are accepted.")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidRequest(
            f"The audio's sample rate of {sample_rate} Hz is outside the accepted "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz."
        )


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise PayloadTooLarge(
            f"The audio lasts at least {seconds:.1f} s, longer than the limit of {max_seconds:g} s."
        )
