"""The measurements, each run in its own worker process (see `benchmarks.worker`).

Each procedure is named after its benchmark (`benchmarks.registry`) and returns that benchmark's
measurement (`benchmarks.records`); `benchmarks.summaries` makes sense of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psutil

from realtime_speech.settings import get_settings

from .harness import (
    BareRealtime,
    BlobProbe,
    LoopLag,
    Outcome,
    SpeechFunction,
    cpu_seconds,
    peak_rss_bytes,
    speech_text,
)
from .records import (
    ClientKind,
    ColdStart,
    Concurrency,
    Latency,
    LatencySample,
    LoopLagByPhase,
    Memory,
    PairTimes,
    StorageBurst,
    merge,
)

WARMUP_SECONDS = 10.0
BYTES_PER_AUDIO_SECOND = 48_000


async def latency(seconds: float, pairs: int) -> Latency:
    """The function and the bare SDK loop on the same text, alternating which goes first, with one
    replay of the function's storage tail (`BlobProbe`) after each pair."""
    function, bare, probe = SpeechFunction(), await BareRealtime.create(), BlobProbe()
    text = speech_text(seconds)
    tail_bytes = _tail_bytes(seconds)
    try:
        await _expect_ok(function.call(speech_text(WARMUP_SECONDS)))
        await bare.call(speech_text(WARMUP_SECONDS))
        await probe.tail_round_trips(tail_bytes)
        samples = []
        for index in range(pairs):
            function_first = index % 2 == 0
            order = (function, bare) if function_first else (bare, function)
            watched = {runner: await _watched(runner, text) for runner in order}
            (fn, fn_lag), (reference, bare_lag) = watched[function], watched[bare]
            _check(fn)
            pair = PairTimes(
                function_first=function_first,
                function_ms=fn.seconds * 1000,
                bare_ms=reference.seconds * 1000,
                timings_ms=fn.body["timings_ms"],
                audio_seconds=fn.body["audio"]["duration_seconds"],
                function_loop_lag_ms=fn_lag,
                bare_loop_lag_ms=bare_lag,
            )
            samples.append(merge(LatencySample, pair, await probe.tail_round_trips(tail_bytes)))
    finally:
        await asyncio.gather(function.close(), bare.close(), probe.close())
    return Latency(seconds=seconds, tail_bytes=tail_bytes, samples=samples)


async def memory(seconds: float) -> Memory:
    """Peak RSS after a warm-up request, then after one request with `seconds` of audio."""
    function = SpeechFunction()
    try:
        await _expect_ok(function.call(speech_text(WARMUP_SECONDS)))
        warm_peak, warm_rss = peak_rss_bytes(), psutil.Process().memory_info().rss
        async with LoopLag() as lag:
            outcome = await _expect_ok(function.call(speech_text(seconds)))
        peak = peak_rss_bytes()
    finally:
        await function.close()
    return Memory(
        seconds=seconds,
        block_size=get_settings().audio_block_size_bytes,
        warm_peak_rss=warm_peak,
        warm_rss=warm_rss,
        peak_rss=peak,
        function_ms=outcome.seconds * 1000,
        timings_ms=outcome.body["timings_ms"],
        max_loop_lag_ms=lag.max_ms(),
    )


async def concurrency(
    sessions: int, seconds: float, pace: float, kind: ClientKind, pids: dict[str, int]
) -> Concurrency:
    """`sessions` simultaneous calls of the function (or of the bare loop), audio paced at `pace`.

    Loop lag is reported per phase, in seconds since the burst began: connecting (first second),
    streaming, and the tail (from the audio's real-time length on).
    """
    runner = SpeechFunction() if kind == "function" else await BareRealtime.create()
    stand_ins = {name: psutil.Process(pid) for name, pid in pids.items()}
    try:
        await runner.call(speech_text(WARMUP_SECONDS))
        text = speech_text(seconds, pace)
        cpu_before, stand_ins_before = cpu_seconds(), _tree_cpu_seconds(stand_ins)
        started = time.perf_counter()
        async with LoopLag() as lag:
            outcomes = await asyncio.gather(*(_attempt(runner.call, text) for _ in range(sessions)))
        wall = time.perf_counter() - started
        cpu, stand_ins_after = cpu_seconds() - cpu_before, _tree_cpu_seconds(stand_ins)
    finally:
        await runner.close()
    return Concurrency(
        kind=kind,
        sessions=sessions,
        seconds=seconds,
        pace=pace,
        e2e_ms=[o.seconds * 1000 for o in outcomes if o.status == 200],
        timings_ms=[o.body["timings_ms"] for o in outcomes if "timings_ms" in o.body],
        failures=[o.body.get("type", "error") for o in outcomes if o.status != 200],
        wall_seconds=wall,
        cpu_seconds=cpu,
        stand_in_cpu_seconds={name: stand_ins_after[name] - stand_ins_before[name] for name in stand_ins},
        peak_rss=peak_rss_bytes(),
        loop_lag_ms=LoopLagByPhase(
            connecting=lag.max_ms(0, 1),
            streaming=lag.max_ms(1, seconds / pace),
            tail=lag.max_ms(seconds / pace),
        ),
    )


async def storage_burst(sessions: int, rounds: int) -> StorageBurst:
    """`BlobProbe.commit_burst` on a fresh client (its connection pool fills in the first round)."""
    probe = BlobProbe()
    try:
        bursts = [await probe.commit_burst(sessions) for _ in range(rounds)]
    finally:
        await probe.close()
    return StorageBurst(sessions=sessions, burst_ms=[seconds * 1000 for seconds in bursts])


async def cold_start(seconds: float) -> ColdStart:
    """The first request of a fresh process (service construction, first token, container, delegation
    key, first connections), then a second one for comparison."""
    function = SpeechFunction()
    try:
        first = await _expect_ok(function.call(speech_text(seconds)))
        first_done = time.time()
        second = await _expect_ok(function.call(speech_text(seconds)))
    finally:
        await function.close()
    return ColdStart(
        first_ms=first.seconds * 1000,
        first_done_epoch=first_done,
        first_timings_ms=first.body["timings_ms"],
        second_ms=second.seconds * 1000,
        second_timings_ms=second.body["timings_ms"],
    )


async def _watched(runner: SpeechFunction | BareRealtime, text: str) -> tuple[Outcome, float]:
    """One call and the longest event-loop lag seen during it."""
    async with LoopLag() as lag:
        outcome = await runner.call(text)
    return outcome, lag.max_ms()


def _tail_bytes(seconds: float) -> int:
    """Size of the function's last data block for `seconds` of audio."""
    return round(seconds * BYTES_PER_AUDIO_SECOND) % get_settings().audio_block_size_bytes


async def _attempt(call: Callable[[str], Awaitable[Outcome]], text: str) -> Outcome:
    """A call whose exception becomes a failed outcome, so one failure does not hide the others."""
    started = time.perf_counter()
    try:
        return await call(text)
    except Exception as exc:
        return Outcome(0, time.perf_counter() - started, {"type": type(exc).__name__})


async def _expect_ok(call: Awaitable[Outcome]) -> Outcome:
    outcome = await call
    _check(outcome)
    return outcome


def _check(outcome: Outcome) -> None:
    if outcome.status != 200:
        raise RuntimeError(f"the function answered {outcome.status}: {outcome.body}")


def _tree_cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """User plus system CPU seconds of each process and its children."""
    totals = {}
    for name, process in processes.items():
        total = 0.0
        for member in [process, *process.children(recursive=True)]:
            times = member.cpu_times()
            total += times.user + times.system
        totals[name] = total
    return totals
