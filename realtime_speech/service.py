"""One request, end to end: open a model session, let the answer stream into storage (and to the
caller), commit it with its record, sign a read-only URL.

`SpeechService.start` returns an `Answering` once the model session is open (so that every failure
before it, from bad settings to a refused handshake, is still a plain error status), or at once with
an earlier answer for the same `Idempotency-Key` (see `idempotency`). The JSON response and the
Server-Sent Events stream are two views of the same `Answering`: `result()` waits for the answer,
`events()` yields it as it is spoken and ends with `speech.done`, whose data is the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TypeVar
from uuid import uuid4

from azure.core.credentials_async import AsyncTokenCredential

from . import incidents, telemetry
from .answer import Answering, AnswerStream, AudioFile, EventChannel, QuestionFile
from .audio_input import SpokenQuestion, decode_question
from .checks import DependencyChecks, describe
from .encoders import DEFAULT_OUTPUT_FORMAT, OUTPUT_FORMATS, PCM_SESSION_FORMAT, OutputFormat
from .errors import ContextTooLong, DeadlineExceeded, InvalidRequest, PayloadTooLarge, ServiceError
from .idempotency import Claim, IdempotencyKeys
from .identity import app_credential, openai_token_expires_on, openai_token_provider
from .limits import SessionLimit
from .models import (
    MAX_OUTPUT_TOKENS,
    AnswerReference,
    Conversation,
    HistoryTurn,
    InputAudioFacts,
    SpeechRecord,
    SpeechRequest,
    SpeechResult,
    SpokenPart,
    Timeline,
)
from .pool import BackendPool, Lease, connect
from .realtime import (
    RealtimeBackend,
    RealtimeSession,
    SessionLost,
    SpokenAnswer,
    Turn,
    VoiceRequest,
    prepare_first_answer,
    realtime_client,
)
from .settings import BackendSettings, Settings
from .spares import SpareSessions
from .storage import AudioStore, blob_service_client
from .wav import PCM16_24KHZ_MONO

T = TypeVar("T")

log = logging.getLogger("realtime_speech.service")

CLEANUP_SECONDS = 5.0
# An earlier spoken turn goes to the session as one event, which must stay under 15 MiB (base64).
MAX_TURN_AUDIO_SECONDS = 150.0
# The model's context (gpt-realtime: 32,768 tokens), less a margin for the estimate's error.
CONTEXT_TOKENS = 32_000
# The estimate of a conversation's size: text at 3 characters a token (rounded up; English averages
# about 4, other languages fewer), each item's own tokens, and input audio at 10 tokens a second.
CHARS_PER_TOKEN = 3
TOKENS_PER_ITEM = 8
AUDIO_TOKENS_PER_SECOND = 10
# An answer's audio id: the date path and name of its stored file ("audio_" yyyymmdd hex32).
_AUDIO_ID = re.compile(r"audio_(\d{4})(\d{2})(\d{2})([0-9a-f]{32})")
# The longest a warm-up waits for its first spare sessions.
WARM_UP_SECONDS = 10.0
# The audio facts a caller is told before the first byte (`speech.started`).
STARTED_FACTS = {"format", "encoding", "sample_rate", "channels", "bits_per_sample", "bitrate_kbps"}


@dataclass(frozen=True)
class Question:
    """A validated request with the settings' defaults filled in: what to ask and how to answer."""

    voice: VoiceRequest
    output: OutputFormat
    spoken: SpokenQuestion | None = None
    """The spoken question as received, decoded; None for a text question."""
    deployment: str | None = None
    """The deployment that must answer (a model of the OpenAI-compatible API); None: any."""


class SpeechService:
    """Process-wide: the credential, the model client and the storage clients are made once and shared.

    Built from its parts (`SpeechService(settings, store, backends, credential)`), or from the settings
    alone with `from_settings`. Sessions go to the backends through a process-wide `BackendPool`.
    """

    def __init__(
        self,
        settings: Settings,
        store: AudioStore,
        backends: Sequence[RealtimeBackend],
        credential: AsyncTokenCredential,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backends = {backend.name: backend for backend in backends}
        self.pool = BackendPool(
            settings.backends(),
            failure_threshold=settings.azure_openai_circuit_failures,
            cooldown_seconds=settings.azure_openai_circuit_cooldown_seconds,
        )
        self.credential = credential
        self.started = int(datetime.now(UTC).timestamp())
        """When the service was made (Unix seconds)."""
        self._keys = IdempotencyKeys(store)
        self.sessions = SessionLimit(settings.max_concurrent_sessions)
        self.checks = DependencyChecks({"storage": store.check, "identity": self._check_identity})
        self.spares = SpareSessions(
            self.pool,
            self._open_spare,
            count=settings.realtime_spare_sessions,
            max_age_seconds=settings.realtime_spare_max_age_seconds,
            idle_seconds=settings.realtime_spare_idle_seconds,
            token_expiry=(
                None
                if settings.azure_openai_api_key
                else functools.partial(openai_token_expires_on, credential)
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeechService:
        credential = app_credential(settings.azure_client_id)
        blob_service = blob_service_client(str(settings.audio_storage_account_url), credential)
        store = AudioStore(
            blob_service,
            settings.audio_container,
            settings.audio_block_size_bytes,
            timedelta(minutes=settings.audio_url_ttl_minutes),
        )
        key = settings.azure_openai_api_key.get_secret_value() if settings.azure_openai_api_key else None
        backends = [
            RealtimeBackend(
                backend.name,
                realtime_client(str(backend.endpoint), key, credential),
                backend.deployment,
                key,
            )
            for backend in settings.backends()
        ]
        return cls(settings, store, backends, credential)

    async def start(
        self,
        request: SpeechRequest,
        request_id: str,
        timeline: Timeline,
        idempotency_key: str | None = None,
        *,
        events: bool = False,
        audio_type: str | None = None,
        conversation: Conversation | None = None,
        deadline: float | None = None,
    ) -> Answering:
        """Begin answering `request` within the deadline (REALTIME_TIMEOUT_SECONDS from now, or the
        loop time `deadline` set when the request arrived). Returns once the model session is open, or
        with the key's earlier answer. With `events`, the answer's events are kept for
        `Answering.events()` (bounded: see `EventChannel`). `audio_type` is the media type of a spoken
        question sent as the raw body (None: told from its bytes). `conversation` adds instructions,
        earlier turns and the deployment (no idempotency key then)."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.settings.realtime_timeout_seconds
        incidents.begin()
        # The question is checked (a spoken one decoded) before the key is looked up: bad input is a
        # 400 for what it is, never hidden behind the key's earlier answer or a storage outage.
        question = await self._within(
            deadline, self.question(request, audio_type, conversation or Conversation())
        )
        if idempotency_key is None:
            return await self._begin(question, request_id, timeline, deadline, events, claim=None)
        claim = self._keys.claim(idempotency_key, request.fingerprint())
        try:
            earlier = await self._within(deadline, claim.earlier())
            if earlier is not None:
                return Answering.done(deadline, await self._signed(earlier), replayed=True)
            return await self._begin(question, request_id, timeline, deadline, events, claim)
        except BaseException as error:
            claim.fail(error)
            raise

    async def _begin(
        self,
        question: Question,
        request_id: str,
        timeline: Timeline,
        deadline: float,
        events: bool,
        claim: Claim | None,
    ) -> Answering:
        with telemetry.phase("connect"):
            lease = self.spares.take(question.deployment)
            timeline.spare_session = lease is not None
            if lease is None:
                lease = await self._within(deadline, self._connect(deadline, question.deployment))
        timeline.mark("connected")
        telemetry.set_attributes(
            backend=lease.name,
            voice=question.voice.voice,
            format=question.output.name,
            spare_session=timeline.spare_session,
        )
        blob_name = f"{datetime.now(UTC):%Y/%m/%d}/{uuid4().hex}{question.output.extension}"
        channel = EventChannel() if events else None
        encoder = question.output.encoder(mp3_bitrate_kbps=self.settings.audio_mp3_bitrate_kbps)
        writer = self.store.writer(blob_name, question.output.content_type)
        stream = AnswerStream(AudioFile(encoder, writer), channel)
        if question.spoken is not None:
            stream.question = self._question_file(question.spoken, blob_name)
            # The file as received is let go once staged; the session needs only what it hears.
            question = dataclasses.replace(question, spoken=None)
        known = encoder.facts().model_dump(include=STARTED_FACTS, exclude_none=True)
        started = {"type": "speech.started", "request_id": request_id, "blob_name": blob_name, **known}
        work = self._answer(lease, question, stream, blob_name, request_id, timeline, claim, deadline)
        task = asyncio.ensure_future(self._within(deadline, work))
        if claim is not None:
            claim.settle_with(task)  # the key now follows the answer's task, not this request
        if channel is not None:
            task.add_done_callback(lambda _: channel.close())
        return Answering(deadline, task, started, channel)

    async def _connect(self, deadline: float, deployment: str | None) -> Lease[RealtimeSession]:
        """A new session on the backend the pool chooses among those of `deployment` (all for None),
        spilling over and retrying (see `pool`)."""
        attempts = itertools.count(1)

        async def open_backend(backend: BackendSettings) -> RealtimeSession:
            with telemetry.attempt(backend.name, next(attempts)):
                return await self.backends[backend.name].open()

        return await connect(self.pool, open_backend, deadline, deployment=deployment)

    async def _open_spare(self, backend: BackendSettings) -> RealtimeSession:
        return await self.backends[backend.name].open_spare()

    async def warm_up(self) -> None:
        """Prepare what a first request would otherwise wait for: the storage container and delegation
        key, the Azure OpenAI token (and with it the first connections), the spare sessions, the SDK's
        event types. Bounded;
        a failure is logged and left to the requests, which try again."""
        work = asyncio.gather(
            prepare_first_answer(), self.store.ready(), self._check_identity(), self.spares.ready()
        )
        try:
            async with asyncio.timeout(WARM_UP_SECONDS):
                await work
        except Exception as exc:
            log.warning("warm-up incomplete: %s", describe(exc))

    async def question(
        self, request: SpeechRequest, audio_type: str | None = None, conversation: Conversation | None = None
    ) -> Question:
        """The request with the settings' defaults filled in; a spoken question (and every spoken turn
        of a conversation) is decoded and checked (in a worker thread: it is CPU work), and earlier
        answers are found again by their audio ids, before any model session is opened."""
        settings = self.settings
        conversation = conversation or Conversation()
        spoken = None
        if request.audio is not None:
            limit = settings.audio_input_max_seconds
            decode = asyncio.to_thread(decode_question, request.audio, audio_type, max_seconds=limit)
            spoken = await _naming(conversation.question_param, decode)
            if conversation.question_param is not None:
                _require_pcm(spoken, conversation.question_param)
        history = await self._turns(conversation.history)
        audio_seconds = self._check_conversation_audio(history, spoken)
        output = OUTPUT_FORMATS[request.format or DEFAULT_OUTPUT_FORMAT]
        voice = VoiceRequest(
            text=request.text,
            instructions=conversation.instructions or request.instructions or settings.realtime_instructions,
            voice=request.voice or settings.realtime_voice,
            transcription_model=settings.realtime_transcription_model,
            output_format=dict(output.session_format),
            speed=request.speed if request.speed is not None else settings.realtime_speed,
            max_output_tokens=request.max_output_tokens or settings.realtime_max_output_tokens,
            input_audio=spoken.audio if spoken else None,
            input_format=dict(spoken.session_format) if spoken else None,
            input_transcript_grace_seconds=settings.input_transcript_grace_seconds,
            history=history,
        )
        if conversation.history or conversation.instructions:
            _check_context(voice, audio_seconds)
        return Question(voice, output, spoken, conversation.deployment)

    async def _turns(self, history: Sequence[HistoryTurn]) -> tuple[Turn, ...]:
        """The turns as the session takes them: audio decoded to PCM, earlier answers as their
        transcripts (all at once)."""
        parts = [part for turn in history for part in turn.content]
        resolved = iter(await asyncio.gather(*(self._part(part) for part in parts)))
        return tuple(Turn(turn.role, tuple(next(resolved) for _ in turn.content)) for turn in history)

    def _check_conversation_audio(self, history: Sequence[Turn], spoken: SpokenQuestion | None) -> float:
        """All the audio of a conversation together stays within AUDIO_INPUT_MAX_SECONDS; returns
        how long it is."""
        pcm = sum(len(part) for turn in history for part in turn.content if isinstance(part, bytes))
        seconds = pcm / (PCM16_24KHZ_MONO.sample_rate * 2) + (spoken.duration_seconds if spoken else 0.0)
        limit = self.settings.audio_input_max_seconds
        if seconds > limit:
            raise PayloadTooLarge(
                f"The conversation's audio lasts {seconds:.1f} s; at most {limit:g} s are accepted.",
                param="messages",
            )
        return seconds

    async def _part(self, part: str | SpokenPart | AnswerReference) -> str | bytes:
        if isinstance(part, str):
            return part
        if isinstance(part, AnswerReference):
            return await earlier_transcript(self.store, part)
        limit = min(self.settings.audio_input_max_seconds, MAX_TURN_AUDIO_SECONDS)
        decode = asyncio.to_thread(decode_question, part.data, part.content_type, max_seconds=limit)
        spoken = await _naming(part.param, decode)
        _require_pcm(spoken, part.param)
        return spoken.audio

    def _question_file(self, spoken: SpokenQuestion, answer_name: str) -> QuestionFile:
        """Start uploading the spoken question beside its answer; it is committed with the answer."""
        name = str(PurePosixPath(answer_name).with_suffix(f".question{spoken.extension}"))
        writer = self.store.writer(name, spoken.content_type)
        facts = InputAudioFacts(
            content_type=spoken.content_type,
            bytes=len(spoken.original),
            duration_seconds=spoken.duration_seconds,
        )
        return QuestionFile(name, facts, writer, spoken.original)

    async def _answer(
        self,
        lease: Lease[RealtimeSession],
        question: Question,
        stream: AnswerStream,
        blob_name: str,
        request_id: str,
        timeline: Timeline,
        claim: Claim | None,
        deadline: float,
    ) -> tuple[SpeechResult, bool]:
        """Let the model answer into `stream`, commit the audio with its record, sign its URL and keep
        it for the idempotency key: all or nothing, so on any failure (the deadline included) nothing
        is left behind, before the commit or after it. Returns the result and whether it is an earlier
        answer (another instance kept one for the key first)."""
        try:
            with telemetry.phase("stream"):
                spoken, lease = await self._speak(lease, question, stream, timeline, deadline)
            telemetry.record_usage(spoken.usage)
            record = SpeechRecord(
                request_id=request_id,
                transcript=spoken.transcript,
                container=self.store.container_name,
                blob_name=blob_name,
                audio=await stream.file.facts(),
                voice=question.voice.voice,
                input_transcript=spoken.input_transcript,
                input_transcript_reason=spoken.input_transcript_reason,
                input_blob_name=stream.question.name if stream.question else None,
                input_audio=stream.question.facts if stream.question else None,
                backend=lease.name,
                session_id=spoken.session_id,
                response_id=spoken.response_id,
                status=spoken.status,
                status_reason=spoken.status_reason,
                usage=spoken.usage,
                timings_ms=timeline.marks,
            )
            with telemetry.phase("commit"):
                await self._commit(stream, record)
        except BaseException:
            await stream.abort()
            raise
        timeline.mark("committed")
        try:
            with telemetry.phase("sign"):
                result = await self._signed(record, timeline)
            if claim is None:
                return result, False
            kept, replayed = await claim.keep(result.record())
        except BaseException:
            await self._discard(record, claim)
            raise
        if not replayed:
            return result, False
        await self._discard(record)  # another instance kept its answer first
        return await self._signed(kept), True

    async def _speak(
        self,
        lease: Lease[RealtimeSession],
        question: Question,
        stream: AnswerStream,
        timeline: Timeline,
        deadline: float,
    ) -> tuple[SpokenAnswer, Lease[RealtimeSession]]:
        """The answer, and the lease of the session that gave it: a spare that the service closed
        before it answered anything costs a new session within the deadline, never an error."""
        try:
            return await _spoken_on(lease, question, stream, timeline), lease
        except SessionLost:
            log.info("spare session to backend %s was closed by the service: connecting", lease.name)
        fresh = await self._connect(deadline, question.deployment)
        timeline.spare_session = False
        telemetry.set_attributes(backend=fresh.name, spare_session=False)
        return await _spoken_on(fresh, question, stream, timeline), fresh

    async def _commit(self, stream: AnswerStream, record: SpeechRecord) -> None:
        """Commit the audio, save its record (and commit the spoken question) in parallel; if any
        write fails (or the deadline cuts in), none is kept."""
        writes = {
            record.blob_name: stream.file.commit(),
            record_name(record.blob_name): self.store.save_record(
                record_name(record.blob_name), record.model_dump(mode="json")
            ),
        }
        if stream.question is not None:
            writes[stream.question.name] = stream.question.commit()
        names = list(writes)
        try:
            outcomes = await asyncio.gather(*writes.values(), return_exceptions=True)
        except BaseException:  # cancelled while writing: any write may have landed
            await self._quietly(*map(self.store.delete, names))
            raise
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            written = [
                name
                for name, outcome in zip(names, outcomes, strict=True)
                if not isinstance(outcome, BaseException)
            ]
            await self._quietly(*map(self.store.delete, written))
            raise failures[0]

    async def _discard(self, record: SpeechRecord, claim: Claim | None = None) -> None:
        """Remove a committed answer no caller will be given (a failure after its commit, or it lost
        the race for its idempotency key), with the key's record when `claim` may have written it."""
        names = [record.blob_name, record_name(record.blob_name)]
        names += [record.input_blob_name] if record.input_blob_name else []
        withdrawal = [claim.withdraw(record)] if claim is not None else []
        await self._quietly(*map(self.store.delete, names), *withdrawal)

    async def _quietly(self, *cleanups: Awaitable[object]) -> None:
        """Best effort, bounded: clean up after a failure, whose error is the one that counts."""
        with contextlib.suppress(ServiceError, TimeoutError):
            async with asyncio.timeout(CLEANUP_SECONDS):
                await asyncio.gather(*cleanups)

    async def _signed(self, record: SpeechRecord, timeline: Timeline | None = None) -> SpeechResult:
        """The record with fresh read-only URLs (and, for a new answer, its final timings)."""
        output = OUTPUT_FORMATS[record.audio.format]
        stem = PurePosixPath(record.blob_name).stem
        audio_url, expires_at = await self.store.read_url(
            record.blob_name, f"speech-{stem}{output.extension}", output.content_type
        )
        input_audio_url = None
        if record.input_blob_name and record.input_audio:
            extension = PurePosixPath(record.input_blob_name).suffix
            input_audio_url, _ = await self.store.read_url(
                record.input_blob_name, f"question-{stem}{extension}", record.input_audio.content_type
            )
        if timeline is not None:
            timeline.mark("signed")
            record = record.model_copy(update={"timings_ms": dict(timeline.marks)})
        return SpeechResult(
            **dict(record), audio_url=audio_url, expires_at=expires_at, input_audio_url=input_audio_url
        )

    async def _within(self, deadline: float, work: Awaitable[T]) -> T:
        budget = asyncio.timeout_at(deadline)
        try:
            async with budget:
                return await work
        except TimeoutError:
            if not budget.expired():
                raise
            timeout = self.settings.realtime_timeout_seconds
            known = incidents.last()  # a dependency seen failing, rather than a slow model
            if known is not None:
                detail = f"{known.detail} No answer within {timeout:g} s."
                raise type(known)(detail, retry_after=known.asked_retry_after) from None
            raise DeadlineExceeded(f"No complete answer within {timeout:g} s.") from None

    async def probe(self) -> dict[str, str]:
        """Storage and identity checked for real (results kept a few seconds: see `checks`); each
        answer is "ok" or a sentence saying what failed."""
        return await self.checks.results()

    async def _check_identity(self) -> None:
        if self.settings.azure_openai_api_key is None:
            await openai_token_provider(self.credential)()

    async def close(self) -> None:
        await self.spares.close()
        await self.store.close()
        for backend in self.backends.values():
            await backend.close()
        await self.credential.close()


def audio_id(blob_name: str) -> str:
    """The id an answer is handed out with in the OpenAI shape: its stored file's date path and name,
    so that its record is found again without listing the container."""
    path = PurePosixPath(blob_name)
    return "audio_" + "".join(path.parent.parts) + path.stem


async def earlier_transcript(store: AudioStore, reference: AnswerReference) -> str:
    """The transcript of an answer this app gave, while its audio id is valid (its URL's lifetime,
    from when its record was written); else a 400 naming where the id was sent."""
    name = _record_of_audio_id(reference.audio_id)
    stored = await store.load_record_written(name) if name else None
    if stored is None or stored[1] + store.url_ttl < datetime.now(UTC):
        raise InvalidRequest(
            "The audio id is unknown or has expired; send the answer's transcript as text instead.",
            param=reference.param,
        )
    return SpeechRecord.model_validate(stored[0]).transcript


def _record_of_audio_id(value: str) -> str | None:
    """The record's blob name of an audio id (None when it is not one of ours)."""
    match = _AUDIO_ID.fullmatch(value)
    return None if match is None else "{}/{}/{}/{}.json".format(*match.groups())


def _check_context(voice: VoiceRequest, audio_seconds: float) -> None:
    """Refuse a conversation that cannot fit the model's context with its longest answer (estimated,
    see CONTEXT_TOKENS), before any session is paid for."""
    texts = [voice.instructions, voice.text or ""]
    texts += [part for turn in voice.history for part in turn.content if isinstance(part, str)]
    text_tokens = sum(-(-len(text) // CHARS_PER_TOKEN) for text in texts)
    items = len(voice.history) + 1
    answer = voice.max_output_tokens or MAX_OUTPUT_TOKENS
    needed = (
        text_tokens + items * TOKENS_PER_ITEM + math.ceil(audio_seconds * AUDIO_TOKENS_PER_SECOND) + answer
    )
    if needed > CONTEXT_TOKENS:
        raise ContextTooLong(
            f"The conversation needs about {needed} tokens with its answer ({answer} tokens at most); "
            f"the model's context holds {CONTEXT_TOKENS}. Send fewer or shorter messages.",
            param="messages",
        )


async def _naming(param: str | None, work: Awaitable[T]) -> T:
    """Run `work`; a failure it raises names `param` (where the audio was sent)."""
    try:
        return await work
    except ServiceError as exc:
        exc.param = exc.param or param
        raise


def _require_pcm(spoken: SpokenQuestion, param: str) -> None:
    """Every spoken turn of a conversation shares the session's PCM input format (no G.711)."""
    if spoken.session_format != PCM_SESSION_FORMAT:
        raise InvalidRequest(
            "G.711 WAV audio is not accepted in a conversation; send PCM WAV or MP3.", param=param
        )


async def _spoken_on(
    lease: Lease[RealtimeSession], question: Question, stream: AnswerStream, timeline: Timeline
) -> SpokenAnswer:
    """Ask on the lease's session, then close it and end its count in the pool."""
    try:
        return await lease.value.answer(question.voice, stream, timeline)
    finally:
        await lease.value.close()
        lease.release()


def record_name(audio_name: str) -> str:
    """The JSON record beside an audio file."""
    return str(PurePosixPath(audio_name).with_suffix(".json"))
