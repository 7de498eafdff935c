"""A client of `POST /api/speech` in Server-Sent Events mode: prints the transcript while the answer is
spoken, writes the audio as it arrives, then prints the final result (`speech.done`, the JSON body).

    python docs/sse_client.py "What is the tallest mountain in Europe?" [--voice marin] \
        [--url http://localhost:7071/api/speech] [--format wav|wav-mulaw|wav-alaw|mp3] [--out FILE]

Against Azure, put the function key in `FUNCTION_KEY` (sent as `x-functions-key`). Needs `httpx` and
`httpx-sse`. `speech.audio.delta` carries the stored file's body bytes: MP3 frames for `mp3` (written
as they come, they are an MP3 file), the WAV's data chunk otherwise. PCM (`wav`) is written here into
a WAV with the facts of `speech.started`; G.711 samples are written raw (`answer.ulaw`, `answer.alaw`:
`ffplay -f mulaw -ar 8000 answer.ulaw`). The complete stored file is at `audio_url` once it is done.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import wave
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

SUFFIXES = {"wav": ".wav", "wav-mulaw": ".ulaw", "wav-alaw": ".alaw", "mp3": ".mp3"}  # of --out by default


@contextmanager
def audio_file(path: Path, started: dict[str, Any]) -> Iterator[Callable[[bytes], object]]:
    """Where the audio goes: a WAV writer for PCM, the bare file for MP3 frames or G.711 samples."""
    if started["encoding"] != "pcm_s16le":
        with path.open("wb") as file:
            yield file.write
        return
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(started["channels"])
        wav.setsampwidth(started["bits_per_sample"] // 8)
        wav.setframerate(started["sample_rate"])
        yield wav.writeframes


def ask(url: str, body: dict[str, Any], out: Path, key: str | None) -> int:
    headers = {"Accept": "text/event-stream", **({"x-functions-key": key} if key else {})}
    timeout = httpx.Timeout(10.0, read=30.0)  # the server sends a keep-alive every 10 s of silence
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=timeout))
        events = stack.enter_context(connect_sse(client, "POST", url, json=body, headers=headers))
        response = events.response
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()  # refused before the stream started: an RFC 9457 problem document
            print(f"HTTP {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        write: Callable[[bytes], object] | None = None  # an Idempotency-Key replay sends speech.done only
        for sse in events.iter_sse():
            event = sse.json()
            match event["type"]:
                case "speech.started":
                    write = stack.enter_context(audio_file(out, event))
                case "speech.input_transcript":
                    print(f"[heard] {event['transcript']}")
                case "speech.transcript.delta":
                    print(event["delta"], end="", flush=True)
                case "speech.audio.delta" if write is not None:
                    write(base64.b64decode(event["audio"]))
                case "speech.done":
                    summary = {name: event[name] for name in ("status", "audio", "audio_url", "backend")}
                    print(f"\n{json.dumps(summary, indent=2)}" + (f"\nsaved {out}" if write else ""))
                    return 0
                case "error":
                    print(f"\nerror: {json.dumps(event['error'])}", file=sys.stderr)
                    return 1
    print("\nthe stream ended before speech.done", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("text")
    parser.add_argument("--url", default="http://localhost:7071/api/speech")
    parser.add_argument("--format", choices=SUFFIXES, default="wav")
    parser.add_argument("--voice")
    parser.add_argument("--out", type=Path, help="default: answer.wav, .ulaw, .alaw or .mp3 by format")
    args = parser.parse_args()
    body = {"text": args.text, "format": args.format, **({"voice": args.voice} if args.voice else {})}
    out = args.out or Path(f"answer{SUFFIXES[args.format]}")
    return ask(args.url, body, out, os.environ.get("FUNCTION_KEY"))


if __name__ == "__main__":
    sys.exit(main())
