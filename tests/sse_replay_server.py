"""A small local stand-in for the streaming speech function, for working on the playground page.

    python -m tests.sse_replay_server [--port 7072] [--pace 0.02]

Serves `realtime_speech/playground.html` at `GET /api/playground` and answers `POST /api/speech`
with a synthetic Server-Sent Events stream that follows the function's event contract
(`speech.started`, `speech.audio.delta`, `speech.transcript.delta`, `speech.done`, `error`), written
the awkward ways the standard allows so the page's parser is exercised: odd-sized audio deltas,
events split across writes (mid line, mid UTF-8 character, between CR and LF), CRLF, LF and CR line
ends, a `data` field over two lines, `id`/`retry` fields and `: keep-alive` comments. The audio is a
sine tone; the WAV it makes is served at the `audio_url` of `speech.done`.

Requests pick what happens through the text:
- blank text: `400` problem document before the stream;
- `[[replay:busy]]`: `429` problem document with `Retry-After`;
- `[[replay:error]]`: an `error` event after some audio, then the end of the stream;
- `[[replay:cut]]`: the stream ends after some audio, without `speech.done`.

`GET /_replay/requests` lists what each `POST /api/speech` sent (headers of interest and body), for
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

from realtime_speech.errors import PROBLEM_TYPE_BASE
from realtime_speech.wav import PCM16_24KHZ_MONO, WAV_HEADER_BYTES, wav_header

PAGE = Path(__file__).resolve().parents[1] / "realtime_speech" / "playground.html"
TRANSCRIPT = "Hello from the replay server \u2014 caf\u00e9 \u2615, streamed in pieces."
TONE_HZ = 440.0
TONE_SECONDS = 0.6
AMPLITUDE = 0.3 * 32767
# Odd sizes, so deltas end mid-sample and the page must carry the odd byte over.
DELTA_SIZES = (4801, 3999, 6001, 1, 2047, 7777)
SPLIT_FROM_ERROR = 2  # deltas sent before a scripted failure
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


def event(kind: str, data: dict[str, Any], line_end: str = "\n") -> bytes:
    body = json.dumps({"type": kind, **data}, ensure_ascii=False)
    return f"event: {kind}{line_end}data: {body}{line_end}{line_end}".encode()


def split_at(data: bytes, *positions: int) -> list[Piece]:
    """`data` as several writes, cut at `positions` (negative ones count from the end)."""
    cuts = sorted(p % len(data) for p in positions)
    return [Piece(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def problem(status: int, code: str, title: str, detail: str, request_id: str) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }


def problem_response(body: dict[str, Any], **headers: str) -> web.Response:
    return web.json_response(
        body, status=body["status"], content_type="application/problem+json", headers=headers
    )


def stream_pieces(request_id: str, text: str, audio_url: str, pcm: bytes) -> Iterator[Piece]:
    """The whole answer, event by event, written in the awkward ways SSE allows."""
    yield Piece(b": keep-alive\n\n", pause=False)
    yield Piece(b"retry: 3000\nid: 1\n\n", pause=False)  # fields the page must ignore; dispatches nothing
    started = event(
        "speech.started",
        {
            "request_id": request_id,
            "blob_name": blob_name(request_id),
            "format": "wav",
            "encoding": "pcm_s16le",
            "sample_rate": PCM16_24KHZ_MONO.sample_rate,
            "channels": PCM16_24KHZ_MONO.channels,
            "bits_per_sample": PCM16_24KHZ_MONO.bits_per_sample,
        },
        "\r\n",
    )
    yield from split_at(started, 9, -1)  # mid field name; between the final CR and LF
    words = TRANSCRIPT.split(" ")
    deltas = list(odd_deltas(pcm))
    for index, delta in enumerate(deltas):
        if index == SPLIT_FROM_ERROR and "[[replay:error]]" in text:
            detail = "The model stopped answering (scripted by the replay server)."
            failure = problem(502, "upstream-failed", "The model endpoint failed", detail, request_id)
            yield Piece(event("error", {"error": failure}))
            return
        if index == SPLIT_FROM_ERROR and "[[replay:cut]]" in text:
            return
        if index < len(words):
            yield from transcript_delta(("" if index == 0 else " ") + words[index], index)
        audio = event("speech.audio.delta", {"audio": base64.b64encode(delta).decode()})
        yield from split_at(audio, len(audio) // 2) if index % 2 else [Piece(audio)]
        if index == 2:
            yield Piece(b": keep-alive\n\n")
    if len(words) > len(deltas):
        yield from transcript_delta(" " + " ".join(words[len(deltas) :]), len(deltas))
    yield Piece(event("speech.done", done_body(request_id, audio_url, pcm), "\r"))


def transcript_delta(delta: str, index: int) -> list[Piece]:
    if index == 1:  # a data field over two lines: JSON allows the line break between members
        body = json.dumps({"type": "speech.transcript.delta", "delta": delta}).replace(", ", ",\ndata: ")
        return [Piece(f"event: speech.transcript.delta\ndata: {body}\n\n".encode())]
    encoded = event("speech.transcript.delta", {"delta": delta})
    multibyte = next((i for i, byte in enumerate(encoded) if byte >= 0x80), None)
    return split_at(encoded, multibyte + 1) if multibyte is not None else [Piece(encoded)]


def blob_name(request_id: str) -> str:
    return f"{datetime.now(UTC):%Y/%m/%d}/{request_id}.wav"


def done_body(request_id: str, audio_url: str, pcm: bytes) -> dict[str, Any]:
    fmt = PCM16_24KHZ_MONO
    return {
        "request_id": request_id,
        "transcript": TRANSCRIPT,
        "audio_url": audio_url,
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "container": "audio",
        "blob_name": blob_name(request_id),
        "audio": {
            "format": "wav",
            "encoding": "pcm_s16le",
            "sample_rate": fmt.sample_rate,
            "channels": fmt.channels,
            "bits_per_sample": fmt.bits_per_sample,
            "duration_seconds": round(fmt.duration_seconds(len(pcm)), 3),
            "bytes": WAV_HEADER_BYTES + len(pcm),
        },
        "voice": "alloy",
        "status": "completed",
        "status_reason": None,
    }


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


async def speech(request: web.Request) -> web.StreamResponse:
    request_id = uuid4().hex
    raw = await request.read()
    request.app[REQUESTS].append(
        {"headers": {name: request.headers.get(name) for name in RECORDED_HEADERS}, "body": raw.decode()}
    )
    try:
        text = json.loads(raw)["text"]
    except (ValueError, KeyError, TypeError):
        text = None
    if not isinstance(text, str) or not text.strip():
        detail = "text: must not be blank"
        return problem_response(
            problem(400, "invalid-request", "The request is not valid", detail, request_id)
        )
    if "[[replay:busy]]" in text:
        detail = "The model endpoint is rate limited (scripted by the replay server)."
        body = problem(429, "upstream-rate-limited", "The model endpoint is busy", detail, request_id)
        return problem_response(body, **{"Retry-After": "7"})

    pcm = tone_pcm()
    request.app[WAVS][request_id] = wav_header(len(pcm)) + pcm
    audio_url = str(request.url.with_path(f"/audio/{request_id}.wav").with_query({"sp": "r"}))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-request-id": request_id}
    )
    await response.prepare(request)
    for piece in stream_pieces(request_id, text, audio_url, pcm):
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
    app.router.add_post("/api/speech", speech)
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
