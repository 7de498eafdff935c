"""One realtime connection: client events in, server events out, scripted by a scenario."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import WSMsgType, web

from . import protocol
from .active_response import ActiveResponse
from .input_audio import CommittedAudio, InputAudioBuffer, transcription_usage
from .planning import ResponseRequest, audio_chunks
from .protocol import new_id, server_event
from .scenarios import Scenario, ScenarioError, find_directive
from .speech import Engine, heard_text, transcript_deltas
from .validation import RequestError, client_event

log = logging.getLogger(__name__)

TRANSCRIPTION_ERROR = {
    "type": "invalid_request_error",
    "code": "audio_unintelligible",
    "message": "The audio could not be transcribed.",
    "param": None,
}
SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! You can retry your request, "
    "or contact us through an Azure support request if the error persists. "
    "(Please include the session ID {session_id} in your message.)"
)
RATE_LIMIT_MESSAGE = (
    "Requests to the Realtime API have exceeded the token rate limit of your current pricing tier. "
    "Please retry after 20 seconds."
)


@dataclass
class SessionRecord:
    """What the emulator saw and did on one connection (``GET /_emulator/sessions``).

    ``auth`` is ``{"kind": "api-key" | "entra", "claims": {aud, iss, oid, tid, appid}}`` (claims empty
    for keys; never a key or token). ``session`` is the merged session config. ``user_text`` is the
    last user message as sent (directives included), or the text heard in the last committed input
    audio. ``transcript``, ``audio_bytes`` and ``audio_sha256`` (of the audio as sent, in its output
    format), ``audio_format``, ``voice``, ``speed``, ``usage``, ``response_id`` and ``response_status``
    describe the last response, its status staying ``in_progress`` when it never got a
    ``response.done``. ``input_audio`` lists each committed input buffer: ``item_id``, ``format``,
    ``bytes``, ``samples``, ``seconds``, ``sha256`` (of the raw bytes), ``heard`` (the text heard) and
    ``transcript`` (as its transcription sent it; null until then, or without transcription); the raw
    bytes are served by ``GET /_emulator/sessions/{id}/input_audio``. ``items`` is the conversation as
    the emulator holds it, in order: each item's ``id``, ``role`` and ``content`` parts, whose audio is
    shown as ``audio_bytes`` and ``audio_sha256`` (of the decoded bytes). ``ended_by`` is None while open,
    then ``client_close``, ``connection_lost`` (no close frame from the client), ``emulator_drop`` or
    ``emulator_shutdown``.
    """

    session_id: str
    model: str
    auth: dict[str, object]
    scenario: str
    scenario_params: dict[str, object]
    session: dict[str, Any]
    client_event_types: list[str] = field(default_factory=list)
    error_codes: list[str | None] = field(default_factory=list)
    user_text: str | None = None
    transcript: str | None = None
    audio_bytes: int = 0
    audio_sha256: str | None = None
    audio_format: dict[str, Any] | None = None
    voice: str | None = None
    speed: float | None = None
    usage: dict[str, Any] | None = None
    response_id: str | None = None
    response_status: str | None = None
    input_audio: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str | None = None
    opened_at: float = field(default_factory=time.time)
    first_session_update_at: float | None = None
    ended_at: float | None = None
    raw_input_audio: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Committed input audio by item id; served by its own route, not in the JSON record."""

    def as_json(self) -> dict[str, Any]:
        return {
            name: copy.deepcopy(getattr(self, name))
            for name in (entry.name for entry in fields(self))
            if name != "raw_input_audio"
        }

    def add_input_audio(self, committed: CommittedAudio) -> None:
        self.input_audio.append({**committed.as_record(), "transcript": None})
        self.raw_input_audio[committed.item_id] = committed.raw
        self.user_text = committed.heard

    def note_input_transcript(self, item_id: str, transcript: str) -> None:
        for entry in self.input_audio:
            if entry["item_id"] == item_id:
                entry["transcript"] = transcript

    def input_audio_bytes(self, item_id: str | None = None) -> bytes | None:
        """The raw bytes of one committed buffer (the last one when ``item_id`` is None)."""
        if item_id is None:
            return self.raw_input_audio[self.input_audio[-1]["item_id"]] if self.input_audio else None
        return self.raw_input_audio.get(item_id)


@dataclass(frozen=True)
class HeldTranscription:
    """An input transcription that a ``transcript_late`` scenario holds until the next response ends."""

    committed: CommittedAudio
    model: str
    delay: float


class RealtimeSession:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        close_tcp: Callable[[], None],
        record: SessionRecord,
        scenario: Scenario,
        engine: Engine,
    ) -> None:
        self.ws = ws
        self.record = record
        self._close_tcp = close_tcp
        self._scenario = scenario
        self._engine = engine
        self._session: dict[str, Any] = record.session
        self._conversation_id = new_id("conv")
        self._items: list[dict[str, Any]] = []
        self._audio_tokens_by_item: dict[str, int] = {}
        self._heard_by_item: dict[str, str] = {}
        self._tokens_used = 0
        self._input_audio = InputAudioBuffer()
        self._held_transcriptions: list[HeldTranscription] = []
        self._audio_produced = False
        self._active: ActiveResponse | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = False
        self.shutting_down = False
        self.idle_closed = False
        self.last_client_event = time.monotonic()

    async def run(self) -> None:
        """Serve the connection until it ends, then note how it ended."""
        try:
            await self._send(server_event("session.created", session=self._session))
            async for message in self.ws:
                if message.type == WSMsgType.TEXT:
                    await self._handle(message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._send_error(RequestError("invalid_json", "Binary frames are not supported."))
        finally:
            for task in self._tasks:
                task.cancel()
            if self._active is not None and self._active.cancel.is_set():
                # the client asked to cancel and left before response.done: cancelled all the same
                self.record.response_status = "cancelled"
            self.record.ended_by = self._ending()
            self.record.ended_at = time.time()

    def idle_for(self) -> float | None:
        """Seconds since the client's last event, None while a response is being sent."""
        return None if self._active is not None else time.monotonic() - self.last_client_event

    async def close_idle(self) -> None:
        """End a session that has been idle too long, as the service does: a close frame (1000)."""
        self.idle_closed = True
        await self.ws.close(code=1000, message=b"session idle timeout")

    def _ending(self) -> str:
        if self._dropped:
            return "emulator_drop"
        if self.idle_closed:
            return "emulator_idle_timeout"
        if self.shutting_down:
            return "emulator_shutdown"
        if self.ws.close_code in (None, 1006):
            return "connection_lost"
        return "client_close"

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def _send_error(self, error: RequestError, client_event_id: str | None = None) -> None:
        self.record.error_codes.append(error.code)
        await self._send(protocol.error_event(error, client_event_id))

    async def _handle(self, data: str) -> None:
        self.last_client_event = time.monotonic()
        try:
            raw = json.loads(data)
        except ValueError as error:
            await self._send_error(RequestError("invalid_json", f"The event is not valid JSON: {error}."))
            return
        client_event_id = raw.get("event_id") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and isinstance(raw.get("type"), str):
            self.record.client_event_types.append(raw["type"])
        try:
            event = client_event(raw)
            await self._dispatch(event)
        except RequestError as error:
            await self._send_error(error, client_event_id if isinstance(client_event_id, str) else None)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        handlers = {
            "session.update": self._update_session,
            "conversation.item.create": self._create_item,
            "response.create": self._create_response,
            "response.cancel": self._cancel_response,
            "input_audio_buffer.append": self._append_input_audio,
            "input_audio_buffer.clear": self._clear_input_audio,
            "input_audio_buffer.commit": self._commit_input_audio,
        }
        handler = handlers.get(event["type"])
        if handler is None:
            raise RequestError(
                "unsupported_by_emulator",
                f"The realtime emulator does not support '{event['type']}'.",
                "type",
            )
        await handler(event)

    # --- session and conversation -----------------------------------------------------------------

    async def _update_session(self, event: dict[str, Any]) -> None:
        if self.record.first_session_update_at is None:
            self.record.first_session_update_at = time.time()
        update = event["session"]
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self._voice() and self._audio_produced:
            raise RequestError(
                "cannot_update_voice", "Cannot update a conversation's voice if assistant audio is present."
            )
        scenario = _directive(update.get("instructions", ""), "session.instructions")
        self._session = protocol.merge_session(self._session, update)
        self.record.session = self._session
        if scenario is not None:
            self._use_scenario(scenario)
        await self._send(server_event("session.updated", session=self._session))

    def _voice(self) -> str:
        return self._session["audio"]["output"]["voice"]

    def _use_scenario(self, scenario: Scenario) -> None:
        self._scenario = scenario
        self.record.scenario = scenario.name
        self.record.scenario_params = scenario.params()

    async def _create_item(self, event: dict[str, Any]) -> None:
        item = {"id": new_id("item"), **copy.deepcopy(event["item"])}
        if item.get("type") == "message":
            _refuse_assistant_audio(item)
            item.update(object="realtime.item", status="completed")
            if item["role"] == "user":
                self._apply_directive(item)
                self.record.user_text = _message_text(item)
        await self._add_item(item)

    async def _add_item(self, item: dict[str, Any]) -> None:
        previous_item_id = self._items[-1]["id"] if self._items else None
        self._items.append(item)
        self._note_items()
        await self._send(
            server_event("conversation.item.added", previous_item_id=previous_item_id, item=item)
        )
        await self._send(server_event("conversation.item.done", previous_item_id=previous_item_id, item=item))

    def _apply_directive(self, item: dict[str, Any]) -> None:
        for index, part in enumerate(item["content"]):
            scenario = _directive(part.get("text") or "", f"item.content[{index}].text")
            if scenario is not None:
                self._use_scenario(scenario)

    # --- input audio ------------------------------------------------------------------------------

    async def _append_input_audio(self, event: dict[str, Any]) -> None:
        self._input_audio.append(event["audio"])

    async def _clear_input_audio(self, event: dict[str, Any]) -> None:
        self._input_audio.clear()
        await self._send(server_event("input_audio_buffer.cleared"))

    async def _commit_input_audio(self, event: dict[str, Any]) -> None:
        """The buffer becomes a user message: committed, the item's events, then its transcription."""
        input_format = copy.deepcopy(self._session["audio"]["input"]["format"])
        raw = self._input_audio.take(input_format)
        heard = await asyncio.to_thread(heard_text, raw, input_format)
        committed = CommittedAudio(new_id("item"), input_format, raw, heard)
        previous_item_id = self._items[-1]["id"] if self._items else None
        await self._send(
            server_event(
                "input_audio_buffer.committed", previous_item_id=previous_item_id, item_id=committed.item_id
            )
        )
        self.record.add_input_audio(committed)
        self._heard_by_item[committed.item_id] = heard
        self._audio_tokens_by_item[committed.item_id] = committed.audio_tokens
        await self._add_item(
            {
                "id": committed.item_id,
                "type": "message",
                "object": "realtime.item",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            }
        )
        transcription = self._session["audio"]["input"]["transcription"]
        if transcription is not None:
            await self._transcribe(committed, transcription.get("model", "whisper-1"))

    async def _transcribe(self, committed: CommittedAudio, model: str) -> None:
        """Send the committed audio's transcription now, later, never, or its failure, as the scenario
        says."""
        if self._scenario.name == "transcript_never":
            return
        if self._scenario.name == "transcript_failed":
            await self._send(
                server_event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=committed.item_id,
                    content_index=0,
                    error=dict(TRANSCRIPTION_ERROR),
                )
            )
            return
        if self._scenario.name == "transcript_late":
            self._held_transcriptions.append(HeldTranscription(committed, model, self._scenario.delay))
            return
        await self._send_transcription(committed, model)

    async def _send_transcription(self, committed: CommittedAudio, model: str) -> None:
        transcript = committed.heard
        where = {"item_id": committed.item_id, "content_index": 0}
        for delta in transcript_deltas(transcript):
            await self._send(
                server_event("conversation.item.input_audio_transcription.delta", **where, delta=delta)
            )
        usage = transcription_usage(committed, transcript, model)
        await self._send(
            server_event(
                "conversation.item.input_audio_transcription.completed",
                **where,
                transcript=transcript,
                usage=usage,
            )
        )
        for item in self._items:
            if item.get("id") == committed.item_id:
                item["content"][0]["transcript"] = transcript
        self._note_items()
        self.record.note_input_transcript(committed.item_id, transcript)

    def _release_held_transcriptions(self) -> None:
        """After a response ends, send what ``transcript_late`` held, each after its delay."""
        if self.ws.closed or self._dropped:
            return
        held, self._held_transcriptions = self._held_transcriptions, []
        for entry in held:
            self._spawn(self._send_late_transcription(entry))

    async def _send_late_transcription(self, held: HeldTranscription) -> None:
        await asyncio.sleep(held.delay)
        with contextlib.suppress(ConnectionResetError):
            await self._send_transcription(held.committed, held.model)

    # --- responses --------------------------------------------------------------------------------

    async def _create_response(self, event: dict[str, Any]) -> None:
        if self._active is not None:
            raise RequestError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.response_id}. "
                "Wait until the response is finished before creating a new one.",
            )
        if self._scenario.name == "rate_limit":
            raise RequestError("rate_limit_exceeded", RATE_LIMIT_MESSAGE, type_="tokens")
        self._active = ActiveResponse(new_id("resp"), self._request(event.get("response", {})))
        self._spawn(self._respond(self._active))

    async def _cancel_response(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted is not None and wanted != self._active.response_id):
            raise RequestError("response_cancel_not_active", "Cancellation failed: no active response found.")
        self._active.cancel.set()

    def _request(self, params: dict[str, Any]) -> ResponseRequest:
        """The response asked for: the session's settings with the response's overrides."""
        output = self._session["audio"]["output"]
        params_output = params.get("audio", {}).get("output", {})
        settings = {
            "output_modalities": params.get("output_modalities", self._session["output_modalities"]),
            "max_output_tokens": params.get("max_output_tokens", self._session["max_output_tokens"]),
            "voice": params_output.get("voice", output["voice"]),
            "format": protocol.with_format_defaults(params_output.get("format", output["format"])),
            "metadata": params.get("metadata"),
        }
        in_conversation = params.get("conversation", "auto") != "none"
        items = params.get("input", self._items if in_conversation else [])
        instructions = params.get("instructions", self._session["instructions"])
        user_items = [item for item in items if item.get("role") == "user"]
        return ResponseRequest(
            user_text=self._item_text(user_items[-1]) if user_items else "",
            scenario=self._scenario,
            settings=settings,
            speed=output["speed"],
            input_tokens=self._input_tokens(instructions, items),
            conversation_id=self._conversation_id if in_conversation else None,
        )

    def _item_text(self, item: dict[str, Any]) -> str:
        """What the model takes from a user item: the text heard in its audio, or its text."""
        return self._heard_by_item.get(item.get("id", ""), _message_text(item))

    def _input_tokens(self, instructions: str, items: list[dict[str, Any]]) -> tuple[int, int]:
        text = protocol.text_tokens(instructions)
        audio = 0
        for item in items:
            text += protocol.TOKENS_PER_ITEM + protocol.text_tokens(_message_text(item))
            audio += self._audio_tokens_by_item.get(item["id"], 0) if "id" in item else 0
        return text, audio

    async def _respond(self, response: ActiveResponse) -> None:
        try:
            await asyncio.to_thread(response.prepare, self._engine)
            await self._stream_response(response)
        except ConnectionResetError:
            log.info("session %s: connection closed during a response", self.record.session_id)
        finally:
            if self._active is response:
                self._active = None
            self._release_held_transcriptions()

    async def _stream_response(self, response: ActiveResponse) -> None:
        await self._open_response(response)
        await self._stream_content(response)
        self._record_progress(response)
        await self._end_response(response)

    async def _open_response(self, response: ActiveResponse) -> None:
        """The events that open a response, up to its content part."""
        plan = response.plan
        self.record.response_id = response.response_id
        self.record.response_status = "in_progress"
        self.record.usage = None
        self._record_progress(response)
        opened = protocol.response_object(
            response.response_id,
            conversation_id=plan.conversation_id,
            status="in_progress",
            settings=plan.settings,
        )
        await self._send(server_event("response.created", response=opened))
        self._tokens_used += sum(plan.input_tokens)
        await self._send(
            server_event("rate_limits.updated", rate_limits=protocol.rate_limits(self._tokens_used))
        )
        item = protocol.assistant_item(new_id("item"), "in_progress", [])
        response.item_id = item["id"]
        await self._send(
            server_event(
                "response.output_item.added", response_id=response.response_id, output_index=0, item=item
            )
        )
        if plan.in_conversation:
            previous_item_id = self._items[-1]["id"] if self._items else None
            self._items.append(item)
            self._note_items()
            await self._send(
                server_event("conversation.item.added", previous_item_id=previous_item_id, item=item)
            )
        part = {"type": "audio", "transcript": ""} if plan.audio else {"type": "text", "text": ""}
        await self._send(server_event("response.content_part.added", **response.where, part=part))

    async def _end_response(self, response: ActiveResponse) -> None:
        """End the response as the scenario says: one of the misbehaviours, or ``response.done``."""
        plan = response.plan
        name = "cancelled_by_client" if response.cancelled else plan.scenario.name
        if name == "error_mid":
            message = SERVER_ERROR_MESSAGE.format(session_id=self.record.session_id)
            await self._send_error(RequestError(None, message, type_="server_error"))
            return
        if name == "drop":
            self._drop_connection()
            return
        if name == "stall":
            await response.cancel.wait()
            name = "cancelled_by_client"
        if name == "cancelled_by_client":
            status, details = "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
        elif name == "incomplete" or plan.cut_by_token_limit:
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        elif name == "failed":
            message = SERVER_ERROR_MESSAGE.format(session_id=self.record.session_id)
            error = {"type": "server_error", "code": None, "message": message}
            status, details = "failed", {"type": "failed", "error": error}
        elif name == "cancelled":
            status, details = "cancelled", {"type": "cancelled", "reason": plan.scenario.reason}
        else:
            status, details = "completed", None
        await self._finish(response, status, details)

    async def _stream_content(self, response: ActiveResponse) -> None:
        """Send transcript and audio deltas up to the plan's limit, paced if the scenario says so."""
        plan = response.plan
        output_format = plan.output_format
        delta_type = "response.output_audio_transcript.delta" if plan.audio else "response.output_text.delta"
        marks = iter(mark for mark in plan.marks if mark[0] < plan.limit)
        pending = next(marks, None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for start, end in audio_chunks(plan.limit, output_format):
            while pending is not None and pending[0] < end:
                await self._send(server_event(delta_type, **response.where, delta=pending[1]))
                response.transcript.append(pending[1])
                pending = next(marks, None)
            if plan.scenario.pace is not None:
                due = started + output_format.seconds(end) / plan.scenario.pace
                await _wait_until(response.cancel, due - loop.time())
            if response.cancel.is_set():
                response.cancelled = True
                return
            if plan.audio:
                chunk = plan.output_audio[start:end]
                await self._send(
                    server_event(
                        "response.output_audio.delta",
                        **response.where,
                        delta=base64.b64encode(chunk).decode(),
                    )
                )
                response.audio_bytes += len(chunk)
                self._audio_produced = True
            await asyncio.sleep(0)

    def _record_progress(self, response: ActiveResponse) -> None:
        plan = response.plan
        self.record.transcript = response.text
        self.record.audio_bytes = response.audio_bytes
        self.record.audio_sha256 = hashlib.sha256(response.sent_audio).hexdigest()
        self.record.audio_format = plan.settings["format"]
        self.record.voice = plan.settings["voice"]
        self.record.speed = plan.speed

    async def _finish(self, response: ActiveResponse, status: str, details: dict[str, Any] | None) -> None:
        """The closing events of a response that ends with ``response.done``."""
        plan = response.plan
        where = response.where
        transcript = response.text
        if plan.audio:
            await self._send(server_event("response.output_audio.done", **where))
            await self._send(
                server_event("response.output_audio_transcript.done", **where, transcript=transcript)
            )
            part = {"type": "audio", "transcript": transcript}
            content = {"type": "output_audio", "transcript": transcript}
        else:
            await self._send(server_event("response.output_text.done", **where, text=transcript))
            part = {"type": "text", "text": transcript}
            content = {"type": "output_text", "text": transcript}
        await self._send(server_event("response.content_part.done", **where, part=part))
        item = protocol.assistant_item(
            response.item_id, "completed" if status == "completed" else "incomplete", [content]
        )
        await self._send(
            server_event(
                "response.output_item.done", response_id=response.response_id, output_index=0, item=item
            )
        )
        audio_tokens = protocol.audio_tokens(response.audio_bytes, plan.output_format.bytes_per_second)
        if plan.in_conversation:
            self._replace_item(item)
            self._audio_tokens_by_item[item["id"]] = audio_tokens
            previous_item_id = self._previous_item_id(item["id"])
            await self._send(
                server_event("conversation.item.done", previous_item_id=previous_item_id, item=item)
            )
        output_text = protocol.text_tokens(transcript)
        self._tokens_used += output_text + audio_tokens
        usage = protocol.usage(*plan.input_tokens, output_text, audio_tokens)
        done = protocol.response_object(
            response.response_id,
            conversation_id=plan.conversation_id,
            status=status,
            settings=plan.settings,
            output=[item],
            status_details=details,
            usage=usage,
        )
        await self._send(server_event("response.done", response=done))
        self.record.response_status = status
        self.record.usage = usage

    def _replace_item(self, item: dict[str, Any]) -> None:
        ids = [existing.get("id") for existing in self._items]
        self._items[ids.index(item["id"])] = item
        self._note_items()

    def _note_items(self) -> None:
        self.record.items = [_item_summary(item) for item in self._items]

    def _previous_item_id(self, item_id: str) -> str | None:
        ids = [item.get("id") for item in self._items]
        position = ids.index(item_id)
        return ids[position - 1] if position else None

    def _drop_connection(self) -> None:
        """Close the TCP connection without a WebSocket close frame (what was sent still arrives)."""
        self._dropped = True
        self._close_tcp()


def _directive(text: str, param: str) -> Scenario | None:
    """The scenario a directive in ``text`` selects; a malformed one is the client's error at ``param``."""
    try:
        return find_directive(text)
    except ScenarioError as error:
        raise RequestError("invalid_emulator_directive", str(error), param) from None


async def _wait_until(cancel: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if the response is cancelled meanwhile."""
    if delay <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cancel.wait(), delay)


def _refuse_assistant_audio(item: dict[str, Any]) -> None:
    """As the service does: an assistant message's parts must carry text; audio cannot be replayed."""
    if item.get("role") != "assistant":
        return
    for index, part in enumerate(item["content"]):
        if part.get("type") == "output_audio":
            param = f"item.content[{index}].text"
            raise RequestError("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def _item_summary(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the sessions route shows it: audio as its length and digest, not its bytes."""
    content = []
    for part in item.get("content", []):
        shown = {name: value for name, value in part.items() if name != "audio"}
        if isinstance(part.get("audio"), str):
            audio = base64.b64decode(part["audio"])
            shown.update(audio_bytes=len(audio), audio_sha256=hashlib.sha256(audio).hexdigest())
        content.append(shown)
    return {"id": item.get("id"), "type": item.get("type"), "role": item.get("role"), "content": content}


def _message_text(item: dict[str, Any]) -> str:
    return "\n".join(
        part.get("text") or part.get("transcript") or ""
        for part in item.get("content", [])
        if isinstance(part, dict)
    )
