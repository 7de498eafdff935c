"""Load in one process: many requests at a fixed concurrency through the real `speech` function.

    python -m tests.load_worker [--requests 500] [--concurrency 50]
    python -m tests.load_worker --pool [--requests 300] [--rounds 3]

Run by `tests/test_load.py` with the stack's app settings in the environment from the start, as the
Functions host runs the app (`SSL_CERT_FILE` must be set before aiohttp is imported). Each request
goes through `devtools.driver.FunctionDriver`: the dev host's ASGI app in process (routing, the
extension's Request, the function's Response), with no socket. The mix: good requests, pairs
that share an `Idempotency-Key`, scripted model faults, a few stalls past the deadline and bad
bodies; half-way, the emulator refuses a few handshakes (fewer than the connection attempts, so
retries absorb them).

With `--pool` the model is the pool of `AZURE_OPENAI_BACKENDS` (each an emulator, typically with a
`--max-sessions` quota): first a warm-up burst of `concurrency` requests, then `rounds` rounds of
`requests` of the same mix (without stalls and handshake faults: those are the single endpoint's).
A request turned away with 429 is sent again after its Retry-After, as a caller would. Each answer is
checked against the emulator of the backend it names, and the emulators' admissions logs against the
outcomes: a request may be turned away only while every backend was inside the Retry-After of a
handshake it refused, and a backend answers only while every backend of a better priority refuses.

Every answer is checked (good ones byte for byte against the emulator's own record of the audio),
then one JSON report goes to stdout: counts, statuses, mismatches, asyncio tasks, open sockets per
peer and memory, this last taken at the end of the warm-up and of each part, once every emulator has
seen its last session close. The app's log goes to stderr.

Only a response's status, its few checked headers and its body are kept (`Outcome`): an
`httpx.Response` holds its request, URL and header objects, about 70 memory blocks that would look
like a leak of the app.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
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
HANDSHAKE_REFUSALS = 3  # fewer than pool.CONNECT_ATTEMPTS: every refused request gets through
WAV_HEADER_BYTES = 44
# How long the emulators may take to see every session of a part closed (a safety net on a busy
# machine: they answer as soon as the last one is).
IDLE_WITHIN_SECONDS = 30
KEPT_HEADERS = ("content-type", "retry-after", "idempotent-replayed")
# Between an emulator refusing a handshake and the pool cooling that backend (its clock, its loop):
# generous for a busy machine, still well short of a load phase.
REFUSAL_SLACK_SECONDS = 2.0
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
NEEDS_THE_MODEL = {"good", "keyed", "keyed_again", *DIRECTIVES}
# Over a pool, a request turned away with 429 is sent again after its Retry-After, as a caller would;
# a "rate_limit" case's 429 is its answer.
RETRIED_AFTER_429 = NEEDS_THE_MODEL - {"rate_limit"}
POOL_ATTEMPTS = 5


@dataclass(frozen=True)
class Outcome:
    """What a response said: status, the headers the checks read (lower-case names), the body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> Outcome:
        headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        return cls(response.status_code, headers, response.content)


@dataclass
class Case:
    index: int
    kind: str
    text: str
    body: bytes
    headers: dict[str, str]
    outcome: Outcome | None = None
    reached_model: bool = False  # the model was asked this text (known after the run)
    started: float = 0.0  # Unix time of the last attempt, to compare with the emulators' admissions
    seconds: float = 0.0
    turned_away_at: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) Unix times of the attempts turned away with 429 before reaching the model."""

    @property
    def status(self) -> int:
        return self.outcome.status if self.outcome else 0

    @property
    def answer(self) -> dict[str, Any]:
        """The response body, parsed when asked."""
        return json.loads(self.outcome.body) if self.outcome and self.outcome.body else {}

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip()

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def header(self, name: str) -> str | None:
        """A kept response header (lower-case name)."""
        return self.outcome.headers.get(name) if self.outcome else None


def plan(requests: int, stalls: int, run: str) -> list[Case]:
    """`stalls` stalls first (they overlap everything), then the cycle; texts unique to `run`."""
    kinds = ["stall"] * stalls + [CYCLE[i % len(CYCLE)] for i in range(requests - stalls)]
    cases = []
    for index, kind in enumerate(kinds):
        cycle = (index - stalls) // len(CYCLE)
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


async def call(driver: FunctionDriver, case: Case, *, pool: bool) -> None:
    """Send the case; over a pool, a request turned away with 429 is sent again after its
    Retry-After, as a caller would (at most `POOL_ATTEMPTS` times)."""
    for _ in range(POOL_ATTEMPTS if pool else 1):
        case.started = time.time()
        started = time.perf_counter()
        case.outcome = Outcome.of(await driver.post_speech(content=case.body, headers=case.headers))
        case.seconds = time.perf_counter() - started
        if not (case.status == 429 and case.kind in RETRIED_AFTER_429):
            return
        case.turned_away_at.append((case.started, case.ended))
        await asyncio.sleep(float(case.header("retry-after") or 1))


async def run_all(driver: FunctionDriver, cases: list[Case], concurrency: int, *, pool: bool) -> None:
    """`concurrency` workers take the cases in order."""
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)

    async def worker() -> None:
        while not queue.empty():
            await call(driver, queue.get_nowait(), pool=pool)

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
        if status in (429, 503) and case.header("retry-after") is None:
            problems.append(f"#{case.index} {case.kind}: no Retry-After")
    return problems


def turned_away(case: Case) -> list[tuple[float, float]]:
    """The (start, end) of each attempt turned away with 429 before reaching the model: the ones sent
    again, and a last one of a "rate_limit" case that never reached the model (whose own rate limit,
    sent in an open session, is its documented answer)."""
    if case.kind == "rate_limit" and case.status == 429 and not case.reached_model:
        return [*case.turned_away_at, (case.started, case.ended)]
    return case.turned_away_at


def sessions_expected(cases: list[Case]) -> int:
    """One model session per question that reached the model: the two requests of a key share one,
    bad bodies reach none."""
    return len({case.text for case in cases if case.kind in NEEDS_THE_MODEL and case.reached_model})


async def check_audio(
    http: aiohttp.ClientSession, tls: ssl.SSLContext, case: Case, sessions: dict[str, dict[str, Any]]
) -> list[str]:
    """The WAV behind the URL holds exactly the audio that the emulator of the answer's backend sent,
    with its transcript; `sessions` are each backend's sessions by the text they were asked."""
    answer = case.answer
    session = sessions.get(answer["backend"], {}).get(case.text)
    if session is None:
        return [f"#{case.index} {case.kind}: backend {answer['backend']} has no session for this text"]
    others = [name for name, asked in sessions.items() if name != answer["backend"] and case.text in asked]
    async with http.get(answer["audio_url"], ssl=tls) as response:
        wav = await response.read()
    problems = []
    if others:
        problems.append(f"#{case.index} {case.kind}: also asked on {others}")
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
        replayed = [case.header("idempotent-replayed") == "true" for case in pair]
        if len(pair) == 2 and (len(names) != 1 or sorted(replayed) != [False, True]):
            problems.append(f"{key}: blobs {names}, replayed {replayed}")
    return problems


def check_rate_limits(cases: list[Case], admissions: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A request turned away with 429 must have had nowhere to go: while it was being handled, every
    backend was inside the Retry-After of a handshake it had refused (its admissions log says so)."""
    problems = []
    for case in cases:
        for start, end in turned_away(case):
            had_room = [name for name, log in admissions.items() if not refusing(log, start, end)]
            if had_room:
                problems.append(f"#{case.index} {case.kind}: 429 at {start:.3f} while {had_room} had room")
    return problems


def refusing(log: list[dict[str, Any]], start: float, end: float) -> bool:
    """Some refusal's Retry-After window (plus the time its answer took to arrive) overlaps
    [start, end]."""
    return any(
        entry["outcome"] == "refused"
        and entry["time"] <= end
        and entry["time"] + (entry["retry_after"] or 0) + REFUSAL_SLACK_SECONDS >= start
        for entry in log
    )


def check_spill_over(
    cases: list[Case], admissions: dict[str, list[dict[str, Any]]], priorities: dict[str, int]
) -> list[str]:
    """An answer comes from a backend of a worse priority only if, before its session was connected,
    every backend of a better priority was refusing."""
    problems = []
    for case in cases:
        if case.status != 200 or case.header("idempotent-replayed") == "true":
            continue
        backend, timings = case.answer["backend"], case.answer["timings_ms"]
        connected = case.started + timings["connected"] / 1000 + REFUSAL_SLACK_SECONDS
        better = [name for name in admissions if priorities[name] < priorities[backend]]
        idle = [name for name in better if not refusing(admissions[name], case.started, connected)]
        if idle:
            problems.append(f"#{case.index} {case.kind}: answered by {backend} while {idle} had room")
    return problems


def backend_priorities() -> dict[str, int]:
    """The priority of each backend of `AZURE_OPENAI_BACKENDS` (1, the default, for the endpoint)."""
    backends = json.loads(os.environ.get("AZURE_OPENAI_BACKENDS") or "[]")
    return {backend["name"]: backend.get("priority", 1) for backend in backends} or {"default": 1}


def emulator_urls() -> dict[str, str]:
    """The model's emulators by backend name: `AZURE_OPENAI_BACKENDS`, or the single endpoint."""
    backends = json.loads(os.environ.get("AZURE_OPENAI_BACKENDS") or "[]")
    if backends:
        return {backend["name"]: backend["endpoint"].rstrip("/") for backend in backends}
    return {"default": os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/")}


class Emulators:
    """The control routes of every backend's emulator."""

    def __init__(self, control: aiohttp.ClientSession) -> None:
        self.urls = emulator_urls()
        self._control = control

    async def call(self, name: str, method: str, path: str, **kwargs: Any) -> Any:
        async with self._control.request(method, self.urls[name] + path, **kwargs) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def each(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answers = await asyncio.gather(*(self.call(name, method, path, **kwargs) for name in self.urls))
        return dict(zip(self.urls, answers, strict=True))


def sockets_by_peer(process: psutil.Process, peers: dict[str, int]) -> dict[str, int]:
    """Open TCP connections of this process, per named peer port (the rest as "other")."""
    counts: Counter[str] = Counter()
    names = {port: name for name, port in peers.items()}
    for connection in process.net_connections(kind="tcp"):
        if connection.raddr:
            counts[names.get(connection.raddr.port, "other")] += 1
    return {name: counts.get(name, 0) for name in [*peers, "other"]}


def memory(process: psutil.Process) -> dict[str, float]:
    """RSS as it is, then after a full collection with freed heap handed back to the OS (glibc), and
    the number of Python objects' memory blocks: a leak grows all three, allocator fragmentation only
    the first."""
    rss = process.memory_info().rss
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {
        "rss_mib": round(rss / 2**20, 1),
        "rss_trimmed_mib": round(process.memory_info().rss / 2**20, 1),
        "python_blocks": sys.getallocatedblocks(),
    }


class Phases:
    """The worker's own view of its memory at the end of each part, once its connections have closed."""

    def __init__(self, process: psutil.Process, emulators: Emulators) -> None:
        self._process = process
        self._emulators = emulators
        self.memory: dict[str, dict[str, float]] = {}

    async def mark(self, name: str) -> None:
        await self._emulators.each("GET", "/_emulator/stats", params={"wait_idle": IDLE_WITHIN_SECONDS})
        self.memory[name] = memory(self._process)


@dataclass(frozen=True)
class Parts:
    """The cases of a run, in the order they are sent: each part ends with a phase mark."""

    parts: list[tuple[str, list[Case]]]
    handshake_refusals_before: str | None  # the part before which the emulator refuses handshakes

    @property
    def cases(self) -> list[Case]:
        return [case for _, part in self.parts for case in part]

    @property
    def measured(self) -> list[Case]:
        """Every case but the warm-up's."""
        return [case for name, part in self.parts if name != "warm" for case in part]


def mixed_parts(requests: int, concurrency: int) -> Parts:
    """One endpoint: warm-up, then the handshake faults, the middle and the end of the same run."""
    cases = plan(requests, STALLS, uuid4().hex[:8])
    warmup = 4 * concurrency
    middle = (warmup + len(cases)) // 2
    return Parts(
        [("warm", cases[:warmup]), ("middle", cases[warmup:middle]), ("end", cases[middle:])], "middle"
    )


def pool_parts(requests: int, concurrency: int, rounds: int) -> Parts:
    """A pool: a warm-up burst of `concurrency`, then `rounds` rounds of `requests`, no stalls."""
    parts = [("warm", plan(concurrency, 0, uuid4().hex[:8]))]
    parts += [(f"round-{n}", plan(requests, 0, uuid4().hex[:8])) for n in range(1, rounds + 1)]
    return Parts(parts, None)


def by_backend(cases: Iterable[Case]) -> dict[str, int]:
    answered = Counter(case.answer["backend"] for case in cases if case.status == 200)
    return dict(sorted(answered.items()))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    process = psutil.Process()
    run = (
        pool_parts(args.requests, args.concurrency, args.rounds)
        if args.pool
        else mixed_parts(args.requests, args.concurrency)
    )
    peers = {
        **{f"emulator:{name}": urlsplit(url).port for name, url in emulator_urls().items()},
        "storage": urlsplit(os.environ["AUDIO_STORAGE_ACCOUNT_URL"]).port,
        "identity": urlsplit(os.environ["IDENTITY_ENDPOINT"]).port,
    }
    report: dict[str, Any] = {"requests": len(run.cases), "concurrency": args.concurrency}
    report["tasks_before"] = len(asyncio.all_tasks())
    report["sockets_before"] = sockets_by_peer(process, peers)
    start_memory = memory(process)
    driver = FunctionDriver()
    async with driver, aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as control:
        emulators = Emulators(control)
        phases = Phases(process, emulators)
        phases.memory["start"] = start_memory
        stats_before = await emulators.each("GET", "/_emulator/stats")
        await emulators.each("DELETE", "/_emulator/admissions")
        started = time.perf_counter()
        for name, cases in run.parts:
            if name == run.handshake_refusals_before:
                refusal = {"status": 503, "count": HANDSHAKE_REFUSALS, "retry_after": 0}
                await emulators.each("POST", "/_emulator/handshake-faults", json=refusal)
            await run_all(driver, cases, args.concurrency, pool=args.pool)
            if name == "warm":
                started = time.perf_counter()
            await phases.mark(name)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["tasks_after"] = len(asyncio.all_tasks())
        report["sockets_after"] = sockets_by_peer(process, peers)
        stats_after = await emulators.each("GET", "/_emulator/stats")
        admissions = await emulators.each("GET", "/_emulator/admissions")
        listed = await emulators.each("GET", "/_emulator/sessions")
        sessions = {name: {s["user_text"]: s for s in records} for name, records in listed.items()}

    cases = run.cases
    for case in cases:
        case.reached_model = any(case.text in asked for asked in sessions.values())
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
    problems += check_rate_limits(cases, admissions)
    problems += check_spill_over(cases, admissions, backend_priorities())
    await (await speech_service()).close()

    measured = sorted(case.seconds for case in run.measured)
    report.update(
        memory=phases.memory,
        statuses=dict(sorted(Counter(str(case.status) for case in cases).items())),
        kinds=dict(sorted(Counter(case.kind for case in cases).items())),
        audio_checked=len(checked),
        turned_away=sum(len(turned_away(case)) for case in cases),
        requests_sent=sum(1 + len(case.turned_away_at) for case in cases),
        answers_by_backend=by_backend(cases),
        sessions_opened=sum(
            stats_after[name]["connections_total"] - stats_before[name]["connections_total"]
            for name in stats_after
        ),
        sessions_expected=sessions_expected(cases),
        sessions_open_after=sum(stats["connections_open"] for stats in stats_after.values()),
        handshake_refusals=sum(
            stats_after[name]["handshake_refusals"] - stats_before[name]["handshake_refusals"]
            for name in stats_after
        ),
        admissions={
            name: dict(Counter(entry["reason"] or entry["outcome"] for entry in log))
            for name, log in admissions.items()
        },
        latency_seconds={
            "p50": round(statistics.median(measured), 3),
            "p95": round(measured[int(len(measured) * 0.95)], 3),
            "max": round(measured[-1], 3),
        },
        mismatches=problems,
    )
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.load_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests of the run (of each round)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--pool", action="store_true", help="the pool of AZURE_OPENAI_BACKENDS")
    parser.add_argument("--rounds", type=int, default=1, help="with --pool: rounds after the warm-up")
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(asyncio.run(main(parse_args()))), flush=True)
