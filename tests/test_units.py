"""Pure code without I/O: the WAV header, request validation, error rendering, settings."""

from __future__ import annotations

import base64
import io
import json
import wave

import pytest

from realtime_speech.errors import (
    PROBLEM_TYPE_BASE,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    UpstreamRateLimited,
)
from realtime_speech.http import parse_speech_request, problem_response
from realtime_speech.models import MAX_BODY_BYTES, MAX_TEXT_CHARS, VOICES, SpeechRequest
from realtime_speech.realtime import VoiceRequest, session_config
from realtime_speech.settings import Settings, SettingsError, get_settings, setting_names
from realtime_speech.wav import WAV_HEADER_BYTES, PcmFormat, wav_header


@pytest.mark.parametrize("frames", [0, 1, 24_000, 24_000 * 61 + 7])
def test_wav_header_reads_back_with_the_standard_library(frames: int) -> None:
    data = bytes(range(256)) * (frames * 2 // 256) + bytes(frames * 2 % 256)
    blob = wav_header(len(data)) + data
    with wave.open(io.BytesIO(blob)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() == frames
        assert wav.readframes(frames) == data
    assert len(wav_header(len(data))) == WAV_HEADER_BYTES
    assert int.from_bytes(blob[4:8], "little") == len(blob) - 8


def test_wav_header_rejects_partial_frames() -> None:
    with pytest.raises(ValueError, match="whole number of frames"):
        wav_header(3)
    assert len(wav_header(6, PcmFormat(channels=3, bits_per_sample=16))) == WAV_HEADER_BYTES  # one frame
    with pytest.raises(ValueError):
        wav_header(4, PcmFormat(channels=3, bits_per_sample=16))


def _request(body: bytes | str, content_type: str | None = "application/json") -> tuple[str | None, bytes]:
    return content_type, body.encode() if isinstance(body, str) else body


def test_a_valid_body_parses_with_optional_fields() -> None:
    parsed = parse_speech_request(
        *_request('{"text": "Hello", "voice": "marin", "instructions": "Be brief."}')
    )
    assert (parsed.text, parsed.voice, parsed.instructions) == ("Hello", "marin", "Be brief.")
    assert parse_speech_request(*_request('{"text": "Hi"}', "application/json; charset=utf-8")).voice is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{", "not valid JSON"),
        ("[]", "Input should be an object"),
        ("{}", "give exactly one of text and audio"),
        ('{"text": "   "}', "text: must not be blank"),
        ('{"text": 42}', "text: Input should be a valid string"),
        ('{"text": "hi", "voice": "robot"}', "voice: Input should be"),
        ('{"text": "hi", "instructions": ""}', "instructions: must not be blank"),
        ('{"text": "hi", "tex": "typo"}', "tex: is not a known field"),
        (json.dumps({"text": "x" * (MAX_TEXT_CHARS + 1)}), f"at most {MAX_TEXT_CHARS} characters"),
    ],
)
def test_bad_bodies_are_rejected_with_a_reason(body: str, expected: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_speech_request(*_request(body))
    assert expected in caught.value.detail
    assert "typo" not in caught.value.detail  # the input itself is never echoed


def test_media_type_and_size_are_checked_before_the_body() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_speech_request(*_request('{"text": "hi"}', "text/plain"))
    with pytest.raises(UnsupportedMediaType):
        parse_speech_request(*_request('{"text": "hi"}', None))
    with pytest.raises(PayloadTooLarge):
        parse_speech_request(*_request(b"{" + b" " * MAX_BODY_BYTES + b"}"))


LARGE_AUDIO = bytes(range(256)) * (MAX_BODY_BYTES // 128)  # base64 of it is over the JSON limit


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"audio": base64.b64encode(LARGE_AUDIO).decode(), "voice": "marin"}),
        json.dumps({"format": "mp3", "audio": base64.b64encode(LARGE_AUDIO).decode()}, indent=2),
        # escaped slashes (PHP's json_encode writes them) take the plain parse
        json.dumps({"audio": base64.b64encode(LARGE_AUDIO).decode()}).replace("/", "\\/"),
    ],
)
def test_a_large_spoken_question_parses_as_the_plain_parse_would(body: str) -> None:
    parsed = parse_speech_request(*_request(body))
    assert parsed == SpeechRequest.model_validate_json(body)
    assert parsed.audio == LARGE_AUDIO


def test_problem_responses_follow_rfc_9457_with_retry_after() -> None:
    response = problem_response(UpstreamRateLimited("slow down", retry_after=1.2), "req-1")
    assert response.status_code == 429
    assert response.media_type == "application/problem+json"
    assert response.headers["Retry-After"] == "2"
    assert response.headers["x-request-id"] == "req-1"
    assert json.loads(response.body) == {
        "type": PROBLEM_TYPE_BASE + "upstream-rate-limited",
        "title": "The model's rate limit was reached",
        "status": 429,
        "detail": "slow down",
        "request_id": "req-1",
    }


def test_session_configuration_is_the_quickstarts_in_ga_shape() -> None:
    pcm = {"type": "audio/pcm", "rate": 24000}
    config = session_config(VoiceRequest("hi", "Be kind.", "coral", "whisper-1", pcm))
    assert config["type"] == "realtime" and config["output_modalities"] == ["audio"]
    assert config["instructions"] == "Be kind."
    assert config["audio"]["output"] == {"format": pcm, "voice": "coral", "speed": 1.0}
    assert config["max_output_tokens"] == "inf"
    vad = config["audio"]["input"]["turn_detection"]
    assert (vad["type"], vad["threshold"], vad["prefix_padding_ms"], vad["silence_duration_ms"]) == (
        "server_vad",
        0.5,
        300,
        200,
    )
    assert "transcription" not in config["audio"]["input"]  # a text question has nothing to transcribe


def test_only_a_spoken_question_configures_input_transcription_and_turns_vad_off() -> None:
    pcm = {"type": "audio/pcm", "rate": 24000}
    spoken = VoiceRequest(None, "Be kind.", "coral", "whisper-1", pcm, input_audio=b"\0\0", input_format=pcm)
    audio_input = session_config(spoken)["audio"]["input"]
    assert (audio_input["transcription"], audio_input["turn_detection"]) == ({"model": "whisper-1"}, None)


def test_settings_name_every_problem_without_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIO_URL_TTL_MINUTES", "0")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "very-secret-value")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as caught:
        get_settings()
    message = str(caught.value)
    for name in ("AZURE_OPENAI_ENDPOINT", "AUDIO_STORAGE_ACCOUNT_URL", "AUDIO_URL_TTL_MINUTES"):
        assert name in message
    assert "very-secret-value" not in message
    get_settings.cache_clear()


def test_settings_defaults_match_the_design() -> None:
    settings = Settings(
        azure_openai_endpoint="https://x.openai.azure.com", audio_storage_account_url="https://a"
    )
    assert settings.azure_openai_deployment_name == "gpt-realtime"
    assert (settings.audio_container, settings.audio_url_ttl_minutes, settings.realtime_voice) == (
        "audio",
        60,
        "alloy",
    )
    assert settings.realtime_transcription_model == "whisper-1"
    assert len(VOICES) == 10
