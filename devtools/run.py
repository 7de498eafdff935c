"""`make run`: the local stand-ins and a dev host with the playground, kept up until Ctrl-C.

    python -m devtools.run [--host-port 7071] [--azurite-port 10000] [--emulator-port 8765]
                           [--identity-port 8081] [--state-dir .devstate] [--settings local.settings.json]

Starts `devtools.stack` (identity endpoint, Azurite, realtime emulator, the Application Insights
ingestion stand-in; espeak-ng speech when it is installed) and a dev host serving `function_app` with
`PLAYGROUND_ENABLED=true` and its telemetry sent to the ingestion stand-in, then prints the URLs and
curl commands to try, the one showing the last traces included. The ports are fixed and the identity
endpoint's secret is kept in `<state-dir>/identity-secret`, so the `local.settings.json` written for
`func start` users (Functions' format, only when none exists: an existing one is never overwritten)
stays valid from one run to the next. Ctrl-C (SIGINT) or SIGTERM stops the host, then every stand-in,
and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from devtools import azurite
from devtools.stack import DEFAULT_STATE_DIR, DEPLOYMENT_NAME, Stack, StackPorts

PLAYGROUND_SETTINGS = {"PLAYGROUND_ENABLED": "true"}
# Azurite's published development account key (documented with Azurite, not a secret). The Functions
# host reaches Azurite over HTTPS, so the connection string names the blob endpoint explicitly.
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
SAMPLE_TEXT = "Please assist the user."
POLL_SECONDS = 0.5


def identity_secret(state_dir: Path) -> str:
    """The identity endpoint's secret, made once and kept (owner-only) in `<state_dir>/identity-secret`."""
    path = state_dir / "identity-secret"
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def azure_web_jobs_storage(azurite_port: int) -> str:
    """`AzureWebJobsStorage` for the Functions host: Azurite's development account over HTTPS."""
    return (
        f"DefaultEndpointsProtocol=https;AccountName={azurite.ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
        f"BlobEndpoint={azurite.account_url(azurite_port)};"
    )


def local_settings(app_settings: Mapping[str, str], azurite_port: int, host_port: int) -> dict[str, Any]:
    """A `local.settings.json` for `func start` against these stand-ins."""
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azure_web_jobs_storage(azurite_port),
        "PYTHON_ENABLE_INIT_INDEXING": "1",  # the HTTP streams extension needs the worker's init indexing
        **app_settings,
    }
    return {"IsEncrypted": False, "Values": values, "Host": {"LocalHttpPort": host_port}}


def write_new_file(path: Path, settings: Mapping[str, Any]) -> bool:
    """Write `settings` as JSON to `path` unless it exists; True when written."""
    try:
        with path.open("x", encoding="utf-8") as file:
            json.dump(settings, file, indent=2)
            file.write("\n")
    except FileExistsError:
        return False
    return True


def traces_command(stack: Stack, limit: int = 3) -> str:
    """A command printing the last traces the app exported, as the ingestion stand-in renders them."""
    return f"curl -s --cacert {stack.ca_file} '{stack.ingest.url}/_ingest/traces?limit={limit}'"


def instructions(
    host_url: str, settings_path: Path, written: bool, log_dir: Path, traces: str | None = None
) -> str:
    """What to print once everything is up (`traces`: the command showing the last traces)."""
    speech_url = f"{host_url}/api/speech"
    body = json.dumps({"text": SAMPLE_TEXT})
    settings_note = (
        f"wrote {settings_path} for `func start` (same stand-ins, same ports)"
        if written
        else f"{settings_path} exists: left as it is (delete it to have it written for this stack)"
    )
    last_traces = ["", "Last traces (requests, their phases and log lines):", f"  {traces}"] if traces else []
    return "\n".join(
        [
            f"Function host:  {host_url}  (logs in {log_dir})",
            f"  POST {speech_url}",
            f"  GET  {host_url}/api/health     (anyone: up, settings complete, ?probe=true checks)",
            f"  GET  {host_url}/api/status     (the operator's view, function key in Azure)",
            f"OpenAI-compatible base URL (model {DEPLOYMENT_NAME}): {host_url}/api/v1",
            f"Playground:     {host_url}/api/playground",
            "",
            "JSON answer:",
            f"  curl -s {speech_url} -H 'Content-Type: application/json' -d '{body}'",
            "Server-Sent Events:",
            f"  curl -N {speech_url} -H 'Accept: text/event-stream' -H 'Content-Type: application/json' "
            f"-d '{body}'",
            "Status (checks, settings, each backend's state):",
            f"  curl -s {host_url}/api/status",
            *last_traces,
            "",
            f"Settings: {settings_note}",
            "Ctrl-C stops everything.",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-port", type=int, default=7071, help="dev host (default 7071)")
    parser.add_argument("--azurite-port", type=int, default=azurite.DEFAULT_PORT, help="default 10000")
    parser.add_argument("--emulator-port", type=int, default=8765, help="realtime emulator (default 8765)")
    parser.add_argument("--identity-port", type=int, default=8081, help="identity endpoint (default 8081)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--settings", type=Path, default=Path("local.settings.json"), help="written if absent"
    )
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def run(args: argparse.Namespace) -> int:
    ports = StackPorts(identity=args.identity_port, azurite=args.azurite_port, emulator=args.emulator_port)
    speech = ["--speech", "espeak"] if shutil.which("espeak-ng") else []
    stack = Stack(
        args.state_dir, emulator_args=speech, ports=ports, identity_header=identity_secret(args.state_dir)
    )
    with stack:
        # Telemetry goes to this run's ingestion stand-in (a free port, this run's identity), so only the
        # dev host gets it, not the local.settings.json kept across runs.
        host = stack.start_host({**PLAYGROUND_SETTINGS, **stack.telemetry_settings()}, port=args.host_port)
        settings = local_settings(
            stack.app_settings(**PLAYGROUND_SETTINGS), args.azurite_port, args.host_port
        )
        written = write_new_file(args.settings, settings)
        host_url = f"http://localhost:{host.port}"
        note = instructions(host_url, args.settings, written, stack.log_dir, traces_command(stack))
        print(note, flush=True)
        while all(service.running for service in stack.services):
            time.sleep(POLL_SECONDS)
        stopped = ", ".join(f"{s.name} (log {s.log_path})" for s in stack.services if not s.running)
        print(f"Stopped unexpectedly: {stopped}; stopping the rest", file=sys.stderr, flush=True)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
