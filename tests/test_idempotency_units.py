"""`realtime_speech.idempotency` against a small in-memory record store (no storage, no service)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime_speech.errors import IdempotencyKeyReused, StorageUnavailable, UpstreamFailed
from realtime_speech.idempotency import IdempotencyKeys, record_name
from realtime_speech.models import AudioFacts, SpeechRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")


class MemoryStore:
    """Records by name; `save_record(only_if_new=True)` is one atomic check-and-write, as in Blob Storage."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.fail_saves = False

    async def load_record(self, blob_name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return self.records.get(blob_name)

    async def save_record(self, blob_name: str, record: dict[str, Any], *, only_if_new: bool = False) -> bool:
        await asyncio.sleep(0)
        if self.fail_saves:
            raise StorageUnavailable("Blob Storage could not be reached.")
        if only_if_new and blob_name in self.records:
            return False
        self.records[blob_name] = record
        return True


def answer(name: str) -> SpeechRecord:
    facts = AudioFacts(
        format="wav", encoding="pcm_s16le", sample_rate=24000, channels=1, bits_per_sample=16,
        duration_seconds=1.0, bytes=48044,
    )  # fmt: skip
    return SpeechRecord(
        request_id=name, transcript=name, container="audio", blob_name=f"{name}.wav", audio=facts,
        voice="alloy", session_id=None, response_id=None, status="completed",
    )  # fmt: skip


class Discarded:
    def __init__(self) -> None:
        self.names: list[str] = []

    async def __call__(self, record: SpeechRecord) -> None:
        self.names.append(record.blob_name)


async def test_a_new_key_is_answered_kept_and_then_replayed() -> None:
    store, discard = MemoryStore(), Discarded()
    keys = IdempotencyKeys(store)
    first = keys.claim("k1", "fp")
    assert first.owner and await first.earlier() is None
    assert await first.keep(answer("a"), discard) == (answer("a"), False)
    assert store.records[record_name("k1")]["fingerprint"] == "fp"
    assert "k1" not in str(store.records)  # the key itself is never stored

    again = keys.claim("k1", "fp")
    assert again.owner  # nothing in flight any more: it finds the stored answer
    assert await again.earlier() == answer("a") and discard.names == []


async def test_a_request_arriving_while_the_key_is_answered_waits_and_shares_it() -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner, waiter = keys.claim("k2", "fp"), keys.claim("k2", "fp")
    assert owner.owner and not waiter.owner
    assert await owner.earlier() is None
    waiting = asyncio.ensure_future(waiter.earlier())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await owner.keep(answer("b"), Discarded())
    assert await waiting == answer("b")


@pytest.mark.parametrize("in_flight", [True, False])
async def test_the_same_key_with_another_body_is_refused(in_flight: bool) -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner = keys.claim("k3", "fp")
    assert await owner.earlier() is None
    other = keys.claim("k3", "other") if in_flight else None
    await owner.keep(answer("c"), Discarded())
    other = other or keys.claim("k3", "other")
    with pytest.raises(IdempotencyKeyReused):
        await other.earlier()


async def test_only_successes_are_kept_and_waiters_see_the_failure() -> None:
    store = MemoryStore()
    keys = IdempotencyKeys(store)
    owner, waiter = keys.claim("k4", "fp"), keys.claim("k4", "fp")
    assert await owner.earlier() is None
    owner.fail(UpstreamFailed("The model did not answer."))
    with pytest.raises(UpstreamFailed, match="did not answer"):
        await waiter.earlier()
    assert store.records == {}
    retry = keys.claim("k4", "fp")
    assert retry.owner and await retry.earlier() is None  # a retry opens a new session


async def test_an_abandoned_owner_fails_its_waiters_with_a_retryable_error() -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner, waiter = keys.claim("k5", "fp"), keys.claim("k5", "fp")
    assert await owner.earlier() is None
    owner.fail(asyncio.CancelledError())
    with pytest.raises(UpstreamFailed, match="abandoned"):
        await waiter.earlier()


async def test_losing_the_race_to_another_instance_discards_this_answer() -> None:
    store, discard = MemoryStore(), Discarded()
    keys = IdempotencyKeys(store)
    owner = keys.claim("k6", "fp")
    assert await owner.earlier() is None
    # Another instance keeps its answer for the key meanwhile.
    store.records[record_name("k6")] = {
        "fingerprint": "fp",
        "result": answer("theirs").model_dump(mode="json"),
    }
    assert await owner.keep(answer("ours"), discard) == (answer("theirs"), True)
    assert discard.names == ["ours.wav"]


async def test_an_answer_that_cannot_be_kept_is_discarded() -> None:
    store, discard = MemoryStore(), Discarded()
    owner = IdempotencyKeys(store).claim("k7", "fp")
    assert await owner.earlier() is None
    store.fail_saves = True
    with pytest.raises(StorageUnavailable):
        await owner.keep(answer("lost"), discard)
    assert discard.names == ["lost.wav"]
