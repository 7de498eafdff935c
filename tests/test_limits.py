"""Limits per instance through a dev host: `MAX_CONCURRENT_SESSIONS` (429 before any of the body is
read) and the request's deadline over the upload (408 for a body that does not arrive in time).
Requests that must not send their body go over raw sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import uuid4

import pytest

from .conftest import SpeechHost
from .speech_client import SpeechClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Far longer than any answer here takes: a server that waits for a body never sent fails the test.
NO_ANSWER_SECONDS = 60.0
STALL = "[[emulator:stall]]"
POLL_SECONDS = 0.1


async def raw_request(client: SpeechClient, head: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send the request line and headers (and `body`, maybe less than declared), then read the
    response; the connection stays open for the rest of the declared body until the answer."""
    host, port = client.host_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), NO_ANSWER_SECONDS)
        status_line, *lines = raw.decode().split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines if line)}
        content = await asyncio.wait_for(
            reader.readexactly(int(headers["content-length"])), NO_ANSWER_SECONDS
        )
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, json.loads(content)


async def sessions_in_flight(client: SpeechClient) -> dict[str, int]:
    async with client.http.get(f"{client.host_url}/api/status") as response:
        return (await response.json())["sessions"]


async def until_no_session(client: SpeechClient, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / POLL_SECONDS)):
        if (await sessions_in_flight(client))["active"] == 0:
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"a session still in flight after {seconds} s")


def speech_head(content_length: int) -> str:
    return (
        "POST /api/speech HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}"
    )


async def test_past_max_concurrent_sessions_a_request_gets_429_before_its_body_is_read(
    speech_host: SpeechHost,
) -> None:
    async with speech_host(MAX_CONCURRENT_SESSIONS="1") as client:
        body = {"text": f"{STALL} hold the only slot {uuid4().hex[:8]}"}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        async with client.http.post(f"{client.host_url}/api/speech", json=body, headers=headers) as held:
            assert held.status == 200
            assert (await held.content.readuntil(b"\n\n")).startswith(b"event: speech.started")
            # A body of 10 MB is announced and never sent: the answer cannot wait for it.
            status, refused_headers, problem = await raw_request(client, speech_head(10_000_000))
            sessions = await sessions_in_flight(client)
        # the held stream is gone (its caller left): its slot is freed once the host notices
        await until_no_session(client)
        after, answer, _ = await client.post({"text": "The slot is free again."})

    assert status == 429 and refused_headers["content-type"].startswith("application/problem+json")
    assert problem["type"] == "urn:realtime-speech:problem:too-many-sessions"
    assert refused_headers["retry-after"] == "1" and "1 questions" in problem["detail"]
    assert sessions == {"active": 1, "limit": 1}
    assert after == 200, answer


async def test_a_body_that_does_not_arrive_within_the_deadline_gets_408(speech_host: SpeechHost) -> None:
    async with speech_host(REALTIME_TIMEOUT_SECONDS="2") as client:
        # 20 bytes of the 100 announced, then nothing: a stalled upload.
        status, headers, problem = await raw_request(client, speech_head(100), b'{"text": "a slow upl')
        assert client.host is not None
        log = client.host.log_path.read_text()

    assert status == 408 and headers["content-type"].startswith("application/problem+json")
    assert problem["type"] == "urn:realtime-speech:problem:request-timeout"
    assert "within 2 s" in problem["detail"]
    assert f'"request_id":"{problem["request_id"]}","status":408' in log
