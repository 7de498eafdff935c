"""A loopback HTTPS proxy in front of one HTTP/1.1 service (Azurite) that can lose or hold responses.

It terminates TLS with the development server certificate, forwards each request to the target over
TLS (trusting the test CA) and relays the response, one exchange after the other on each connection.
`lose_responses(method, path_part, count)` makes the next `count` matching requests land at the target
while their callers never hear so: the proxy reads the response, drops it and closes the caller's
connection, as a connection lost after the request was sent would. (aiohttp sends an idempotent
request again at once when a reused connection closes without a response, so one call of the SDK
may be several requests here.) `hold_responses(method, path_part, until)` holds the responses of
matching requests (landed) until an event is set: a storage call slower than the caller's deadline.

In-process (async tests)::

    async with HttpsProxy(azurite_port, stack.certs) as proxy:
        url = f"https://127.0.0.1:{proxy.port}/devstoreaccount1"
        proxy.lose_responses("PUT", "/idempotency/", count=1)
        ...
        proxy.lost  # ["PUT /devstoreaccount1/audio/idempotency/....json"]
        proxy.requests  # every request forwarded, the same way
        proxy.held  # the requests whose responses were held
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Self

from .certs import DevCerts
from .process import LOOPBACK
from .tcp_proxy import ConnectionServer, reset

NO_BODY_STATUSES = (204, 304)


@dataclass
class Message:
    """One HTTP/1.1 request or response as it travelled: its start line and its bytes."""

    start_line: str
    raw: bytes


@dataclass
class ResponseRule:
    """What becomes of the responses to the next `remaining` requests that match: lost, or held until
    `release` is set."""

    method: str
    path_part: str
    remaining: int
    release: asyncio.Event | None = None

    def takes(self, request: Message) -> bool:
        method, target, _ = request.start_line.split(" ", 2)
        if self.remaining <= 0 or method != self.method or self.path_part not in target:
            return False
        self.remaining -= 1
        return True


class HttpsProxy(ConnectionServer):
    """Relays HTTPS on `host:port` (port 0: a free one, see `.port` once started) to the target."""

    def __init__(self, target_port: int, certs: DevCerts, *, target_host: str = LOOPBACK) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_tls.load_cert_chain(certs.server_cert, certs.server_key)
        self._target_tls = ssl.create_default_context(cafile=str(certs.ca_file))
        self._rules: list[ResponseRule] = []
        self.connections = 0
        """Connections accepted so far."""
        self.requests: list[str] = []
        """Every request forwarded, as method and target ("GET /devstoreaccount1/audio/..."), in order."""
        self.lost: list[str] = []
        """The requests whose responses were lost, the same way, in order."""
        self.held: list[str] = []
        """The requests whose responses were held, the same way, in order."""
        super().__init__()

    def lose_responses(self, method: str, path_part: str, count: int = 1) -> None:
        """Lose the responses of the next `count` requests with `method` whose target contains
        `path_part` (the requests themselves reach the target)."""
        self._rules.append(ResponseRule(method, path_part, count))

    def hold_responses(self, method: str, path_part: str, until: asyncio.Event, count: int = 1) -> None:
        """Hold the responses of the next `count` matching requests (which reach the target) until
        `until` is set; a caller who gave up meanwhile never gets them."""
        self._rules.append(ResponseRule(method, path_part, count, until))

    def deliver_responses(self) -> None:
        """From now on every response is relayed at once (the rules not used up are dropped)."""
        self._rules.clear()

    async def start(self) -> Self:
        return await self._listen(LOOPBACK, 0, ssl=self._server_tls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.target_host, self.target_port, ssl=self._target_tls
            )
        except OSError:
            reset(writer)
            return
        try:
            while (request := await _read_message(reader)) is not None:
                seen = request.start_line.rsplit(" ", 1)[0]  # without the HTTP version
                self.requests.append(seen)
                target_writer.write(request.raw)
                await target_writer.drain()
                response = await _read_message(target_reader, request.start_line.split(" ", 1)[0])
                if response is None:
                    break
                rule = next((rule for rule in self._rules if rule.takes(request)), None)
                if rule is not None and rule.release is None:
                    self.lost.append(seen)
                    reset(writer)
                    break
                if rule is not None and rule.release is not None:
                    self.held.append(seen)
                    await rule.release.wait()
                writer.write(response.raw)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            reset(writer)
        finally:
            writer.close()
            target_writer.close()


async def _read_message(reader: asyncio.StreamReader, request_method: str | None = None) -> Message | None:
    """The next whole message on `reader` (a request, or with `request_method` the response to it);
    None when the peer closed the connection between messages."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise
        return None
    start_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines if line)
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    if request_method is not None and not _response_has_body(request_method, start_line):
        return Message(start_line, head)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Message(start_line, head + await _read_chunks(reader))
    if "content-length" in headers:
        return Message(start_line, head + await reader.readexactly(int(headers["content-length"])))
    if request_method is None:  # a request without a length has no body
        return Message(start_line, head)
    return Message(start_line, head + await reader.read())  # a response ended by closing


def _response_has_body(request_method: str, status_line: str) -> bool:
    status = int(status_line.split(" ", 2)[1])
    return request_method != "HEAD" and status >= 200 and status not in NO_BODY_STATUSES


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    """A chunked body as sent: the chunks, the last (empty) one and the trailers."""
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        parts.append(size_line)
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        parts.append(await reader.readexactly(size + 2))
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        parts.append(line)
    parts.append(line)
    return b"".join(parts)
