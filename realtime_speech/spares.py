"""Spare sessions: realtime sessions opened before they are needed, so that a request skips the
WebSocket handshake (DNS, TCP, TLS, the upgrade with the Entra token, `session.created`).

`REALTIME_SPARE_SESSIONS` (0 to 8; 0: none, and nothing is opened before a request) is how many a
process keeps open, each connected with a fresh token and its `session.created` received, nothing
asked. They go to the backends a request would go to now (`BackendPool.next_choices`: never a cooling,
open or half-open one), spread by weight; each opening is counted by the pool as a request's attempt
(a 429 cools the backend, a failure counts toward its circuit). A failed opening is retried after a
backoff (1 s, doubling up to 30 s).

A request `take()`s a live spare instead of connecting (the pool counts it in flight from then on);
a replacement is opened in the background. A spare is closed and replaced at
`REALTIME_SPARE_MAX_AGE_SECONDS` after it opened, a minute before its token expires, when the service
closes it, or when its backend is no longer one a request would go to. A process that has taken no
request for `REALTIME_SPARE_IDLE_SECONDS` closes them all and opens none until the next request.
`close()` (the service's shutdown), or the cancellation of the keeper task when the event loop ends,
closes them with a close frame.

Everything runs on one event loop; `take()` does not await, so it never hands one spare to two requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .errors import ServiceError
from .pool import BackendPool, Lease, open_spare
from .realtime import RealtimeSession
from .settings import BackendSettings

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
TOKEN_MARGIN_SECONDS = 60.0

log = logging.getLogger("realtime_speech.spares")

OpenSession = Callable[[BackendSettings], Awaitable[RealtimeSession]]
TokenExpiry = Callable[[], Awaitable[float]]
"""When the token a connection opened now would carry expires, in Unix seconds."""


@dataclass(eq=False)
class _Spare:
    backend: BackendSettings
    session: RealtimeSession
    opened_at: float  # event-loop time
    expires_at: float  # event-loop time: max age or token expiry, the earlier
    watcher: asyncio.Task[None] = field(init=False)

    def dead(self) -> bool:
        """Closed by the service (a watcher cancelled at shutdown says nothing of the session)."""
        return self.watcher.done() and not self.watcher.cancelled()


class SpareSessions:
    """The process's spare sessions (module docstring)."""

    def __init__(
        self,
        pool: BackendPool,
        open_session: OpenSession,
        *,
        count: int,
        max_age_seconds: float,
        idle_seconds: float,
        token_expiry: TokenExpiry | None = None,
    ) -> None:
        self._pool = pool
        self._open_session = open_session
        self.count = count
        self._max_age = max_age_seconds
        self._idle = idle_seconds
        self._token_expiry = token_expiry
        self._spares: list[_Spare] = []
        self._opening: dict[str, int] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._last_request = -float("inf")
        self._failures = 0
        self._retry_at = -float("inf")
        self._first_fill = asyncio.Event()
        pool.spare_counts = self.status

    def start(self) -> None:
        """Begin keeping spares (idempotent; nothing when the count is 0). Counts as activity."""
        if self.count == 0:
            return
        self._last_request = _now()
        self._changed.set()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(), name="spare sessions")

    async def ready(self) -> None:
        """Start keeping spares and wait until the first ones were opened (or failed to open)."""
        self.start()
        if self.count:
            await self._first_fill.wait()

    def take(self, deployment: str | None = None) -> Lease[RealtimeSession] | None:
        """A live spare (of a backend of `deployment`, when given) as a request's lease, or None (then
        the request connects itself)."""
        if self.count == 0:
            return None
        self.start()
        for spare in list(self._spares):
            if spare.dead() or deployment not in (None, spare.backend.deployment):
                continue
            lease = self._pool.adopt(spare.backend, spare.session)
            if lease is not None:
                self._spares.remove(spare)
                spare.watcher.cancel()
                return lease
        return None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per backend name: the spares open now and the age in seconds of the oldest."""
        now = _now()
        report: dict[str, dict[str, Any]] = {}
        for spare in (spare for spare in self._spares if not spare.dead()):
            entry = report.setdefault(spare.backend.name, {"count": 0, "oldest_age_seconds": 0.0})
            entry["count"] += 1
            entry["oldest_age_seconds"] = max(entry["oldest_age_seconds"], round(now - spare.opened_at, 1))
        return report

    async def close(self) -> None:
        """Stop keeping spares and close every one."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self._retire(list(self._spares), "the process is shutting down")

    # --- the keeper ---------------------------------------------------------------------------------

    async def _keep(self) -> None:
        try:
            while True:
                self._changed.clear()
                now = _now()
                if now - self._last_request >= self._idle:
                    await self._retire(list(self._spares), "the process is idle")
                    await self._changed.wait()  # the next request
                    continue
                await self._retire(self._stale(now), "replaced")
                if now >= self._retry_at:
                    await self._fill()
                self._first_fill.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_due() - _now()):
                        await self._changed.wait()
        finally:
            await asyncio.shield(self._retire(list(self._spares), "the process is shutting down"))

    def _stale(self, now: float) -> list[_Spare]:
        choices = self._pool.next_choices()
        return [
            spare
            for spare in self._spares
            if spare.dead() or now >= spare.expires_at or spare.backend not in choices
        ]

    def _next_due(self) -> float:
        """When the keeper must look again even if nothing happens: a spare expires, the process
        turns idle, or a failed opening is retried."""
        due = [self._last_request + self._idle, *(spare.expires_at for spare in self._spares)]
        if len(self._spares) < self.count:
            due.append(self._retry_at)
        return min(due)

    async def _fill(self) -> None:
        """Open the missing spares at once, each to the chosen backend with the fewest per weight."""
        targets = []
        for _ in range(self.count - len(self._spares)):
            backend = self._least_served()
            if backend is None:
                self._note_failure()
                break
            self._opening[backend.name] = self._opening.get(backend.name, 0) + 1
            targets.append(backend)
        try:
            await asyncio.gather(*(self._open_one(backend) for backend in targets))
        finally:
            self._opening.clear()

    def _least_served(self) -> BackendSettings | None:
        choices = self._pool.next_choices()
        if not choices:
            return None

        def served(backend: BackendSettings) -> Fraction:
            held = sum(1 for spare in self._spares if spare.backend == backend)
            return Fraction(held + self._opening.get(backend.name, 0), backend.weight)

        return min(choices, key=served)

    async def _open_one(self, backend: BackendSettings) -> None:
        try:
            session = await open_spare(self._pool, backend, self._open_session)
        except Exception as exc:  # a ServiceError, counted by the pool; anything else, logged
            log.warning("spare session to backend %s not opened: %s", backend.name, _reason(exc))
            self._note_failure()
            return
        opened = _now()
        try:
            expires = opened + self._max_age
            if self._token_expiry is not None:
                token_left = await self._token_expiry() - time.time() - TOKEN_MARGIN_SECONDS
                expires = min(expires, opened + token_left)
        except Exception as exc:
            log.warning("spare session to backend %s dropped: %s", backend.name, _reason(exc))
            await session.close()
            self._note_failure()
            return
        spare = _Spare(backend, session, opened, expires)
        spare.watcher = asyncio.create_task(session.wait_closed(), name="spare session watcher")
        spare.watcher.add_done_callback(lambda _: self._changed.set())
        self._spares.append(spare)
        self._failures = 0
        log.info("spare session opened to backend %s", backend.name)

    def _note_failure(self) -> None:
        self._failures += 1
        wait = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (self._failures - 1))
        self._retry_at = _now() + wait

    async def _retire(self, spares: list[_Spare], why: str) -> None:
        """Close these spares (those the service closed are only forgotten)."""
        for spare in spares:
            self._spares.remove(spare)
            ending = "was closed by the service" if spare.dead() else f"closed: {why}"
            spare.watcher.cancel()
            log.info("spare session to backend %s %s", spare.backend.name, ending)
        await asyncio.gather(*(spare.session.close() for spare in spares))


def _now() -> float:
    return asyncio.get_running_loop().time()


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServiceError) else type(exc).__name__
