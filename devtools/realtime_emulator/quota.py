"""Quota at the handshake, as an Azure deployment enforces it, and the log of every handshake's outcome.

Two limits, each off when None: ``max_sessions`` concurrent sessions, and ``requests_per_minute``
admitted handshakes in the rolling last 60 seconds. A handshake past a limit is refused with 429;
the wait it asks for (``retry-after-ms``, and ``Retry-After`` in whole seconds rounded up) is the time
until the oldest admission leaves the minute for the per-minute limit, and ``CONCURRENCY_RETRY_AFTER``
for the concurrency limit.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

WINDOW_SECONDS = 60.0
CONCURRENCY_RETRY_AFTER = 1
QUOTA_FIELDS = ("max_sessions", "requests_per_minute")


@dataclass
class Quota:
    max_sessions: int | None = None
    requests_per_minute: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuotaRefusal:
    reason: Literal["max_sessions", "requests_per_minute"]
    retry_after_ms: int
    message: str


def whole_seconds(milliseconds: int) -> int:
    """A wait in milliseconds as ``Retry-After`` says it: whole seconds, rounded up."""
    return math.ceil(milliseconds / 1000)


@dataclass(frozen=True)
class Admission:
    """One handshake's outcome: ``time`` in Unix seconds, ``status`` the HTTP status answered (101 when
    admitted), ``reason`` why it was refused, the wait it asked for (``retry_after_ms``, and
    ``retry_after`` as ``Retry-After`` said it), ``open_sessions`` the sessions open when it was decided."""

    time: float
    outcome: Literal["admitted", "refused"]
    status: int
    reason: str | None
    retry_after_ms: int | None
    open_sessions: int

    def as_json(self) -> dict[str, Any]:
        retry_after = None if self.retry_after_ms is None else whole_seconds(self.retry_after_ms)
        return {**asdict(self), "retry_after": retry_after}


@dataclass
class Admissions:
    """The quota, the admissions inside the rolling minute, and the log of every outcome."""

    quota: Quota = field(default_factory=Quota)
    log: list[Admission] = field(default_factory=list)
    _admitted_at: deque[float] = field(default_factory=deque)

    def check(self, open_sessions: int, now: float) -> QuotaRefusal | None:
        """The refusal a handshake at ``now`` gets, or None when the quota admits it."""
        limit = self.quota.max_sessions
        if limit is not None and open_sessions >= limit:
            return QuotaRefusal(
                "max_sessions",
                CONCURRENCY_RETRY_AFTER * 1000,
                f"Requests to the Realtime API have exceeded the limit of {limit} concurrent sessions of "
                f"your current pricing tier. Please retry after {CONCURRENCY_RETRY_AFTER} second.",
            )
        limit = self.quota.requests_per_minute
        recent = self._recent(now)
        if limit is not None and len(recent) >= limit:
            wait_ms = max(math.ceil((recent[-limit] + WINDOW_SECONDS - now) * 1000), 1) if limit else 1000
            return QuotaRefusal(
                "requests_per_minute",
                wait_ms,
                "Requests to the Realtime API have exceeded the call rate limit of your current pricing "
                f"tier. Please retry after {whole_seconds(wait_ms)} seconds.",
            )
        return None

    def admitted(self, open_sessions: int, now: float) -> None:
        self._admitted_at.append(now)
        self.log.append(Admission(now, "admitted", 101, None, None, open_sessions))

    def refused(
        self, status: int, reason: str, retry_after_ms: int | None, open_sessions: int, now: float
    ) -> None:
        self.log.append(Admission(now, "refused", status, reason, retry_after_ms, open_sessions))

    def admitted_last_minute(self, now: float) -> int:
        return len(self._recent(now))

    def forget(self) -> int:
        """Clear the log and the rolling minute; returns how many entries the log had."""
        cleared = len(self.log)
        self.log.clear()
        self._admitted_at.clear()
        return cleared

    def _recent(self, now: float) -> deque[float]:
        while self._admitted_at and self._admitted_at[0] <= now - WINDOW_SECONDS:
            self._admitted_at.popleft()
        return self._admitted_at
