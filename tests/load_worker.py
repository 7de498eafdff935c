"""Load in one process: many requests at a fixed concurrency through the real `speech` function.

    python -m tests.load_worker [--requests 500] [--concurrency 50]

Run by `tests/test_load.py` with the stack's app settings in the environment from the start, as the
Functions host runs the app (`SSL_CERT_FILE` must be set before aiohttp is imported). Each request
goes through `devtools.driver.FunctionDriver`: the dev host's ASGI app in process (routing, the
extension's Request, the function's Response), with no socket. The mix: good requests, pairs
that share an `Idempotency-Key`, scripted model faults, a few stalls past the deadline and bad
bodies; half-way, the emulator refuses a few handshakes (fewer than the connection attempts, so
retries absorb them). Every answer is checked (good ones byte for byte against the emulator's own
record of the audio), then one JSON report goes to stdout: counts, statuses, mismatches, asyncio
tasks, open sockets per peer and RSS. The app's log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import os
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import aiohttp
import httpx
import psutil

from devtools.driver import FunctionDriver
from realtime_speech.errors import PROBLEM_TYPE_BASE
from realtime_speech.http import speech_service
from realtime_speech.models import MAX_BODY_BYTES

STALLS = 5
HANDSHAKE_REFUSALS = 3  # fewer than realtime.CONNECT_ATTEMPTS: every refused request gets through
WAV_HEADER_BYTES = 44
# One cycle of the mix; "keyed" and "keyed_again" share a key and a body.
CYCLE = (
    "keyed",
    "good",
    "error_mid",
    "good",
    "drop",
    "good",
    "failed",
    "good",
    "rate_limit",
    "good",
    "keyed_again",
    "incomplete",
    "good",
    "malformed",
    "good",
    "not_json",
    "good",
    "cancelled",
    "good",
    "too_large",
)
EXPECTED = {  # kind -> (status, problem code or None)
    "good": (200, None),
    "keyed": (200, None),
    "keyed_again": (200, None),
    "incomplete": (200, None),
    "error_mid": (502, "upstream-failed"),
    "drop": (502, "upstream-failed"),
    "failed": (502, "upstream-failed"),
    "cancelled": (502, "upstream-failed"),
    "rate_limit": (429, "upstream-rate-limited"),
    "stall": (504, "deadline-exceeded"),
    "malformed": (400, "invalid-request"),
    "not_json": (415, "unsupported-media-type"),
    "too_large": (413, "payload-too-large"),
}
DIRECTIVES = {
    "error_mid": "[[emulator:error_mid]]",
    "drop": "[[emulator:drop]]",
    "failed": "[[emulator:failed]]",
    "cancelled": "[[emulator:cancelled]]",
    "rate_limit": "[[emulator:rate_limit]]",
    "incomplete": "[[emulator:incomplete at=0.5]]",
    "stall": "[[emulator:stall]]",
}
OPENS_A_SESSION = {"good", "keyed", *DIRECTIVES}  # "keyed_again" shares its pair's session


@dataclass
class Case:
    index: int
    kind: str
    text: str
    body: bytes
    headers: dict[str, str]
    response: httpx.Response | None = None
    seconds: float = 0.0

    @property
    def status(self) -> int:
        return self.response.status_code if self.response else 0

    @property
    def answer(self) -> dict[str, Any]:
        """The response body, parsed when asked (the worker keeps only the response while it runs)."""
        return self.response.json() if self.response else {}

    @property
    def media_type(self) -> str:
        return self.response.headers.get("content-type", "").split(";")[0].strip() if self.response else ""


def plan(requests: int) -> list[Case]:
    kinds = ["stall"] * STALLS + [CYCLE[i % len(CYCLE)] for i in range(requests - STALLS)]
    run = uuid4().hex[:8]
    cases = []
    for index, kind in enumerate(kinds):
        cycle = (index - STALLS) // len(CYCLE)
        if kind in ("keyed", "keyed_again"):
            text = f"Shared question {cycle} of load run {run}."
            headers = {"Content-Type": "application/json", "Idempotency-Key": f"load-{run}-{cycle}"}
        else:
            text = f"{DIRECTIVES.get(kind, '')} Question {index} of load run {run}.".strip()
            headers = {"Content-Type": "text/plain" if kind == "not_json" else "application/json"}
        body = json.dumps({"text": text}).encode()
        if kind == "malformed":
            body = body[:-1]
        elif kind == "too_large":
            body = body.ljust(MAX_BODY_BYTES + 1)
        cases.append(Case(index, kind, text, body, headers))
    return cases


async def call(driver: FunctionDriver, case: Case) -> None:
    started = time.perf_counter()
    case.response = await driver.post_speech(content=case.body, headers=case.headers)
    case.seconds = time.perf_counter() - started


async def run_all(driver: FunctionDriver, cases: list[Case], concurrency: int) -> None:
    """`concurrency` workers take the cases in order."""
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)

    async def worker() -> None:
        while not queue.empty():
            await call(driver, queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def check_status(case: Case) -> list[str]:
    status, code = EXPECTED[case.kind]
    problems = []
    if case.status != status:
        problems.append(f"#{case.index} {case.kind}: status {case.status}, expected {status}: {case.answer}")
    elif code is not None:
        problem_type = case.answer.get("type")
        if case.media_type != "application/problem+json" or problem_type != PROBLEM_TYPE_BASE + code:
            problems.append(f"#{case.index} {case.kind}: not a {code} problem: {case.answer}")
        if status in (429, 503) and "Retry-After" not in case.response.headers:
            problems.append(f"#{case.index} {case.kind}: no Retry-After")
    return problems


async def check_audio(
    http: aiohttp.ClientSession, tls: ssl.SSLContext, case: Case, sessions: dict[str, Any]
) -> list[str]:
    """The WAV behind the URL holds exactly the audio the emulator sent, with its transcript."""
    session = sessions.get(case.text)
    if session is None:
        return [f"#{case.index} {case.kind}: the emulator has no session for this text"]
    answer = case.answer
    async with http.get(answer["audio_url"], ssl=tls) as response:
        wav = await response.read()
    problems = []
    if hashlib.sha256(wav[WAV_HEADER_BYTES:]).hexdigest() != session["audio_sha256"]:
        problems.append(f"#{case.index} {case.kind}: WAV differs from the emulator's audio")
    if len(wav) != answer["audio"]["bytes"] or wav[:4] != b"RIFF":
        problems.append(f"#{case.index} {case.kind}: WAV size or header wrong")
    if answer["transcript"] != session["transcript"]:
        problems.append(f"#{case.index} {case.kind}: transcript differs")
    expected_status = "incomplete" if case.kind == "incomplete" else "completed"
    if answer["status"] != expected_status:
        problems.append(f"#{case.index} {case.kind}: response status {answer['status']}")
    return problems


def check_keyed_pairs(cases: list[Case]) -> list[str]:
    """Both requests of a key got the same answer, one of them replayed."""
    by_key: dict[str, list[Case]] = {}
    for case in cases:
        if "Idempotency-Key" in case.headers:
            by_key.setdefault(case.headers["Idempotency-Key"], []).append(case)
    problems = []
    for key, pair in by_key.items():
        names = {case.answer.get("blob_name") for case in pair}
        replayed = [case.response.headers.get("Idempotent-Replayed") == "true" for case in pair]
        if len(pair) == 2 and (len(names) != 1 or sorted(replayed) != [False, True]):
            problems.append(f"{key}: blobs {names}, replayed {replayed}")
    return problems


async def emulator(control: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> Any:
    """A call to the emulator's control routes (on the model endpoint's port)."""
    url = os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/") + path
    async with control.request(method, url, **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def sockets_by_peer(process: psutil.Process, peers: dict[str, int]) -> dict[str, int]:
    """Open TCP connections of this process, per named peer port (the rest as "other")."""
    counts = Counter()
    names = {port: name for name, port in peers.items()}
    for connection in process.net_connections(kind="tcp"):
        if connection.raddr:
            counts[names.get(connection.raddr.port, "other")] += 1
    return {name: counts.get(name, 0) for name in [*peers, "other"]}


def memory(process: psutil.Process) -> dict[str, float]:
    """RSS after a full collection, with freed heap handed back to the OS (glibc), and the number of
    Python objects' memory blocks: a leak grows both, allocator fragmentation only the first."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"rss_mib": round(process.memory_info().rss / 2**20, 1), "python_blocks": sys.getallocatedblocks()}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    process = psutil.Process()
    cases = plan(args.requests)
    warmup = 4 * args.concurrency
    middle = (warmup + len(cases)) // 2
    peers = {
        "emulator": urlsplit(os.environ["AZURE_OPENAI_ENDPOINT"]).port,
        "storage": urlsplit(os.environ["AUDIO_STORAGE_ACCOUNT_URL"]).port,
        "identity": urlsplit(os.environ["IDENTITY_ENDPOINT"]).port,
    }
    report: dict[str, Any] = {"requests": len(cases), "concurrency": args.concurrency}
    report["tasks_before"] = len(asyncio.all_tasks())
    report["sockets_before"] = sockets_by_peer(process, peers)
    report["memory"] = {"start": memory(process)}
    driver = FunctionDriver()
    async with driver, aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as control:
        stats_before = await emulator(control, "GET", "/_emulator/stats")
        started = time.perf_counter()
        await run_all(driver, cases[:warmup], args.concurrency)
        report["memory"]["after_warmup"] = memory(process)
        refusal = {"status": 503, "count": HANDSHAKE_REFUSALS, "retry_after": 0}
        await emulator(control, "POST", "/_emulator/handshake-faults", json=refusal)
        await run_all(driver, cases[warmup:middle], args.concurrency)
        report["memory"]["middle"] = memory(process)
        await run_all(driver, cases[middle:], args.concurrency)
        report["seconds"] = round(time.perf_counter() - started, 1)
        await asyncio.sleep(0.5)  # let connection closes settle before counting
        report["tasks_after"] = len(asyncio.all_tasks())
        report["sockets_after"] = sockets_by_peer(process, peers)
        report["memory"]["end"] = memory(process)
        stats_after = await emulator(control, "GET", "/_emulator/stats")
        sessions = {s["user_text"]: s for s in await emulator(control, "GET", "/_emulator/sessions")}

    problems = [problem for case in cases for problem in check_status(case)]
    tls = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    checked = [case for case in cases if case.status == 200 and case.kind != "keyed_again"]
    limit = asyncio.Semaphore(args.concurrency)
    async with aiohttp.ClientSession() as http:

        async def audio_problems(case: Case) -> list[str]:
            async with limit:
                return await check_audio(http, tls, case, sessions)

        for found in await asyncio.gather(*(audio_problems(case) for case in checked)):
            problems += found
    problems += check_keyed_pairs(cases)
    await (await speech_service()).close()

    seconds = sorted(case.seconds for case in cases)
    report.update(
        statuses=dict(sorted(Counter(str(case.status) for case in cases).items())),
        kinds=dict(sorted(Counter(case.kind for case in cases).items())),
        audio_checked=len(checked),
        sessions_opened=stats_after["connections_total"] - stats_before["connections_total"],
        sessions_expected=sum(case.kind in OPENS_A_SESSION for case in cases),
        sessions_open_after=stats_after["connections_open"],
        handshake_refusals=stats_after["handshake_refusals"] - stats_before["handshake_refusals"],
        latency_seconds={
            "p50": round(statistics.median(seconds), 3),
            "p95": round(seconds[int(len(seconds) * 0.95)], 3),
            "max": round(seconds[-1], 3),
        },
        mismatches=problems,
    )
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.load_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(asyncio.run(main(parse_args()))), flush=True)
