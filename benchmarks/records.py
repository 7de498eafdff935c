"""The raw results of a benchmark run, typed, and their one JSON form (`results.json`).

Each benchmark has a *measurement*, what its procedure in `benchmarks.measure` returns inside the
worker, and a *run record*: that measurement plus the worker `Process` it ran in, kept as one flat
JSON object. A record made of parts names them as bases, the last part first
(`class LatencyRun(Latency, Process)`): dataclasses collect fields from the last base to the first,
so the keys come out in the order results.json has always had, and `merge` builds one from its parts.

The records are pydantic dataclasses: constructing one validates it, and `parse` reads one from JSON
values, rejecting keys the types do not know. `dump` and `load` are the only way results.json is
written and read (`dataclasses.asdict` and `json.dumps(indent=1)` out, `json.loads` and `parse` in).
A field added later needs a default, so that older results.json files still load; the fields are
keyword-only, so a default can go anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field, fields
from typing import Literal, TypeVar

from pydantic import ConfigDict, TypeAdapter
from pydantic.dataclasses import dataclass

MIB = 2**20

T = TypeVar("T")

STRICT = ConfigDict(extra="forbid")
"""Every record rejects keys it does not know, so a result is never dropped without a word."""

Timings = dict[str, float]
"""The function's `timings_ms`: milliseconds since the request began, per mark (`connected`,
`first_audio`, `audio_done`, `response_done`, `committed`, `signed`)."""

ClientKind = Literal["bare", "function", "sse"]
"""Who answered: the bare openai-SDK loop, or the function with a JSON answer or Server-Sent Events."""


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Plan:
    """How much to measure. The default keeps `make bench` within about five minutes on two cores."""

    latency_seconds: float = 10.0
    latency_pairs: int = 30
    long_seconds: float = 600.0
    long_pairs: int = 3
    memory_seconds: tuple[float, ...] = (10.0, 60.0, 300.0, 600.0)
    block_sizes: tuple[int | None, ...] = (None, 1 * MIB, 16 * MIB)
    """AUDIO_BLOCK_SIZE_BYTES of the memory runs; None keeps the app's default."""
    sessions: tuple[int, ...] = (1, 50, 100, 200)
    session_seconds: float = 10.0
    pace: float = 1.0
    cold_starts: int = 5
    first_audio_sessions: tuple[int, ...] = (1, 16)
    first_audio_seconds: float = 10.0
    first_audio_rounds: tuple[int, ...] = (5, 1)
    """Rounds at each of `first_audio_sessions`; a round is one burst of each client kind in turn."""
    stream_sessions: int = 16
    stream_seconds: float = 60.0
    stalled_seconds: float = 300.0
    stall_seconds: float = 8.0
    """How long the stalled reader of a `stalled_seconds` answer stops reading."""
    encoded_seconds: float = 60.0
    format_rounds: int = 10
    decoded_seconds: float = 30.0
    question_rounds: int = 6
    pool_max_sessions: int = 4
    pool_clients: int = 12
    pool_answer_seconds: float = 3.0
    pool_window_seconds: float = 20.0
    pool_rounds: int = 1
    telemetry_pairs: int = 20
    telemetry_rounds: int = 2
    chat_rounds: int = 10
    """Rounds of the chat benchmark's first-audio comparison; a round asks each kind once, in turn."""
    chat_history_turns: int = 10
    chat_short_seconds: float = 10.0
    chat_long_seconds: float = 600.0


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Machine:
    """What the numbers were measured on; `app` names the version of the app that was measured."""

    date: str
    cpus: int | None
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    node: str
    azurite: str
    packages: dict[str, str]
    app: str


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ImportTime:
    """Self time of `python -X importtime` summed over one top-level package."""

    package: str
    ms: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Process:
    """The worker process a measurement ran in: its extra app settings, the wall clock just before it
    was spawned, and the time and peak RSS of its `import function_app`."""

    settings: dict[str, str]
    spawned_epoch: float
    import_ms: float
    import_peak_rss: int


# --- cold start -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ColdStart:
    """The first request of a fresh process, then a second one for comparison."""

    first_ms: float
    first_done_epoch: float
    first_timings_ms: Timings
    second_ms: float
    second_timings_ms: Timings


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ColdStartRun(ColdStart, Process):
    """A cold start and the fresh process it ran in."""


# --- added latency ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class PairTimes:
    """The function and the bare SDK loop on the same text, one after the other."""

    function_first: bool
    function_ms: float
    bare_ms: float
    timings_ms: Timings
    audio_seconds: float
    function_loop_lag_ms: float
    bare_loop_lag_ms: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class TailRoundTrips:
    """Bare storage calls replaying the function's tail (`harness.BlobProbe.tail_round_trips`)."""

    stage_pair_ms: float
    commit_ms: float
    record_ms: float
    put_blob_ms: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class LatencySample(TailRoundTrips, PairTimes):
    """One pair, and the replay of the tail after it."""


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Latency:
    seconds: float
    tail_bytes: int
    samples: list[LatencySample]


@dataclass(frozen=True, kw_only=True, config=STRICT)
class LatencyRun(Latency, Process):
    """A latency run and the worker process it ran in."""


# --- memory -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Memory:
    """Peak RSS after a warm-up request, then after one request with `seconds` of audio."""

    seconds: float
    block_size: int
    warm_peak_rss: int
    warm_rss: int
    peak_rss: int
    function_ms: float
    timings_ms: Timings
    max_loop_lag_ms: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class MemoryRun(Memory, Process):
    """A memory run and the worker process it ran in (one process per run)."""


# --- storage floor ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class StorageBurst:
    """Milliseconds of each burst of `sessions` simultaneous `Put Block List` calls."""

    sessions: int
    burst_ms: list[float]


@dataclass(frozen=True, kw_only=True, config=STRICT)
class StorageBurstRun(StorageBurst, Process):
    """A storage floor run and the worker process it ran in."""


# --- concurrency ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class LoopLagByPhase:
    """The longest event-loop lag (ms) that began while connecting (first second), while streaming,
    and in the tail (from the audio's real-time length on)."""

    connecting: float
    streaming: float
    tail: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Concurrency:
    """`sessions` simultaneous calls; `e2e_ms` of the successful ones, `failures` the others' types."""

    kind: ClientKind
    sessions: int
    seconds: float
    pace: float
    e2e_ms: list[float]
    timings_ms: list[Timings]
    failures: list[str]
    wall_seconds: float
    cpu_seconds: float
    stand_in_cpu_seconds: dict[str, float]
    peak_rss: int
    loop_lag_ms: LoopLagByPhase


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ConcurrencyRun(Concurrency, Process):
    tokens_issued: int
    """Tokens the identity endpoint issued while the worker ran (warm-up included)."""


# --- time to first audio ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class FirstAudioSample:
    """One call: when the first audio reached the caller and when the call ended (ms since it began).
    For a JSON answer the first audio is the whole answer; None when the call failed before any."""

    kind: ClientKind
    round: int
    first_audio_ms: float | None
    total_ms: float
    ok: bool


@dataclass(frozen=True, kw_only=True, config=STRICT)
class FirstAudio:
    """`sessions` simultaneous calls of each kind in turn, `rounds` times, answers of `seconds` paced
    at `pace`; the function through a dev host over a socket."""

    sessions: int
    seconds: float
    pace: float
    samples: list[FirstAudioSample]


@dataclass(frozen=True, kw_only=True, config=STRICT)
class FirstAudioRun(FirstAudio, Process):
    """A first-audio run and the worker process (the callers) it ran in."""


# --- memory of streams ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class StreamMemory:
    """The dev host's RSS (sampled) while it streams: one caller that stops reading in a long answer
    (against `baseline_rss`, after warm-up), then `sessions` simultaneous streams, then as many JSON
    answers, each against the RSS just before. `stalled_rss` is (seconds since the stalled request
    began, RSS) while it waited."""

    baseline_rss: int
    stalled_seconds: float
    stall_seconds: float
    stalled_peak_rss: int
    stalled_audio_bytes: int
    """Audio the stalled caller had read when it stopped reading."""
    stalled_rss: list[tuple[float, int]]
    sessions: int
    seconds: float
    streams_before_rss: int
    streams_peak_rss: int
    streams_ok: int
    json_before_rss: int
    json_peak_rss: int
    json_ok: int


@dataclass(frozen=True, kw_only=True, config=STRICT)
class StreamMemoryRun(StreamMemory, Process):
    """A stream memory run and the worker process (the callers) it ran in."""


# --- chat completions -------------------------------------------------------------------------------

ChatKind = Literal["chat", "chat_history", "sse", "bare"]
"""Who answered: `stream: true` chat completions (without, or with the history turns), `/api/speech`'s
Server-Sent Events, or the bare openai-SDK loop."""


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ChatSample:
    """One call: when its first audio reached the caller (ms since it began; None when it failed)."""

    kind: ChatKind
    round: int
    first_audio_ms: float | None
    ok: bool


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ChatCompletions:
    """The OpenAI-compatible surface through a dev host over a socket: first audio of `stream: true`
    against `/api/speech`'s events and the bare loop, and with `history_turns` earlier messages
    (answers of `seconds` paced at `pace`); then the host's RSS (sampled) while it answers one
    non-streamed `wav` of `short_seconds`, then one of `long_seconds` (full speed), each against the
    RSS just before."""

    seconds: float
    pace: float
    history_turns: int
    samples: list[ChatSample]
    short_seconds: float
    short_before_rss: int
    short_peak_rss: int
    long_seconds: float
    long_before_rss: int
    long_peak_rss: int
    long_body_bytes: int
    """Bytes of the long answer's response body (its audio in base64 with the JSON around it)."""


@dataclass(frozen=True, kw_only=True, config=STRICT)
class ChatCompletionsRun(ChatCompletions, Process):
    """A chat completions run and the worker process (the callers) it ran in."""


# --- output encoding --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class EncodingCost:
    """One format's encoder on the same answer (the model's deltas as the emulator sends them):
    CPU seconds of each repetition, and the file it made."""

    format: str
    audio_seconds: float
    cpu_seconds: list[float]
    file_bytes: int


@dataclass(frozen=True, kw_only=True, config=STRICT)
class FormatSample:
    """One request for one output format: end-to-end ms and the stored file's size."""

    format: str
    round: int
    function_ms: float
    file_bytes: int


@dataclass(frozen=True, kw_only=True, config=STRICT)
class OutputEncoding:
    """The encoders alone, then (when the app takes the request option `format`) requests in every
    format in turn; `format_samples` is None when the app measured has no such option."""

    mp3_bitrate_kbps: int
    costs: list[EncodingCost]
    request_seconds: float
    format_samples: list[FormatSample] | None


@dataclass(frozen=True, kw_only=True, config=STRICT)
class OutputEncodingRun(OutputEncoding, Process):
    """An output encoding run and the worker process it ran in."""


# --- spoken questions -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class DecodingCost:
    """`decode_question` on one kind of input: CPU seconds of each repetition."""

    input: str
    content_type: str
    input_seconds: float
    input_bytes: int
    cpu_seconds: list[float]


@dataclass(frozen=True, kw_only=True, config=STRICT)
class QuestionSample:
    """One request, a spoken or a written question: the function's own marks (ms since it began)."""

    kind: Literal["spoken", "text"]
    round: int
    function_ms: float
    timings_ms: Timings
    answer_seconds: float


@dataclass(frozen=True, kw_only=True, config=STRICT)
class AudioDecoding:
    """The decoder alone on each input, then (when the app takes spoken questions) spoken and written
    questions of the same content in turn; `question_samples` is None when it does not."""

    costs: list[DecodingCost]
    question_seconds: float
    question_samples: list[QuestionSample] | None


@dataclass(frozen=True, kw_only=True, config=STRICT)
class AudioDecodingRun(AudioDecoding, Process):
    """An audio decoding run and the worker process it ran in."""


# --- backend pool -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class PoolThroughput:
    """`clients` callers in a closed loop for `window_seconds` (each waits Retry-After after a 429 or
    503) against `backends` backends that each admit `max_sessions` sessions at once."""

    backends: int
    max_sessions: int
    clients: int
    seconds: float
    pace: float
    window_seconds: float
    wall_seconds: float
    e2e_ms: list[float]
    answered_by: dict[str, int]
    """Answers per backend (the answer's `backend`)."""
    refusals: dict[str, int]
    """Answers other than 200, by problem type."""
    cpu_seconds: float
    stand_in_cpu_seconds: dict[str, float]


@dataclass(frozen=True, kw_only=True, config=STRICT)
class PoolThroughputRun(PoolThroughput, Process):
    """A backend pool run and the worker process it ran in."""


# --- telemetry --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class TelemetryRun(Latency, Process):
    """A latency run with or without telemetry settings (`settings`)."""

    ingested_items: int
    """Telemetry items the ingestion stand-in accepted while the worker ran."""


# --- a whole run ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, config=STRICT)
class RunSetup:
    machine: Machine
    plan: Plan


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Runs:
    """Every benchmark's runs, by benchmark name (see `benchmarks.registry`), and the import profile
    (taken by the runner, not a worker)."""

    cold_start: list[ColdStartRun]
    import_profile: list[ImportTime]
    latency: list[LatencyRun]
    memory: list[MemoryRun]
    storage_burst: list[StorageBurstRun]
    concurrency: list[ConcurrencyRun]
    first_audio: list[FirstAudioRun] = field(default_factory=list)
    stream_memory: list[StreamMemoryRun] = field(default_factory=list)
    mp3_encoding: list[OutputEncodingRun] = field(default_factory=list)
    audio_decoding: list[AudioDecodingRun] = field(default_factory=list)
    backend_pool: list[PoolThroughputRun] = field(default_factory=list)
    telemetry: list[TelemetryRun] = field(default_factory=list)
    chat_completions: list[ChatCompletionsRun] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Results(Runs, RunSetup):
    """results.json. `machine_load`: by benchmark name, the machine's 1-minute load average read when
    each of its worker runs started and ended and every `LOAD_READ_SECONDS` between (empty in a file
    from before it was recorded)."""

    runtime_seconds: float
    machine_load: dict[str, list[float]] = field(default_factory=dict)


def merge(cls: type[T], *parts: object, **values: object) -> T:
    """A `cls` made of the fields of `parts` (dataclasses), in that order, and `values`."""
    merged = {field.name: getattr(part, field.name) for part in parts for field in fields(part)}
    return cls(**merged, **values)


def parse(cls: type[T], data: object) -> T:
    """`data` (JSON values) as a `cls`; unknown keys, missing keys and wrong types are errors."""
    return TypeAdapter(cls).validate_python(data)


def dump(results: Results) -> str:
    return json.dumps(asdict(results), indent=1) + "\n"


def load(text: str) -> Results:
    return parse(Results, json.loads(text))
