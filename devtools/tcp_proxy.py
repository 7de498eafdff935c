"""A loopback TCP proxy for tests that run several stand-ins: forwards to one target, counts connections.

It listens on 127.0.0.1 and relays each accepted connection to `target_host:target_port`, byte for
byte in both directions (half-closes pass through). When the target cannot be reached, the client
connection is reset at once, so a WebSocket handshake through the proxy fails quickly, as it would
against a stopped endpoint. The counts say what happened to the connection attempts.

In-process (async tests)::

    async with TcpProxy(emulator_port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        ...
        proxy.stats()  # {"accepted": 3, "forwarded": 2, "target_down": 1, "open": 0}

As a process: ``python -m devtools.tcp_proxy --port PORT --target-port TARGET [--target-host HOST]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import struct
from typing import Any, Self

from .process import LOOPBACK

CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_SECONDS = 2.0

log = logging.getLogger("devtools.tcp_proxy")


class ConnectionServer:
    """An asyncio server on loopback whose connections are each served by a task of its own, so that
    `stop()` cancels them without asyncio reporting the cancellation as an error of the callback."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {type(self).__name__} is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> Self:
        raise NotImplementedError

    async def _listen(self, host: str, port: int, **options: Any) -> Self:
        self._server = await asyncio.start_server(self._accept, host, port, **options)
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(connection)
        connection.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:  # since Python 3.12 this waits for every connection to close
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class TcpProxy(ConnectionServer):
    """Relays connections on `host:port` (port 0: a free one, see `.port` once started) to the target."""

    def __init__(
        self, target_port: int, *, target_host: str = LOOPBACK, host: str = LOOPBACK, port: int = 0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._requested_port = port
        self._accepted = self._forwarded = self._target_down = 0
        super().__init__()

    def stats(self) -> dict[str, int]:
        """Connections accepted, forwarded to the target, reset because the target was down, open now."""
        return {
            "accepted": self._accepted,
            "forwarded": self._forwarded,
            "target_down": self._target_down,
            "open": len(self._connections),
        }

    async def start(self) -> Self:
        return await self._listen(self.host, self._requested_port)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                target_reader, target_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except (OSError, TimeoutError):
            self._target_down += 1
            reset(client_writer)
            return
        except asyncio.CancelledError:
            reset(client_writer)
            raise
        self._forwarded += 1
        await _pump_both_ways(client_reader, client_writer, target_reader, target_writer)


async def _pump_both_ways(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target_reader: asyncio.StreamReader,
    target_writer: asyncio.StreamWriter,
) -> None:
    """Copy both directions until both ends have finished; a reset on either side drops both."""
    pumps = [
        asyncio.create_task(_pump(client_reader, target_writer)),
        asyncio.create_task(_pump(target_reader, client_writer)),
    ]
    try:
        await asyncio.gather(*pumps)
    except OSError:
        for writer in (client_writer, target_writer):
            reset(writer)
    finally:
        for pump in pumps:
            pump.cancel()
        for writer in (client_writer, target_writer):
            writer.close()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK_BYTES):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a FIN: the peer fails at once instead of seeing a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.tcp_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--target-host", default=LOOPBACK)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    proxy = TcpProxy(args.target_port, target_host=args.target_host, port=args.port)

    async def serve() -> None:
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        async with proxy:
            log.info(
                "listening on %s:%d, forwarding to %s:%d",
                proxy.host,
                proxy.port,
                proxy.target_host,
                proxy.target_port,
            )
            await stopping.wait()
        log.info("stopped; %s", proxy.stats())

    asyncio.run(serve())


if __name__ == "__main__":
    main()
