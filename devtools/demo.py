"""`make demo`: start the local stand-ins and the dev host, ask a text question, then ask the answer's
own WAV back as a spoken question; keep both answers under `out/`.

Prints each question and answer (for the spoken one, what was heard), the first answer's SAS URL and
the saved files, then stops everything it started. `make demo ARGS="--format mp3"` asks the spoken
question's answer as MP3, saved next to the first answer's WAV. The model emulator speaks in tones
that it can hear again, so the spoken question is heard as the first answer's words;
`--speech espeak` makes it speak real words with espeak-ng (then it hears only unrecognised audio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from devtools.stack import start_stack
from realtime_speech.logs import redact

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_TEXT = "Please assist the user."
FORMATS = ("wav", "wav-mulaw", "wav-alaw", "mp3")


@dataclass(frozen=True)
class Answer:
    result: dict[str, Any]
    audio: bytes


async def ask(
    http: aiohttp.ClientSession, host_url: str, ca_file: Path, body: bytes, content_type: str, **query: str
) -> Answer:
    """POST one question to the function, then download its answer through the returned SAS URL."""
    headers = {"Content-Type": content_type}
    async with http.post(f"{host_url}/api/speech", data=body, headers=headers, params=query) as response:
        result = await response.json(content_type=None)
        if response.status != 200:
            sys.exit(f"/api/speech answered {response.status}: {json.dumps(result, indent=2)}")
    async with http.get(result["audio_url"], ssl=ssl.create_default_context(cafile=str(ca_file))) as download:
        download.raise_for_status()
        return Answer(result, await download.read())


async def converse(host_url: str, ca_file: Path, text: str, output_format: str) -> tuple[Answer, Answer]:
    """The text question's answer (a WAV), and the answer to that WAV sent back as a raw audio body."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        first = await ask(http, host_url, ca_file, json.dumps({"text": text}).encode(), "application/json")
        second = await ask(http, host_url, ca_file, first.audio, "audio/wav", format=output_format)
        return first, second


def save(answer: Answer, out: Path) -> str:
    """Write the answer's audio under `out` (named as its blob); describe the file in a few words."""
    path = out / Path(answer.result["blob_name"]).name
    path.write_bytes(answer.audio)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"{shown} ({answer.result['audio']['duration_seconds']:.2f} s, {len(answer.audio)} bytes)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", default=QUICKSTART_TEXT, help="what to ask (default: the quickstart's)")
    parser.add_argument(
        "--format", choices=FORMATS, default="wav", help="the spoken question's answer format"
    )
    parser.add_argument(
        "--speech",
        choices=("espeak", "tones"),
        default="tones",
        help="how the model emulator speaks (default: tones, which it also hears)",
    )
    parser.add_argument("--port", type=int, default=7071, help="dev host port (default 7071)")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where to save the answers")
    args = parser.parse_args()

    with start_stack(ROOT / ".devstate", emulator_args=["--speech", args.speech]) as stack:
        host = stack.start_host(port=args.port)
        stand_ins = f"model emulator speaking {args.speech}, identity endpoint, Azurite"
        print(f"Function host at {host.url} (stand-ins: {stand_ins})")
        first, second = asyncio.run(converse(host.url, stack.ca_file, args.text, args.format))

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"\nText question:   {args.text}")
    print(f"  Answer:        {first.result['transcript']}")
    print(f"  Saved:         {save(first, args.out)}")
    print(f"  Audio URL:     {redact(first.result['audio_url'])}  (signature withheld; the file is saved)")
    print(f"  Expires at:    {first.result['expires_at']}")
    print("\nSpoken question: the answer above, sent back as audio/wav")
    print(f"  Heard:         {second.result['input_transcript'] or second.result['input_transcript_reason']}")
    if args.speech == "espeak":
        print("                 (the emulator hears only its own tones: --speech tones hears the words)")
    print(f"  Answer:        {second.result['transcript']}")
    print(f"  Saved:         {save(second, args.out)}")


if __name__ == "__main__":
    main()
