"""The backend pool without I/O: choice, spread, cooling, circuit, spill-over, deadlines and a pool of one.

A fake clock drives the pool's state; fake `open_backend` callables raise the project's error types.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from realtime_speech.errors import (
    BackendAccessDenied,
    DeadlineExceeded,
    DeploymentNotFound,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from realtime_speech.pool import (
    CONNECT_ATTEMPTS,
    DEFAULT_COOLING_SECONDS,
    MAX_WAIT_FOR_BACKEND_SECONDS,
    BackendPool,
    Lease,
    connect,
    open_spare,
)
from realtime_speech.settings import BackendSettings

THRESHOLD = 3
COOLDOWN = 30.0
Failure = Callable[[], Exception]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeOpen:
    """An `open_backend` that records each attempt and fails as told; otherwise returns a session."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._next: dict[str, list[Failure]] = defaultdict(list)
        self._always: dict[str, Failure] = {}
        self.gate: dict[str, asyncio.Event] = {}  # attempts on that backend wait for it
        self.at_gate = asyncio.Event()  # set when an attempt waits at a gate

    def fail_next(self, name: str, failure: Failure, times: int = 1) -> None:
        self._next[name].extend([failure] * times)

    def fail_always(self, name: str, failure: Failure) -> None:
        self._always[name] = failure

    def heal(self, name: str) -> None:
        self._always.pop(name, None)

    async def __call__(self, backend: BackendSettings) -> str:
        self.attempts.append(backend.name)
        await asyncio.sleep(0)
        if backend.name in self.gate:
            self.at_gate.set()
            await self.gate[backend.name].wait()
        failure = (
            self._next[backend.name].pop(0) if self._next[backend.name] else self._always.get(backend.name)
        )
        if failure is not None:
            raise failure()
        return f"session on {backend.name}"


class RecordedSleep:
    """Records each wait; with a clock, moves it on by the wait, as a real sleep would."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._clock is not None:
            self._clock.advance(seconds)


def down() -> Exception:
    return UpstreamUnavailable("The realtime endpoint could not be reached (ConnectionRefusedError).")


def limited(seconds: float | None) -> Failure:
    return lambda: UpstreamRateLimited("HTTP 429", retry_after=seconds)


def backend(name: str, priority: int = 1, weight: int = 1) -> BackendSettings:
    return BackendSettings(
        name=name, endpoint=f"https://{name}.openai.azure.com", priority=priority, weight=weight
    )


def make_pool(*backends: BackendSettings, clock: FakeClock | None = None, seed: int = 7) -> BackendPool:
    return BackendPool(
        backends,
        failure_threshold=THRESHOLD,
        cooldown_seconds=COOLDOWN,
        clock=clock or FakeClock(),
        rng=random.Random(seed),
    )


def far() -> float:
    return asyncio.get_running_loop().time() + 60


async def session(pool: BackendPool, opener: FakeOpen) -> str:
    """One request whose session ends at once; the backend's name."""
    return await session_after_waits(pool, opener, no_sleep)


async def session_after_waits(
    pool: BackendPool, opener: FakeOpen, sleep: Callable[[float], Awaitable[object]]
) -> str:
    """One request whose session ends at once, waiting with `sleep`; the backend's name."""
    with await connect(pool, opener, far(), sleep=sleep) as value:
        return value.removeprefix("session on ")


async def no_sleep(seconds: float) -> None:
    raise AssertionError(f"a pool of several backends moves on without sleeping ({seconds} s asked)")


def state(pool: BackendPool, name: str) -> dict[str, object]:
    return next(entry for entry in pool.status() if entry["name"] == name)


# --- choice -----------------------------------------------------------------------------------------


async def test_all_healthy_every_request_goes_to_priority_one() -> None:
    pool, opener = make_pool(backend("a"), backend("b"), backend("c", priority=2)), FakeOpen()
    used = Counter([await session(pool, opener) for _ in range(60)])
    assert set(used) == {"a", "b"}
    assert "c" not in opener.attempts


async def test_sequential_requests_spread_by_weight_deterministically() -> None:
    backends = (backend("big", weight=3), backend("small", weight=1))
    runs = []
    for _ in range(2):
        pool, opener = make_pool(*backends, seed=42), FakeOpen()
        runs.append([await session(pool, opener) for _ in range(400)])
    assert runs[0] == runs[1]
    assert 250 <= Counter(runs[0])["big"] <= 350


async def test_concurrent_sessions_even_out_in_flight_relative_to_weight() -> None:
    pool, opener = make_pool(backend("big", weight=2), backend("small", weight=1)), FakeOpen()
    leases: list[Lease[str]] = []
    for held in range(1, 4):
        leases += [await connect(pool, opener, far()) for _ in range(3)]
        assert (state(pool, "big")["in_flight"], state(pool, "small")["in_flight"]) == (2 * held, held)
    assert Counter(lease.name for lease in leases) == {"big": 6, "small": 3}
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    assert [entry["in_flight"] for entry in pool.status()] == [0, 0]


async def test_a_lease_names_its_backend_and_holds_the_session() -> None:
    pool = make_pool(backend("only"))
    lease = await connect(pool, FakeOpen(), far())
    assert (lease.name, lease.value, lease.backend.deployment) == ("only", "session on only", "gpt-realtime")
    assert state(pool, "only")["in_flight"] == 1
    with lease as value:
        assert value == "session on only"
    assert state(pool, "only")["in_flight"] == 0


# --- rate limits ------------------------------------------------------------------------------------


async def test_a_429_spills_over_at_once_and_cools_the_backend_until_retry_after() -> None:
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b", priority=2), clock=clock), FakeOpen()
    opener.fail_next("a", limited(10))
    assert await session(pool, opener) == "b"
    assert opener.attempts == ["a", "b"]
    cooling = state(pool, "a")
    assert (cooling["state"], cooling["seconds_left"]) == ("cooling", 10.0)
    until = datetime.fromisoformat(str(cooling["until"]))
    assert abs((until - datetime.now(UTC)).total_seconds() - 10) < 2
    clock.advance(9.5)
    assert await session(pool, opener) == "b"
    assert opener.attempts.count("a") == 1  # not tried while cooling
    clock.advance(0.5)
    assert state(pool, "a")["state"] == "ok"
    assert await session(pool, opener) == "a"


async def test_a_429_without_retry_after_cools_for_the_default() -> None:
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b"), clock=clock), FakeOpen()
    opener.fail_next("a", lambda: UpstreamRateLimited("HTTP 429"))
    assert await session(pool, opener) == "b"
    assert state(pool, "a")["seconds_left"] == DEFAULT_COOLING_SECONDS
    assert DEFAULT_COOLING_SECONDS < MAX_WAIT_FOR_BACKEND_SECONDS


async def test_429s_without_retry_after_on_every_backend_still_make_every_pass() -> None:
    clock = FakeClock()
    pool, opener, sleep = make_pool(backend("a"), backend("b"), clock=clock), FakeOpen(), RecordedSleep(clock)
    opener.fail_always("a", lambda: UpstreamRateLimited("HTTP 429"))
    opener.fail_always("b", lambda: UpstreamRateLimited("HTTP 429"))
    with pytest.raises(UpstreamRateLimited):
        await connect(pool, opener, far(), sleep=sleep)
    assert Counter(opener.attempts) == {"a": CONNECT_ATTEMPTS, "b": CONNECT_ATTEMPTS}
    assert len(sleep.waits) == CONNECT_ATTEMPTS - 1
    assert all(0 < wait <= MAX_WAIT_FOR_BACKEND_SECONDS for wait in sleep.waits)


async def test_when_a_pass_leaves_every_backend_cooling_briefly_the_request_waits_for_the_first() -> None:
    clock = FakeClock()
    pool, opener, sleep = make_pool(backend("a"), backend("b"), clock=clock), FakeOpen(), RecordedSleep(clock)
    opener.fail_next("a", limited(10))
    opener.fail_next("b", limited(1))
    with await connect(pool, opener, far(), sleep=sleep) as value:
        assert value == "session on b"
    assert (sorted(opener.attempts[:2]), opener.attempts[2:], sleep.waits) == (["a", "b"], ["b"], [1])


async def test_a_request_that_finds_every_backend_cooling_waits_for_one_back_within_the_limit() -> None:
    clock = FakeClock()
    pool, opener, sleep = (
        make_pool(backend("a"), backend("b", priority=2), clock=clock),
        FakeOpen(),
        RecordedSleep(clock),
    )
    opener.fail_next("a", limited(10))
    opener.fail_next("b", limited(3))
    with pytest.raises(UpstreamRateLimited) as raised:
        await connect(pool, opener, far(), sleep=sleep)
    assert (raised.value.retry_after, sleep.waits) == (3, [])  # the first back in 3 s: no wait
    clock.advance(2)
    assert await session_after_waits(pool, opener, sleep) == "b"
    assert sleep.waits == [1]
    assert opener.attempts == ["a", "b", "b"]


async def test_no_wait_for_a_backend_that_is_back_only_after_the_deadline() -> None:
    clock = FakeClock()
    pool, opener, sleep = make_pool(backend("a"), backend("b"), clock=clock), FakeOpen(), RecordedSleep(clock)
    opener.fail_next("a", limited(1))
    opener.fail_next("b", limited(1))
    with pytest.raises(UpstreamRateLimited) as raised:
        await connect(pool, opener, asyncio.get_running_loop().time() + 0.5, sleep=sleep)
    assert (raised.value.retry_after, sleep.waits, len(opener.attempts)) == (1, [], 2)


async def test_every_backend_cooling_is_a_429_with_the_earliest_retry_after() -> None:
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b", priority=2), clock=clock), FakeOpen()
    opener.fail_next("a", limited(7))
    opener.fail_next("b", limited(3))
    with pytest.raises(UpstreamRateLimited) as first:
        await session(pool, opener)
    assert first.value.retry_after == 3
    clock.advance(0.5)
    with pytest.raises(UpstreamRateLimited) as second:
        await session(pool, opener)
    assert second.value.retry_after == 2.5
    assert opener.attempts == ["a", "b"]  # the second request tried nothing


# --- circuit ----------------------------------------------------------------------------------------


async def test_the_circuit_opens_after_the_threshold_then_admits_one_probe() -> None:
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b", priority=2), clock=clock), FakeOpen()
    opener.fail_always("a", down)
    for failures in range(1, THRESHOLD + 1):
        assert await session(pool, opener) == "b"
        assert state(pool, "a")["consecutive_failures"] == failures
    assert opener.attempts == ["a", "b"] * THRESHOLD
    assert (state(pool, "a")["state"], state(pool, "a")["seconds_left"]) == ("open", COOLDOWN)

    opener.attempts.clear()
    clock.advance(COOLDOWN - 0.5)
    assert [await session(pool, opener) for _ in range(5)] == ["b"] * 5
    assert opener.attempts == ["b"] * 5  # no attempt on an open circuit

    clock.advance(0.5)
    assert state(pool, "a")["state"] == "half-open"
    assert await session(pool, opener) == "b"  # the probe failed
    assert opener.attempts[-2:] == ["a", "b"]
    assert (state(pool, "a")["state"], state(pool, "a")["consecutive_failures"]) == ("open", THRESHOLD + 1)

    clock.advance(COOLDOWN)
    opener.heal("a")
    assert await session(pool, opener) == "a"  # the probe succeeded
    assert (state(pool, "a")["state"], state(pool, "a")["consecutive_failures"]) == ("ok", 0)
    assert await session(pool, opener) == "a"


async def probe_held_at_the_gate() -> tuple[BackendPool, FakeOpen, asyncio.Task[Lease[str]]]:
    """Backend "a" (priority 1) opened its circuit and cooled down; its half-open probe is under way,
    held at the fake backend's gate. "b" (priority 2) is healthy."""
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b", priority=2), clock=clock), FakeOpen()
    opener.fail_next("a", down, times=THRESHOLD)
    for _ in range(THRESHOLD):
        await session(pool, opener)
    clock.advance(COOLDOWN)
    opener.gate["a"] = asyncio.Event()
    probe = asyncio.create_task(connect(pool, opener, far()))
    await opener.at_gate.wait()
    return pool, opener, probe


async def test_while_the_probe_is_in_flight_other_requests_skip_the_backend() -> None:
    pool, opener, probe = await probe_held_at_the_gate()
    opener.attempts.clear()
    async with asyncio.timeout(1):  # a request sent to the probed backend would wait at its gate
        assert [await session(pool, opener) for _ in range(4)] == ["b"] * 4
    assert opener.attempts == ["b"] * 4
    assert state(pool, "a")["state"] == "half-open"

    opener.gate["a"].set()
    (await probe).release()
    assert state(pool, "a")["state"] == "ok"
    assert await session(pool, opener) == "a"


async def test_a_success_resets_the_failure_count() -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    for _ in range(3):
        opener.fail_next("a", down, times=THRESHOLD - 1)
        for _ in range(THRESHOLD - 1):
            assert await session(pool, opener) == "b"
        assert await session(pool, opener) == "a"
        assert (state(pool, "a")["state"], state(pool, "a")["consecutive_failures"]) == ("ok", 0)


async def test_a_probe_refused_with_429_cools_and_stays_half_open() -> None:
    clock = FakeClock()
    pool, opener = make_pool(backend("a"), backend("b", priority=2), clock=clock), FakeOpen()
    opener.fail_next("a", down, times=THRESHOLD)
    for _ in range(THRESHOLD):
        await session(pool, opener)
    clock.advance(COOLDOWN)
    opener.fail_next("a", limited(4))
    assert await session(pool, opener) == "b"
    assert state(pool, "a")["state"] == "cooling"
    clock.advance(4)
    assert state(pool, "a")["state"] == "half-open"
    assert await session(pool, opener) == "a"


async def test_every_circuit_open_is_a_503_with_the_earliest_return() -> None:
    clock = FakeClock()
    pool = BackendPool(
        [backend("a"), backend("b")], failure_threshold=1, cooldown_seconds=COOLDOWN, clock=clock
    )
    opener = FakeOpen()
    opener.fail_always("a", down)
    opener.fail_always("b", down)
    with pytest.raises(UpstreamUnavailable) as first:
        await session(pool, opener)
    assert first.value.retry_after == COOLDOWN
    assert sorted(opener.attempts) == ["a", "b"]
    clock.advance(10)
    with pytest.raises(UpstreamUnavailable) as second:
        await session(pool, opener)
    assert second.value.retry_after == COOLDOWN - 10
    assert len(opener.attempts) == 2


async def test_failures_below_the_threshold_are_retried_after_a_backoff_until_the_circuits_open() -> None:
    pool, opener, sleep = make_pool(backend("a"), backend("b")), FakeOpen(), RecordedSleep()
    opener.fail_always("a", down)
    opener.fail_always("b", down)
    with pytest.raises(UpstreamUnavailable) as raised:
        await connect(pool, opener, far(), sleep=sleep)
    assert Counter(opener.attempts) == {"a": THRESHOLD, "b": THRESHOLD}
    assert len(sleep.waits) == THRESHOLD - 1
    assert all(0 <= wait <= 0.4 * 2**i for i, wait in enumerate(sleep.waits))
    assert raised.value.retry_after == COOLDOWN


async def test_between_passes_the_shortest_wait_asked_is_made() -> None:
    pool, opener, sleep = make_pool(backend("a"), backend("b")), FakeOpen(), RecordedSleep()
    opener.fail_next("a", lambda: UpstreamUnavailable("HTTP 503", retry_after=3))
    opener.fail_next("b", lambda: UpstreamUnavailable("HTTP 503", retry_after=2))
    (await connect(pool, opener, far(), sleep=sleep)).release()
    assert (sorted(opener.attempts[:2]), sleep.waits) == (["a", "b"], [2])


@pytest.mark.parametrize(("cooling", "retry_after"), [(3.0, 3.0), (60.0, COOLDOWN)])
async def test_open_and_cooling_together_is_a_429_with_the_earliest_return(
    cooling: float, retry_after: float
) -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    opener.fail_next("a", down, times=THRESHOLD)
    for _ in range(THRESHOLD):
        await session(pool, opener)
    opener.fail_next("b", limited(cooling))
    with pytest.raises(UpstreamRateLimited) as raised:
        await session(pool, opener)
    assert raised.value.retry_after == retry_after
    assert [entry["state"] for entry in pool.status()] == ["open", "cooling"]


# --- errors that do not spill over -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        lambda: UpstreamAuthFailed("HTTP 401"),
        lambda: UpstreamFailed("HTTP 400"),
        lambda: RuntimeError("a bug"),
    ],
)
async def test_errors_a_retry_cannot_fix_propagate_without_spill_over(failure: Failure) -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    opener.fail_next("a", failure)
    expected = failure()
    with pytest.raises(type(expected)):
        await session(pool, opener)
    assert opener.attempts == ["a"]
    after = state(pool, "a")
    assert (after["state"], after["in_flight"], after["consecutive_failures"]) == ("ok", 0, 0)


MISCONFIGURED = {
    "deployment missing": lambda: DeploymentNotFound(
        "The realtime endpoint answered 404: the deployment is missing."
    ),
    "role missing": lambda: BackendAccessDenied("The realtime endpoint denied access (HTTP 403): no role."),
}


@pytest.mark.parametrize("failure", MISCONFIGURED.values(), ids=MISCONFIGURED.keys())
async def test_a_misconfigured_backend_is_answered_as_documented_and_its_circuit_opens(
    failure: Failure, caplog: pytest.LogCaptureFixture
) -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    opener.fail_always("a", failure)
    expected = failure()
    for failures in range(1, THRESHOLD + 1):
        with (
            caplog.at_level(logging.WARNING, "realtime_speech.pool"),
            pytest.raises(type(expected)) as raised,
        ):
            await session(pool, opener)
        assert (raised.value.status, raised.value.code) == (expected.status, expected.code)
        assert state(pool, "a")["consecutive_failures"] == failures
    assert opener.attempts == ["a"] * THRESHOLD  # no spill-over: the caller hears what went wrong
    opened = state(pool, "a")
    assert (opened["state"], opened["last_failure"]) == ("open", expected.detail)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("backend a" in text and expected.detail in text for text in warnings), warnings
    assert [await session(pool, opener) for _ in range(3)] == ["b"] * 3
    assert opener.attempts.count("a") == THRESHOLD


async def test_a_401_is_the_apps_credential_and_leaves_every_circuit_alone() -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    opener.fail_always("a", lambda: UpstreamAuthFailed("HTTP 401"))
    for _ in range(THRESHOLD + 1):
        with pytest.raises(UpstreamAuthFailed):
            await session(pool, opener)
    assert opener.attempts == ["a"] * (THRESHOLD + 1)
    assert (state(pool, "a")["state"], state(pool, "a")["consecutive_failures"]) == ("ok", 0)
    assert "last_failure" not in state(pool, "a")


async def test_status_names_the_last_failure_until_a_success() -> None:
    pool, opener = make_pool(backend("a"), backend("b", priority=2)), FakeOpen()
    opener.fail_next("a", down)
    assert await session(pool, opener) == "b"
    assert state(pool, "a")["last_failure"] == down().detail
    assert await session(pool, opener) == "a"
    assert "last_failure" not in state(pool, "a")


async def test_a_cancelled_probe_frees_its_slot_and_counts() -> None:
    pool, opener, probe = await probe_held_at_the_gate()
    assert state(pool, "a")["in_flight"] == 1
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert (state(pool, "a")["state"], state(pool, "a")["in_flight"]) == ("half-open", 0)
    del opener.gate["a"]
    assert await session(pool, opener) == "a"


# --- deadline ---------------------------------------------------------------------------------------


async def test_no_attempt_starts_after_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0  # ample for the first two attempts to start, even on a busy machine
    past_the_deadline = asyncio.Event()
    loop.call_at(deadline + 0.001, past_the_deadline.set)
    attempts: list[str] = []

    async def second_outlives_the_deadline(settings: BackendSettings) -> str:
        attempts.append(settings.name)
        if len(attempts) == 2:
            await past_the_deadline.wait()
        raise down()

    pool = make_pool(backend("a"), backend("b"), backend("c"))
    with pytest.raises(UpstreamUnavailable):
        await connect(pool, second_outlives_the_deadline, deadline)
    assert len(attempts) == 2  # the third backend was available, but the deadline had passed


async def test_a_deadline_already_passed_tries_nothing() -> None:
    opener = FakeOpen()
    with pytest.raises(DeadlineExceeded):
        await connect(make_pool(backend("a")), opener, asyncio.get_running_loop().time())
    assert opener.attempts == []


# --- a pool of one ----------------------------------------------------------------------------------


async def test_a_pool_of_one_retries_with_full_jitter_backoff_and_never_opens() -> None:
    pool, opener, sleep = make_pool(backend("only")), FakeOpen(), RecordedSleep()
    opener.fail_always("only", down)
    for request in range(1, 3):
        with pytest.raises(UpstreamUnavailable):
            await connect(pool, opener, far(), sleep=sleep)
        assert len(opener.attempts) == CONNECT_ATTEMPTS * request
    assert len(sleep.waits) == 2 * (CONNECT_ATTEMPTS - 1)
    bounds = [0.4, 0.8, 1.6] * 2
    assert all(0 <= wait <= bound for wait, bound in zip(sleep.waits, bounds, strict=True))
    assert len(set(sleep.waits)) == len(sleep.waits)  # jittered
    assert state(pool, "only")["state"] == "ok"


async def test_a_pool_of_one_waits_what_retry_after_asks_and_never_cools() -> None:
    pool, opener, sleep = make_pool(backend("only")), FakeOpen(), RecordedSleep()
    opener.fail_next("only", limited(2), times=2)
    opener.fail_next("only", lambda: UpstreamUnavailable("HTTP 503", retry_after=1))
    lease = await connect(pool, opener, far(), sleep=sleep)
    assert (lease.name, sleep.waits, len(opener.attempts)) == ("only", [2, 2, 1], 4)
    assert state(pool, "only")["state"] == "ok"


async def test_a_pool_of_one_gives_up_after_four_attempts_with_the_last_error() -> None:
    pool, opener, sleep = make_pool(backend("only")), FakeOpen(), RecordedSleep()
    opener.fail_always("only", limited(0))
    with pytest.raises(UpstreamRateLimited) as raised:
        await connect(pool, opener, far(), sleep=sleep)
    assert (len(opener.attempts), sleep.waits, raised.value.retry_after) == (4, [0, 0, 0], 0)


async def test_a_pool_of_one_makes_no_wait_that_would_pass_the_deadline() -> None:
    pool, opener, sleep = make_pool(backend("only")), FakeOpen(), RecordedSleep()
    opener.fail_always("only", limited(5))
    with pytest.raises(UpstreamRateLimited) as raised:
        await connect(pool, opener, asyncio.get_running_loop().time() + 1, sleep=sleep)
    assert (len(opener.attempts), sleep.waits, raised.value.retry_after) == (1, [], 5)


async def test_a_pool_of_one_really_sleeps_by_default() -> None:
    loop = asyncio.get_running_loop()
    pool, opener = make_pool(backend("only")), FakeOpen()
    opener.fail_next("only", limited(0.05), times=2)
    started = loop.time()
    (await connect(pool, opener, far())).release()
    assert loop.time() - started >= 0.1
    assert len(opener.attempts) == 3


# --- concurrency and status -------------------------------------------------------------------------


async def test_many_concurrent_requests_keep_in_flight_counts_exact() -> None:
    pool = make_pool(backend("a", weight=2), backend("b"), backend("c", priority=2))
    opener = FakeOpen()
    opener.fail_always("b", down)
    all_connected = asyncio.Event()
    leases: list[Lease[str]] = []

    async def request() -> None:
        lease = await connect(pool, opener, far())
        leases.append(lease)
        if len(leases) == 200:
            all_connected.set()
        await all_connected.wait()
        await asyncio.sleep(0)
        lease.release()

    tasks = [asyncio.create_task(request()) for _ in range(200)]
    await all_connected.wait()
    in_flight = {entry["name"]: entry["in_flight"] for entry in pool.status()}
    used = Counter(lease.name for lease in leases)
    assert in_flight == {name: used[name] for name in ("a", "b", "c")}
    assert in_flight["b"] == 0
    assert sum(in_flight.values()) == 200
    assert state(pool, "b")["state"] == "open"
    await asyncio.gather(*tasks)
    assert [entry["in_flight"] for entry in pool.status()] == [0, 0, 0]


async def test_status_names_backends_without_endpoints_or_secrets() -> None:
    settings = BackendSettings(
        name="ptu-eastus", endpoint="https://ptu-east.openai.azure.com/", priority=1, weight=5
    )
    pool = make_pool(settings, backend("paygo", priority=2))
    assert pool.status()[0] == {
        "name": "ptu-eastus",
        "host": "ptu-east.openai.azure.com",
        "deployment": "gpt-realtime",
        "priority": 1,
        "weight": 5,
        "state": "ok",
        "in_flight": 0,
        "consecutive_failures": 0,
        "spares": {"count": 0, "oldest_age_seconds": None},
    }
    assert "https://" not in repr(pool.status())


def test_a_pool_needs_backends_with_unique_names() -> None:
    with pytest.raises(ValueError, match="at least one"):
        make_pool()
    with pytest.raises(ValueError, match="unique"):
        make_pool(backend("a"), backend("a"))


# --- the hooks of spare sessions -------------------------------------------------------------------------


async def test_spares_go_only_where_a_request_would_go_and_count_like_its_attempts() -> None:
    clock = FakeClock()
    a, b, c = backend("a"), backend("b"), backend("c", priority=2)
    pool = make_pool(a, b, c, clock=clock)
    opener = FakeOpen()
    assert pool.next_choices() == [a, b]
    opener.fail_next("a", limited(10))
    with pytest.raises(UpstreamRateLimited):
        await open_spare(pool, a, opener)
    assert state(pool, "a")["state"] == "cooling"
    assert pool.next_choices() == [b]
    for _ in range(THRESHOLD):
        opener.fail_next("b", down)
        with pytest.raises(UpstreamUnavailable):
            await open_spare(pool, b, opener)
    assert state(pool, "b")["state"] == "open"
    assert pool.next_choices() == [c]
    assert await open_spare(pool, c, opener) == "session on c"
    assert state(pool, "c")["in_flight"] == 0  # a spare is not in flight until a request takes it
    clock.advance(COOLDOWN)
    assert state(pool, "b")["state"] == "half-open"
    assert pool.next_choices() == [a]  # a half-open circuit's probe is a request's, never a spare's
    assert pool.adopt(c, "session on c") is None  # no longer where a request would go
    lease = pool.adopt(a, "earlier session on a")
    assert lease is not None and lease.value == "earlier session on a"
    assert state(pool, "a")["in_flight"] == 1
    lease.release()
    assert state(pool, "a")["in_flight"] == 0


def test_status_shows_the_spares_each_backend_holds() -> None:
    pool = make_pool(backend("a"), backend("b"))
    pool.spare_counts = lambda: {"b": {"count": 2, "oldest_age_seconds": 12.5}}
    assert [entry["spares"] for entry in pool.status()] == [
        {"count": 0, "oldest_age_seconds": None},
        {"count": 2, "oldest_age_seconds": 12.5},
    ]
