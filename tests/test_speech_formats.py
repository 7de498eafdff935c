"""Output formats and voice options: G.711 WAVs taken natively from the model, MP3 encoded while it
speaks, `speed` and `max_output_tokens`. Through the dev host against the stand-ins."""

from __future__ import annotations

import hashlib
import io
import struct
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psutil
import pytest
import soundfile as sf

from .conftest import SpeechHost
from .speech_client import SpeechClient, assert_problem
from .test_speech_api import parse_wav, unique_text

pytestmark = pytest.mark.asyncio(loop_scope="session")

MP3_FRAME_SAMPLES = 1152


def g711_wav(data: bytes) -> tuple[int, bytes]:
    """The format tag and data chunk of a G.711 WAV, after checking every size is exact."""
    assert (
        data[:4] == b"RIFF"
        and data[8:16] == b"WAVEfmt "
        and int.from_bytes(data[4:8], "little") == len(data) - 8
    )
    fmt_size, tag, channels, rate, byte_rate, align, bits, cb_size = struct.unpack_from("<IHHIIHHH", data, 16)
    assert (fmt_size, channels, rate, byte_rate, align, bits, cb_size) == (18, 1, 8000, 8000, 1, 8, 0)
    assert data[38:42] == b"fact" and int.from_bytes(data[42:46], "little") == 4
    samples = int.from_bytes(data[46:50], "little")
    assert data[50:54] == b"data"
    size = int.from_bytes(data[54:58], "little")
    assert size == samples and len(data) == 58 + size + size % 2
    return tag, data[58 : 58 + size]


def decoded(data: bytes) -> tuple[np.ndarray, int, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples[:, 0], rate, samples.shape[1]


def best_correlation(reference: np.ndarray, other: np.ndarray, max_shift: int = 3000) -> float:
    """The highest normalised correlation of `other` against `reference` over small delays (an MP3
    decoder does not trim the encoder's delay)."""
    best = 0.0
    n = len(reference) - max_shift
    for shift in range(0, max_shift, 1):
        part = other[shift : shift + n]
        if len(part) < n:
            break
        best = max(best, float(np.corrcoef(reference[:n], part)[0, 1]))
    return best


def sas_params(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


@pytest.mark.parametrize(
    ("name", "tag", "encoding", "session_type"),
    [
        ("wav-mulaw", 7, "mulaw", "audio/pcmu"),
        ("wav-alaw", 6, "alaw", "audio/pcma"),
    ],
)
async def test_a_g711_wav_holds_the_models_own_bytes(
    speech: SpeechClient, name: str, tag: int, encoding: str, session_type: str
) -> None:
    text = unique_text("Call the telephone about")
    status, body, _ = await speech.post({"text": text, "format": name})
    assert status == 200, body
    session = await speech.emulator_session(text)
    assert session["audio_format"]["type"] == session_type  # asked natively: no transcoding here
    data = await speech.download(body["audio_url"])
    got_tag, chunk = g711_wav(data)
    assert got_tag == tag
    assert (
        hashlib.sha256(chunk).hexdigest() == session["audio_sha256"] and len(chunk) == session["audio_bytes"]
    )
    assert body["audio"] == {
        "format": name,
        "encoding": encoding,
        "sample_rate": 8000,
        "channels": 1,
        "bits_per_sample": 8,
        "duration_seconds": round(len(chunk) / 8000, 3),
        "bytes": len(data),
    }
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.frames) == (8000, 1, len(chunk))
    assert info.subtype == ("ULAW" if tag == 7 else "ALAW")
    assert body["blob_name"].endswith(".wav") and sas_params(body["audio_url"])["rsct"] == "audio/wav"


async def test_an_mp3_decodes_to_the_models_audio(speech: SpeechClient) -> None:
    text = unique_text("Put on the web a word about")
    status, wav_body, _ = await speech.post({"text": text})
    status, body, _ = await speech.post({"text": text, "format": "mp3"})
    assert status == 200, body
    assert body["blob_name"].endswith(".mp3")
    params = sas_params(body["audio_url"])
    assert params["rsct"] == "audio/mpeg" and params["rscd"].endswith('.mp3"')
    data = await speech.download(body["audio_url"])
    assert data[:2] in (b"\xff\xf3", b"\xff\xf2", b"\xff\xe3", b"\xff\xe2")  # an MPEG-2 frame, no tag
    samples, rate, channels = decoded(data)
    assert (rate, channels) == (24000, 1)
    _, pcm = parse_wav(await speech.download(wav_body["audio_url"]))
    reference = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert abs(len(samples) - len(reference)) <= 2 * MP3_FRAME_SAMPLES
    assert best_correlation(reference, samples) > 0.95
    assert body["audio"] == {
        "format": "mp3",
        "encoding": "mp3",
        "sample_rate": 24000,
        "channels": 1,
        "bitrate_kbps": 48,
        "duration_seconds": wav_body["audio"]["duration_seconds"],
        "bytes": len(data),
    }


async def test_an_mp3_stream_is_byte_for_byte_the_stored_file(speech: SpeechClient) -> None:
    stream = await speech.stream({"text": unique_text(), "format": "mp3"})
    assert stream.status == 200 and stream.types[-1] == "speech.done", stream.problem
    started, done = stream.events[0], stream.last()
    assert (started["format"], started["encoding"], started["bitrate_kbps"]) == ("mp3", "mp3", 48)
    assert "bits_per_sample" not in started
    assert stream.audio() == await speech.download(done["audio_url"])


async def test_ten_minutes_of_mp3_stream_with_bounded_memory(speech_host: SpeechHost) -> None:
    # A host of its own, warmed by one answer first: only this stream moves its memory.
    async with speech_host() as client:
        assert client.host is not None and client.host.pid is not None
        warm = await client.stream({"text": unique_text(), "format": "mp3"})
        assert warm.types[-1] == "speech.done", warm.problem
        host = psutil.Process(client.host.pid)
        before = host.memory_info().rss
        stream = await client.stream(
            {"text": f"[[emulator:long seconds=600]] {unique_text()}", "format": "mp3"}
        )
        grown = host.memory_info().rss - before
        assert stream.types[-1] == "speech.done", stream.problem
        done = stream.last()
        assert done["audio"]["duration_seconds"] == 600
        stored = await client.download(done["audio_url"])
    assert stream.audio() == stored and len(stored) == done["audio"]["bytes"]
    # 600 s is 28.8 MB of PCM and 3.6 MB of MP3; neither may be held whole.
    assert grown < 24 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


async def test_speed_changes_the_length_of_the_answer(speech: SpeechClient) -> None:
    text = unique_text("Say it slowly and quickly:")
    _, normal, _ = await speech.post({"text": text})
    status, fast, _ = await speech.post({"text": text, "speed": 1.5})
    assert status == 200
    sessions = [s for s in await speech.emulator_sessions() if s["user_text"] == text]
    assert sorted(s["session"]["audio"]["output"]["speed"] for s in sessions) == [1.0, 1.5]
    ratio = normal["audio"]["duration_seconds"] / fast["audio"]["duration_seconds"]
    assert ratio == pytest.approx(1.5, rel=0.02)


async def test_max_output_tokens_cuts_the_answer_short_and_says_so(speech: SpeechClient) -> None:
    text = unique_text("A long story, please, about")
    status, body, _ = await speech.post({"text": text, "max_output_tokens": 10})
    assert status == 200, body
    assert (body["status"], body["status_reason"]) == ("incomplete", "max_output_tokens")
    assert body["usage"]["output_tokens"] <= 10
    session = await speech.emulator_session(text)
    assert session["session"]["max_output_tokens"] == 10
    _, pcm = parse_wav(await speech.download(body["audio_url"]))
    assert 0 < len(pcm) == session["audio_bytes"]


@pytest.mark.parametrize(
    "options",
    [
        {"format": "ogg"},
        {"format": "WAV"},
        {"format": 1},
        {"speed": 0.2},
        {"speed": 1.6},
        {"speed": "fast"},
        {"speed": True},
        {"max_output_tokens": 0},
        {"max_output_tokens": 4097},
        {"max_output_tokens": "inf"},
        {"max_output_tokens": 2.5},
    ],
)
async def test_bad_options_are_a_400_and_open_no_session(speech: SpeechClient, options: dict) -> None:
    before = len(await speech.emulator_sessions())
    response = await speech.post({"text": unique_text(), **options})
    problem = assert_problem(response, 400, "invalid-request")
    assert next(iter(options)) in problem["detail"]
    assert len(await speech.emulator_sessions()) == before
