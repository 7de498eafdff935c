"""Load: 500 requests at concurrency 50 through the function in one process (`tests/load_worker.py`),
good and faulty mixed. Good answers are byte-exact, faults get their documented status, and nothing
is left behind: no realtime connection, no asyncio task, memory flat once warm."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest

from devtools.stack import REPO_ROOT, Stack

from .speech_client import SpeechClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTS, CONCURRENCY = 500, 50
SETTINGS = {
    "REALTIME_TIMEOUT_SECONDS": "15",  # the worker's few stalls end as 504s after this
    "AUDIO_CONTAINER": "load",  # its thousand blobs would slow down the other tests' listings
}
SUMMARY = re.compile(r"^INFO realtime_speech: speech \{", re.MULTILINE)


async def run_worker(stack: Stack) -> tuple[dict, str]:
    """The worker's report and its stderr (the app's log)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.load_worker"),
        *("--requests", str(REQUESTS), "--concurrency", str(CONCURRENCY)),
        cwd=REPO_ROOT,
        env=stack.host_env(SETTINGS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    log = stderr.decode(errors="replace")
    assert process.returncode == 0, log[-5000:]
    return json.loads(stdout), log


async def test_load_mixed_with_faults_in_one_process(stack: Stack, speech: SpeechClient) -> None:
    report, log = await run_worker(stack)
    print(json.dumps(report, indent=2))  # the numbers, with `pytest -s` or on failure
    assert (report["requests"], report["concurrency"]) == (REQUESTS, CONCURRENCY)
    assert report["mismatches"] == []
    assert set(report["statuses"]) == {"200", "400", "413", "415", "429", "502", "504"}
    assert report["audio_checked"] >= REQUESTS // 2
    assert report["sessions_opened"] == report["sessions_expected"]  # one per key pair, none for bad input
    assert report["handshake_refusals"] == 3  # absorbed by retries: every good request got a 200

    assert report["tasks_after"] == report["tasks_before"] == 1
    assert report["sessions_open_after"] == 0 == (await speech.emulator_stats())["connections_open"]
    sockets = report["sockets_after"]
    assert sockets["emulator"] == sockets["other"] == 0
    assert sockets["storage"] <= 100 and sockets["identity"] <= 2  # kept-alive pools, bounded

    memory = report["memory"]
    assert memory["end"]["rss_mib"] - memory["middle"]["rss_mib"] < 10
    assert memory["end"]["python_blocks"] - memory["middle"]["python_blocks"] < 5_000

    assert len(SUMMARY.findall(log)) == REQUESTS  # one summary line per request
    assert stack.identity_header not in log
    assert not re.search(r"eyJ[\w-]{6,}\.[\w-]{6,}\.", log)
    assert not re.search(r"\bsig=(?!REDACTED)", log)
