"""The backend pool end to end: a dev host whose `AZURE_OPENAI_BACKENDS` are several realtime
emulators, over real sockets. Which backend answered is read from the answer (`backend`), from the
emulators' own session and admission logs and, for a backend behind a `TcpProxy`, from the proxy's
count of connection attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
import pytest_asyncio

from devtools.process import free_port
from devtools.stack import Stack
from devtools.tcp_proxy import TcpProxy

from .conftest import SpeechHost
from .emulator_control import Emulator
from .speech_client import SpeechClient, assert_problem

pytestmark = pytest.mark.asyncio(loop_scope="session")

COOLDOWN_SECONDS = 2
QUOTA_RETRY_AFTER = 1  # what the emulator asks for when its concurrent sessions are all taken
SLOW = "[[emulator:slow pace=1 seconds=3]]"  # a session held open for 3 s
POLL_SECONDS = 0.02


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def emulators(stack: Stack) -> AsyncIterator[dict[str, Emulator]]:
    """Three emulators, `a`, `b` and `c` (the one stopped in the circuit test)."""
    with contextlib.ExitStack() as running:  # each started one is stopped, also when a later one fails
        processes = {name: running.enter_context(stack.start_emulator(f"pool-{name}")) for name in "abc"}
        async with aiohttp.ClientSession() as http:
            yield {name: Emulator(process, http) for name, process in processes.items()}


@pytest_asyncio.fixture(loop_scope="session")
async def emulator(emulators: dict[str, Emulator]) -> AsyncIterator[dict[str, Emulator]]:
    """The emulators, reset before and after the test."""
    for each in emulators.values():
        if each.process.running:
            await each.reset()
    yield emulators
    for each in emulators.values():
        if not each.process.running:
            await each.process.astart()
        await each.reset()


def pool_settings(**endpoints: tuple[str, int]) -> dict[str, str]:
    """`AZURE_OPENAI_BACKENDS` of (endpoint, priority) by backend name."""
    backends = [
        {"name": name, "endpoint": endpoint, "priority": priority}
        for name, (endpoint, priority) in endpoints.items()
    ]
    return {"AZURE_OPENAI_BACKENDS": json.dumps(backends)}


def question(label: str, directive: str = "") -> dict[str, str]:
    return {"text": f"{directive} Pool question {label} {uuid4().hex[:8]}.".strip()}


async def answered(client: SpeechClient, body: dict[str, str]) -> dict[str, Any]:
    status, answer, _ = await client.post(body)
    assert status == 200, answer
    return answer


async def backends_health(client: SpeechClient) -> dict[str, dict[str, Any]]:
    """`GET /api/status`'s backends by name; none shows an URL, a key or a token."""
    async with client.http.get(f"{client.host_url}/api/status") as response:
        text = await response.text()
    assert "://" not in text and not re.search(r"eyJ[\w-]{6,}\.", text), text
    return {entry["name"]: entry for entry in json.loads(text)["backends"]}


async def test_while_every_backend_is_healthy_priority_one_takes_every_request(
    speech_host: SpeechHost, emulator: dict[str, Emulator], stack: Stack
) -> None:
    a, b = emulator["a"], emulator["b"]
    settings = pool_settings(first=(a.url, 1), second=(b.url, 2))
    async with speech_host(**settings) as client:
        bodies = [question(f"priority {n}") for n in range(5)]
        answers = [await answered(client, body) for body in bodies[:2]]
        answers += await asyncio.gather(*(answered(client, body) for body in bodies[2:]))
        health = await backends_health(client)
        log = client.host.log_path.read_text()  # type: ignore[union-attr]

    assert [answer["backend"] for answer in answers] == ["first"] * 5
    texts = {body["text"] for body in bodies}
    assert texts <= await a.asked() and not texts & await b.asked()
    assert {name: entry["state"] for name, entry in health.items()} == {"first": "ok", "second": "ok"}
    assert health["first"]["host"] == "127.0.0.1" and "until" not in health["first"]
    assert stack.emulator_api_key not in log and stack.identity_header not in log
    for answer in answers:  # the request's log line names its backend
        assert re.search(rf'"request_id":"{answer["request_id"]}".*"backend":"first"', log), answer


async def test_a_backend_at_its_quota_spills_over_at_once_and_is_used_again_after_retry_after(
    speech_host: SpeechHost, emulator: dict[str, Emulator]
) -> None:
    a, b = emulator["a"], emulator["b"]
    async with speech_host(**pool_settings(first=(a.url, 1), second=(b.url, 2))) as client:
        await answered(client, question("first"))  # the first request also gets the token
        direct = await answered(client, question("direct"))
        await a.call("POST", "/_emulator/quota", {"max_sessions": 1})
        holding = asyncio.ensure_future(answered(client, question("holding", SLOW)))
        await wait_for(a.open_sessions, 1)

        spilled_body = question("spilled")
        spilled = await answered(client, spilled_body)
        refused = [entry for entry in await a.admissions() if entry["outcome"] == "refused"]
        held = await holding  # 3 s after the refusal at most: past its Retry-After, and the slot free
        again = await answered(client, question("again"))

    assert (direct["backend"], held["backend"], spilled["backend"], again["backend"]) == (
        "first",
        "first",
        "second",
        "first",
    )
    assert spilled_body["text"] in await b.asked()
    # One refusal, then the other backend: no second try of the full one. How little the spill-over
    # costs is measured by the `backend_pool` benchmark (every refusal there spills over).
    assert [(entry["reason"], entry["retry_after"]) for entry in refused] == [
        ("max_sessions", QUOTA_RETRY_AFTER)
    ]


async def test_a_backend_that_is_down_opens_its_circuit_then_gets_one_probe_and_traffic_back(
    speech_host: SpeechHost, emulator: dict[str, Emulator]
) -> None:
    c, b = emulator["c"], emulator["b"]
    settings = {"AZURE_OPENAI_CIRCUIT_COOLDOWN_SECONDS": str(COOLDOWN_SECONDS)}
    async with (
        TcpProxy(c.process.port) as proxy,
        speech_host(
            **pool_settings(first=(f"http://127.0.0.1:{proxy.port}", 1), second=(b.url, 2)), **settings
        ) as client,
    ):

        async def backends_of(count: int) -> list[str]:
            answers = await asyncio.gather(*(answered(client, question("circuit")) for _ in range(count)))
            return [answer["backend"] for answer in answers]

        assert await backends_of(1) == ["first"]
        await c.process.astop()
        assert [(await backends_of(1))[0] for _ in range(3)] == ["second"] * 3  # the threshold (3)
        opened_at = time.monotonic()
        assert proxy.stats()["accepted"] == 4
        first = (await backends_health(client))["first"]
        assert (first["state"], first["consecutive_failures"]) == ("open", 3) and first["until"]

        assert await backends_of(3) == ["second"] * 3
        assert proxy.stats()["accepted"] == 4  # no request tried the open circuit
        await asyncio.sleep(COOLDOWN_SECONDS - (time.monotonic() - opened_at) + 0.2)
        assert await backends_of(3) == ["second"] * 3
        assert proxy.stats()["accepted"] == 5  # exactly one probe, which failed
        assert (await backends_health(client))["first"]["state"] == "open"

        await c.process.astart()
        await asyncio.sleep(COOLDOWN_SECONDS + 0.2)
        assert await backends_of(1) == ["first"]  # the probe succeeded
        assert await backends_of(3) == ["first"] * 3
        assert proxy.stats()["accepted"] == 9
        assert (await backends_health(client))["first"]["state"] == "ok"


async def test_every_backend_cooling_is_a_429_with_the_earliest_retry_after(
    speech_host: SpeechHost, emulator: dict[str, Emulator]
) -> None:
    a, b = emulator["a"], emulator["b"]
    await a.call("POST", "/_emulator/handshake-faults", {"status": 429, "count": 1, "retry_after": 7})
    await b.call("POST", "/_emulator/handshake-faults", {"status": 429, "count": 1, "retry_after": 3})
    async with speech_host(**pool_settings(first=(a.url, 1), second=(b.url, 2))) as client:
        first = await client.post(question("cooling"))
        second = await client.post(question("cooling again"))
        health = await backends_health(client)

    problem = assert_problem(first, 429, "upstream-rate-limited")
    assert first[2]["Retry-After"] == "3", problem
    assert_problem(second, 429, "upstream-rate-limited")
    assert int(second[2]["Retry-After"]) <= 3
    assert [len(await each.admissions()) for each in (a, b)] == [1, 1]  # the second tried nothing
    assert {name: entry["state"] for name, entry in health.items()} == {
        "first": "cooling",
        "second": "cooling",
    }
    assert 0 < health["second"]["seconds_left"] <= 3 < health["first"]["seconds_left"] <= 7
    assert all(entry["until"].endswith("Z") for entry in health.values())


async def test_every_backend_down_is_a_503_with_the_earliest_return(speech_host: SpeechHost) -> None:
    async with TcpProxy(free_port()) as one, TcpProxy(free_port()) as two:
        endpoints = {name: (f"http://127.0.0.1:{proxy.port}", 1) for name, proxy in (("x", one), ("y", two))}
        async with speech_host(**pool_settings(**endpoints)) as client:
            first = await client.post(question("down"))
            attempts = [proxy.stats()["accepted"] for proxy in (one, two)]
            second = await client.post(question("down again"))
            health = await backends_health(client)
        assert [proxy.stats()["accepted"] for proxy in (one, two)] == attempts == [3, 3]

    assert_problem(first, 503, "upstream-unavailable")
    assert first[2]["Retry-After"] == "30"  # the default cool-down
    assert_problem(second, 503, "upstream-unavailable")
    assert int(second[2]["Retry-After"]) <= 30
    assert {entry["state"] for entry in health.values()} == {"open"}


async def test_a_backend_whose_deployment_is_missing_fails_its_callers_as_documented_until_its_circuit_opens(
    speech_host: SpeechHost, emulator: dict[str, Emulator]
) -> None:
    a, b = emulator["a"], emulator["b"]
    await a.call("POST", "/_emulator/handshake-faults", {"status": 404, "count": 1000})
    async with speech_host(**pool_settings(missing=(a.url, 1), good=(b.url, 2))) as client:
        refused = [await client.post(question(f"missing {n}")) for n in range(3)]  # the threshold (3)
        after = [await answered(client, question(f"after {n}")) for n in range(3)]
        health = await backends_health(client)
        log = client.host.log_path.read_text()  # type: ignore[union-attr]

    for outcome in refused:
        problem = assert_problem(outcome, 502, "upstream-failed")
        assert "deployment" in problem["detail"], problem
    assert [answer["backend"] for answer in after] == ["good"] * 3
    assert [entry["status"] for entry in await a.admissions()] == [404] * 3  # none after the circuit opened
    missing = health["missing"]
    assert (missing["state"], missing["consecutive_failures"]) == ("open", 3)
    assert "deployment" in missing["last_failure"] and health["good"]["state"] == "ok"
    assert log.count("backend missing is misconfigured") == 3, log
    assert "circuit open" in log


async def test_every_backend_at_quota_for_a_moment_the_request_waits_and_succeeds(
    speech_host: SpeechHost, emulator: dict[str, Emulator]
) -> None:
    a, b = emulator["a"], emulator["b"]
    for each in (a, b):
        await each.call(
            "POST", "/_emulator/handshake-faults", {"status": 429, "count": 1, "retry_after_ms": 300}
        )
    async with speech_host(**pool_settings(first=(a.url, 1), second=(b.url, 2))) as client:
        answer = await answered(client, question("waits"))

    assert answer["backend"] == "first"
    assert [(entry["outcome"], entry["retry_after_ms"]) for entry in await a.admissions()] == [
        ("refused", 300),
        ("admitted", None),
    ]
    assert [entry["outcome"] for entry in await b.admissions()] == ["refused"]


async def wait_for(read: Callable[[], Awaitable[object]], expected: object, seconds: float = 30.0) -> None:
    """Poll `await read()` until it returns `expected` (the emulator's counters have no event; the
    bound is a safety net for a busy machine)."""
    for _ in range(int(seconds / POLL_SECONDS)):
        if await read() == expected:
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"still not {expected!r} after {seconds} s")
