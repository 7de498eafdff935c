"""Settings of the function app, read from the environment (Functions app settings)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .models import Voice

DEFAULT_INSTRUCTIONS = "You are a helpful assistant. You respond by voice and text."
MIB = 1024 * 1024
# Sized for the smallest Flex Consumption instance (512 MB): about 125 MiB for the process and 40 to
# 55 MiB at the peak of each answer to a 25 MiB spoken question (benchmarks/spoken_parallel.py). The
# Bicep sets it from the instance memory.
DEFAULT_MAX_CONCURRENT_SESSIONS = 4
# MPEG-2 Layer III bitrates (24 kHz is an MPEG-2 sample rate).
MP3_BITRATES_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


class BackendSettings(BaseModel):
    """One Azure OpenAI realtime deployment of the pool (an item of `AZURE_OPENAI_BACKENDS`).

    No keys: every backend is reached with the app's managed identity.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    endpoint: AnyHttpUrl
    deployment: str = Field("gpt-realtime", min_length=1)
    priority: int = Field(1, ge=1, le=100)
    weight: int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _no_secrets_in_endpoint(self) -> BackendSettings:
        if self.endpoint.username or self.endpoint.password or self.endpoint.query:
            raise ValueError("endpoint must be a plain URL (no user info, no query string)")
        return self


class Settings(BaseSettings):
    """Every app setting the code reads. Names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True
    )

    # the model: a pool of backends, or one endpoint (a pool of one)
    azure_openai_backends: Annotated[list[BackendSettings] | None, NoDecode] = None
    azure_openai_endpoint: AnyHttpUrl | None = Field(None, validate_default=True)
    azure_openai_deployment_name: str = Field("gpt-realtime", min_length=1)
    azure_openai_api_key: SecretStr | None = None
    azure_openai_circuit_failures: int = Field(3, ge=1, le=100)
    azure_openai_circuit_cooldown_seconds: float = Field(30.0, gt=0, le=3600)
    azure_client_id: str | None = None
    # storage
    audio_storage_account_url: AnyHttpUrl
    audio_container: str = Field("audio", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    audio_url_ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    audio_block_size_bytes: int = Field(1 * MIB, ge=64 * 1024, le=100 * MIB)
    # the answer
    max_concurrent_sessions: int = Field(DEFAULT_MAX_CONCURRENT_SESSIONS, ge=1, le=1000)
    realtime_timeout_seconds: float = Field(120.0, gt=0, le=600)
    realtime_instructions: str = Field(DEFAULT_INSTRUCTIONS, min_length=1)
    realtime_voice: Voice = "alloy"
    realtime_speed: float = Field(1.0, ge=0.25, le=1.5)
    realtime_max_output_tokens: int | None = Field(None, ge=1, le=4096)
    realtime_transcription_model: str = Field("whisper-1", min_length=1)
    # spare sessions: opened in advance so that a request skips the handshake (see `spares`)
    realtime_spare_sessions: int = Field(0, ge=0, le=8)
    realtime_spare_max_age_seconds: float = Field(600.0, ge=1, le=1500)
    realtime_spare_idle_seconds: float = Field(300.0, ge=1, le=3600)
    audio_mp3_bitrate_kbps: int = 48
    # spoken questions
    audio_input_max_bytes: int = Field(25 * MIB, ge=64 * 1024, le=100 * MIB)
    audio_input_max_seconds: float = Field(300.0, gt=0, le=1800)
    input_transcript_grace_seconds: float = Field(5.0, ge=0, le=60)
    # the playground page (GET /api/playground)
    playground_enabled: bool = False
    # telemetry
    applicationinsights_connection_string: SecretStr | None = None
    applicationinsights_authentication_string: str | None = None
    otel_exporter_otlp_endpoint: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse_backends(cls, values: dict[str, object]) -> dict[str, object]:
        raw = values.get("azure_openai_backends")
        if isinstance(raw, str):
            try:
                values = {**values, "azure_openai_backends": json.loads(raw)}
            except json.JSONDecodeError as exc:
                raise ValueError(f"AZURE_OPENAI_BACKENDS is not valid JSON ({exc.msg})") from None
        return values

    @field_validator("azure_openai_endpoint")
    @classmethod
    def _endpoint_or_backends(cls, value: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        if value is None and info.data.get("azure_openai_backends") is None:
            raise ValueError("Field required (or set AZURE_OPENAI_BACKENDS for a pool of backends)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.audio_mp3_bitrate_kbps not in MP3_BITRATES_KBPS:
            raise ValueError(
                f"AUDIO_MP3_BITRATE_KBPS must be one of {', '.join(map(str, MP3_BITRATES_KBPS))}"
            )
        if self.azure_openai_backends is not None:
            names = [backend.name for backend in self.azure_openai_backends]
            if not names:
                raise ValueError("AZURE_OPENAI_BACKENDS must list at least one backend")
            if len(set(names)) != len(names):
                raise ValueError("AZURE_OPENAI_BACKENDS: backend names must be unique")
        return self

    def backends(self) -> list[BackendSettings]:
        """The model backends: `AZURE_OPENAI_BACKENDS`, or the single endpoint as a pool of one."""
        if self.azure_openai_backends is not None:
            return list(self.azure_openai_backends)
        assert self.azure_openai_endpoint is not None
        return [
            BackendSettings(
                name="default",
                endpoint=self.azure_openai_endpoint,
                deployment=self.azure_openai_deployment_name,
            )
        ]


class SettingsError(Exception):
    """The app settings are incomplete or invalid; `problems` names each one (never its value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def setting_names() -> set[str]:
    """The environment variable names of every setting, as operators write them."""
    return {name.upper() for name in Settings.model_fields}


def settings_status() -> dict[str, str]:
    """Which settings are set in the environment and which take their default; never a value."""
    return {
        name: "set" if os.environ.get(name) else ("required" if field.is_required() else "default")
        for name, field in ((name.upper(), field) for name, field in Settings.model_fields.items())
    }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Raises SettingsError naming each bad setting."""
    try:
        return Settings()  # type: ignore[call-arg]  # values come from the environment
    except ValidationError as exc:
        raise SettingsError([_problem(err) for err in exc.errors(include_input=False)]) from None


def _problem(error: dict[str, object]) -> str:
    location = ".".join(str(part) for part in error["loc"]).upper()  # type: ignore[attr-defined]
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message
