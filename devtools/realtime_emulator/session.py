"""One realtime connection: client events in, server events out, scripted by a scenario."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import protocol
from .planning import Plan, ResponseRequest, audio_chunks, plan_response
from .protocol import new_id, server_event
from .scenarios import Scenario, ScenarioError, find_directive
from .speech import BYTES_PER_SECOND, Engine, synthesize
from .validation import RequestError, client_event

log = logging.getLogger(__name__)

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
    last user message as sent (directives included); ``transcript``, ``audio_bytes``,
    ``audio_sha256``, ``response_id`` and ``response_status`` describe the last response, its status
    staying ``in_progress`` when it never got a ``response.done``. ``ended_by`` is None while open,
    then ``client_close``, ``connection_lost`` (no close frame from the client), ``emulator_drop``
    or ``emulator_shutdown``.
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
    response_id: str | None = None
    response_status: str | None = None
    ended_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """What a response has sent so far."""

    transcript: list[str] = field(default_factory=list)
    audio_bytes: int = 0
    cancelled: bool = False

    @property
    def text(self) -> str:
        return "".join(self.transcript)


@dataclass
class ActiveResponse:
    response_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._tokens_used = 0
        self._input_audio_bytes = 0
        self._audio_produced = False
        self._active: ActiveResponse | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = False
        self.shutting_down = False

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
            self.record.ended_by = self._ending()

    def _ending(self) -> str:
        if self._dropped:
            return "emulator_drop"
        if self.shutting_down:
            return "emulator_shutdown"
        if self.ws.close_code in (None, 1006):
            return "connection_lost"
        return "client_close"

    async def _send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def _send_error(self, error: RequestError, client_event_id: str | None = None) -> None:
        self.record.error_codes.append(error.code)
        await self._send(protocol.error_event(error, client_event_id))

    async def _handle(self, data: str) -> None:
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

    async def _update_session(self, event: dict[str, Any]) -> None:
        update = event["session"]
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self._voice() and self._audio_produced:
            raise RequestError(
                "cannot_update_voice", "Cannot update a conversation's voice if assistant audio is present."
            )
        self._session = protocol.merge_session(self._session, update)
        self.record.session = self._session
        await self._send(server_event("session.updated", session=self._session))

    def _voice(self) -> str:
        return self._session["audio"]["output"]["voice"]

    async def _create_item(self, event: dict[str, Any]) -> None:
        item = {"id": new_id("item"), **copy.deepcopy(event["item"])}
        if item.get("type") == "message":
            item.update(object="realtime.item", status="completed")
            if item["role"] == "user":
                self._apply_directive(item)
                self.record.user_text = _message_text(item)
        previous_item_id = self._items[-1]["id"] if self._items else None
        self._items.append(item)
        await self._send(
            server_event("conversation.item.added", previous_item_id=previous_item_id, item=item)
        )
        await self._send(server_event("conversation.item.done", previous_item_id=previous_item_id, item=item))

    def _apply_directive(self, item: dict[str, Any]) -> None:
        for index, part in enumerate(item["content"]):
            try:
                scenario = find_directive(part.get("text") or "")
            except ScenarioError as error:
                raise RequestError(
                    "invalid_emulator_directive", str(error), f"item.content[{index}].text"
                ) from None
            if scenario is not None:
                self._scenario = scenario
                self.record.scenario = scenario.name
                self.record.scenario_params = scenario.params()

    async def _create_response(self, event: dict[str, Any]) -> None:
        if self._active is not None:
            raise RequestError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.response_id}. "
                "Wait until the response is finished before creating a new one.",
            )
        if self._scenario.name == "rate_limit":
            raise RequestError("rate_limit_exceeded", RATE_LIMIT_MESSAGE, type_="tokens")
        request = self._request(event.get("response", {}))
        self._active = ActiveResponse(new_id("resp"))
        task = asyncio.create_task(self._respond(request, self._active))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_response(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted is not None and wanted != self._active.response_id):
            raise RequestError("response_cancel_not_active", "Cancellation failed: no active response found.")
        self._active.cancel.set()

    async def _append_input_audio(self, event: dict[str, Any]) -> None:
        try:
            self._input_audio_bytes += len(base64.b64decode(event["audio"], validate=True))
        except binascii.Error:
            raise RequestError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio"
            ) from None

    async def _clear_input_audio(self, event: dict[str, Any]) -> None:
        self._input_audio_bytes = 0
        await self._send(server_event("input_audio_buffer.cleared"))

    async def _commit_input_audio(self, event: dict[str, Any]) -> None:
        if self._input_audio_bytes < BYTES_PER_SECOND // 10:
            milliseconds = self._input_audio_bytes / BYTES_PER_SECOND * 1000
            raise RequestError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {milliseconds:.2f}ms of audio.",
            )
        raise RequestError(
            "unsupported_by_emulator", "The realtime emulator does not understand input audio."
        )

    def _request(self, params: dict[str, Any]) -> ResponseRequest:
        """The response asked for: the session's settings with the response's overrides."""
        output = self._session["audio"]["output"]
        params_output = params.get("audio", {}).get("output", {})
        settings = {
            "output_modalities": params.get("output_modalities", self._session["output_modalities"]),
            "max_output_tokens": params.get("max_output_tokens", self._session["max_output_tokens"]),
            "voice": params_output.get("voice", output["voice"]),
            "format": params_output.get("format", output["format"]),
            "metadata": params.get("metadata"),
        }
        in_conversation = params.get("conversation", "auto") != "none"
        items = params.get("input", self._items if in_conversation else [])
        instructions = params.get("instructions", self._session["instructions"])
        return ResponseRequest(
            user_text=next((_message_text(i) for i in reversed(items) if i.get("role") == "user"), ""),
            scenario=self._scenario,
            settings=settings,
            speed=output["speed"],
            input_tokens=self._input_tokens(instructions, items),
            conversation_id=self._conversation_id if in_conversation else None,
        )

    def _input_tokens(self, instructions: str, items: list[dict[str, Any]]) -> tuple[int, int]:
        text = protocol.text_tokens(instructions)
        audio = 0
        for item in items:
            text += protocol.TOKENS_PER_ITEM + protocol.text_tokens(_message_text(item))
            audio += self._audio_tokens_by_item.get(item["id"], 0) if "id" in item else 0
        return text, audio

    async def _respond(self, request: ResponseRequest, active: ActiveResponse) -> None:
        try:
            speech = await asyncio.to_thread(
                synthesize,
                request.user_text,
                request.settings["voice"],
                seconds=request.scenario.seconds,
                speed=request.speed,
                engine=self._engine,
            )
            await self._stream_response(plan_response(request, speech), active)
        except ConnectionResetError:
            log.info("session %s: connection closed during a response", self.record.session_id)
        finally:
            if self._active is active:
                self._active = None

    async def _stream_response(self, plan: Plan, active: ActiveResponse) -> None:
        where = await self._open_response(plan, active.response_id)
        progress = Progress()
        await self._stream_content(plan, active, where, progress)
        self._record_progress(plan, progress)
        await self._end_response(plan, active, where, progress)

    async def _open_response(self, plan: Plan, response_id: str) -> dict[str, Any]:
        """The events that open a response, up to its content part; returns the part's address."""
        self.record.response_id = response_id
        self.record.response_status = "in_progress"
        self._record_progress(plan, Progress())
        response = protocol.response_object(
            response_id, conversation_id=plan.conversation_id, status="in_progress", settings=plan.settings
        )
        await self._send(server_event("response.created", response=response))
        self._tokens_used += sum(plan.input_tokens)
        await self._send(
            server_event("rate_limits.updated", rate_limits=protocol.rate_limits(self._tokens_used))
        )
        item = protocol.assistant_item(new_id("item"), "in_progress", [])
        await self._send(
            server_event("response.output_item.added", response_id=response_id, output_index=0, item=item)
        )
        if plan.in_conversation:
            previous_item_id = self._items[-1]["id"] if self._items else None
            self._items.append(item)
            await self._send(
                server_event("conversation.item.added", previous_item_id=previous_item_id, item=item)
            )
        part = {"type": "audio", "transcript": ""} if plan.audio else {"type": "text", "text": ""}
        where = {"response_id": response_id, "item_id": item["id"], "output_index": 0, "content_index": 0}
        await self._send(server_event("response.content_part.added", **where, part=part))
        return where

    async def _end_response(
        self, plan: Plan, active: ActiveResponse, where: dict[str, Any], progress: Progress
    ) -> None:
        """End the response as the scenario says: one of the misbehaviours, or ``response.done``."""
        name = "cancelled_by_client" if progress.cancelled else plan.scenario.name
        if name == "error_mid":
            message = SERVER_ERROR_MESSAGE.format(session_id=self.record.session_id)
            await self._send_error(RequestError(None, message, type_="server_error"))
            return
        if name == "drop":
            self._drop_connection()
            return
        if name == "stall":
            await active.cancel.wait()
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
        await self._finish(plan, where, progress, status, details)

    async def _stream_content(
        self, plan: Plan, active: ActiveResponse, where: dict[str, Any], progress: Progress
    ) -> None:
        """Send transcript and audio deltas up to the plan's limit, paced if the scenario says so."""
        delta_type = "response.output_audio_transcript.delta" if plan.audio else "response.output_text.delta"
        marks = iter(mark for mark in plan.speech.marks if mark[0] < plan.limit)
        pending = next(marks, None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for start, end in audio_chunks(plan.limit):
            while pending is not None and pending[0] < end:
                await self._send(server_event(delta_type, **where, delta=pending[1]))
                progress.transcript.append(pending[1])
                pending = next(marks, None)
            if plan.scenario.pace is not None:
                due = started + end / BYTES_PER_SECOND / plan.scenario.pace
                await _wait_until(active.cancel, due - loop.time())
            if active.cancel.is_set():
                progress.cancelled = True
                return
            if plan.audio:
                chunk = plan.speech.pcm[start:end]
                await self._send(
                    server_event(
                        "response.output_audio.delta", **where, delta=base64.b64encode(chunk).decode()
                    )
                )
                progress.audio_bytes += len(chunk)
                self._audio_produced = True
            await asyncio.sleep(0)

    def _record_progress(self, plan: Plan, progress: Progress) -> None:
        self.record.transcript = progress.text
        self.record.audio_bytes = progress.audio_bytes
        self.record.audio_sha256 = hashlib.sha256(plan.speech.pcm[: progress.audio_bytes]).hexdigest()

    async def _finish(
        self,
        plan: Plan,
        where: dict[str, Any],
        progress: Progress,
        status: str,
        details: dict[str, Any] | None,
    ) -> None:
        """The closing events of a response that ends with ``response.done``."""
        transcript = progress.text
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
            where["item_id"], "completed" if status == "completed" else "incomplete", [content]
        )
        await self._send(
            server_event(
                "response.output_item.done", response_id=where["response_id"], output_index=0, item=item
            )
        )
        if plan.in_conversation:
            self._replace_item(item)
            self._audio_tokens_by_item[item["id"]] = protocol.audio_tokens(progress.audio_bytes)
            previous_item_id = self._previous_item_id(item["id"])
            await self._send(
                server_event("conversation.item.done", previous_item_id=previous_item_id, item=item)
            )
        output_text, output_audio = (
            protocol.text_tokens(transcript),
            protocol.audio_tokens(progress.audio_bytes),
        )
        self._tokens_used += output_text + output_audio
        response = protocol.response_object(
            where["response_id"],
            conversation_id=plan.conversation_id,
            status=status,
            settings=plan.settings,
            output=[item],
            status_details=details,
            usage=protocol.usage(*plan.input_tokens, output_text, output_audio),
        )
        await self._send(server_event("response.done", response=response))
        self.record.response_status = status

    def _replace_item(self, item: dict[str, Any]) -> None:
        ids = [existing.get("id") for existing in self._items]
        self._items[ids.index(item["id"])] = item

    def _previous_item_id(self, item_id: str) -> str | None:
        ids = [item.get("id") for item in self._items]
        position = ids.index(item_id)
        return ids[position - 1] if position else None

    def _drop_connection(self) -> None:
        """Close the TCP connection without a WebSocket close frame (what was sent still arrives)."""
        self._dropped = True
        self._close_tcp()


async def _wait_until(cancel: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if the response is cancelled meanwhile."""
    if delay <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cancel.wait(), delay)


def _message_text(item: dict[str, Any]) -> str:
    return "\n".join(
        part.get("text") or part.get("transcript") or ""
        for part in item.get("content", [])
        if isinstance(part, dict)
    )
