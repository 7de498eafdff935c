"""Failures after the commit, provoked between the app and Blob Storage: the app's storage account URL
points at an HTTPS proxy in front of Azurite (`devtools.https_proxy`) that can let a request land and
lose its response, as a connection dropped on the way back would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import pytest_asyncio

from devtools import azurite
from devtools.https_proxy import HttpsProxy
from devtools.stack import Stack

from .conftest import SpeechHost
from .speech_client import SpeechClient, assert_problem
from .test_speech_api import unique_text

pytestmark = pytest.mark.asyncio(loop_scope="session")

EVERY_ATTEMPT = 100  # more than the storage retries and aiohttp's own resending can make


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def storage_proxy(stack: Stack) -> AsyncIterator[HttpsProxy]:
    async with HttpsProxy(stack.azurite.port, stack.certs) as proxy:
        yield proxy


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def behind_proxy(speech_host: SpeechHost, storage_proxy: HttpsProxy) -> AsyncIterator[SpeechClient]:
    """A function host whose every storage call goes through `storage_proxy`."""
    async with speech_host(AUDIO_STORAGE_ACCOUNT_URL=azurite.account_url(storage_proxy.port)) as client:
        yield client


def new_key() -> dict[str, str]:
    return {"Idempotency-Key": f"order-{uuid4()}"}


async def sessions_asked(client: SpeechClient, text: str) -> int:
    return sum(session["user_text"] == text for session in await client.emulator_sessions())


async def test_a_kept_record_whose_response_was_lost_is_recognised_as_its_own(
    behind_proxy: SpeechClient, storage_proxy: HttpsProxy
) -> None:
    """The conditional write of the key's record lands but its response is lost; the storage retry is
    told 409. The app must see that the record is its own, not delete its own audio and replay it."""
    text, key = unique_text(), new_key()
    lost_before = len(storage_proxy.lost)
    storage_proxy.lose_responses("PUT", "/idempotency/", count=1)
    status, body, headers = await behind_proxy.post({"text": text}, headers=key)
    assert status == 200, body
    assert [line.split(" ")[0] for line in storage_proxy.lost[lost_before:]] == ["PUT"]
    assert "Idempotent-Replayed" not in headers
    audio = await behind_proxy.download(body["audio_url"])
    again = await behind_proxy.post({"text": text}, headers=key)
    assert again[0] == 200 and again[2]["Idempotent-Replayed"] == "true"
    assert again[1]["blob_name"] == body["blob_name"]
    assert await behind_proxy.download(again[1]["audio_url"]) == audio
    assert await sessions_asked(behind_proxy, text) == 1


async def test_a_keep_that_fails_after_its_write_landed_leaves_nothing(
    behind_proxy: SpeechClient, storage_proxy: HttpsProxy
) -> None:
    """Every response of the record's write is lost (it landed at the first attempt): a 503 after the
    commit. What was committed goes, the key's record with it, and a retry answers anew."""
    text, key = unique_text(), new_key()
    await behind_proxy.post({"text": unique_text()})  # the container exists before the count starts
    blobs_before = await behind_proxy.blob_names()
    storage_proxy.lose_responses("PUT", "/idempotency/", count=EVERY_ATTEMPT)
    try:
        response = await behind_proxy.post({"text": text}, headers=key)
    finally:
        storage_proxy.deliver_responses()
    assert_problem(response, 503, "storage-unavailable")
    assert await behind_proxy.blob_names() == blobs_before
    status, body, headers = await behind_proxy.post({"text": text}, headers=key)
    assert status == 200, body
    assert "Idempotent-Replayed" not in headers
    assert await behind_proxy.download(body["audio_url"])
    assert await sessions_asked(behind_proxy, text) == 2
