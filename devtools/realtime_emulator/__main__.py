"""Command line: ``python -m devtools.realtime_emulator --port PORT [options]``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from pathlib import Path

from .scenarios import PARAMETERS, RESPONSE_SCENARIOS
from .speech import espeak_available


def _epilog() -> str:
    scenarios = "\n".join(f"  {name:<16} {summary}" for name, summary in RESPONSE_SCENARIOS.items())
    parameters = "\n".join(f"  {name:<16} {summary}" for name, summary in PARAMETERS.items())
    return f"""\
scenarios (per connection: ?scenario=NAME&key=value; per message or in the session's instructions:
[[emulator:NAME key=value ...]]):
{scenarios}
  handshake_400|401|403|404|429|500|503  refuse the handshake with that status (query only)

scenario parameters:
{parameters}

control routes on the same port:
  POST   /_emulator/handshake-faults  {{"status": 429, "count": N, "retry_after": S}}
  POST   /_emulator/scenario-faults   {{"scenario": "error_mid", "count": N}}
  GET|POST /_emulator/handshake-delay {{"ms": N}}: every handshake waits N ms before its answer
  GET|POST /_emulator/idle-timeout    {{"seconds": S}}: close sessions idle S seconds (null: never)
  GET    /_emulator/sessions          session records (no credentials)
  DELETE /_emulator/sessions
  GET    /_emulator/sessions/ID/input_audio  raw bytes of the last committed input audio (?item_id=)
  GET    /_emulator/quota             the limits, open sessions, admissions in the last minute
  POST   /_emulator/quota             {{"max_sessions": N, "requests_per_minute": M}} (null: no limit)
  GET    /_emulator/admissions        every handshake: time, outcome, status, reason, retry_after
  DELETE /_emulator/admissions        clear that log and the rolling minute
  GET    /_emulator/health
  GET    /_emulator/stats
"""


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.realtime_emulator",
        description="Emulator of the Azure OpenAI Realtime GA WebSocket protocol at /openai/v1/realtime.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True, help="plain listener port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--api-key", help="the key accepted as api-key header or Bearer value")
    parser.add_argument(
        "--token-public-key", type=Path, help="PEM public key verifying Entra-style RS256 tokens"
    )
    parser.add_argument("--tls-port", type=int, help="also serve wss:// on this port")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain for the TLS listener")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for the TLS listener")
    parser.add_argument("--speech", choices=("tones", "espeak"), default="tones", help="how answers sound")
    parser.add_argument(
        "--max-sessions", type=_count, help="refuse handshakes with 429 while this many sessions are open"
    )
    parser.add_argument(
        "--requests-per-minute",
        type=_count,
        help="refuse handshakes with 429 once this many were admitted in the rolling last minute",
    )
    parser.add_argument(
        "--handshake-delay-ms",
        type=_count,
        default=0,
        help="answer every handshake this much later (stands in for Azure's network and authentication)",
    )
    parser.add_argument(
        "--idle-timeout-seconds",
        type=_positive,
        help="close sessions that have had no client event (and no response under way) this long",
    )
    arguments = parser.parse_args(argv)
    if not _is_loopback(arguments.host):
        parser.error("--host must be a loopback IP address, such as 127.0.0.1")
    if arguments.tls_port is not None and not (arguments.tls_cert and arguments.tls_key):
        parser.error("--tls-port needs --tls-cert and --tls-key")
    return arguments


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    # The server imports the openai SDK's types (slow to load); --help and argument errors do not need it.
    from .quota import Quota
    from .server import EmulatorConfig, Listener, serve, tls_context

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if arguments.speech == "espeak" and not espeak_available():
        print("espeak-ng is not installed; answering with tones", file=sys.stderr, flush=True)
    config = EmulatorConfig(
        api_key=arguments.api_key,
        token_public_key=arguments.token_public_key.read_bytes() if arguments.token_public_key else None,
        engine=arguments.speech,
        quota=Quota(arguments.max_sessions, arguments.requests_per_minute),
        handshake_delay_ms=arguments.handshake_delay_ms,
        idle_timeout_seconds=arguments.idle_timeout_seconds,
    )
    listeners = [Listener(arguments.host, arguments.port)]
    if arguments.tls_port is not None:
        listeners.append(
            Listener(arguments.host, arguments.tls_port, tls_context(arguments.tls_cert, arguments.tls_key))
        )
    asyncio.run(serve(config, listeners))


if __name__ == "__main__":
    main()
