"""Load through the function in one process (`tests/load_worker.py`), good and faulty requests mixed.

500 requests at concurrency 50 against one endpoint: good answers are byte-exact, faults get their
documented status, and nothing is left behind (no realtime connection, no asyncio task, memory flat
once warm). Then 300 at concurrency 50 over a pool of two backends (priority 1 and 2) whose quotas
each admit about half of them at once: none lost, each backend used, no 429 while a backend had room,
and the worker's RSS (its own reading, after a collection and a trim) grows by at most 25 MiB
after a warm-up burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest

from devtools.process import ServiceProcess
from devtools.stack import REPO_ROOT, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTS, CONCURRENCY = 500, 50
POOL_REQUESTS, POOL_SESSIONS = 300, 25
MAX_RSS_GROWTH_MIB = 25
WORKER_TIMEOUT_SECONDS = 300  # a safety net: the worker takes well under a minute
SETTINGS = {
    "REALTIME_TIMEOUT_SECONDS": "15",  # the worker's few stalls end as 504s after this
    "AUDIO_CONTAINER": "load",  # its thousand blobs would slow down the other tests' listings
    "MAX_CONCURRENT_SESSIONS": "1000",  # the load itself is under test, not the limit (test_limits.py)
}
SUMMARY = re.compile(r"^INFO realtime_speech: speech \{", re.MULTILINE)


async def run_worker(stack: Stack, args: Sequence[str], settings: dict[str, str]) -> tuple[dict, str]:
    """The worker's report and its stderr (the app's log); the worker is killed if this fails."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.load_worker", *args),
        cwd=REPO_ROOT,
        env=stack.host_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=WORKER_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode(errors="replace")
    assert process.returncode == 0, log[-5000:]
    return json.loads(stdout), log


def assert_log_is_clean(stack: Stack, log: str, requests_sent: int) -> None:
    assert len(SUMMARY.findall(log)) == requests_sent  # one summary line per request
    assert stack.identity_header not in log
    assert not re.search(r"eyJ[\w-]{6,}\.[\w-]{6,}\.", log)
    assert not re.search(r"\bsig=(?!REDACTED)", log)


def assert_nothing_left_behind(report: dict[str, Any]) -> None:
    assert report["tasks_after"] == report["tasks_before"] == 1
    assert report["sessions_open_after"] == 0
    sockets = report["sockets_after"]
    assert sockets["other"] == 0 and all(
        count == 0 for peer, count in sockets.items() if peer.startswith("emulator")
    )
    assert sockets["storage"] <= 100 and sockets["identity"] <= 2  # kept-alive pools, bounded


async def emulator_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_emulator/stats") as response:
        assert response.status == 200
        return await response.json()


async def test_load_mixed_with_faults_in_one_process(stack: Stack) -> None:
    args = ("--requests", str(REQUESTS), "--concurrency", str(CONCURRENCY))
    report, log = await run_worker(stack, args, SETTINGS)
    print(json.dumps(report, indent=2))  # the numbers, with `pytest -s` or on failure
    assert (report["requests"], report["concurrency"]) == (REQUESTS, CONCURRENCY)
    assert report["mismatches"] == []
    assert set(report["statuses"]) == {"200", "400", "413", "415", "429", "502", "504"}
    assert report["audio_checked"] >= REQUESTS // 2
    assert report["sessions_opened"] == report["sessions_expected"]  # one per key pair, none for bad input
    assert report["handshake_refusals"] == 3  # absorbed by retries: every good request got a 200

    assert_nothing_left_behind(report)
    assert (await emulator_stats(stack.openai_endpoint))["connections_open"] == 0

    memory = report["memory"]
    assert memory["end"]["rss_trimmed_mib"] - memory["middle"]["rss_trimmed_mib"] < 10
    assert memory["end"]["python_blocks"] - memory["middle"]["python_blocks"] < 5_000
    assert report["requests_sent"] == REQUESTS
    assert_log_is_clean(stack, log, REQUESTS)


@pytest.fixture(scope="module")
def pool_emulators(stack: Stack) -> Iterator[list[ServiceProcess]]:
    """Two emulators, each admitting `POOL_SESSIONS` sessions at once."""
    with contextlib.ExitStack() as running:  # each started one is stopped, also when a later one fails
        yield [
            running.enter_context(
                stack.start_emulator(f"load-{name}", ["--max-sessions", str(POOL_SESSIONS)])
            )
            for name in "ab"
        ]


async def test_load_over_a_pool_of_two_backends_with_quotas(
    stack: Stack, pool_emulators: list[ServiceProcess]
) -> None:
    backends = [
        {"name": f"backend-{name}", "endpoint": emulator.url, "priority": priority}
        for name, priority, emulator in zip("ab", (1, 2), pool_emulators, strict=True)
    ]
    settings = {**SETTINGS, "AZURE_OPENAI_BACKENDS": json.dumps(backends)}
    args = ("--pool", "--requests", str(POOL_REQUESTS), "--concurrency", str(CONCURRENCY))
    report, log = await run_worker(stack, args, settings)
    print(json.dumps(report, indent=2))
    total = CONCURRENCY + POOL_REQUESTS  # the warm-up burst, then the measured round
    # Every request got its documented answer (one turned away is sent again after its Retry-After),
    # byte-exact; no 429 while a backend had room; backend-b answered only while backend-a refused.
    assert report["mismatches"] == []
    assert sum(report["statuses"].values()) == report["requests"] == total  # none lost
    assert set(report["statuses"]) == {"200", "400", "413", "415", "429", "502"}
    assert report["sessions_opened"] == report["sessions_expected"]
    assert set(report["answers_by_backend"]) == {"backend-a", "backend-b"}
    assert all(count > 0 for count in report["answers_by_backend"].values())
    refused = sum(counts.get("max_sessions", 0) for counts in report["admissions"].values())
    assert refused > 0, report["admissions"]  # the quotas were reached: the spill-over was exercised

    assert_nothing_left_behind(report)
    for emulator in pool_emulators:
        assert (await emulator_stats(emulator.url))["connections_open"] == 0

    memory = report["memory"]  # measured by the worker itself, after a collection and a trim
    assert memory["round-1"]["rss_trimmed_mib"] - memory["warm"]["rss_trimmed_mib"] <= MAX_RSS_GROWTH_MIB
    assert_log_is_clean(stack, log, report["requests_sent"])  # with the ones sent again after a 429
