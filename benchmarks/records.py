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
from dataclasses import asdict, fields
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

ClientKind = Literal["bare", "function"]
"""Who answered: the bare openai-SDK loop or the function."""


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


@dataclass(frozen=True, kw_only=True, config=STRICT)
class Results(Runs, RunSetup):
    """results.json."""

    runtime_seconds: float


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
