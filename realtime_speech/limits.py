"""How many questions one process answers at once (`MAX_CONCURRENT_SESSIONS`).

Each answer holds memory for its whole life (a spoken question's audio, the blocks being staged, the
events waiting for a slow reader), and the platform's own per-instance concurrency does not know
that. A request over the limit is refused at the edge with 429 and `Retry-After` before any of its
body is read, so a refused request costs next to nothing.
"""

from __future__ import annotations

from .errors import TooManySessions


class SessionLimit:
    """A counter of the answers in flight in this process, with a hard ceiling."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> SessionSlot:
        """A slot for one request until it is released, or TooManySessions (429) when none is free."""
        if self.active >= self.limit:
            limit = self.limit
            raise TooManySessions(f"This instance is answering {limit} questions, its limit; retry shortly.")
        self.active += 1
        return SessionSlot(self)

    def status(self) -> dict[str, int]:
        return {"active": self.active, "limit": self.limit}


class SessionSlot:
    """One request's place under the limit; releasing it twice releases it once."""

    def __init__(self, limit: SessionLimit) -> None:
        self._limit: SessionLimit | None = limit

    def release(self) -> None:
        if self._limit is not None:
            self._limit.active -= 1
            self._limit = None
