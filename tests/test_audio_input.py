"""Spoken questions: every bad input of the corpus gives its documented error, good inputs become
exactly what soxr makes of their decoded samples, G.711 passes through untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from realtime_speech.audio_input import decode_question
from realtime_speech.errors import InvalidRequest, ServiceError

from .audio_corpus import BadAudio, GoodAudio, bad_inputs, encode, good_inputs, speech_like

MAX_SECONDS = 5.0
BAD = bad_inputs(max_seconds=MAX_SECONDS)
GOOD = good_inputs()


def test_the_corpus_is_large_and_deterministic() -> None:
    assert len(BAD) >= 25 and {case.status for case in BAD} == {400, 413, 415}
    assert [(case.name, case.data) for case in bad_inputs(max_seconds=MAX_SECONDS)] == [
        (case.name, case.data) for case in BAD
    ]
    assert [(good.name, good.data) for good in good_inputs()] == [(good.name, good.data) for good in GOOD]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.name)
def test_bad_audio_gives_its_documented_error(case: BadAudio) -> None:
    with pytest.raises(ServiceError) as raised:
        decode_question(case.data, case.content_type, max_seconds=MAX_SECONDS)
    error = raised.value
    assert type(error) is case.error and (error.status, error.code) == (case.status, case.code)
    assert case.detail in error.detail
    assert len(error.detail) < 200 and (not case.data or repr(case.data[:8])[2:-1] not in error.detail)


@pytest.mark.parametrize(
    "good", [good for good in GOOD if good.session_type == "audio/pcm"], ids=lambda g: g.name
)
def test_good_audio_is_what_soxr_makes_of_its_decoded_samples(good: GoodAudio) -> None:
    question = decode_question(good.data, good.content_type, max_seconds=MAX_SECONDS)
    assert question.session_format == {"type": "audio/pcm", "rate": 24_000}
    assert (question.content_type, question.extension) == (good.canonical_type, good.extension)
    assert question.original is good.data
    expected = _reference_pcm(good.data)
    assert np.array_equal(np.frombuffer(question.audio, "<i2"), expected)
    assert question.duration_seconds == len(expected) / 24_000


@pytest.mark.parametrize(
    "good", [good for good in GOOD if good.session_type == "audio/pcm"], ids=lambda g: g.name
)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "minus-inf"])
def test_a_non_finite_sample_from_any_decoder_is_refused(
    monkeypatch: pytest.MonkeyPatch, good: GoodAudio, value: float
) -> None:
    """Only a float WAV can store a NaN, but the check is on what every decoder gives (FLAC, MP3,
    Vorbis, Opus): their output is spoiled after decoding, before the service sees it."""
    read = sf.SoundFile.read

    def spoiled_read(audio: sf.SoundFile, *args: object, **kwargs: object) -> np.ndarray:
        block = read(audio, *args, **kwargs)
        if len(block):
            block[len(block) // 2, -1] = value
        return block

    monkeypatch.setattr(sf.SoundFile, "read", spoiled_read)
    with pytest.raises(InvalidRequest) as raised:
        decode_question(good.data, good.content_type, max_seconds=MAX_SECONDS)
    assert "not finite" in raised.value.detail


@pytest.mark.parametrize(("subtype", "session_type"), [("ULAW", "audio/pcmu"), ("ALAW", "audio/pcma")])
def test_g711_passes_through_byte_identical(subtype: str, session_type: str) -> None:
    voice = speech_like(1.0, 8_000)
    wav = encode(voice, 8_000, "WAV", subtype)
    question = decode_question(wav, "audio/wav", max_seconds=MAX_SECONDS)
    assert question.audio == encode(voice, 8_000, "RAW", subtype)  # the same samples, headerless
    assert question.session_format == {"type": session_type}
    assert (question.duration_seconds, question.content_type, question.extension) == (
        1.0,
        "audio/wav",
        ".wav",
    )
    corpus = next(good for good in GOOD if good.session_type == session_type)
    assert (
        decode_question(corpus.data, corpus.content_type, max_seconds=MAX_SECONDS).audio == corpus.data[58:]
    )


def test_stereo_is_mixed_down_to_the_mean_of_the_channels() -> None:
    rng = np.random.default_rng(3)
    left, right = (rng.integers(-20_000, 20_000, 24_000).astype(np.int16) for _ in range(2))
    wav = encode(np.stack([left, right], axis=1), 24_000, "WAV", "PCM_16")
    question = decode_question(wav, "audio/wav", max_seconds=MAX_SECONDS)
    mean = np.rint((left.astype(np.float64) + right) / 2).astype(np.int16)
    assert np.array_equal(np.frombuffer(question.audio, "<i2"), mean)
    opposite = encode(np.stack([left, -left], axis=1), 24_000, "WAV", "PCM_16")
    assert not any(decode_question(opposite, None, max_seconds=MAX_SECONDS).audio)


def test_pcm16_mono_24_khz_comes_out_as_it_went_in() -> None:
    samples = (speech_like(1.0, 24_000) * 32768).astype(np.int16)
    question = decode_question(encode(samples, 24_000, "WAV", "PCM_16"), "audio/wav", max_seconds=MAX_SECONDS)
    assert question.audio == samples.tobytes()


@pytest.mark.parametrize("content_type", ["Audio/WAV", "audio/x-wav; codecs=1", " audio/wav ", None])
def test_content_types_are_read_as_media_types(content_type: str | None) -> None:
    wav = next(good for good in GOOD if good.name == "wav-mono-8k").data
    assert decode_question(wav, content_type, max_seconds=MAX_SECONDS).content_type == "audio/wav"


def test_the_limit_is_inclusive() -> None:
    exactly = encode(np.zeros((8_000 * 5, 1), np.float32), 8_000, "FLAC", "PCM_16")
    assert decode_question(exactly, "audio/flac", max_seconds=MAX_SECONDS).duration_seconds == MAX_SECONDS


def _reference_pcm(data: bytes) -> np.ndarray:
    """The documented conversion, step by step: libsndfile's float samples, (L + R) / 2, soxr HQ to
    24 kHz in one call, round(x * 32768) clipped to PCM16."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples[:, 0] if samples.shape[1] == 1 else (samples[:, 0] + samples[:, 1]) / 2
    resampled = soxr.resample(mono, rate, 24_000, quality="HQ")  # at 24 kHz: the samples unchanged
    return np.clip(np.rint(resampled * 32768.0), -32768, 32767).astype(np.int16)
