"""Settings of the function app, read from the environment (Functions app settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

Voice = Literal["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]
VOICES: tuple[str, ...] = Voice.__args__

DEFAULT_INSTRUCTIONS = "You are a helpful assistant. You respond by voice and text."
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every app setting the code reads. Names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True
    )

    azure_openai_endpoint: AnyHttpUrl
    azure_openai_deployment_name: str = Field("gpt-realtime", min_length=1)
    azure_openai_api_key: SecretStr | None = None
    azure_client_id: str | None = None
    audio_storage_account_url: AnyHttpUrl
    audio_container: str = Field("audio", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    audio_url_ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    audio_block_size_bytes: int = Field(1 * MIB, ge=64 * 1024, le=100 * MIB)
    realtime_timeout_seconds: float = Field(120.0, gt=0, le=600)
    realtime_instructions: str = Field(DEFAULT_INSTRUCTIONS, min_length=1)
    realtime_voice: Voice = "alloy"
    realtime_transcription_model: str = Field("whisper-1", min_length=1)


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
        raise SettingsError(
            [f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()]
        ) from None
