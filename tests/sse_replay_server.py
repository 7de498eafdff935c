"""A small local stand-in for the streaming chat completions function, for working on the playground.

    python -m tests.sse_replay_server [--port 7072] [--pace 0.02]

Serves `realtime_speech/playground.html` at `GET /api/playground`, one model at `GET /api/v1/models`,
and answers `POST /api/v1/chat/completions` with a synthetic stream of `chat.completion.chunk`s that
follows the function's contract (the audio id first, transcript and audio pieces, the stored file's
`expires_at` and `url`, `finish_reason`, `[DONE]`), written the awkward ways the standard allows so
the page's parser is exercised: odd-sized audio pieces, events split across writes (mid line, mid
UTF-8 character, between CR and LF), CRLF, LF and CR line ends, a `data` field over two lines,
`id`/`retry` fields and `: keep-alive` comments. The audio is a sine tone; the WAV it makes is served
at the answer's `url`.

Requests pick what happens through the last message's text:
- blank text: `400` OpenAI error before the stream;
- `[[replay:busy]]`: `429` OpenAI error with `Retry-After`;
- `[[replay:error]]`: an `error` event after some audio, then the end of the stream;
- `[[replay:cut]]`: the stream ends after some audio, without `[DONE]`.

`GET /_replay/requests` lists what each completion request sent (headers of interest and body), for
tests. Loopback only: this is a development tool.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from aiohttp import web

from realtime_speech.wav import PCM16_24KHZ_MONO, wav_header

PAGE = Path(__file__).resolve().parents[1] / "realtime_speech" / "playground.html"
TRANSCRIPT = "Hello from the replay server \u2014 caf\u00e9 \u2615, streamed in pieces."
TONE_HZ = 440.0
TONE_SECONDS = 0.6
AMPLITUDE = 0.3 * 32767
# Odd sizes, so deltas end mid-sample and the page must carry the odd byte over.
DELTA_SIZES = (4801, 3999, 6001, 1, 2047, 7777)
SPLIT_FROM_ERROR = 2  # deltas sent before a scripted failure
MODEL = "gpt-realtime"
AUDIO_ID = "audio_replay"
RECORDED_HEADERS = ("content-type", "accept", "x-functions-key")

REQUESTS = web.AppKey("requests", list)
WAVS = web.AppKey("wavs", dict)
PACE = web.AppKey("pace", float)


@dataclass(frozen=True)
class Piece:
    """Bytes to write, then how long to wait before the next piece."""

    data: bytes
    pause: bool = True


def tone_pcm(seconds: float = TONE_SECONDS) -> bytes:
    """PCM16 LE mono at 24 kHz: a sine tone with short fades, so it does not click."""
    rate = PCM16_24KHZ_MONO.sample_rate
    count = round(seconds * rate)
    fade = rate // 100
    samples = array(
        "h",
        (
            round(
                AMPLITUDE
                * min(1.0, i / fade, (count - i) / fade)
                * math.sin(2 * math.pi * TONE_HZ * i / rate)
            )
            for i in range(count)
        ),
    )
    return samples.tobytes()


def odd_deltas(pcm: bytes) -> Iterator[bytes]:
    offset, index = 0, 0
    while offset < len(pcm):
        size = DELTA_SIZES[index % len(DELTA_SIZES)]
        yield pcm[offset : offset + size]
        offset, index = offset + size, index + 1


def frame(data: dict[str, Any] | str, line_end: str = "\n") -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}{line_end}{line_end}".encode()


def chunk(completion_id: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(datetime.now(UTC).timestamp()),
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def split_at(data: bytes, *positions: int) -> list[Piece]:
    """`data` as several writes, cut at `positions` (negative ones count from the end)."""
    cuts = sorted(p % len(data) for p in positions)
    return [Piece(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def openai_error(status: int, message: str, kind: str, param: str | None, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"x-request-id": uuid4().hex}
    if status == 429:
        headers["Retry-After"] = "7"
    return web.json_response(body, status=status, headers=headers)


def stream_pieces(completion_id: str, text: str, audio_url: str, pcm: bytes) -> Iterator[Piece]:
    """The whole answer, chunk by chunk, written in the awkward ways SSE allows."""
    yield Piece(b": keep-alive\n\n", pause=False)
    yield Piece(b"retry: 3000\nid: 1\n\n", pause=False)  # fields the page must ignore; dispatches nothing
    first = frame(
        chunk(completion_id, {"role": "assistant", "content": None, "audio": {"id": AUDIO_ID}}), "\r\n"
    )
    yield from split_at(first, 3, -1)  # mid field name; between the final CR and LF
    words = TRANSCRIPT.split(" ")
    deltas = list(odd_deltas(pcm))
    for index, delta in enumerate(deltas):
        if index == SPLIT_FROM_ERROR and "[[replay:error]]" in text:
            failure = {
                "message": "The model stopped answering (scripted by the replay server).",
                "type": "server_error",
                "param": None,
                "code": "upstream_failed",
            }
            yield Piece(frame({"error": failure}))
            return
        if index == SPLIT_FROM_ERROR and "[[replay:cut]]" in text:
            return
        if index < len(words):
            yield from transcript_delta(completion_id, ("" if index == 0 else " ") + words[index], index)
        audio = frame(chunk(completion_id, {"audio": {"data": base64.b64encode(delta).decode()}}))
        yield from split_at(audio, len(audio) // 2) if index % 2 else [Piece(audio)]
        if index == 2:
            yield Piece(b": keep-alive\n\n")
    if len(words) > len(deltas):
        yield from transcript_delta(completion_id, " " + " ".join(words[len(deltas) :]), len(deltas))
    expires_at = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    yield Piece(frame(chunk(completion_id, {"audio": {"expires_at": expires_at, "url": audio_url}}), "\r"))
    yield Piece(frame(chunk(completion_id, {}, "stop")))
    yield Piece(frame("[DONE]"))


def transcript_delta(completion_id: str, delta: str, index: int) -> list[Piece]:
    body = json.dumps(chunk(completion_id, {"audio": {"transcript": delta}}), ensure_ascii=False)
    if index == 1:  # a data field over two lines: JSON allows the line break between members
        return [Piece(("data: " + body.replace(", ", ",\ndata: ") + "\n\n").encode())]
    encoded = frame(body)
    multibyte = next((i for i, byte in enumerate(encoded) if byte >= 0x80), None)
    return split_at(encoded, multibyte + 1) if multibyte is not None else [Piece(encoded)]


async def playground(request: web.Request) -> web.Response:
    return web.Response(
        body=PAGE.read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "frame-ancestors 'none'",
        },
    )


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "replay"}]}
    )


async def completions(request: web.Request) -> web.StreamResponse:
    completion_id = f"chatcmpl-{uuid4().hex}"
    raw = await request.read()
    request.app[REQUESTS].append(
        {"headers": {name: request.headers.get(name) for name in RECORDED_HEADERS}, "body": raw.decode()}
    )
    try:
        content = json.loads(raw)["messages"][-1]["content"]
    except (ValueError, KeyError, TypeError, IndexError):
        content = None
    if not isinstance(content, str) or not content.strip():
        return openai_error(
            400,
            "messages[0].content: must not be blank",
            "invalid_request_error",
            "messages[0].content",
            "invalid_value",
        )
    if "[[replay:busy]]" in content:
        return openai_error(
            429,
            "The model endpoint is rate limited (scripted by the replay server).",
            "rate_limit_error",
            None,
            "upstream_rate_limited",
        )

    pcm = tone_pcm()
    request.app[WAVS][completion_id] = wav_header(len(pcm)) + pcm
    audio_url = str(request.url.with_path(f"/audio/{completion_id}.wav").with_query({"sp": "r"}))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-request-id": uuid4().hex,
        }
    )
    await response.prepare(request)
    for piece in stream_pieces(completion_id, content, audio_url, pcm):
        await response.write(piece.data)
        if piece.pause:
            await asyncio.sleep(request.app[PACE])
    await response.write_eof()
    return response


async def audio(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    wav = request.app[WAVS].get(request_id)
    if wav is None:
        raise web.HTTPNotFound()
    disposition = f'attachment; filename="speech-{request_id}.wav"'
    return web.Response(body=wav, content_type="audio/wav", headers={"Content-Disposition": disposition})


async def recorded_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[REQUESTS])


def create_app(pace: float) -> web.Application:
    app = web.Application()
    app[REQUESTS] = []
    app[WAVS] = {}
    app[PACE] = pace
    app.router.add_get("/api/playground", playground)
    app.router.add_get("/api/v1/models", models)
    app.router.add_post("/api/v1/chat/completions", completions)
    app.router.add_get("/audio/{request_id}.wav", audio)
    app.router.add_get("/_replay/requests", recorded_requests)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=7072)
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between writes")
    args = parser.parse_args(argv)
    web.run_app(create_app(args.pace), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
