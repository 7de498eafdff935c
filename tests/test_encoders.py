"""The output formats: exact WAV headers for PCM and G.711, MP3 that decoders read back as the input,
streamed frame by frame in bounded memory, and the facts of what was written."""

from __future__ import annotations

import io
import multiprocessing
import re
import struct
import subprocess
import tracemalloc
import wave
from concurrent.futures import ProcessPoolExecutor

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from realtime_speech.encoders import OUTPUT_FORMATS, AudioEncoder, Mp3Encoder
from realtime_speech.wav import MULAW_8KHZ_MONO, read_wav_layout, wav_header

from .audio_corpus import speech_like

RATE = 24_000
CHUNK_BYTES = 4_800  # 100 ms of PCM16 24 kHz mono
MP3_FRAME_SAMPLES = 1_152  # the tolerance unit: an MPEG-1 frame (MPEG-2 frames at 24 kHz hold 576)
# The decoded MP3 must match the input's waveform once aligned: 48 kbps gives 0.997 on this signal,
# while the same decode one sample off gives 0.94, so 0.98 fails a misaligned or degraded encode.
MP3_MIN_CORRELATION = 0.98


def _pcm(seconds: float) -> bytes:
    samples = speech_like(seconds, RATE)[:, 0]
    return np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def _g711(n_bytes: int, subtype: str) -> bytes:
    """`n_bytes` of G.711 (ULAW or ALAW) as libsndfile encodes a voice at 8 kHz."""
    out = io.BytesIO()
    sf.write(out, speech_like(n_bytes / 8_000 + 0.01, 8_000)[:n_bytes], 8_000, format="RAW", subtype=subtype)
    return out.getvalue()


def _encode(encoder: AudioEncoder, audio: bytes, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[bytes], bytes]:
    """The pieces encode() returned, and the whole file (header + body)."""
    pieces = [encoder.encode(audio[i : i + chunk_bytes]) for i in range(0, len(audio), chunk_bytes)]
    tail = encoder.flush() + encoder.trailer()
    return pieces, encoder.header() + b"".join(pieces) + tail


def test_the_formats_and_what_the_session_is_asked_for() -> None:
    table = {
        name: (out.session_format, out.content_type, out.extension) for name, out in OUTPUT_FORMATS.items()
    }
    assert table == {
        "wav": ({"type": "audio/pcm", "rate": 24_000}, "audio/wav", ".wav"),
        "wav-mulaw": ({"type": "audio/pcmu"}, "audio/wav", ".wav"),
        "wav-alaw": ({"type": "audio/pcma"}, "audio/wav", ".wav"),
        "mp3": ({"type": "audio/pcm", "rate": 24_000}, "audio/mpeg", ".mp3"),
    }


@pytest.mark.parametrize("seconds", [0.0, 0.05, 2.0])
def test_a_pcm_wav_is_the_model_audio_behind_a_44_byte_header(seconds: float) -> None:
    audio = _pcm(seconds)
    encoder = OUTPUT_FORMATS["wav"].encoder(mp3_bitrate_kbps=48)
    pieces, stored = _encode(encoder, audio, chunk_bytes=1_001)  # deltas may split a sample
    assert b"".join(pieces) == audio and len(encoder.header()) == 44
    with wave.open(io.BytesIO(stored)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.readframes(wav.getnframes()) == audio
    info = sf.info(io.BytesIO(stored))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", RATE, 1)
    assert info.frames == len(audio) // 2
    assert struct.unpack_from("<I", stored, 4)[0] == len(stored) - 8
    assert encoder.facts().model_dump() == {
        "format": "wav",
        "encoding": "pcm_s16le",
        "sample_rate": RATE,
        "channels": 1,
        "bits_per_sample": 16,
        "duration_seconds": round(len(audio) / 48_000, 3),
        "bytes": len(stored),
    }


@pytest.mark.parametrize(
    ("name", "tag", "subtype", "encoding"),
    [("wav-mulaw", 7, "ULAW", "mulaw"), ("wav-alaw", 6, "ALAW", "alaw")],
)
@pytest.mark.parametrize("n_bytes", [0, 1, 7_999, 16_000])
def test_a_g711_wav_has_the_non_pcm_header_and_decodes_as_its_bytes(
    name: str, tag: int, subtype: str, encoding: str, n_bytes: int
) -> None:
    audio = _g711(n_bytes, subtype)
    encoder = OUTPUT_FORMATS[name].encoder(mp3_bitrate_kbps=48)
    pieces, stored = _encode(encoder, audio, chunk_bytes=333)
    assert b"".join(pieces) == audio
    header = encoder.header()
    pad = n_bytes % 2
    assert len(header) == 58 and len(stored) == 58 + n_bytes + pad and stored.endswith(b"\x00" * pad)
    riff, riff_size, wave_id, fmt_id, fmt_size = struct.unpack_from("<4sI4s4sI", header)
    assert (riff, riff_size, wave_id, fmt_id, fmt_size) == (b"RIFF", len(stored) - 8, b"WAVE", b"fmt ", 18)
    assert struct.unpack_from("<HHIIHHH", header, 20) == (tag, 1, 8_000, 8_000, 1, 8, 0)
    assert struct.unpack_from("<4sII4sI", header, 38) == (b"fact", 4, n_bytes, b"data", n_bytes)
    layout = read_wav_layout(stored)
    assert (layout.format_tag, layout.data_offset, layout.data_bytes) == (tag, 58, n_bytes)
    if n_bytes:  # libsndfile refuses a WAV without frames
        info = sf.info(io.BytesIO(stored))
        assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
            "WAV",
            subtype,
            8_000,
            1,
            n_bytes,
        )
        decoded, _ = sf.read(io.BytesIO(stored), dtype="int16")
        raw, _ = sf.read(
            io.BytesIO(audio), dtype="int16", format="RAW", subtype=subtype, samplerate=8_000, channels=1
        )
        assert np.array_equal(decoded, raw)
    facts = encoder.facts()
    assert (facts.format, facts.encoding, facts.sample_rate, facts.channels, facts.bits_per_sample) == (
        name,
        encoding,
        8_000,
        1,
        8,
    )
    assert (facts.bytes, facts.duration_seconds, facts.bitrate_kbps) == (
        len(stored),
        round(n_bytes / 8_000, 3),
        None,
    )


def test_the_g711_header_is_the_one_libsndfile_writes() -> None:
    out = io.BytesIO()
    sf.write(out, speech_like(0.5, 8_000), 8_000, format="WAV", subtype="ULAW")
    written = out.getvalue()
    assert wav_header(4_000, MULAW_8KHZ_MONO) == written[:58] and len(written) == 58 + 4_000


@pytest.mark.parametrize("name", ["wav", "mp3"])  # G.711 samples are single bytes: any length is whole
def test_a_stream_that_ends_inside_a_sample_is_rejected(name: str) -> None:
    encoder = OUTPUT_FORMATS[name].encoder(mp3_bitrate_kbps=48)
    encoder.encode(_pcm(0.1)[:-1])
    with pytest.raises(ValueError, match="inside a sample"):
        encoder.flush()


def test_mp3_is_streamed_and_decodes_back_to_the_input() -> None:
    audio = _pcm(4.0)
    samples = len(audio) // 2
    encoder = OUTPUT_FORMATS["mp3"].encoder(mp3_bitrate_kbps=48)
    pieces, stored = _encode(encoder, audio)
    assert encoder.header() == b""
    assert pieces[3] and sum(map(len, pieces)) > 0.9 * len(stored)  # frames come out while audio goes in
    assert not stored.startswith(b"ID3") and b"Xing" not in stored and b"Info" not in stored[:200]
    assert stored[-128:-125] != b"TAG"  # no ID3v1 either
    decoded, rate = sf.read(io.BytesIO(stored), dtype="float32")
    info = sf.info(io.BytesIO(stored))
    assert (info.format, info.subtype, rate, info.channels) == ("MP3", "MPEG_LAYER_III", RATE, 1)
    assert samples <= len(decoded) <= samples + 2 * MP3_FRAME_SAMPLES
    reference = np.frombuffer(audio, "<i2") / 32768
    delay = _delay(decoded, reference)
    assert delay == 1_105  # LAME's 576 + the decoder's 529, untrimmed without a LAME tag
    aligned = decoded[delay : delay + samples]
    assert np.corrcoef(aligned, reference[: len(aligned)])[0, 1] > MP3_MIN_CORRELATION
    facts = encoder.facts()
    assert (facts.format, facts.encoding, facts.sample_rate, facts.channels) == ("mp3", "mp3", RATE, 1)
    assert (facts.bits_per_sample, facts.bitrate_kbps, facts.bytes) == (None, 48, len(stored))
    assert facts.duration_seconds == round(samples / RATE, 3)
    assert len(stored) == pytest.approx(48_000 / 8 * len(decoded) / RATE, rel=0.02)  # constant 48 kbps


def test_ffmpeg_reads_the_mp3_as_mono_24_khz() -> None:
    audio = _pcm(2.0)
    _, stored = _encode(OUTPUT_FORMATS["mp3"].encoder(mp3_bitrate_kbps=32), audio)
    decoding = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", "-", "-f", "s16le", "-"],
        input=stored,
        capture_output=True,
        check=True,
        timeout=30,
    )
    # ffmpeg describes its input first: "Input #0, mp3, ...  Stream #0:0: Audio: mp3 (...), 24000 Hz, mono"
    input_stream = re.search(
        r"Input #0, (\w+),.*?Stream #0:0: Audio: (\w+)[^,]*, (\d+) Hz, (\w+)",
        decoding.stderr.decode(),
        re.DOTALL,
    )
    assert input_stream is not None, decoding.stderr.decode()
    assert input_stream.groups() == ("mp3", "mp3", "24000", "mono")
    pcm = decoding.stdout
    decoded = np.frombuffer(pcm, "<i2") / 32768
    reference = np.frombuffer(audio, "<i2") / 32768
    assert len(reference) <= len(decoded) <= len(reference) + 2 * MP3_FRAME_SAMPLES
    delay = _delay(decoded, reference)
    aligned = decoded[delay : delay + len(reference)]
    assert np.corrcoef(aligned, reference[: len(aligned)])[0, 1] > 0.97  # 32 kbps


def test_mp3_does_not_depend_on_how_the_audio_is_chunked() -> None:
    audio = _pcm(1.0)
    _, whole = _encode(Mp3Encoder(48), audio, chunk_bytes=len(audio))
    _, odd_chunks = _encode(Mp3Encoder(48), audio, chunk_bytes=777)  # samples split across deltas
    assert odd_chunks == whole


def test_mp3_memory_stays_flat_over_ten_minutes() -> None:
    # In a fresh process of its own, so that nothing else of the test session moves its memory.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        encoded = fresh.submit(_encode_ten_minutes_of_mp3).result(timeout=300)
    assert encoded["duration_seconds"] == 600.0 and encoded["produced"] == encoded["bytes"]
    # 9 minutes are 25.9 MB of PCM in and 3.2 MB of MP3 out: keeping either would show.
    assert encoded["python_growth"] < 16 * 1024
    assert encoded["rss_growth"] < 1024 * 1024


def _encode_ten_minutes_of_mp3() -> dict[str, float]:
    """10 minutes through one MP3 encoder: how much Python heap and RSS grew after the first minute.

    1 s of voice then 4 s of silence, repeated: the encoder's retained memory does not depend on the
    content, and silence keeps it quick."""
    voice = _pcm(1.0)
    chunks = [voice[i : i + CHUNK_BYTES] for i in range(0, len(voice), CHUNK_BYTES)] + [
        bytes(CHUNK_BYTES)
    ] * 40
    encoder = Mp3Encoder(48)
    tracemalloc.start()
    try:
        produced = sum(len(encoder.encode(chunks[i % 50])) for i in range(600))  # the first minute
        python_heap, rss = tracemalloc.get_traced_memory()[0], _rss_bytes()
        produced += sum(len(encoder.encode(chunks[i % 50])) for i in range(600, 6_000))
        python_growth = tracemalloc.get_traced_memory()[0] - python_heap
        rss_growth = _rss_bytes() - rss
    finally:
        tracemalloc.stop()
    produced += len(encoder.flush())
    facts = encoder.facts()
    return {
        "duration_seconds": facts.duration_seconds,
        "bytes": facts.bytes,
        "produced": produced,
        "python_growth": python_growth,
        "rss_growth": rss_growth,
    }


def test_an_unknown_bitrate_is_refused() -> None:
    with pytest.raises(ValueError, match="bitrate"):
        OUTPUT_FORMATS["mp3"].encoder(mp3_bitrate_kbps=50)


def test_no_audio_makes_a_header_only_wav_and_an_empty_mp3() -> None:
    wav = OUTPUT_FORMATS["wav"].encoder(mp3_bitrate_kbps=48)
    assert wav.flush() == b"" and wav.header() == wav_header(0) and wav.facts().bytes == 44
    mp3 = OUTPUT_FORMATS["mp3"].encoder(mp3_bitrate_kbps=48)
    assert mp3.flush() == b"" and mp3.facts().bytes == 0 and mp3.facts().duration_seconds == 0


def _delay(decoded: np.ndarray, reference: np.ndarray) -> int:
    """The lag (0 to two frames) at which `decoded` best matches `reference` (cross-correlation by FFT)."""
    size = 1 << (len(decoded) + len(reference)).bit_length()
    spectrum = np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size))
    return int(np.argmax(np.fft.irfft(spectrum, size)[: 2 * MP3_FRAME_SAMPLES]))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
