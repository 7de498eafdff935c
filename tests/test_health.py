"""`GET /api/health` (anyone) and `GET /api/status` (function key) against a dev host and the
stand-ins: dependencies checked for real, what a stranger may read, what the operator reads."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from devtools.stack import Stack
from realtime_speech.checks import CHECK_CACHE_SECONDS, DependencyChecks

from .conftest import SpeechHost

pytestmark = pytest.mark.asyncio(loop_scope="session")

POLL_SECONDS = 0.25
# What only the operator may read: the pool's hosts, deployments, weights and counts.
DEPLOYMENT = "realtime-deployment-x7"
BACKENDS = "AZURE_OPENAI_BACKENDS"


async def get(url: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def until(read: Callable[[], Awaitable[tuple[int, Any]]], status: int) -> Any:
    """Ask again until the answer has `status` (the checks are cached a few seconds)."""
    for _ in range(int(CHECK_CACHE_SECONDS * 6 / POLL_SECONDS)):
        got, report = await read()
        if got == status:
            return report
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"still {got} {report}, not {status}")


def pool_of_two(stack: Stack) -> dict[str, str]:
    backends = [
        {"name": "east", "endpoint": stack.openai_endpoint, "deployment": DEPLOYMENT, "priority": 1},
        {"name": "west", "endpoint": stack.openai_endpoint, "deployment": DEPLOYMENT, "weight": 7},
    ]
    return {BACKENDS: json.dumps(backends)}


async def test_the_probe_sees_storage_go_down_and_come_back(speech_host: SpeechHost, stack: Stack) -> None:
    async with speech_host() as client:
        probe = f"{client.host_url}/api/health?probe=true"
        status, report = await get(probe)
        assert (status, report) == (200, {"status": "ok", "checks": {"storage": "ok", "identity": "ok"}})

        await stack.azurite.astop()
        try:
            down = await until(lambda: get(probe), 503)
        finally:
            await stack.azurite.astart()
        up = await until(lambda: get(probe), 200)

    assert down["status"] == "degraded" and down["checks"]["identity"] == "ok"
    assert down["checks"]["storage"].startswith("Blob Storage could not be reached")
    assert str(stack.azurite.port) not in json.dumps(down) and "127.0.0.1" not in json.dumps(down)
    assert up == {"status": "ok", "checks": {"storage": "ok", "identity": "ok"}}


async def test_health_tells_anyone_only_what_is_safe(speech_host: SpeechHost, stack: Stack) -> None:
    async with speech_host(**pool_of_two(stack)) as client:
        plain = await get(f"{client.host_url}/api/health")
        probed = await get(f"{client.host_url}/api/health?probe=true")

    assert plain == (200, {"status": "ok"})
    assert probed == (200, {"status": "ok", "checks": {"storage": "ok", "identity": "ok"}})
    text = json.dumps([plain, probed])
    for secret in ("127.0.0.1", DEPLOYMENT, "east", "west", "weight", "in_flight", BACKENDS):
        assert secret not in text


async def test_status_needs_the_function_key_and_shows_each_backend(stack: Stack) -> None:
    key = secrets.token_urlsafe(16)
    host = stack.start_host(pool_of_two(stack), function_key=key)
    try:
        refused = await get(f"{host.url}/api/status")
        wrong = await get(f"{host.url}/api/status", **{"x-functions-key": "not-the-key"})
        status, report = await get(f"{host.url}/api/status", **{"x-functions-key": key})
        health = await get(f"{host.url}/api/health")  # anonymous, keys or not
    finally:
        host.stop()

    assert refused == (401, None) and wrong == (401, None)
    assert health == (200, {"status": "ok"})
    assert status == 200, report
    assert report["status"] == "ok" and report["checks"] == {"storage": "ok", "identity": "ok"}
    assert report["settings"][BACKENDS] == "set"
    assert report["settings"]["AUDIO_CONTAINER"] in ("set", "default")
    by_name = {entry["name"]: entry for entry in report["backends"]}
    assert by_name["east"]["host"] == by_name["west"]["host"] == "127.0.0.1"
    assert by_name["east"]["deployment"] == DEPLOYMENT and by_name["west"]["weight"] == 7
    assert {entry["state"] for entry in by_name.values()} == {"ok"}
    assert all(entry["in_flight"] == 0 for entry in by_name.values())
    assert key not in json.dumps(report) and "://" not in json.dumps(report)


async def test_a_missing_or_invalid_setting_is_misconfigured_named_never_shown(
    speech_host: SpeechHost,
) -> None:
    value = "61secret-looking-value"
    async with speech_host(AUDIO_STORAGE_ACCOUNT_URL=None, AUDIO_URL_TTL_MINUTES=value) as client:
        health = await get(f"{client.host_url}/api/health?probe=true")
        status = await get(f"{client.host_url}/api/status")

    for code, report in (health, status):
        assert code == 503 and report["status"] == "misconfigured"
        problems = " ".join(report["problems"])
        assert "AUDIO_STORAGE_ACCOUNT_URL" in problems and "AUDIO_URL_TTL_MINUTES" in problems
        assert value not in json.dumps(report) and "checks" not in report
    assert set(health[1]) == {"status", "problems"}
    assert status[1]["settings"]["AUDIO_STORAGE_ACCOUNT_URL"] == "required"


async def test_checks_run_once_per_cache_window_however_often_they_are_asked() -> None:
    calls = {"storage": 0, "identity": 0}

    def counted(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            calls[name] += 1
            if fail:
                raise RuntimeError("down")

        return check

    cached = DependencyChecks({"storage": counted("storage"), "identity": counted("identity", fail=True)})
    results = await asyncio.gather(*(cached.results() for _ in range(5)))
    results.append(await cached.results())
    assert results == [{"storage": "ok", "identity": "failed (RuntimeError)"}] * 6
    assert calls == {"storage": 1, "identity": 1}

    uncached = DependencyChecks({"storage": counted("storage")}, cache_seconds=0)
    await uncached.results()
    await uncached.results()
    assert calls["storage"] == 3
