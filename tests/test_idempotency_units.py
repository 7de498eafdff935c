"""`realtime_speech.idempotency` against a small in-memory record store (no storage, no service)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime_speech.errors import (
    DeadlineExceeded,
    IdempotencyKeyReused,
    ServiceError,
    StorageUnavailable,
    UpstreamFailed,
)
from realtime_speech.idempotency import IdempotencyKeys, record_name
from realtime_speech.models import AudioFacts, SpeechRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")


class MemoryStore:
    """Records by name; `save_record(only_if_new=True)` is one atomic check-and-write, as in Blob Storage."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.fail_saves = False
        self.lose_save_responses = 0
        """The next conditional writes land, but their callers are told the blob existed (the
        storage retry of a write whose response was lost gets 409)."""
        self.land_failed_saves = False
        """A failing write lands all the same (every response lost, the retries exhausted)."""

    async def load_record(self, blob_name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return self.records.get(blob_name)

    async def save_record(self, blob_name: str, record: dict[str, Any], *, only_if_new: bool = False) -> bool:
        await asyncio.sleep(0)
        if self.fail_saves:
            if self.land_failed_saves:
                self.records[blob_name] = record
            raise StorageUnavailable("Blob Storage could not be reached.")
        if only_if_new and blob_name in self.records:
            return False
        self.records[blob_name] = record
        if only_if_new and self.lose_save_responses:
            self.lose_save_responses -= 1
            return False
        return True

    async def delete(self, blob_name: str) -> None:
        await asyncio.sleep(0)
        self.records.pop(blob_name, None)


def answer(name: str) -> SpeechRecord:
    facts = AudioFacts(
        format="wav", encoding="pcm_s16le", sample_rate=24000, channels=1, bits_per_sample=16,
        duration_seconds=1.0, bytes=48044,
    )  # fmt: skip
    return SpeechRecord(
        request_id=name, transcript=name, container="audio", blob_name=f"{name}.wav", audio=facts,
        voice="alloy", session_id=None, response_id=None, status="completed",
    )  # fmt: skip


async def test_a_new_key_is_answered_kept_and_then_replayed() -> None:
    store = MemoryStore()
    keys = IdempotencyKeys(store)
    first = keys.claim("k1", "fp")
    assert first.owner and await first.earlier() is None
    assert await first.keep(answer("a")) == (answer("a"), False)
    assert store.records[record_name("k1")]["fingerprint"] == "fp"
    assert "k1" not in str(store.records)  # the key itself is never stored

    again = keys.claim("k1", "fp")
    assert again.owner  # nothing in flight any more: it finds the stored answer
    assert await again.earlier() == answer("a")


async def test_a_request_arriving_while_the_key_is_answered_waits_and_shares_it() -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner, waiter = keys.claim("k2", "fp"), keys.claim("k2", "fp")
    assert owner.owner and not waiter.owner
    assert await owner.earlier() is None
    waiting = asyncio.ensure_future(waiter.earlier())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await owner.keep(answer("b"))
    assert await waiting == answer("b")


@pytest.mark.parametrize("in_flight", [True, False])
async def test_the_same_key_with_another_body_is_refused(in_flight: bool) -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner = keys.claim("k3", "fp")
    assert await owner.earlier() is None
    other = keys.claim("k3", "other") if in_flight else None
    await owner.keep(answer("c"))
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


def kept_by_another_instance(store: MemoryStore, key: str) -> None:
    theirs = answer("theirs").model_dump(mode="json")
    store.records[record_name(key)] = {"fingerprint": "fp", "result": theirs}


async def test_losing_the_race_to_another_instance_returns_its_answer() -> None:
    store = MemoryStore()
    owner = IdempotencyKeys(store).claim("k6", "fp")
    assert await owner.earlier() is None
    kept_by_another_instance(store, "k6")  # meanwhile
    assert await owner.keep(answer("ours")) == (answer("theirs"), True)  # the caller discards its own
    assert await owner.withdraw(answer("ours")) is False  # and leaves the other's record alone
    assert store.records[record_name("k6")]["result"]["blob_name"] == "theirs.wav"


async def test_a_write_whose_response_was_lost_is_recognised_as_this_answers_own() -> None:
    """The conditional write landed but its response was lost; the storage retry was told 409. The
    record is this answer's: it is kept, not mistaken for another instance's (which would delete it)."""
    store = MemoryStore()
    keys = IdempotencyKeys(store)
    owner, waiter = keys.claim("k7", "fp"), keys.claim("k7", "fp")
    assert await owner.earlier() is None
    store.lose_save_responses = 1
    assert await owner.keep(answer("ours")) == (answer("ours"), False)
    assert await waiter.earlier() == answer("ours")
    assert store.records[record_name("k7")]["result"]["blob_name"] == "ours.wav"


@pytest.mark.parametrize("landed", [True, False])
async def test_a_failed_keep_is_withdrawn_whether_or_not_its_write_landed(landed: bool) -> None:
    """A keep that fails (storage gone, the deadline) may have written the record all the same; the
    answer is then deleted, so its record must go too, or every retry would replay a deleted answer."""
    store = MemoryStore()
    keys = IdempotencyKeys(store)
    owner = keys.claim("k11", "fp")
    assert await owner.earlier() is None
    store.fail_saves, store.land_failed_saves = True, landed
    with pytest.raises(StorageUnavailable):
        await owner.keep(answer("lost"))
    store.fail_saves = False
    assert await owner.withdraw(answer("lost")) is landed
    assert store.records == {}


async def fails_with(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    ("ending", "seen"),
    [
        (UpstreamFailed("The model stopped answering."), "stopped answering"),  # a failure
        (DeadlineExceeded("No complete answer within 8 s."), "within 8 s"),  # the deadline
        (None, "abandoned"),  # cancelled: the caller left
    ],
)
async def test_the_task_answering_a_key_settles_it_however_it_ends(
    ending: BaseException | None, seen: str
) -> None:
    """The answer runs in its own task once the session is open; when it ends without keeping an
    answer, waiters fail alike at once, a retry owns the key again and nothing stays in flight."""
    keys = IdempotencyKeys(MemoryStore())
    owner, waiter = keys.claim("k8", "fp"), keys.claim("k8", "fp")
    assert await owner.earlier() is None
    go = asyncio.Event()

    async def answer() -> None:
        await go.wait()
        if ending is not None:
            raise ending

    task = asyncio.ensure_future(answer())
    owner.settle_with(task)
    waiting = asyncio.ensure_future(waiter.earlier())
    if ending is None:
        task.cancel()
    else:
        go.set()
    with pytest.raises(ServiceError, match=seen):
        await waiting
    assert len(keys) == 0
    retry = keys.claim("k8", "fp")
    assert retry.owner and await retry.earlier() is None


async def test_a_task_cancelled_before_it_ran_still_settles_its_key() -> None:
    keys = IdempotencyKeys(MemoryStore())
    owner, waiter = keys.claim("k9", "fp"), keys.claim("k9", "fp")
    assert await owner.earlier() is None
    task = asyncio.ensure_future(fails_with(UpstreamFailed("never raised")))
    owner.settle_with(task)
    task.cancel()
    with pytest.raises(UpstreamFailed, match="abandoned"):
        await waiter.earlier()
    assert task.cancelled() and len(keys) == 0


async def test_a_task_that_kept_its_answer_leaves_it_for_the_waiters() -> None:
    store = MemoryStore()
    keys = IdempotencyKeys(store)
    owner, waiter = keys.claim("k10", "fp"), keys.claim("k10", "fp")
    assert await owner.earlier() is None
    task = asyncio.ensure_future(owner.keep(answer("kept")))
    owner.settle_with(task)
    assert await waiter.earlier() == answer("kept")
    await task
    assert len(keys) == 0
