"""A test-side client of the running function host, the emulator's log and the audio container."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from devtools.process import ServiceProcess

Response = tuple[int, Any, "aiohttp.typedefs.LooseHeaders"]
# How long the app may take to close its realtime connections after a request ended, on a busy machine.
SESSIONS_CLOSE_WITHIN_SECONDS = 30
OUTCOME_LOGGED_WITHIN_SECONDS = 30
LOG_POLL_SECONDS = 0.05
OUTCOME_LINE = re.compile(r"\bspeech (\{.*\})$", re.MULTILINE)  # realtime_speech.http.Outcome.record


@dataclass
class EventStream:
    """What a Server-Sent Events request got: status, headers, the events in order with the seconds
    after the request each arrived, the comments (keep-alives), or the problem when no stream began."""

    status: int
    headers: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    comments_at: list[tuple[int, float]] = field(default_factory=list)
    """For each comment: how many events came before it, and the seconds after the request."""
    problem: Any = None

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def audio(self) -> bytes:
        """The concatenated `speech.audio.delta` bytes."""
        deltas = [e["audio"] for e in self.events if e["type"] == "speech.audio.delta"]
        return b"".join(base64.b64decode(audio) for audio in deltas)

    def last(self) -> dict[str, Any]:
        return self.events[-1]


@dataclass
class SpeechClient:
    host_url: str
    emulator_url: str
    storage_url: str
    ca_file: str
    credential: AsyncTokenCredential
    container: str = "audio"
    api_key: str | None = None
    host: ServiceProcess | None = None
    """The function host's process (its `log_path`), when the client belongs to one."""
    _http: aiohttp.ClientSession | None = field(default=None, init=False)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return self._http

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def post(
        self, body: dict[str, Any], request_id: str | None = None, headers: Mapping[str, str] = {}
    ) -> Response:
        return await self.post_raw(json.dumps(body).encode(), "application/json", request_id, **headers)

    async def post_raw(
        self, body: bytes, content_type: str | None, request_id: str | None = None, **headers: str
    ) -> Response:
        sent = dict(headers)
        if content_type:
            sent["Content-Type"] = content_type
        if request_id:
            sent["x-request-id"] = request_id
        async with self.http.post(f"{self.host_url}/api/speech", data=body, headers=sent) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None, response.headers

    async def stream(
        self,
        body: dict[str, Any],
        headers: Mapping[str, str] = {},
        *,
        read_until: str | None = None,
    ) -> EventStream:
        """POST with `Accept: text/event-stream` and read the answer's events (and comments) as they
        arrive, each with its arrival time; with `read_until`, stop reading (and close the connection)
        right after the first event of that type."""
        sent = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
        started = time.perf_counter()
        async with self.http.post(f"{self.host_url}/api/speech", json=body, headers=sent) as response:
            result = EventStream(response.status, response.headers)
            if response.status != 200 or not response.content_type.startswith("text/event-stream"):
                text = await response.text()
                result.problem = json.loads(text) if text else None
                return result
            fields: dict[str, str] = {}
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    result.comments.append(line[1:].strip())
                    result.comments_at.append((len(result.events), time.perf_counter() - started))
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    event = json.loads(fields["data"])
                    assert event["type"] == fields["event"], fields
                    result.events.append(event)
                    result.arrivals.append(time.perf_counter() - started)
                    fields = {}
                    if event["type"] == read_until:
                        response.close()
                        break
        return result

    async def download(self, url: str) -> bytes:
        async with self.http.get(url, ssl=self.tls) as response:
            assert response.status == 200, await response.text()
            return await response.read()

    async def put_with_sas(self, url: str, data: bytes) -> int:
        """Try to overwrite the blob with the SAS; returns the HTTP status."""
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}
        async with self.http.put(url, data=data, headers=headers, ssl=self.tls) as response:
            return response.status

    async def request_outcome(self, request_id: str) -> dict[str, Any]:
        """The host's log line for `request_id` (`speech {...}`), written once that request has ended.

        The log file is read until the line appears (a log has no event to wait on); the bound is a
        safety net for a busy machine, not a timing limit."""
        assert self.host is not None, "the client has no host of its own"
        deadline = time.monotonic() + OUTCOME_LOGGED_WITHIN_SECONDS
        while True:
            for logged in OUTCOME_LINE.findall(self.host.log_path.read_text(errors="replace")):
                outcome = json.loads(logged)
                if outcome.get("request_id") == request_id:
                    return outcome
            assert time.monotonic() < deadline, f"no outcome logged for request {request_id}"
            await asyncio.sleep(LOG_POLL_SECONDS)

    async def emulator_sessions(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.emulator_url}/_emulator/sessions") as response:
            assert response.status == 200
            return await response.json()

    async def refuse_handshakes(self, status: int, count: int, retry_after: int | None = None) -> None:
        """Make the emulator refuse its next `count` handshakes with `status` (0 clears)."""
        fault = {"status": status, "count": count, "retry_after": retry_after}
        async with self.http.post(f"{self.emulator_url}/_emulator/handshake-faults", json=fault) as response:
            assert response.status == 200, await response.text()

    async def script_sessions(self, scenario: str, count: int) -> None:
        """Make the emulator's next `count` sessions follow `scenario` (e.g. `error_mid`)."""
        fault = {"scenario": scenario, "count": count}
        async with self.http.post(f"{self.emulator_url}/_emulator/scenario-faults", json=fault) as response:
            assert response.status == 200, await response.text()

    async def emulator_stats(self, wait_idle: float = 0) -> dict[str, Any]:
        """The emulator's counters; with `wait_idle`, once no session is open (or after that many s)."""
        query = f"?wait_idle={wait_idle}" if wait_idle else ""
        async with self.http.get(f"{self.emulator_url}/_emulator/stats{query}") as response:
            assert response.status == 200
            return await response.json()

    async def assert_sessions_closed(self) -> None:
        """The app closed every realtime connection it opened: the emulator goes idle (the wait is
        only a safety net; the emulator answers as soon as its last session ends)."""
        stats = await self.emulator_stats(wait_idle=SESSIONS_CLOSE_WITHIN_SECONDS)
        assert stats["connections_open"] == 0, f"realtime connections left open: {stats}"

    async def emulator_session(self, user_text: str) -> dict[str, Any]:
        """The one emulator session that was asked `user_text`."""
        matches = [s for s in await self.emulator_sessions() if s["user_text"] == user_text]
        assert len(matches) == 1, f"{len(matches)} sessions were asked this text"
        return matches[0]

    @asynccontextmanager
    async def _container(self) -> AsyncIterator[ContainerClient]:
        async with BlobServiceClient(
            self.storage_url, credential=self.credential, connection_verify=self.ca_file
        ) as service:
            yield service.get_container_client(self.container)

    async def blob_names(self) -> set[str]:
        """Every committed blob in the audio container (none before the app created it)."""
        async with self._container() as container:
            try:
                return {blob.name async for blob in container.list_blobs()}
            except ResourceNotFoundError:
                return set()

    async def committed_blocks(self, blob_name: str) -> list[int]:
        """Sizes of the blob's committed blocks, in order."""
        async with self._container() as container:
            committed, _ = await container.get_blob_client(blob_name).get_block_list("committed")
            return [block.size for block in committed]

    async def wav_names(self) -> set[str]:
        return {name for name in await self.blob_names() if name.endswith(".wav")}

    async def read_json_blob(self, blob_name: str) -> Any:
        async with self._container() as container:
            downloader = await container.download_blob(blob_name)
            return json.loads(await downloader.readall())


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """Check an RFC 9457 answer (status, media type, every member, request id echoed); return it."""
    got_status, problem, headers = response
    assert got_status == status, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["type"] == f"urn:realtime-speech:problem:{code}"
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    assert problem["request_id"] == headers["x-request-id"]
    assert "Traceback" not in json.dumps(problem)
    if status in (429, 503):
        assert int(headers["Retry-After"]) >= 1
    return problem
