"""Azurite (blob service) the way the project uses it: HTTPS, `--oauth basic`, user-delegation SAS.

Bearer tokens are only accepted over HTTPS, so Azurite always gets the dev server certificate
(`devtools.certs`). `--skipApiVersionCheck` lets newer azure-storage-blob versions talk to it, and
`--disableProductStyleUrl` keeps the account name in the path (`https://127.0.0.1:PORT/devstoreaccount1`).

Run in the foreground: python -m devtools.azurite [--port 10000] [--state-dir .devstate] [--in-memory]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.certs import DevCerts, ensure_dev_certs

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".devstate"
ACCOUNT_NAME = "devstoreaccount1"
DEFAULT_PORT = 10000


def azurite_executable() -> str:
    """The `azurite-blob` entry point: the project's node_modules first, then PATH."""
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found is None:
        raise FileNotFoundError("azurite-blob not found; run `make setup` (npm ci) first")
    return found


def azurite_argv(
    port: int | str,
    certs: DevCerts,
    *,
    host: str = "127.0.0.1",
    location: Path | None = None,
    loose: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """Command line for an Azurite blob service; `location=None` keeps all data in memory."""
    argv = [
        azurite_executable(),
        "--blobHost",
        host,
        "--blobPort",
        str(port),
        "--oauth",
        "basic",
        "--cert",
        str(certs.server_cert),
        "--key",
        str(certs.server_key),
        "--skipApiVersionCheck",
        "--disableProductStyleUrl",
        "--disableTelemetry",  # no phoning home (and no waiting on an unreachable endpoint)
        "--silent",
    ]
    argv += ["--location", str(location)] if location is not None else ["--inMemoryPersistence"]
    if loose:
        argv.append("--loose")
    return [*argv, *extra]


def account_url(port: int, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{port}/{ACCOUNT_NAME}"


def is_ready(host: str, port: int, ca_file: Path, timeout: float = 1.0) -> bool:
    """True once Azurite completes a TLS handshake (verified against the dev CA) and answers HTTP."""
    context = ssl.create_default_context(cafile=str(ca_file))
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.request("GET", f"/{ACCOUNT_NAME}?comp=properties&restype=service")
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return True


def wait_until_ready(
    host: str, port: int, ca_file: Path, *, timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not is_ready(host, port, ca_file):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Azurite exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Azurite not ready on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Azurite blob storage (HTTPS, OAuth) in the foreground.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--in-memory", action="store_true", help="keep no data on disk")
    args = parser.parse_args(argv)

    certs = ensure_dev_certs(args.state_dir)
    location = None if args.in_memory else args.state_dir / "azurite"
    if location is not None:
        location.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(azurite_argv(args.port, certs, host=args.host, location=location))
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        wait_until_ready(args.host, args.port, certs.ca_file, process=process)
        url = account_url(args.port, args.host)
        print(f"Azurite blob service: {url}  (trust {certs.ca_file})", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
