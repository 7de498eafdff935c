"""`make demo`: start the local stand-ins and the dev host, ask for one spoken answer, keep the WAV.

Prints the transcript and the SAS URL, saves the WAV under `out/` and prints its duration, then
stops everything it started. Real speech when `espeak-ng` is installed, synthetic tones otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import ssl
import sys
import wave
from pathlib import Path

import aiohttp

from devtools.stack import start_stack

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_TEXT = "Please assist the user."


async def ask(host_url: str, text: str, ca_file: Path) -> tuple[dict, bytes]:
    """POST the text to the function, then download the WAV through the returned SAS URL."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(f"{host_url}/api/speech", json={"text": text}) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                sys.exit(f"/api/speech answered {response.status}: {json.dumps(body, indent=2)}")
        tls = ssl.create_default_context(cafile=str(ca_file))
        async with http.get(body["audio_url"], ssl=tls) as download:
            download.raise_for_status()
            return body, await download.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", default=QUICKSTART_TEXT, help="what to ask (default: the quickstart's)")
    parser.add_argument("--port", type=int, default=7071, help="dev host port (default 7071)")
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="where to save the WAV")
    args = parser.parse_args()

    speech = ["--speech", "espeak"] if shutil.which("espeak-ng") else []
    with start_stack(ROOT / ".devstate", emulator_args=speech) as stack:
        host = stack.start_host(port=args.port)
        print(f"Function host at {host.url} (stand-ins: model emulator, identity endpoint, Azurite)")
        result, audio = asyncio.run(ask(host.url, args.text, stack.ca_file))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / Path(result["blob_name"]).name
    path.write_bytes(audio)
    with wave.open(io.BytesIO(audio)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    print(f"Transcript: {result['transcript']}")
    print(f"Audio URL:  {result['audio_url']}")
    print(f"Expires at: {result['expires_at']}")
    print(f"Saved:      {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"Duration:   {seconds:.2f} s ({len(audio)} bytes, {'speech' if speech else 'tones'})")


if __name__ == "__main__":
    main()
