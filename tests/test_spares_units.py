"""Spare sessions without I/O: a real pool, sessions that are fakes the test closes as the service would."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from realtime_speech.pool import BackendPool
from realtime_speech.settings import BackendSettings
from realtime_speech.spares import TOKEN_MARGIN_SECONDS, SpareSessions

BACKEND = BackendSettings(name="a", endpoint="https://a.openai.azure.com")
WAIT_SECONDS = 30.0  # how long a condition may take before the test gives up


class FakeSession:
    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.closed_by_app = False

    async def wait_closed(self) -> None:
        await self.ended.wait()

    async def close(self) -> None:
        self.closed_by_app = True
        self.ended.set()


class Opener:
    """Opens fake sessions and lets the test wait for the n-th."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self._opened = asyncio.Event()

    async def __call__(self, backend: BackendSettings) -> Any:
        session = FakeSession()
        self.sessions.append(session)
        self._opened.set()
        return session

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_SECONDS):
            while len(self.sessions) < count:
                self._opened.clear()
                await self._opened.wait()


def make_spares(opener: Opener, **options: Any) -> SpareSessions:
    pool = BackendPool([BACKEND], failure_threshold=3, cooldown_seconds=30, rng=random.Random(1))
    settings = {"count": 1, "max_age_seconds": 1500.0, "idle_seconds": 3600.0, **options}
    return SpareSessions(pool, opener, **settings)


async def test_with_no_spares_nothing_starts_and_nothing_is_taken() -> None:
    opener = Opener()
    spares = make_spares(opener, count=0)
    spares.start()
    assert spares.take() is None
    await spares.ready()
    await spares.close()
    assert opener.sessions == []


async def test_a_spare_is_replaced_a_minute_before_its_token_expires() -> None:
    opener = Opener()

    async def token_expiry() -> float:
        return time.time() + TOKEN_MARGIN_SECONDS + 0.2

    spares = make_spares(opener, token_expiry=token_expiry)
    try:
        await spares.ready()
        await opener.wait_for(2)
        assert opener.sessions[0].closed_by_app
    finally:
        await spares.close()
    assert all(session.closed_by_app for session in opener.sessions)


async def test_a_spare_the_service_closes_is_replaced_and_never_handed_out() -> None:
    opener = Opener()
    spares = make_spares(opener, count=1)
    try:
        await spares.ready()
        first = opener.sessions[0]
        first.ended.set()  # the service closed it
        await opener.wait_for(2)
        lease = spares.take()
        assert lease is not None and lease.value is opener.sessions[1]
        lease.release()
    finally:
        await spares.close()


@pytest.mark.parametrize("count", [1, 3])
async def test_status_counts_the_spares_and_their_age(count: int) -> None:
    opener = Opener()
    spares = make_spares(opener, count=count)
    try:
        await spares.ready()
        await opener.wait_for(count)
        [entry] = spares.status().values()
        assert entry["count"] == count and entry["oldest_age_seconds"] >= 0
    finally:
        await spares.close()
    assert spares.status() == {}
