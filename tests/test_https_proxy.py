"""The HTTPS proxy over real sockets and TLS: each kind of HTTP/1.1 message relayed whole on a kept-alive
connection, and a response lost while its request lands."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from devtools.certs import DevCerts, ensure_dev_certs
from devtools.https_proxy import HttpsProxy
from devtools.process import LOOPBACK

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return ensure_dev_certs(Path(tmp_path_factory.mktemp("certs")))


class Target:
    """An HTTPS server that keeps the bodies it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append((f"{request.method} {request.path_qs}", await request.read()))
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"first ", b"second ", b"third"):
                await response.write(part)
            await response.write_eof()
            return response
        if request.path == "/empty":
            return web.Response(status=204)
        return web.Response(body=b"x" * 70_000, headers={"X-Seen": str(len(self.received))})


@pytest_asyncio.fixture(loop_scope="session")
async def proxied(certs: DevCerts) -> AsyncIterator[tuple[HttpsProxy, Target, aiohttp.ClientSession]]:
    target = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.server_cert, certs.server_key)
    site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    trust = ssl.create_default_context(cafile=str(certs.ca_file))
    try:
        async with (
            HttpsProxy(port, certs) as proxy,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust, limit=1)) as http,
        ):
            yield proxy, target, http
    finally:
        await runner.cleanup()


async def test_every_kind_of_message_is_relayed_whole_on_one_connection(
    proxied: tuple[HttpsProxy, Target, aiohttp.ClientSession],
) -> None:
    proxy, target, http = proxied
    base = f"https://{LOOPBACK}:{proxy.port}"
    async with http.put(f"{base}/blob?comp=block", data=b"y" * 100_000) as response:
        assert (response.status, len(await response.read())) == (200, 70_000)
    async with http.get(f"{base}/chunked") as response:
        assert await response.read() == b"first second third"
    async with http.head(f"{base}/blob") as response:
        assert response.status == 200 and await response.read() == b""
    async with http.delete(f"{base}/empty") as response:
        assert response.status == 204
    async with http.get(f"{base}/blob") as response:
        assert response.headers["X-Seen"] == "5" and len(await response.read()) == 70_000
    assert target.received[0] == ("PUT /blob?comp=block", b"y" * 100_000)
    assert proxy.requests == [
        "PUT /blob?comp=block",
        "GET /chunked",
        "HEAD /blob",
        "DELETE /empty",
        "GET /blob",
    ]
    assert proxy.lost == [] and proxy.connections == 1


async def test_a_lost_response_lands_at_the_target_and_fails_the_caller(
    proxied: tuple[HttpsProxy, Target, aiohttp.ClientSession],
) -> None:
    proxy, target, http = proxied
    base = f"https://{LOOPBACK}:{proxy.port}"
    proxy.lose_responses("POST", "/records/", count=1)
    with pytest.raises(aiohttp.ClientError):
        async with http.post(f"{base}/records/a.json", data=b"{}") as response:
            await response.read()
    assert target.received == [("POST /records/a.json", b"{}")]
    assert proxy.lost == ["POST /records/a.json"] and proxy.connections == 1
    async with http.post(f"{base}/records/a.json", data=b"{}") as response:  # the rule is used up
        assert response.status == 200
    proxy.lose_responses("GET", "/", count=5)
    proxy.deliver_responses()
    async with http.get(f"{base}/other") as response:
        assert response.status == 200
