"""The measurements, each run in its own worker process (see `benchmarks.worker`).

Each procedure is named after its benchmark (`benchmarks.registry`) and returns that benchmark's
measurement (`benchmarks.records`); `benchmarks.summaries` makes sense of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import psutil

from realtime_speech.audio_input import decode_question
from realtime_speech.encoders import OUTPUT_FORMATS, OutputFormat
from realtime_speech.models import SpeechRequest
from realtime_speech.settings import get_settings

from .harness import (
    BareRealtime,
    BlobProbe,
    HostedChat,
    HostedFunction,
    LoopLag,
    Outcome,
    RssWatch,
    SpeechFunction,
    SpokenInput,
    cpu_seconds,
    model_audio,
    model_deltas,
    peak_rss_bytes,
    question_text,
    speech_text,
    spoken_inputs,
)
from .records import (
    AudioDecoding,
    ChatCompletions,
    ChatKind,
    ChatSample,
    ClientKind,
    ColdStart,
    Concurrency,
    DecodingCost,
    EncodingCost,
    FirstAudio,
    FirstAudioSample,
    FormatSample,
    Latency,
    LatencySample,
    LoopLagByPhase,
    Memory,
    OutputEncoding,
    PairTimes,
    PoolThroughput,
    QuestionSample,
    StorageBurst,
    StreamMemory,
    merge,
)

WARMUP_SECONDS = 10.0
BYTES_PER_AUDIO_SECOND = 48_000
FIRST_AUDIO_KINDS: tuple[ClientKind, ...] = ("sse", "function", "bare")
CHAT_KINDS: tuple[ChatKind, ...] = ("chat", "sse", "bare", "chat_history")
CPU_REPEATS = 3
SETTLE_SECONDS = 1.0
"""Pause after a burst, so the host has finished with it before its RSS is read again."""
UNSUPPORTED_MEDIA_TYPE = 415
QUESTION_INPUT = "WAV 16 kHz mono"
PROBE_QUESTION_SECONDS = 0.5

T = TypeVar("T")


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


async def first_audio(host_url: str, sessions: int, seconds: float, pace: float, rounds: int) -> FirstAudio:
    """`sessions` simultaneous calls of each kind in turn (the order turns each round): Server-Sent
    Events and the JSON answer through the dev host at `host_url`, and the bare SDK loop."""
    host, bare = HostedFunction(host_url), await BareRealtime.create()
    callers = {"sse": host.stream, "function": host.call, "bare": bare.call}
    text = speech_text(seconds, pace)
    samples = []
    try:
        for call in callers.values():  # as many connections as a round uses, opened beforehand
            await asyncio.gather(*(call(speech_text(WARMUP_SECONDS)) for _ in range(sessions)))
        for number in range(rounds):
            for kind in _turned(FIRST_AUDIO_KINDS, number):
                outcomes = await asyncio.gather(*(_attempt(callers[kind], text) for _ in range(sessions)))
                samples += [_first_audio_sample(kind, number, outcome) for outcome in outcomes]
    finally:
        await asyncio.gather(host.close(), bare.close())
    return FirstAudio(sessions=sessions, seconds=seconds, pace=pace, samples=samples)


def _first_audio_sample(kind: ClientKind, number: int, outcome: Outcome) -> FirstAudioSample:
    ok = outcome.status == 200
    first = outcome.seconds if kind == "function" and ok else outcome.first_audio
    return FirstAudioSample(
        kind=kind,
        round=number,
        first_audio_ms=None if first is None else first * 1000,
        total_ms=outcome.seconds * 1000,
        ok=ok,
    )


async def stream_memory(
    host_url: str,
    host_pid: int,
    sessions: int,
    seconds: float,
    stalled_seconds: float,
    stall_seconds: float,
) -> StreamMemory:
    """The dev host's RSS while one caller stops reading a `stalled_seconds` answer (at full speed)
    for `stall_seconds`, then while `sessions` callers stream `seconds` answers at once, then while as
    many get them as JSON."""
    host = HostedFunction(host_url)
    rss = RssWatch(host_pid).rss
    try:
        for _ in range(2):
            await asyncio.gather(
                *(_expect_ok(host.stream(speech_text(WARMUP_SECONDS))) for _ in range(sessions))
            )
            await asyncio.gather(
                *(_expect_ok(host.call(speech_text(WARMUP_SECONDS))) for _ in range(sessions))
            )
        await asyncio.sleep(SETTLE_SECONDS)
        baseline = rss()
        async with RssWatch(host_pid) as stalled_watch:
            stalled = await host.stall(speech_text(stalled_seconds), stall_seconds)
        await asyncio.sleep(SETTLE_SECONDS)
        streams_before = rss()
        async with RssWatch(host_pid) as streams_watch:
            streams = await asyncio.gather(
                *(_attempt(host.stream, speech_text(seconds)) for _ in range(sessions))
            )
        await asyncio.sleep(SETTLE_SECONDS)
        json_before = rss()
        async with RssWatch(host_pid) as json_watch:
            answers = await asyncio.gather(
                *(_attempt(host.call, speech_text(seconds)) for _ in range(sessions))
            )
    finally:
        await host.close()
    return StreamMemory(
        baseline_rss=baseline,
        stalled_seconds=stalled_seconds,
        stall_seconds=stall_seconds,
        stalled_peak_rss=stalled_watch.peak,
        stalled_audio_bytes=stalled.body["audio_event_bytes"],
        stalled_rss=stalled_watch.samples[:: max(1, len(stalled_watch.samples) // 100)],
        sessions=sessions,
        seconds=seconds,
        streams_before_rss=streams_before,
        streams_peak_rss=streams_watch.peak,
        streams_ok=sum(outcome.status == 200 for outcome in streams),
        json_before_rss=json_before,
        json_peak_rss=json_watch.peak,
        json_ok=sum(outcome.status == 200 for outcome in answers),
    )


async def chat_completions(
    host_url: str,
    host_pid: int,
    seconds: float,
    pace: float,
    rounds: int,
    history_turns: int,
    short_seconds: float,
    long_seconds: float,
) -> ChatCompletions:
    """First audio of `stream: true` chat completions, `/api/speech`'s events and the bare SDK loop,
    and of chat completions with `history_turns` earlier messages, one call of each kind in turn
    (the order turns each round); then the host's RSS while it answers a short, then a long
    non-streamed `wav` (whose `data` it reads from storage piece by piece)."""
    chat, speech, bare = HostedChat(host_url), HostedFunction(host_url), await BareRealtime.create()
    callers: dict[ChatKind, Callable[[str], Awaitable[Outcome]]] = {
        "chat": chat.stream,
        "chat_history": lambda text: chat.stream(text, history_turns),
        "sse": speech.stream,
        "bare": bare.call,
    }
    rss = RssWatch(host_pid).rss
    samples = []
    try:
        for call in (*callers.values(), chat.call):  # warm: imports, clients, connections
            await _expect_ok(call(speech_text(WARMUP_SECONDS)))
        text = speech_text(seconds, pace)
        for number in range(rounds):
            for kind in _turned(CHAT_KINDS, number):
                outcome = await _attempt(callers[kind], text)
                first = outcome.first_audio
                samples.append(
                    ChatSample(
                        kind=kind,
                        round=number,
                        first_audio_ms=None if first is None else first * 1000,
                        ok=outcome.status == 200,
                    )
                )
        measured = {}
        for name, length in (("short", short_seconds), ("long", long_seconds)):
            await asyncio.sleep(SETTLE_SECONDS)
            before = rss()
            async with RssWatch(host_pid) as watch:
                answer = await _expect_ok(chat.call(speech_text(length)))
            measured |= {f"{name}_before_rss": before, f"{name}_peak_rss": watch.peak}
    finally:
        await asyncio.gather(chat.close(), speech.close(), bare.close())
    return ChatCompletions(
        seconds=seconds,
        pace=pace,
        history_turns=history_turns,
        samples=samples,
        short_seconds=short_seconds,
        long_seconds=long_seconds,
        long_body_bytes=answer.body["body_bytes"],
        **measured,
    )


async def mp3_encoding(seconds: float, request_seconds: float, rounds: int) -> OutputEncoding:
    """Each output format's encoder on the same `seconds` of model audio, in this process without
    storage; then, if the app takes the request option `format`, `rounds` requests in each format in
    turn (`request_seconds` of audio at full speed)."""
    bitrate = get_settings().audio_mp3_bitrate_kbps
    costs = [_encoding_cost(output, seconds, bitrate) for output in OUTPUT_FORMATS.values()]
    samples = None
    if "format" in SpeechRequest.model_fields:
        samples = await _format_samples(request_seconds, rounds)
    return OutputEncoding(
        mp3_bitrate_kbps=bitrate, costs=costs, request_seconds=request_seconds, format_samples=samples
    )


def _encoding_cost(output: OutputFormat, seconds: float, bitrate: int) -> EncodingCost:
    deltas = model_deltas(model_audio(seconds, output), seconds)
    cpu, file_bytes = [], 0
    for _ in range(CPU_REPEATS):
        started = time.process_time()
        encoder = output.encoder(mp3_bitrate_kbps=bitrate)
        body = sum(len(encoder.encode(delta)) for delta in deltas) + len(encoder.flush())
        file_bytes = len(encoder.header()) + body
        cpu.append(time.process_time() - started)
    return EncodingCost(format=output.name, audio_seconds=seconds, cpu_seconds=cpu, file_bytes=file_bytes)


async def _format_samples(seconds: float, rounds: int) -> list[FormatSample]:
    function = SpeechFunction()
    text = speech_text(seconds)
    samples = []
    try:
        for name in OUTPUT_FORMATS:
            await _expect_ok(function.call(speech_text(WARMUP_SECONDS), format=name))
        for number in range(rounds):
            for name in _turned(list(OUTPUT_FORMATS), number):
                outcome = await _expect_ok(function.call(text, format=name))
                samples.append(
                    FormatSample(
                        format=name,
                        round=number,
                        function_ms=outcome.seconds * 1000,
                        file_bytes=outcome.body["audio"]["bytes"],
                    )
                )
    finally:
        await function.close()
    return samples


async def audio_decoding(seconds: float, question_seconds: float, rounds: int) -> AudioDecoding:
    """`decode_question` on `seconds` of speech in each kind of input file; then, if the app takes
    spoken questions, `rounds` pairs of a `question_seconds` spoken question (`QUESTION_INPUT`) and the same
    question written, alternating which goes first."""
    max_seconds = get_settings().audio_input_max_seconds
    costs = [_decoding_cost(spoken, max_seconds) for spoken in spoken_inputs(question_text(seconds))]
    text = question_text(question_seconds)
    spoken = _wav_question(text)
    function = SpeechFunction()
    try:
        await _expect_ok(function.call(speech_text(WARMUP_SECONDS)))
        # A short one first: it fits any body limit, so an app without spoken questions answers 415.
        short = _wav_question(question_text(PROBE_QUESTION_SECONDS))
        probe = await function.ask_aloud(short.data, short.content_type)
        samples = None
        if probe.status != UNSUPPORTED_MEDIA_TYPE:
            _check(probe)
            asks = {
                "spoken": lambda: function.ask_aloud(spoken.data, spoken.content_type),
                "text": lambda: function.call(text),
            }
            samples = []
            for number in range(rounds):
                for kind in _turned(list(asks), number):
                    outcome = await _expect_ok(asks[kind]())
                    if outcome.body["transcript"] != text:
                        raise RuntimeError(f"the {kind} question was answered {outcome.body['transcript']!r}")
                    samples.append(
                        QuestionSample(
                            kind=kind,
                            round=number,
                            function_ms=outcome.seconds * 1000,
                            timings_ms=outcome.body["timings_ms"],
                            answer_seconds=outcome.body["audio"]["duration_seconds"],
                        )
                    )
    finally:
        await function.close()
    return AudioDecoding(costs=costs, question_seconds=question_seconds, question_samples=samples)


def _wav_question(text: str) -> SpokenInput:
    return next(spoken for spoken in spoken_inputs(text) if spoken.name == QUESTION_INPUT)


def _decoding_cost(spoken: SpokenInput, max_seconds: float) -> DecodingCost:
    cpu, seconds = [], 0.0
    for _ in range(CPU_REPEATS):
        started = time.process_time()
        question = decode_question(spoken.data, spoken.content_type, max_seconds=max_seconds)
        cpu.append(time.process_time() - started)
        seconds = question.duration_seconds
    return DecodingCost(
        input=spoken.name,
        content_type=spoken.content_type,
        input_seconds=seconds,
        input_bytes=len(spoken.data),
        cpu_seconds=cpu,
    )


async def backend_pool(
    backends: int,
    max_sessions: int,
    clients: int,
    seconds: float,
    pace: float,
    window_seconds: float,
    pids: dict[str, int],
) -> PoolThroughput:
    """`clients` callers asking again and again for `window_seconds` (after a refusal, once its
    Retry-After has passed), the app's pool being `backends` backends of `max_sessions` sessions each
    (AZURE_OPENAI_BACKENDS, set by the runner)."""
    function = SpeechFunction()
    stand_ins = {name: psutil.Process(pid) for name, pid in pids.items()}
    text = speech_text(seconds, pace)
    try:
        await _expect_ok(function.call(speech_text(WARMUP_SECONDS)))
        cpu_before, stand_ins_before = cpu_seconds(), _tree_cpu_seconds(stand_ins)
        started = time.perf_counter()
        until = started + window_seconds
        per_client = await asyncio.gather(*(_keep_asking(function, text, until) for _ in range(clients)))
        wall = time.perf_counter() - started
        cpu, stand_ins_after = cpu_seconds() - cpu_before, _tree_cpu_seconds(stand_ins)
    finally:
        await function.close()
    outcomes = [outcome for asked in per_client for outcome in asked]
    answered = [outcome for outcome in outcomes if outcome.status == 200]
    return PoolThroughput(
        backends=backends,
        max_sessions=max_sessions,
        clients=clients,
        seconds=seconds,
        pace=pace,
        window_seconds=window_seconds,
        wall_seconds=wall,
        e2e_ms=[outcome.seconds * 1000 for outcome in answered],
        answered_by=dict(Counter(outcome.body["backend"] for outcome in answered)),
        refusals=dict(
            Counter(outcome.body.get("type", "error") for outcome in outcomes if outcome.status != 200)
        ),
        cpu_seconds=cpu,
        stand_in_cpu_seconds={name: stand_ins_after[name] - stand_ins_before[name] for name in stand_ins},
    )


async def _keep_asking(function: SpeechFunction, text: str, until: float) -> list[Outcome]:
    """Ask until `until`; after a refusal wait what it asked (1 s when it named nothing)."""
    outcomes = []
    while time.perf_counter() < until:
        outcome = await _attempt(function.call, text)
        outcomes.append(outcome)
        if outcome.status != 200:
            await asyncio.sleep(outcome.retry_after or 1.0)
    return outcomes


def _turned(items: Sequence[T], by: int) -> list[T]:
    """`items` rotated left `by` places: each gets its turn to go first."""
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


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
