"""The loopback TCP proxy over real sockets: byte-exact relaying, counts, a target going down and back."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import InvalidHandshake

from devtools.process import LOOPBACK, ServiceProcess, free_port, tcp_probe
from devtools.tcp_proxy import TcpProxy
from realtime_speech.errors import UpstreamUnavailable
from realtime_speech.realtime import connect_error

# On loopback a reset takes milliseconds; this only tells a reset from a wait for some timeout.
AT_ONCE_SECONDS = 10


class Target:
    """A server that keeps what each connection sent and answers `reply` once the client half-closes."""

    def __init__(self, reply: bytes, port: int = 0) -> None:
        self.reply = reply
        self.port = port
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> Target:
        self._server = await asyncio.start_server(self._answer, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read())
        writer.write(self.reply)
        await writer.drain()
        writer.close()


async def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload`, half-close, and read the whole answer."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


async def eventually(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll the proxy's counters (it has no event for them) until `condition`; the bound is a safety net."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not become true in time")


async def test_bytes_are_relayed_exactly_both_ways() -> None:
    request, reply = os.urandom(3 * 1024 * 1024 + 17), os.urandom(2 * 1024 * 1024 + 5)
    target = await Target(reply).start()
    try:
        async with TcpProxy(target.port) as proxy:
            answers = await asyncio.gather(*(exchange(proxy.port, request) for _ in range(3)))
            assert answers == [reply] * 3
            assert target.received == [request] * 3
            await eventually(lambda: proxy.stats()["open"] == 0)
            assert proxy.stats() == {"accepted": 3, "forwarded": 3, "target_down": 0, "open": 0}
    finally:
        await target.stop()


async def test_a_down_target_resets_the_client_at_once_and_forwarding_resumes_when_it_is_back() -> None:
    port = free_port()
    async with TcpProxy(port) as proxy:
        # A reset, not a wait: the bound only catches a proxy that holds the client until some timeout.
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(AT_ONCE_SECONDS):
                await exchange(proxy.port, b"hello")
        assert proxy.stats() == {"accepted": 1, "forwarded": 0, "target_down": 1, "open": 0}

        target = await Target(b"back again", port).start()
        try:
            assert await exchange(proxy.port, b"hello") == b"back again"
            assert target.received == [b"hello"]
        finally:
            await target.stop()
        await eventually(lambda: proxy.stats()["open"] == 0)
        assert proxy.stats() == {"accepted": 2, "forwarded": 1, "target_down": 1, "open": 0}


async def test_a_websocket_handshake_through_a_down_target_fails_fast_as_unreachable() -> None:
    async with TcpProxy(free_port()) as proxy:
        # Refused, not timed out: the handshake's own timeout would raise a TimeoutError instead.
        with pytest.raises(InvalidHandshake) as raised:
            async with websocket_connect(
                f"ws://{LOOPBACK}:{proxy.port}/openai/v1/realtime", open_timeout=AT_ONCE_SECONDS
            ):
                pass
        assert isinstance(connect_error(raised.value), UpstreamUnavailable)
        assert proxy.stats()["target_down"] == 1


async def test_stopping_the_proxy_drops_open_relays() -> None:
    target = await Target(b"never sent").start()
    try:
        proxy = await TcpProxy(target.port).start()
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.port)
        writer.write(b"partial")
        await eventually(lambda: proxy.stats()["forwarded"] == 1)
        await proxy.stop()
        assert proxy.stats()["open"] == 0
        async with asyncio.timeout(2):
            assert await reader.read() == b""
        writer.close()
    finally:
        await target.stop()


async def test_the_command_line_proxy_forwards_and_reports_its_counts(tmp_path: Path) -> None:
    target = await Target(b"pong").start()
    argv = [sys.executable, "-m", "devtools.tcp_proxy", "--port", "{port}", "--target-port", str(target.port)]
    proxy = ServiceProcess("tcp-proxy", argv, probe=tcp_probe, log_dir=tmp_path)
    try:
        await proxy.astart()
        assert await exchange(proxy.port, b"ping") == b"pong"
        assert b"ping" in target.received
    finally:
        await proxy.astop()
        await target.stop()
    log = proxy.log_path.read_text()
    assert "forwarding to 127.0.0.1:" in log
    assert "'target_down': 0" in log
