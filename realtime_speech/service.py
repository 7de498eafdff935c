"""One request, end to end: ask the model, stream its audio into storage, sign a read-only URL.

With an `Idempotency-Key`, the first successful result for the key is kept in a record
(`idempotency/<sha256 of the key>.json`, with a fingerprint of the request) and returned again, with a
fresh URL, instead of opening another model session. Within one process, requests with the same key
that arrive while the first is still running share its session. Across instances, the record is
written only if none exists (one conditional request), so every caller of a key gets the same result;
two instances that start the same key at the same moment may each pay for a session, and the later
one discards its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, TypeVar
from uuid import uuid4

from azure.core.credentials_async import AsyncTokenCredential
from openai import AsyncOpenAI

from .errors import DeadlineExceeded, IdempotencyKeyReused, ServiceError, StorageUnavailable
from .identity import app_credential, openai_token_provider
from .models import AudioFacts, SpeechRequest, SpeechResult, Timeline
from .realtime import RealtimeSpeaker, VoiceRequest
from .settings import Settings
from .storage import AudioBlobWriter, AudioStore, blob_service_client
from .wav import PCM16_24KHZ_MONO, WAV_HEADER_BYTES

T = TypeVar("T")

IDEMPOTENCY_PREFIX = "idempotency/"
CLEANUP_SECONDS = 5.0
# A result before its URL is signed (see `SpeechService._signed`).
_UNSIGNED: dict[str, Any] = {"audio_url": "", "expires_at": datetime.min.replace(tzinfo=UTC)}


@dataclass(frozen=True)
class SpeechOutcome:
    """The answer to a request; `replayed` when it is an earlier request's result (same key)."""

    result: SpeechResult
    replayed: bool = False


@dataclass(frozen=True)
class _FirstAnswer:
    """The result kept for an idempotency key and the fingerprint of the request that produced it."""

    fingerprint: str
    result: SpeechResult
    replayed: bool


class SpeechService:
    """Process-wide: the credential, the model client and the storage clients are made once and shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._credential = app_credential(settings.azure_client_id)
        self._blob_service = blob_service_client(str(settings.audio_storage_account_url), self._credential)
        self.store = AudioStore(
            self._blob_service,
            settings.audio_container,
            settings.audio_block_size_bytes,
            timedelta(minutes=settings.audio_url_ttl_minutes),
        )
        self.speaker = _speaker(settings, self._credential)
        self._by_key: dict[str, asyncio.Future[_FirstAnswer]] = {}

    async def speak(
        self,
        request: SpeechRequest,
        request_id: str,
        timeline: Timeline,
        idempotency_key: str | None = None,
    ) -> SpeechOutcome:
        """Answer `request` by voice within the deadline (REALTIME_TIMEOUT_SECONDS); with an
        idempotency key, the key's first result if there is one."""
        deadline = asyncio.get_running_loop().time() + self.settings.realtime_timeout_seconds
        if idempotency_key is None:
            answer = self._answer(request, request_id, deadline, timeline)
            return SpeechOutcome(await self._within(deadline, answer))
        return await self._answer_once(request, request_id, deadline, timeline, idempotency_key)

    async def _within(self, deadline: float, work: Awaitable[T]) -> T:
        budget = asyncio.timeout_at(deadline)
        try:
            async with budget:
                return await work
        except TimeoutError:
            if budget.expired():
                timeout = self.settings.realtime_timeout_seconds
                raise DeadlineExceeded(f"No complete answer within {timeout:g} s.") from None
            raise

    async def _answer(
        self, request: SpeechRequest, request_id: str, deadline: float, timeline: Timeline
    ) -> SpeechResult:
        result = await self._speak(request, request_id, deadline, timeline)
        return await self._signed(result, timeline)

    async def _answer_once(
        self, request: SpeechRequest, request_id: str, deadline: float, timeline: Timeline, key: str
    ) -> SpeechOutcome:
        """The key's first answer: from the request in flight with that key, from its record, or new.

        The work runs in its own task (with the first request's deadline) so that a caller giving up
        does not cancel it for the others waiting on the same key.
        """
        fingerprint = request.fingerprint()
        first = self._by_key.get(key)
        shared = first is not None
        if first is None:
            work = self._replay_or_answer(request, request_id, deadline, timeline, key, fingerprint)
            first = self._by_key[key] = asyncio.ensure_future(self._within(deadline, work))
            first.add_done_callback(lambda _: self._by_key.pop(key, None))
        answer = await asyncio.shield(first)
        if answer.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was first used with a different request body; "
                "use a new key for a new request."
            )
        return SpeechOutcome(answer.result, replayed=shared or answer.replayed)

    async def _replay_or_answer(
        self,
        request: SpeechRequest,
        request_id: str,
        deadline: float,
        timeline: Timeline,
        key: str,
        fingerprint: str,
    ) -> _FirstAnswer:
        record_name = idempotency_record_name(key)
        kept = await self.store.load_record(record_name)
        if kept is None:
            result = await self._answer(request, request_id, deadline, timeline)
            if await self._keep(record_name, {"fingerprint": fingerprint, "result": _record(result)}, result):
                return _FirstAnswer(fingerprint, result, replayed=False)
            kept = await self.store.load_record(record_name)  # another instance kept its answer first
            if kept is None:
                raise StorageUnavailable("The idempotency record changed while it was read; retry.")
        first = SpeechResult.model_validate({**kept["result"], **_UNSIGNED})
        return _FirstAnswer(kept["fingerprint"], await self._signed(first), replayed=True)

    async def _keep(self, record_name: str, record: dict[str, Any], result: SpeechResult) -> bool:
        """Keep `result` as the key's answer unless one exists; an answer not kept is deleted."""
        try:
            kept = await self.store.save_record(record_name, record, only_if_new=True)
        except BaseException:
            await self._delete_quietly(result.blob_name, _record_name(result.blob_name))
            raise
        if not kept:
            await self._delete_quietly(result.blob_name, _record_name(result.blob_name))
        return kept

    async def _speak(
        self, request: SpeechRequest, request_id: str, deadline: float, timeline: Timeline
    ) -> SpeechResult:
        """Ask the model and commit the WAV with its record; until then nothing is visible, and on
        any failure nothing is left behind. The result is not signed yet."""
        blob_name = f"{datetime.now(UTC):%Y/%m/%d}/{uuid4().hex}.wav"
        writer = self.store.audio_writer(blob_name)
        voice = self.voice_request(request)
        try:
            answer = await self.speaker.speak(voice, writer.write, writer.finish, deadline, timeline)
            result = SpeechResult(
                request_id=request_id,
                transcript=answer.transcript,
                **_UNSIGNED,
                container=self.store.container_name,
                blob_name=blob_name,
                audio=_audio_facts(writer.data_bytes),
                voice=voice.voice,
                session_id=answer.session_id,
                response_id=answer.response_id,
                status=answer.status,
                status_reason=answer.status_reason,
                usage=answer.usage,
                timings_ms=timeline.marks,
            )
            await self._commit(writer, result)
        except BaseException:
            await writer.abort()
            raise
        timeline.mark("committed")
        return result

    async def _signed(self, result: SpeechResult, timeline: Timeline | None = None) -> SpeechResult:
        """The result with a fresh read-only URL (and, for a new answer, its final timings)."""
        download_name = f"speech-{PurePosixPath(result.blob_name).stem}.wav"
        audio_url, expires_at = await self.store.read_url(result.blob_name, download_name)
        update: dict[str, Any] = {"audio_url": audio_url, "expires_at": expires_at}
        if timeline is not None:
            timeline.mark("signed")
            update["timings_ms"] = dict(timeline.marks)
        return result.model_copy(update=update)

    def voice_request(self, request: SpeechRequest) -> VoiceRequest:
        """The request with the settings' defaults filled in."""
        settings = self.settings
        return VoiceRequest(
            text=request.text,
            instructions=request.instructions or settings.realtime_instructions,
            voice=request.voice or settings.realtime_voice,
            transcription_model=settings.realtime_transcription_model,
        )

    async def _commit(self, writer: AudioBlobWriter, result: SpeechResult) -> None:
        """Commit the WAV and save its record in parallel; if either fails (or the deadline cuts in),
        neither is kept."""
        names = (result.blob_name, _record_name(result.blob_name))
        try:
            outcomes = await asyncio.gather(
                writer.commit(), self.store.save_record(names[1], _record(result)), return_exceptions=True
            )
        except BaseException:  # cancelled while writing: either write may have landed
            await self._delete_quietly(*names)
            raise
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            written = [
                name
                for name, outcome in zip(names, outcomes, strict=True)
                if not isinstance(outcome, BaseException)
            ]
            await self._delete_quietly(*written)
            raise failures[0]

    async def _delete_quietly(self, *blob_names: str) -> None:
        """Best effort, bounded: remove blobs no caller will be given."""
        with contextlib.suppress(ServiceError, TimeoutError):
            async with asyncio.timeout(CLEANUP_SECONDS):
                await asyncio.gather(*(self.store.delete(name) for name in blob_names))

    async def probe(self) -> dict[str, str]:
        """Check identity and storage now; each answer is "ok" or a sentence saying what failed."""
        checks = {"storage": self.store.ready(), "identity": self._check_identity()}
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


def idempotency_record_name(key: str) -> str:
    """Where the first result for an idempotency key is kept (the key itself is never stored)."""
    return f"{IDEMPOTENCY_PREFIX}{hashlib.sha256(key.encode()).hexdigest()}.json"


def _record_name(wav_name: str) -> str:
    """The JSON record beside a WAV."""
    return wav_name.removesuffix(".wav") + ".json"


def _record(result: SpeechResult) -> dict[str, Any]:
    """A result as stored: everything but the URL, which is signed anew for each answer."""
    return result.model_dump(mode="json", exclude=set(_UNSIGNED))


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, ServiceError) else f"failed ({type(error).__name__})"


def _audio_facts(data_bytes: int) -> AudioFacts:
    pcm = PCM16_24KHZ_MONO
    return AudioFacts(
        format="wav",
        encoding="pcm_s16le",
        sample_rate=pcm.sample_rate,
        channels=pcm.channels,
        bits_per_sample=pcm.bits_per_sample,
        duration_seconds=round(pcm.duration_seconds(data_bytes), 3),
        bytes=WAV_HEADER_BYTES + data_bytes,
    )
