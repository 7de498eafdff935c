"""Telemetry of the function app end to end: a dev host configured with `stack.telemetry_settings()`
(the real Azure Monitor exporter, Entra auth through the identity stand-in) sends to the ingestion
stand-in, which keeps every envelope it accepted.

One fixture run answers four requests, each in a trace of its own continued from the caller's
`traceparent`: a JSON answer, a streamed (SSE) answer, a JSON request whose connection drops and a
stream that fails mid-way. The host is stopped (which flushes its exporters) before the tests read
what arrived, so the metrics are the totals of exactly these four requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
import pytest_asyncio

from devtools.appinsights_ingest import ITEM_TYPES
from devtools.stack import Stack

from .conftest import SpeechHost
from .speech_client import EventStream
from .test_speech_api import unique_text

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHASES = {"connect", "stream", "commit", "sign"}
MONITOR_AUDIENCES = {"https://monitor.azure.com", "https://monitor.azure.com/"}
# The storage SDK's own spans (azure-core tracing): `<Client>.<method>`, then its HTTP request.
STORAGE_CALL = re.compile(r"(BlobServiceClient|ContainerClient|BlobClient)\.\w+")
EXPORT_TIMEOUT_SECONDS = 30


# --- the ingestion stand-in ------------------------------------------------------------------------


@dataclass
class Ingestion:
    """What the stand-in accepted, read over HTTPS (it trusts only the test CA)."""

    url: str
    http: aiohttp.ClientSession
    tls: ssl.SSLContext

    async def _get(self, path: str) -> Any:
        async with self.http.get(f"{self.url}{path}", ssl=self.tls) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def items(self) -> list[dict[str, Any]]:
        return (await self._get("/_ingest/items"))["items"]

    async def calls(self) -> dict[str, Any]:
        return await self._get("/_ingest/calls")

    async def clear(self) -> None:
        async with self.http.delete(f"{self.url}/_ingest/items", ssl=self.tls) as response:
            assert response.status == 204


def data(item: dict[str, Any]) -> dict[str, Any]:
    return item["data"]["baseData"]


def of_type(items: list[dict[str, Any]], item_type: str) -> list[dict[str, Any]]:
    return [item for item in items if item["data"]["baseType"] == ITEM_TYPES[item_type]]


def interval(item: dict[str, Any]) -> tuple[datetime, datetime]:
    """Start and end of a request or dependency (`time` and `duration` as `d.hh:mm:ss.ffffff`)."""
    start = datetime.fromisoformat(item["time"].replace("Z", "+00:00"))
    days, _, clock = data(item)["duration"].partition(".")
    hours, minutes, seconds = clock.split(":")
    length = timedelta(days=int(days), hours=int(hours), minutes=int(minutes), seconds=float(seconds))
    return start, start + length


@dataclass
class Trace:
    """The items of one operation (trace id) and how they nest."""

    items: list[dict[str, Any]]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return of_type(self.items, "Request")

    @property
    def request(self) -> dict[str, Any]:
        [ours] = [item for item in self.requests if data(item)["name"] == "POST /api/speech"]
        return ours

    @property
    def dependencies(self) -> list[dict[str, Any]]:
        return of_type(self.items, "RemoteDependency")

    def children(self, parent: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for item in self.dependencies:
            if item["tags"].get("ai.operation.parentId") == data(parent)["id"]:
                found.setdefault(data(item)["name"], []).append(item)
        return found

    def phase(self, name: str) -> dict[str, Any]:
        [phase] = self.children(self.request)[name]
        return phase

    def below(self, parent: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every dependency under `parent`, at any depth."""
        for items in self.children(parent).values():
            for item in items:
                yield item
                yield from self.below(item)

    def log_line(self) -> dict[str, Any]:
        [line] = [
            item for item in of_type(self.items, "Message") if data(item)["message"].startswith("speech ")
        ]
        return line


# --- one run of the four requests ------------------------------------------------------------------


@dataclass
class Sent:
    """One request as the caller made it, and what it got."""

    trace_id: str
    caller_span_id: str
    request_id: str
    text: str
    status: int = 0
    body: Any = None
    stream: EventStream | None = None

    @property
    def traceparent(self) -> dict[str, str]:
        return {
            "traceparent": f"00-{self.trace_id}-{self.caller_span_id}-01",
            "x-request-id": self.request_id,
        }

    @property
    def answer(self) -> dict[str, Any]:
        """The JSON answer, or the stream's `speech.done` event."""
        return self.stream.last() if self.stream is not None else self.body


def new_request(name: str, text: str) -> Sent:
    return Sent(uuid4().hex, secrets.token_hex(8), f"tele-{name}-{uuid4().hex[:8]}", text)


@dataclass
class Run:
    """The four requests and everything the stand-in holds after them."""

    sent: dict[str, Sent]
    items: list[dict[str, Any]]
    calls: dict[str, Any]
    host_log: str
    stack: Stack = field(repr=False)

    def trace(self, name: str) -> Trace:
        trace_id = self.sent[name].trace_id
        return Trace([item for item in self.items if item["tags"].get("ai.operation.id") == trace_id])

    def metric(self, name: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """(dimensions, aggregate) of every exported aggregate of the metric."""
        return [
            (data(item).get("properties", {}), metric)
            for item in of_type(self.items, "Metric")
            for metric in data(item)["metrics"]
            if metric["name"] == name
        ]

    def totals(self, name: str, *dimensions: str, of: str = "value") -> dict[tuple[str, ...], float]:
        """The metric's `value` (sum) or `count`, added up over export intervals, by `dimensions`."""
        totals: dict[tuple[str, ...], float] = {}
        for properties, metric in self.metric(name):
            key = tuple(properties.get(dimension, "") for dimension in dimensions)
            totals[key] = totals.get(key, 0) + metric.get(of, metric["value"])
        return totals


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + EXPORT_TIMEOUT_SECONDS
    while not await condition():
        assert time.monotonic() < deadline, f"not exported within {EXPORT_TIMEOUT_SECONDS} s: {what}"
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ingestion(stack: Stack) -> AsyncIterator[Ingestion]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        yield Ingestion(stack.ingest.url, http, ssl.create_default_context(cafile=str(stack.ca_file)))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(speech_host: SpeechHost, stack: Stack, ingestion: Ingestion) -> Run:
    sent = {
        "json": new_request("json", unique_text("Tell me privately about")),
        "sse": new_request("sse", f"[[emulator:slow pace=1 seconds=1]] {unique_text('Stream me')}"),
        "json-drop": new_request("drop", f"[[emulator:drop]] {unique_text('Drop me')}"),
        "sse-error": new_request("sse-error", f"[[emulator:error_mid]] {unique_text('Fail me')}"),
    }
    async with speech_host(**stack.telemetry_settings()) as client:
        await ingestion.clear()  # what the host sent while starting (its health probe) is not ours
        for name in ("json", "json-drop"):
            request = sent[name]
            request.status, request.body, _ = await client.post(
                {"text": request.text, "voice": "marin"}, headers=request.traceparent
            )
        for name in ("sse", "sse-error"):
            request = sent[name]
            request.stream = await client.stream({"text": request.text}, request.traceparent)
            request.status = request.stream.status

        async def all_four_arrived() -> bool:
            run = Run(sent, await ingestion.items(), {}, "", stack)
            return all(
                any(data(item)["name"] == "POST /api/speech" for item in run.trace(name).requests)
                and of_type(run.trace(name).items, "Message")
                for name in sent
            )

        await wait_until(all_four_arrived, "the four requests and their log lines")
        assert client.host is not None
        host = client.host
    # The host has stopped: its exporters flushed at exit, so every metric of the four is in.
    return Run(sent, await ingestion.items(), await ingestion.calls(), host.log_path.read_text(), stack)


# --- the exported telemetry ------------------------------------------------------------------------


async def test_the_requests_were_answered_as_the_scenarios_say(run: Run) -> None:
    assert [run.sent[name].status for name in ("json", "json-drop", "sse", "sse-error")] == [
        200,
        502,
        200,
        200,
    ]
    assert run.sent["json"].body["transcript"]
    assert run.sent["json-drop"].body["type"].endswith(":upstream-failed")
    sse, failed = run.sent["sse"].stream, run.sent["sse-error"].stream
    assert sse is not None and sse.last()["type"] == "speech.done"
    assert failed is not None and "speech.audio.delta" in failed.types
    assert failed.last()["type"] == "error"


@pytest.mark.parametrize("name", ["json", "sse"])
async def test_the_request_continues_the_callers_trace_with_its_facts(run: Run, name: str) -> None:
    sent, trace = run.sent[name], run.trace(name)
    request = data(trace.request)
    assert trace.request["tags"]["ai.operation.parentId"] == sent.caller_span_id
    assert (request["responseCode"], request["success"]) == ("200", True)
    assert request["url"].endswith("/api/speech")
    answer, properties = sent.answer, request["properties"]
    usage = answer["usage"]
    expected = {
        "speech.request_id": sent.request_id,
        "speech.voice": answer["voice"],
        "speech.format": "wav",
        "speech.backend": "default",
        "speech.spare_session": "False",  # REALTIME_SPARE_SESSIONS is 0 by default
        "speech.response_status": "completed",
        "speech.audio_seconds": str(answer["audio"]["duration_seconds"]),
        "speech.first_audio_ms": str(answer["timings_ms"]["first_audio"]),
        "speech.tokens.input": str(usage["input_tokens"]),
        "speech.tokens.input.text": str(usage["input_token_details"]["text_tokens"]),
        "speech.tokens.input.audio": str(usage["input_token_details"]["audio_tokens"]),
        "speech.tokens.output": str(usage["output_tokens"]),
        "speech.tokens.output.text": str(usage["output_token_details"]["text_tokens"]),
        "speech.tokens.output.audio": str(usage["output_token_details"]["audio_tokens"]),
    }
    assert expected.items() <= properties.items()
    assert name != "json" or properties["speech.voice"] == "marin"


@pytest.mark.parametrize("name", ["json", "sse"])
async def test_phases_attempts_and_storage_calls_nest_below_the_request(run: Run, name: str) -> None:
    trace = run.trace(name)
    children = trace.children(trace.request)
    phases = {child for child, items in children.items() if data(items[0])["type"] == "InProc"}
    assert phases >= PHASES
    # Besides the phases, only the storage SDK (the first request prepares container and key).
    assert all(STORAGE_CALL.fullmatch(other) for other in phases - PHASES), phases
    [attempt] = trace.children(trace.phase("connect"))["connect attempt"]
    assert data(attempt)["properties"] == {"speech.backend": "default", "speech.attempt": "1"}
    commit_calls = [item for item in trace.below(trace.phase("commit")) if data(item)["type"] == "HTTP"]
    written = {
        data(item)["name"].rsplit(".", 1)[-1] for item in commit_calls if data(item)["resultCode"] == "201"
    }
    assert written >= {"wav", "json"}  # the WAV and its record, both below the commit
    assert all(STORAGE_CALL.fullmatch(name) for name in trace.children(trace.phase("commit")))
    assert all(STORAGE_CALL.fullmatch(name) for name in trace.children(trace.phase("sign")))
    ids = [data(item)["id"] for item in trace.dependencies]
    assert len(ids) == len(set(ids))


async def test_each_request_is_exported_once(run: Run) -> None:
    """Only the app's span is a request: no web framework adds a second one (nor its metrics)."""
    for name in run.sent:
        assert [data(item)["name"] for item in run.trace(name).requests] == ["POST /api/speech"], name
    assert run.metric("http.server.request.duration") == []


async def test_one_request_span_covers_the_whole_stream(run: Run) -> None:
    trace, stream = run.trace("sse"), run.sent["sse"].stream
    assert stream is not None
    start, end = interval(trace.request)
    tolerance = timedelta(milliseconds=2)  # durations are rounded to the microsecond, times to the ms
    # The answer was spoken in real time (`slow pace=1`, each delta sent when its audio ends): the span
    # lasts at least as long as the audio. (The caller's clock is not used: it may read events late.)
    spoken = timedelta(seconds=stream.last()["audio"]["duration_seconds"])
    assert end - start >= spoken - tolerance
    for phase in PHASES:
        phase_start, phase_end = interval(trace.phase(phase))
        assert start - tolerance <= phase_start and phase_end <= end + tolerance, phase
    assert json.loads(data(trace.log_line())["message"].removeprefix("speech "))["stream"] is True


@pytest.mark.parametrize("name", ["json-drop", "sse-error"])
async def test_a_failed_request_has_the_error_status_and_the_problem_type(run: Run, name: str) -> None:
    trace = run.trace(name)
    request = data(trace.request)
    assert trace.request["tags"]["ai.operation.parentId"] == run.sent[name].caller_span_id
    assert (request["responseCode"], request["success"]) == ("502", False)
    assert request["properties"]["speech.problem_type"] == "upstream-failed"
    assert "speech.response_status" not in request["properties"]
    stream = data(trace.phase("stream"))
    assert (stream["success"], stream["properties"]["speech.problem_type"]) == (False, "upstream-failed")
    assert "commit" not in trace.children(trace.request)  # nothing is committed after a failure
    line = json.loads(data(trace.log_line())["message"].removeprefix("speech "))
    assert (line["status"], line["error"]) == (502, "upstream-failed")


async def test_the_log_line_is_correlated_with_its_request(run: Run) -> None:
    for name, sent in run.sent.items():
        trace = run.trace(name)
        line = trace.log_line()
        assert line["tags"]["ai.operation.parentId"] == data(trace.request)["id"], name
        assert data(line)["properties"]["logger_name"] == "realtime_speech"
        assert json.loads(data(line)["message"].removeprefix("speech "))["request_id"] == sent.request_id


async def test_metrics_count_the_four_requests(run: Run) -> None:
    requests = run.totals("speech.requests", "outcome", "http_status", "backend")
    assert requests == {("ok", "200", "default"): 2, ("upstream-failed", "502", "default"): 2}
    durations = run.totals("speech.duration", "outcome", "backend", of="count")
    assert durations == {("ok", "default"): 2, ("upstream-failed", "default"): 2}
    # Time to first audio: one value per request that got audio, the span's own figure.
    spans = [data(run.trace(name).request)["properties"] for name in run.sent]
    first_audio = [float(span["speech.first_audio_ms"]) for span in spans if "speech.first_audio_ms" in span]
    assert run.totals("speech.time_to_first_audio", "backend", of="count") == {("default",): len(first_audio)}
    [total] = run.totals("speech.time_to_first_audio", "backend").values()
    assert total == pytest.approx(sum(first_audio))
    answers = [run.sent[name].answer for name in ("json", "sse")]
    audio = run.totals("speech.audio.duration", "format", "backend")
    assert audio == {("wav", "default"): pytest.approx(sum(a["audio"]["duration_seconds"] for a in answers))}
    assert run.totals("speech.audio.duration", "format", "backend", of="count") == {("wav", "default"): 2}


async def test_tokens_are_counted_by_direction_and_modality(run: Run) -> None:
    expected: dict[tuple[str, str, str], float] = {}
    for answer in (run.sent["json"].answer, run.sent["sse"].answer):
        for direction in ("input", "output"):
            details = answer["usage"][f"{direction}_token_details"]
            for modality in ("text", "audio"):
                key = (direction, modality, "default")
                expected[key] = expected.get(key, 0) + details[f"{modality}_tokens"]
    assert run.totals("speech.tokens", "direction", "modality", "backend") == expected
    assert sum(expected.values()) > 0


async def test_every_track_call_carries_a_managed_identity_token_for_azure_monitor(run: Run) -> None:
    calls = [call for call in run.calls["calls"] if call["path"].endswith("/track")]
    assert calls
    for call in calls:
        assert call["status"] == 200, call
        auth = call["auth"]
        assert auth["aud"] in MONITOR_AUDIENCES
        assert (auth["appid"], auth["oid"], auth["tid"]) == (
            run.stack.client_id,
            run.stack.object_id,
            run.stack.tenant_id,
        )
        assert auth["iss"] == f"https://sts.windows.net/{run.stack.tenant_id}/"
    assert run.calls["live_metrics_calls"] == 0  # live metrics stay off unless asked for


async def test_nothing_secret_or_personal_is_exported(run: Run) -> None:
    everything = json.dumps(run.items)
    personal = [sent.text for sent in run.sent.values()]
    personal += [run.sent[name].answer["transcript"] for name in ("json", "sse")]
    sas = [run.sent[name].answer["audio_url"].partition("?")[2] for name in ("json", "sse")]
    for secret in (*personal, *sas, run.stack.identity_header, run.stack.emulator_api_key):
        assert secret and secret not in everything
    for marker in ("eyJ", "sig=", "Bearer "):
        assert marker not in everything


async def test_the_host_logged_no_telemetry_error(run: Run) -> None:
    for problem in ("Calling end() on an ended span", "Transmission failed", "telemetry is off"):
        assert problem not in run.host_log


async def test_without_telemetry_settings_nothing_is_exported(
    run: Run, speech_host: SpeechHost, ingestion: Ingestion
) -> None:
    before = (len(await ingestion.items()), len((await ingestion.calls())["calls"]))
    request = new_request("plain", unique_text())
    async with speech_host() as client:
        status, _, _ = await client.post({"text": request.text}, headers=request.traceparent)
        stream = await client.stream({"text": unique_text()}, request.traceparent)
    # The host has stopped: an exporter would have flushed at exit.
    assert (status, stream.status) == (200, 200)
    assert (len(await ingestion.items()), len((await ingestion.calls())["calls"])) == before
