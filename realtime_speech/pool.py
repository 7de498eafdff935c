"""The pool of Azure OpenAI realtime backends: which deployment a session uses, and spill-over.

A session can only move before the model has answered: the pool decides at the WebSocket handshake.
Once a handshake succeeded, the session stays on that backend whatever happens later, and a failure
after the handshake never counts against the backend (it answered).

Choice. A request goes to the lowest `priority` group (1 first) that has an available backend. Within
the group it goes to the backend with the fewest sessions in flight relative to its `weight`
(in flight / weight, handshakes in progress included); ties are broken at random in proportion to
weight, so sequential traffic spreads by weight and concurrent traffic evens out the load.

Rate limits. A handshake refused with 429 makes the backend *cooling* until its `retry-after-ms`
or `Retry-After` (`DEFAULT_COOLING_SECONDS`, 1 s, when it gave neither); a cooling backend is not
chosen.

Circuit. A 5xx, a refused or a timed-out connection is a failure; so is a 404 (the deployment is
missing) or a 403 (the app's identity lacks the role on that resource) at the handshake: those say
that this backend is misconfigured, so each is logged as a warning naming the backend and the cause.
A successful handshake resets the count. After `AZURE_OPENAI_CIRCUIT_FAILURES` (default 3)
consecutive failures the backend's circuit is *open* for `AZURE_OPENAI_CIRCUIT_COOLDOWN_SECONDS`
(default 30): no request tries it. Then it is *half-open*: exactly one real request goes to it as a
probe while others skip it; the probe's success closes the circuit, its failure opens it again for
another cool-down. The status names the latest failure counted (`last_failure`) until a success.
A 401 is the app's own credential (one identity, one token audience for every backend), not one
backend's fault: it leaves the circuit as it was, as does any other error.

Attempts. A request makes up to `CONNECT_ATTEMPTS` (4) passes over the pool. In a pass it tries the
available backends in choice order, each at most once, moving on at once after a 429 or a 5xx or
connection failure. Between passes it waits as a single endpoint always did: full-jitter exponential
backoff (at most 0.4, 0.8, 1.6 s), or the endpoint's Retry-After when it asked for one (the shortest
asked in the pass), and at least until a backend is available again. 403, 404, 401 and any other
error that a retry cannot fix are raised at once (a 403 is `upstream-auth-failed`, a 404
`upstream-failed`): the caller hears what is wrong. No attempt starts, and no wait is made, that
would end after the request's deadline.

Nothing available. When no backend is available (each cooling, open or being probed), at a
request's arrival or after a pass, the request waits for the first one to come back if that is within
`MAX_WAIT_FOR_BACKEND_SECONDS` (2 s) and before its deadline. Otherwise (or when the one it waited
for went to another request as its probe) it fails at once: 429 `upstream-rate-limited` if one of
them is cooling from a rate limit, else 503 `upstream-unavailable`, with Retry-After the time until
the first of them is back.

A pool of one has nowhere to move a session, so it never cools and its circuit never opens: each
request makes up to 4 attempts with the backoff and Retry-After rules above.

The pool is process-wide and used from one event loop: its methods do not await, so a choice and the
marks it makes are atomic with respect to other tasks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, Generic, TypeVar

from . import incidents
from .errors import (
    BackendMisconfigured,
    DeadlineExceeded,
    ServiceError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from .settings import BackendSettings

T = TypeVar("T")

CONNECT_ATTEMPTS = 4
FIRST_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 4.0
# A request waits for a cooling or open backend only when it is back this soon; a 429 that names no
# wait cools its backend for less than that, so a request still makes its passes.
MAX_WAIT_FOR_BACKEND_SECONDS = 2.0
DEFAULT_COOLING_SECONDS = 1.0

log = logging.getLogger("realtime_speech.pool")


@dataclass(eq=False)
class _Backend:
    settings: BackendSettings
    in_flight: int = 0
    failures: int = 0
    cooling_until: float = -math.inf
    open_until: float | None = None  # None: closed; once passed, half-open
    probing: bool = False
    last_failure: str | None = None  # the detail of the latest failure counted, until a success

    @property
    def name(self) -> str:
        return self.settings.name

    def cooling(self, now: float) -> bool:
        return now < self.cooling_until

    def circuit_open(self, now: float) -> bool:
        return self.open_until is not None and now < self.open_until

    def half_open(self, now: float) -> bool:
        return self.open_until is not None and now >= self.open_until

    def available(self, now: float) -> bool:
        return (
            not self.cooling(now)
            and not self.circuit_open(now)
            and not (self.half_open(now) and self.probing)
        )

    def back_at(self, now: float) -> float:
        """When it can be chosen again; a backend being probed counts as back now."""
        return max(now, self.cooling_until, now if self.open_until is None else self.open_until)

    def load(self) -> Fraction:
        return Fraction(self.in_flight, self.settings.weight)


@dataclass(frozen=True)
class _Slot:
    """One attempt on one backend; `probe` when it is the half-open circuit's single probe."""

    backend: _Backend
    probe: bool


class Lease(Generic[T]):
    """A session on one backend: `value` is what `open_backend` returned, `name` the backend's name.

    `release()` (or leaving `with lease:`) ends the session's in-flight count; it is idempotent.
    """

    def __init__(self, pool: BackendPool, backend: BackendSettings, value: T) -> None:
        self._pool = pool
        self.backend = backend
        self.value = value
        self._released = False

    @property
    def name(self) -> str:
        return self.backend.name

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self.backend.name)

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc: object) -> None:
        self.release()


class BackendPool:
    """The state of every backend (in flight, cooling, circuit) and the choice among them."""

    def __init__(
        self,
        backends: Sequence[BackendSettings],
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a backend pool needs at least one backend")
        if len({backend.name for backend in backends}) != len(backends):
            raise ValueError("backend names must be unique")
        self._backends = [_Backend(settings) for settings in backends]
        self._by_name = {backend.name: backend for backend in self._backends}
        self._failure_threshold = failure_threshold
        self._cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._rng = rng or random.Random()
        self._spills = len(backends) > 1
        self.spare_counts: Callable[[], Mapping[str, Mapping[str, Any]]] = dict
        """Per backend name, its spare sessions (`spares.SpareSessions.status`), for `status()`."""

    def __len__(self) -> int:
        return len(self._backends)

    def status(self) -> list[dict[str, Any]]:
        """Per backend: name, host, deployment, priority, weight, state (`ok`, `cooling`, `open`,
        `half-open`; cooling and open with `until` in ISO-8601 UTC and `seconds_left`), sessions in
        flight, consecutive failures, while there are any `last_failure` (the latest one's detail, e.g.
        a missing deployment), and `spares` (count, age in seconds of the oldest; None: none). Never a
        full endpoint URL, never a credential."""
        now, wall = self._clock(), datetime.now(UTC)
        spares = self.spare_counts()
        return [
            {
                **self._status_of(backend, now, wall),
                "spares": dict(spares.get(backend.name, {"count": 0, "oldest_age_seconds": None})),
            }
            for backend in self._backends
        ]

    def _status_of(self, backend: _Backend, now: float, wall: datetime) -> dict[str, Any]:
        settings = backend.settings
        entry: dict[str, Any] = {
            "name": settings.name,
            "host": settings.endpoint.host,
            "deployment": settings.deployment,
            "priority": settings.priority,
            "weight": settings.weight,
            "state": _state(backend, now),
            "in_flight": backend.in_flight,
            "consecutive_failures": backend.failures,
        }
        if entry["state"] in ("cooling", "open"):
            left = backend.back_at(now) - now
            entry["until"] = _iso_utc(wall + timedelta(seconds=left))
            entry["seconds_left"] = round(left, 1)
        if backend.last_failure is not None:
            entry["last_failure"] = backend.last_failure
        return entry

    # --- used by spare sessions (see `spares`) ------------------------------------------------------

    def next_choices(self) -> list[BackendSettings]:
        """The backends a request would go to now: the available ones of the first priority group
        (none that is cooling, open or half-open: a probe must be a request's)."""
        now = self._clock()
        ready = [b for b in self._backends if b.available(now) and not b.half_open(now)]
        first = min((b.settings.priority for b in ready), default=None)
        return [b.settings for b in ready if b.settings.priority == first]

    def adopt(self, backend: BackendSettings, value: T) -> Lease[T] | None:
        """A session opened earlier on `backend` becomes a request's lease, counted in flight, if the
        backend is one a request would go to now; else None."""
        if backend not in self.next_choices():
            return None
        self._by_name[backend.name].in_flight += 1
        return Lease(self, backend, value)

    # --- used by `connect` and `Lease` -------------------------------------------------------------

    def deployments(self) -> list[str]:
        """The distinct deployment names of the pool, in order of first appearance."""
        return list(dict.fromkeys(backend.settings.deployment for backend in self._backends))

    def _of(self, deployment: str | None) -> list[_Backend]:
        """The backends of `deployment` (all of them for None)."""
        return [b for b in self._backends if deployment in (None, b.settings.deployment)]

    def _take(self, exclude: set[str], deployment: str | None = None) -> _Slot | None:
        """Choose an available backend (of `deployment`, when given) not in `exclude` and count the
        attempt in flight; None if there is none."""
        now = self._clock()
        candidates = [b for b in self._of(deployment) if b.available(now) and b.name not in exclude]
        if not candidates:
            return None
        first = min(b.settings.priority for b in candidates)
        group = [b for b in candidates if b.settings.priority == first]
        least = min(b.load() for b in group)
        tied = [b for b in group if b.load() == least]
        backend = self._rng.choices(tied, weights=[b.settings.weight for b in tied])[0]
        probe = backend.half_open(now)
        backend.in_flight += 1
        backend.probing = backend.probing or probe
        return _Slot(backend, probe)

    def _connected(self, slot: _Slot) -> None:
        backend = slot.backend
        self._end_probe(slot)
        if backend.open_until is not None:
            log.info("backend %s: circuit closed", backend.name)
        backend.failures = 0
        backend.last_failure = None
        backend.open_until = None

    def _refused(self, slot: _Slot, error: ServiceError | None) -> None:
        """An attempt ended without a session: mark what the error says about the backend."""
        backend = slot.backend
        backend.in_flight -= 1
        self._end_probe(slot)
        if isinstance(error, UpstreamRateLimited):
            self._cool(backend, error.asked_retry_after)
        elif isinstance(error, BackendMisconfigured):
            log.warning("backend %s is misconfigured: %s", backend.name, error.detail)
            self._count_failure(backend, error)
        elif isinstance(error, UpstreamUnavailable):
            self._count_failure(backend, error)

    def _cool(self, backend: _Backend, retry_after: float | None) -> None:
        if not self._spills:
            return
        seconds = DEFAULT_COOLING_SECONDS if retry_after is None else retry_after
        backend.cooling_until = max(backend.cooling_until, self._clock() + seconds)
        log.warning("backend %s is rate limited: cooling for %.1f s", backend.name, seconds)

    def _count_failure(self, backend: _Backend, error: ServiceError) -> None:
        backend.failures += 1
        backend.last_failure = error.detail
        if self._spills and backend.failures >= self._failure_threshold:
            backend.open_until = self._clock() + self._cooldown_seconds
            log.warning(
                "backend %s: circuit open for %.0f s after %d consecutive failures",
                backend.name,
                self._cooldown_seconds,
                backend.failures,
            )

    def _end_probe(self, slot: _Slot) -> None:
        if slot.probe:
            slot.backend.probing = False

    def _release(self, name: str) -> None:
        self._by_name[name].in_flight -= 1

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        return self._rng.uniform(0, min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**attempt))

    def _wait_for_backend(self, deployment: str | None = None) -> float:
        """Seconds until a backend (of `deployment`, when given) can be chosen (0 when one can now).
        Raises the 429/503 of the module docstring when that is more than
        `MAX_WAIT_FOR_BACKEND_SECONDS` away."""
        now = self._clock()
        backends = self._of(deployment)
        if any(backend.available(now) for backend in backends):
            return 0.0
        wait = min(backend.back_at(now) for backend in backends) - now
        if wait > MAX_WAIT_FOR_BACKEND_SECONDS:
            raise self._none_available_error(deployment)
        return wait

    def _none_available_error(self, deployment: str | None = None) -> ServiceError:
        now = self._clock()
        backends = self._of(deployment)
        wait = min(backend.back_at(now) for backend in backends) - now
        if any(backend.cooling(now) for backend in backends):
            return UpstreamRateLimited(
                f"Every model backend is rate limited or unavailable; the first is back in {wait:.0f} s.",
                retry_after=wait,
            )
        return UpstreamUnavailable(
            f"No model backend can be reached (every circuit is open); the first is back in {wait:.0f} s.",
            retry_after=wait,
        )


def _iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _state(backend: _Backend, now: float) -> str:
    if backend.circuit_open(now):
        return "open"
    if backend.cooling(now):
        return "cooling"
    return "half-open" if backend.half_open(now) else "ok"


async def connect(
    pool: BackendPool,
    open_backend: Callable[[BackendSettings], Awaitable[T]],
    deadline: float,
    *,
    deployment: str | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> Lease[T]:
    """Open a session on the best available backend (of `deployment`, when given: a model's
    backends), spilling over on refusals (module docstring).

    `open_backend` performs one handshake and raises a `ServiceError` when it fails (its
    `asked_retry_after` is the endpoint's Retry-After); `deadline` is event-loop time.
    The caller must `release()` the lease when the session ends.
    """
    loop = asyncio.get_running_loop()
    last: ServiceError | None = None
    asked = 0.0  # the backoff or Retry-After that the previous pass asked for
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        wait = max(asked, pool._wait_for_backend(deployment))
        if attempt > 1 or wait:
            if loop.time() + wait >= deadline:
                raise last or pool._none_available_error(deployment)
            await sleep(wait)
        tried: set[str] = set()
        waits: list[float] = []
        while loop.time() < deadline and (slot := pool._take(tried, deployment)) is not None:
            tried.add(slot.backend.name)
            try:
                value = await _attempt(pool, slot, open_backend)
            except ServiceError as exc:
                last = exc
                incidents.seen(exc)
                if not isinstance(last, UpstreamRateLimited | UpstreamUnavailable):
                    raise
                retry_after = last.asked_retry_after
                waits.append(retry_after if retry_after is not None else pool._backoff(attempt))
                continue
            return Lease(pool, slot.backend.settings, value)
        if loop.time() >= deadline:
            raise last or DeadlineExceeded("The deadline passed before the model could be reached.")
        if last is None or not tried:  # the backend waited for went to another request (as its probe)
            raise pool._none_available_error(deployment)
        # Every available backend was tried in this pass and refused.
        if attempt == CONNECT_ATTEMPTS:
            raise last from None
        asked = min(waits)
    raise AssertionError("unreachable")


async def open_spare(
    pool: BackendPool, backend: BackendSettings, open_backend: Callable[[BackendSettings], Awaitable[T]]
) -> T:
    """One handshake on `backend` for a session held in advance, counted as a request's attempt (a 429
    cools the backend, a failure counts toward its circuit). Once open it is not in flight."""
    slot = _Slot(pool._by_name[backend.name], probe=False)
    slot.backend.in_flight += 1
    value = await _attempt(pool, slot, open_backend)
    pool._release(backend.name)
    return value


async def _attempt(
    pool: BackendPool, slot: _Slot, open_backend: Callable[[BackendSettings], Awaitable[T]]
) -> T:
    """One handshake; the pool learns how it went (a cancelled or crashed one only ends its count)."""
    try:
        value = await open_backend(slot.backend.settings)
    except BaseException as exc:
        pool._refused(slot, exc if isinstance(exc, ServiceError) else None)
        raise
    pool._connected(slot)
    return value
