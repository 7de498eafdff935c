"""The OpenAI-compatible surface: `POST /api/v1/chat/completions` (audio answers, multi-turn) and
`GET /api/v1/models`. The shapes are `openai_chat`'s; what is shared with `/api/speech` is `edge`'s.

A non-streamed answer's body is written while `message.audio.data` is read from the stored file and
encoded piece by piece, so a long answer costs no more memory than a short one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse

from . import openai_chat
from .edge import (
    REQUEST_ID_HEADER,
    EventStream,
    Held,
    Outcome,
    is_json,
    read_body_within,
    request_id,
    respond,
    retry_after_seconds,
    speech_service,
)
from .errors import ServiceError, UnsupportedMediaType
from .models import SpeechResult
from .openai_chat import Base64Pieces, ChatRequest, ChunkStream
from .service import SpeechService, audio_id
from .storage import AudioStore

COMPLETIONS_ROUTE = "/api/v1/chat/completions"


async def chat_completions(req: Request) -> Response:
    """`POST /api/v1/chat/completions`: a conversation in, its spoken answer out as a
    `chat.completion`, or as `chat.completion.chunk` events with `stream: true`."""
    outcome = Outcome.start(req, COMPLETIONS_ROUTE, surface="chat")

    async def handle(held: Held) -> Response:
        if not is_json(req.headers.get("content-type")):
            raise UnsupportedMediaType("The content type must be application/json.")
        service = await speech_service()
        settings = service.settings
        held.slot = service.sessions.acquire()  # before any of the body is read
        deadline = asyncio.get_running_loop().time() + settings.realtime_timeout_seconds
        limit = openai_chat.body_limit(settings.audio_input_max_bytes)
        body = await read_body_within(req, limit, deadline, settings.realtime_timeout_seconds)
        chat = openai_chat.parse_chat_request(
            body, service.pool.deployments(), settings.audio_input_max_bytes
        )
        del body
        answering = await service.start(
            chat.question,
            outcome.request_id,
            outcome.timeline,
            events=chat.stream,
            audio_type=chat.audio_type,
            conversation=chat.conversation,
            deadline=deadline,
        )
        completion, created = openai_chat.completion_id(), openai_chat.now()
        if chat.stream:
            chunks = ChunkStream(chat, completion, created, audio_id)
            # it records the outcome and frees the slot when the stream ends
            return EventStream(answering, outcome, chunks, slot=held.hand_over())
        result = await answering.result()
        body_parts = await _completion_body(service.store, chat, completion, created, result)
        outcome.record(200, result=result)
        headers = {REQUEST_ID_HEADER: outcome.request_id}
        return StreamingResponse(body_parts, media_type="application/json", headers=headers)

    return await respond(outcome, error_response, handle)


async def _completion_body(
    store: AudioStore, chat: ChatRequest, completion: str, created: int, result: SpeechResult
) -> AsyncIterator[bytes]:
    """The `chat.completion` as it is written: its JSON around `data`, which is the stored file read
    and encoded piece by piece. The file is opened before the response starts (a storage failure is
    still an error status)."""
    before, after = openai_chat.completion_parts(
        chat, completion, created, audio_id(result.blob_name), result
    )
    pieces = store.read(result.blob_name, openai_chat.data_offset(chat.format))
    first = await anext(pieces, b"")

    async def body() -> AsyncIterator[bytes]:
        encoder = Base64Pieces()
        yield before + encoder.feed(first).encode()
        async for piece in pieces:
            yield encoder.feed(piece).encode()
        yield encoder.end().encode() + after

    return body()


async def models(req: Request) -> Response:
    """`GET /api/v1/models`: one model per deployment of the backend pool."""
    rid = request_id(req.headers)
    try:
        service: SpeechService = await speech_service()
    except ServiceError as exc:
        return error_response(exc, rid)
    data = [
        {"id": deployment, "object": "model", "created": service.started, "owned_by": "azure-openai"}
        for deployment in service.pool.deployments()
    ]
    return JSONResponse({"object": "list", "data": data}, headers={REQUEST_ID_HEADER: rid})


def error_response(error: ServiceError, rid: str) -> Response:
    """OpenAI's error body with our status; `x-should-retry` tells the SDKs whether a retry can help,
    `Retry-After` and `retry-after-ms` how long to wait."""
    headers = {REQUEST_ID_HEADER: rid, "x-should-retry": str(openai_chat.should_retry(error)).lower()}
    retry_after = retry_after_seconds(error)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
        headers["retry-after-ms"] = str(retry_after * 1000)
    return JSONResponse(openai_chat.error_body(error), status_code=error.status, headers=headers)
