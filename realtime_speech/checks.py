"""Each dependency checked for real, for `GET /api/health?probe=true` and `GET /api/status`.

A probe reaches the dependencies themselves (a storage call, a token), so the results are kept for
`CHECK_CACHE_SECONDS` and probes that arrive meanwhile share one run: however often the endpoints
are called, the dependencies see at most one check each per that many seconds and process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from .errors import ServiceError

CHECK_CACHE_SECONDS = 5.0
OK = "ok"


class DependencyChecks:
    """Named checks, each an async call that raises when its dependency is not usable."""

    def __init__(
        self,
        checks: Mapping[str, Callable[[], Awaitable[None]]],
        cache_seconds: float = CHECK_CACHE_SECONDS,
    ) -> None:
        self._checks = dict(checks)
        self._cache_seconds = cache_seconds
        self._run: asyncio.Task[dict[str, str]] | None = None
        self._started = 0.0

    async def results(self) -> dict[str, str]:
        """Each check's outcome, "ok" or a sentence naming what failed; at most `cache_seconds` old."""
        now = asyncio.get_running_loop().time()
        run = self._run
        if run is None or (run.done() and now - self._started >= self._cache_seconds):
            self._run = run = asyncio.ensure_future(self._check_all())
            self._started = now
        return dict(await asyncio.shield(run))  # a caller who leaves does not cancel the others' run

    async def _check_all(self) -> dict[str, str]:
        outcomes = await asyncio.gather(*(check() for check in self._checks.values()), return_exceptions=True)
        return {
            name: OK if not isinstance(outcome, BaseException) else describe(outcome)
            for name, outcome in zip(self._checks, outcomes, strict=True)
        }


def describe(error: BaseException) -> str:
    """A failure as a sentence safe to show: a ServiceError's detail, else only the error's type."""
    return str(error) if isinstance(error, ServiceError) else f"failed ({type(error).__name__})"
