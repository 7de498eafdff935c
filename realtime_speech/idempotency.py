"""`Idempotency-Key`: the first successful answer for a key is kept and handed out again instead of
opening another model session.

The answer is kept in a record (`idempotency/<sha256 of the key>.json`, with a fingerprint of the
request; the key itself is never stored). Within one process, requests with a key that is still being
answered wait for that answer and share it. Across instances, the record is written only if none
exists (one conditional request), so every caller of a key gets the same answer; two instances that
start the same key at the same moment may each pay for a session, and the later one discards its own.

This module knows records, not how answers are made: the service claims a key, asks the claim for an
earlier answer and, when there is none, hands the claim the task that produces one
(`Claim.settle_with`, so that the key is settled however that task ends) and the answer to
`Claim.keep`. A keep that fails may have written the record all the same (its response lost):
`Claim.withdraw` removes it if it holds that answer, so no record outlives the answer it names.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Protocol

from .errors import IdempotencyKeyReused, StorageUnavailable, UpstreamFailed
from .models import SpeechRecord

IDEMPOTENCY_PREFIX = "idempotency/"


class RecordStore(Protocol):
    """Where records live (the audio container, or a dict in the tests)."""

    async def load_record(self, blob_name: str) -> dict[str, Any] | None: ...

    async def save_record(
        self, blob_name: str, record: dict[str, Any], *, only_if_new: bool = False
    ) -> bool: ...

    async def delete(self, blob_name: str) -> None: ...


def record_name(key: str) -> str:
    """Where the first answer for an idempotency key is kept."""
    return f"{IDEMPOTENCY_PREFIX}{hashlib.sha256(key.encode()).hexdigest()}.json"


class IdempotencyKeys:
    """The keys this process is answering right now, and the records of those answered before."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store
        self._in_flight: dict[str, asyncio.Future[tuple[str, SpeechRecord]]] = {}

    def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim `key` for a request whose body has `fingerprint`. Synchronous, so that of two requests
        arriving together exactly one owns the key; the other waits for the owner's answer."""
        first = self._in_flight.get(key)
        if first is not None and not first.done():  # a settled one is on its way out of the map
            return Claim(self._store, key, fingerprint, first, owner=False)
        first = self._in_flight[key] = asyncio.get_running_loop().create_future()
        first.add_done_callback(lambda done: self._forget(key, done))
        return Claim(self._store, key, fingerprint, first, owner=True)

    def __len__(self) -> int:
        """How many keys are being answered in this process now."""
        return len(self._in_flight)

    def _forget(self, key: str, settled: asyncio.Future[tuple[str, SpeechRecord]]) -> None:
        if self._in_flight.get(key) is settled:  # not a newer claim's
            del self._in_flight[key]


class Claim:
    """One request's hold on a key. The owner answers (or finds the stored answer) and settles the
    key for everyone waiting on it; the others only wait."""

    def __init__(
        self,
        store: RecordStore,
        key: str,
        fingerprint: str,
        first: asyncio.Future[tuple[str, SpeechRecord]],
        *,
        owner: bool,
    ) -> None:
        self._store = store
        self._name = record_name(key)
        self._fingerprint = fingerprint
        self._first = first
        self.owner = owner

    async def earlier(self) -> SpeechRecord | None:
        """The key's earlier answer (in flight in this process, or stored), or None when this request
        must answer. Raises IdempotencyKeyReused when that answer was for another request body."""
        if self.owner:
            kept = await self._store.load_record(self._name)
            if kept is None:
                return None
            self._settle(kept["fingerprint"], SpeechRecord.model_validate(kept["result"]))
        fingerprint, record = await asyncio.shield(self._first)
        if fingerprint != self._fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was first used with a different request body; "
                "use a new key for a new request."
            )
        return record

    async def keep(self, record: SpeechRecord) -> tuple[SpeechRecord, bool]:
        """Keep the owner's new answer for the key, unless another instance kept one first. Returns the
        kept answer and whether it is another instance's (the caller then discards its own). When this
        raises, the write may have landed: the caller discards its answer and `withdraw`s it."""
        document = {"fingerprint": self._fingerprint, "result": record.model_dump(mode="json")}
        if await self._store.save_record(self._name, document, only_if_new=True):
            self._settle(self._fingerprint, record)
            return record, False
        kept = await self._store.load_record(self._name)
        if kept is None:
            raise StorageUnavailable("The idempotency record changed while it was read; retry.")
        if _holds(kept, record):  # this write landed; its response was lost and the retry told 409
            self._settle(self._fingerprint, record)
            return record, False
        first = SpeechRecord.model_validate(kept["result"])
        self._settle(kept["fingerprint"], first)
        if kept["fingerprint"] != self._fingerprint:
            raise IdempotencyKeyReused("This Idempotency-Key was used by a concurrent, different request.")
        return first, True

    async def withdraw(self, record: SpeechRecord) -> bool:
        """Remove the key's record if it holds `record` (a keep that failed may have written it, and
        the answer it names is being deleted). Returns whether there was one to remove."""
        kept = await self._store.load_record(self._name)
        if kept is None or not _holds(kept, record):
            return False
        await self._store.delete(self._name)
        return True

    def settle_with(self, answering: asyncio.Future[Any]) -> None:
        """Hand the key to the task that answers it: however that task ends, the key is settled (by
        `keep` when it succeeds; here, when it fails, its caller leaves or the deadline cuts in), so
        that nobody waits on an owner that is gone and the key leaves the in-flight map."""
        answering.add_done_callback(self._settle_from)

    def _settle_from(self, answering: asyncio.Future[Any]) -> None:
        if answering.cancelled():
            self.fail(asyncio.CancelledError())
        elif (error := answering.exception()) is not None:
            self.fail(error)

    def fail(self, error: BaseException) -> None:
        """The owner could not answer: the requests waiting on the key fail alike (only successes are
        kept, so a retry opens a new session)."""
        if self.owner and not self._first.done():
            if isinstance(error, asyncio.CancelledError):  # the owner's caller left
                error = UpstreamFailed(
                    "The first request with this Idempotency-Key was abandoned before its answer was "
                    "complete; retry."
                )
            self._first.set_exception(error)
            self._first.exception()  # retrieved: nobody may be waiting

    def _settle(self, fingerprint: str, record: SpeechRecord) -> None:
        if not self._first.done():
            self._first.set_result((fingerprint, record))


def _holds(kept: dict[str, Any], record: SpeechRecord) -> bool:
    """Whether a key's stored record is `record` (its audio's name is unique to one answer)."""
    return kept["result"].get("blob_name") == record.blob_name
