"""The user-delegation key window (`realtime_speech.storage.DelegationKeys`) with an injected clock and a
recorded key fetch: what is asked for, when a new key is fetched, what a URL signed with it may live."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import UserDelegationKey

from realtime_speech.errors import StorageUnavailable
from realtime_speech.storage import DelegationKeys

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = datetime(2026, 12, 1, 8, 0, 0, 250_000, tzinfo=UTC)
SEVEN_DAYS = timedelta(days=7)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Fetches:
    """Records each key request (start, expiry); fails while `failing`."""

    def __init__(self) -> None:
        self.asked: list[tuple[datetime, datetime]] = []
        self.failing = False

    async def __call__(self, start: datetime, expiry: datetime) -> UserDelegationKey:
        await asyncio.sleep(0)
        if self.failing:
            raise StorageUnavailable("Blob Storage refused to get a user delegation key (HTTP 503).")
        self.asked.append((start, expiry))
        key = UserDelegationKey()
        key.value = f"key-{len(self.asked)}"
        return key


def keys_for(ttl: timedelta) -> tuple[DelegationKeys, Clock, Fetches]:
    clock, fetches = Clock(), Fetches()
    return DelegationKeys(fetches, ttl, clock), clock, fetches


async def test_a_short_url_lifetime_gets_its_whole_lifetime_and_one_key_per_window() -> None:
    keys, clock, fetches = keys_for(timedelta(minutes=60))
    first = await keys.signing()
    now = T0.replace(microsecond=0)
    assert fetches.asked == [(now - timedelta(minutes=5), now + timedelta(hours=2))]
    assert (first.start, first.expiry) == (now - timedelta(minutes=5), now + timedelta(minutes=60))
    clock.now = T0 + timedelta(minutes=59)
    later = await keys.signing()
    assert later.key is first.key and len(fetches.asked) == 1
    assert later.expiry == (clock.now + timedelta(minutes=60)).replace(microsecond=0)
    clock.now = T0 + timedelta(minutes=61)
    assert (await keys.signing()).key.value == "key-2"


@pytest.mark.parametrize("ttl_minutes", [10080, 9960])
async def test_a_long_url_lifetime_asks_less_than_seven_days_from_a_start_in_the_past(
    ttl_minutes: int,
) -> None:
    """Storage refuses a key expiring more than 7 days after its own clock's now: a local clock a
    little ahead must not fail every key request. The URLs then live until the key's end."""
    ttl = timedelta(minutes=ttl_minutes)
    keys, clock, fetches = keys_for(ttl)
    first = await keys.signing()
    [(start, expiry)] = fetches.asked
    assert start <= T0 - timedelta(minutes=4)
    assert expiry - T0 <= SEVEN_DAYS - timedelta(minutes=30)
    assert first.expiry == min(T0.replace(microsecond=0) + ttl, expiry)
    clock.now = T0 + timedelta(minutes=30)
    again = await keys.signing()
    assert again.key is first.key and len(fetches.asked) == 1  # not one key per URL
    now = clock.now.replace(microsecond=0)  # a SAS has whole seconds
    assert again.expiry == min(now + ttl, expiry) and again.expiry - now >= timedelta(days=6, hours=22)
    clock.now = T0 + timedelta(hours=1, minutes=1)
    assert (await keys.signing()).key.value == "key-2"


@pytest.mark.parametrize("ttl_minutes", [1, 60, 1440, 8580, 8640, 10019, 10080])
async def test_no_url_outlives_its_key_and_no_key_asks_for_seven_days(ttl_minutes: int) -> None:
    keys, clock, fetches = keys_for(timedelta(minutes=ttl_minutes))
    for step in range(0, 24 * 60, 7):  # a day of URLs, one every 7 minutes
        clock.now = T0 + timedelta(minutes=step)
        signing = await keys.signing()
        start, expiry = fetches.asked[-1]
        assert start < clock.now - timedelta(minutes=4) and expiry - start < SEVEN_DAYS
        now = clock.now.replace(microsecond=0)
        assert signing.start <= now <= signing.expiry <= expiry
        assert signing.expiry - now >= min(timedelta(minutes=ttl_minutes), timedelta(days=6, hours=22))
    starts = [start for start, _ in fetches.asked]
    assert all(later - earlier >= timedelta(hours=1) for earlier, later in itertools.pairwise(starts))
    assert len(starts) <= 24


async def test_a_failed_key_request_is_asked_again_by_the_next_url() -> None:
    keys, _, fetches = keys_for(timedelta(minutes=60))
    fetches.failing = True
    with pytest.raises(StorageUnavailable):
        await keys.signing()
    fetches.failing = False
    assert (await keys.signing()).key.value == "key-1"


async def test_urls_signed_together_share_one_key_request() -> None:
    keys, _, fetches = keys_for(timedelta(minutes=60))
    signed = await asyncio.gather(*(keys.signing() for _ in range(5)))
    assert len(fetches.asked) == 1 and len({id(signing.key) for signing in signed}) == 1
