"""One request, end to end: ask the model, stream its audio into storage, sign a read-only URL."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from azure.core.credentials_async import AsyncTokenCredential
from azure.storage.blob.aio import BlobServiceClient
from openai import AsyncOpenAI

from .errors import DeadlineExceeded, ServiceError
from .identity import app_credential, openai_token_provider
from .models import AudioFacts, SpeechRequest, SpeechResult, Timeline
from .realtime import RealtimeSpeaker, VoiceRequest
from .settings import Settings
from .storage import AudioBlobWriter, AudioStore
from .wav import PCM16_24KHZ_MONO, WAV_HEADER_BYTES


class SpeechService:
    """Process-wide: the credential, the model client and the storage clients are made once and shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._credential = app_credential(settings.azure_client_id)
        self._blob_service = BlobServiceClient(
            str(settings.audio_storage_account_url), credential=self._credential
        )
        self.store = AudioStore(
            self._blob_service,
            settings.audio_container,
            settings.audio_block_size_bytes,
            timedelta(minutes=settings.audio_url_ttl_minutes),
        )
        self.speaker = _speaker(settings, self._credential)

    async def speak(self, request: SpeechRequest, request_id: str) -> SpeechResult:
        """Answer `request` by voice within the deadline (REALTIME_TIMEOUT_SECONDS)."""
        timeout = self.settings.realtime_timeout_seconds
        deadline = asyncio.get_running_loop().time() + timeout
        budget = asyncio.timeout_at(deadline)
        try:
            async with budget:
                return await self._speak(request, request_id, deadline)
        except TimeoutError:
            if budget.expired():
                raise DeadlineExceeded(f"No complete answer within {timeout:g} s.") from None
            raise

    async def _speak(self, request: SpeechRequest, request_id: str, deadline: float) -> SpeechResult:
        """The WAV is committed only if the whole answer arrived; otherwise nothing is left behind."""
        timeline = Timeline()
        audio_id = uuid4().hex
        stem = f"{datetime.now(UTC):%Y/%m/%d}/{audio_id}"
        writer = self.store.audio_writer(f"{stem}.wav")
        voice = self.voice_request(request)
        try:
            answer = await self.speaker.speak(voice, writer.write, writer.finish, deadline, timeline)
            result = SpeechResult(
                request_id=request_id,
                transcript=answer.transcript,
                audio_url="",
                expires_at=datetime.now(UTC),
                container=self.store.container_name,
                blob_name=f"{stem}.wav",
                audio=_audio_facts(writer.data_bytes),
                voice=voice.voice,
                session_id=answer.session_id,
                response_id=answer.response_id,
                status=answer.status,
                status_reason=answer.status_reason,
                usage=answer.usage,
                timings_ms=timeline.marks,
            )
            await self._commit(writer, f"{stem}.json", result)
        except BaseException:
            await writer.abort()
            raise
        timeline.mark("committed")
        audio_url, expires_at = await self.store.read_url(result.blob_name, f"speech-{audio_id}.wav")
        timeline.mark("signed")
        return result.model_copy(
            update={"audio_url": audio_url, "expires_at": expires_at, "timings_ms": timeline.marks}
        )

    def voice_request(self, request: SpeechRequest) -> VoiceRequest:
        """The request with the settings' defaults filled in."""
        settings = self.settings
        return VoiceRequest(
            text=request.text,
            instructions=request.instructions or settings.realtime_instructions,
            voice=request.voice or settings.realtime_voice,
            transcription_model=settings.realtime_transcription_model,
        )

    async def _commit(self, writer: AudioBlobWriter, record_name: str, result: SpeechResult) -> None:
        """Commit the WAV and save its record in parallel; a record never outlives a failed commit."""
        record = result.model_dump(mode="json", exclude={"audio_url", "expires_at"})
        commit, save = await asyncio.gather(
            writer.commit(), self.store.save_record(record_name, record), return_exceptions=True
        )
        if isinstance(commit, BaseException):
            if not isinstance(save, BaseException):
                with contextlib.suppress(Exception):
                    await self.store.delete(record_name)
            raise commit
        if isinstance(save, BaseException):
            raise save

    async def probe(self) -> dict[str, str]:
        """Check identity and storage now; each answer is "ok" or a sentence saying what failed."""
        checks = {"storage": self.store.prepare(), "identity": self._check_identity()}
        results = await asyncio.gather(*checks.values(), return_exceptions=True)
        return {
            name: "ok" if not isinstance(result, BaseException) else _describe(result)
            for name, result in zip(checks, results, strict=True)
        }

    async def _check_identity(self) -> None:
        if self.settings.azure_openai_api_key is None:
            await openai_token_provider(self._credential)()

    async def close(self) -> None:
        await self._blob_service.close()
        await self._credential.close()


def _speaker(settings: Settings, credential: AsyncTokenCredential) -> RealtimeSpeaker:
    """The realtime client: an Entra token per connection, or the API key when one is configured."""
    endpoint = str(settings.azure_openai_endpoint).rstrip("/")
    api_key = settings.azure_openai_api_key
    client = AsyncOpenAI(
        base_url=f"{endpoint}/openai/v1",
        websocket_base_url=f"{endpoint.replace('http', 'ws', 1)}/openai/v1",
        api_key=api_key.get_secret_value() if api_key else openai_token_provider(credential),
        max_retries=0,
    )
    headers = {"api-key": api_key.get_secret_value()} if api_key else {}
    return RealtimeSpeaker(client, settings.azure_openai_deployment_name, headers)


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, ServiceError) else f"failed ({type(error).__name__})"


def _audio_facts(data_bytes: int) -> AudioFacts:
    pcm = PCM16_24KHZ_MONO
    return AudioFacts(
        sample_rate=pcm.sample_rate,
        channels=pcm.channels,
        bits_per_sample=pcm.bits_per_sample,
        duration_seconds=round(pcm.duration_seconds(data_bytes), 3),
        bytes=WAV_HEADER_BYTES + data_bytes,
    )
