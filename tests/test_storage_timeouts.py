"""Storage calls give up at the client's own timeouts, not azure-core's 300 s default."""

from __future__ import annotations

import asyncio

import pytest
from azure.core.exceptions import ServiceResponseError

from realtime_speech.storage import blob_service_client


async def test_a_storage_endpoint_that_never_answers_fails_at_the_read_timeout() -> None:
    """A listener that takes the request and never answers: every attempt ends at the read timeout
    (with the 300 s default this would outlast the test's own bound)."""
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(65536)
        await asyncio.Event().wait()  # never answers; closed with the server

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # anonymous: a token is only sent over HTTPS, and the transport's timeouts are what is tested
    client = blob_service_client(f"http://127.0.0.1:{port}/devstoreaccount1", None, read_timeout=0.5)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(60):
            with pytest.raises(ServiceResponseError):
                await client.get_container_client("audio").get_container_properties()
        assert accepted >= 1
    finally:
        await client.close()
        server.close()
