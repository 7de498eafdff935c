"""Blob Storage seen from between the app and Azurite: the app's storage account URL points at an
HTTPS proxy (`devtools.https_proxy`) that shows every request and can let a request land and lose its
response, as a connection dropped on the way back would. Failures after the commit, and the
user-delegation keys the app asks for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest
import pytest_asyncio
from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient

from devtools import azurite
from devtools.https_proxy import HttpsProxy
from devtools.stack import AUDIO_CONTAINER, DEPLOYMENT_NAME, Stack
from realtime_speech.errors import StorageUnavailable
from realtime_speech.models import SpeechRequest, Timeline
from realtime_speech.realtime import RealtimeBackend, realtime_client
from realtime_speech.service import SpeechService
from realtime_speech.settings import Settings
from realtime_speech.storage import AudioStore, fast_failing_retry

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


async def test_the_deadline_while_the_keys_record_is_written_leaves_nothing(
    speech_host: SpeechHost, storage_proxy: HttpsProxy
) -> None:
    """The record's write lands but its response is held past the deadline: a 504 after the commit.
    The committed answer goes, and so does the key's record, which names it; a retry answers anew."""
    url = azurite.account_url(storage_proxy.port)
    async with speech_host(AUDIO_STORAGE_ACCOUNT_URL=url, REALTIME_TIMEOUT_SECONDS="6") as short:
        text, key = unique_text(), new_key()
        await short.post({"text": unique_text()})  # the container exists
        blobs_before = await short.blob_names()
        released = asyncio.Event()
        storage_proxy.hold_responses("PUT", "/idempotency/", until=released)
        try:
            response = await short.post({"text": text}, headers=key)
        finally:
            released.set()
        assert_problem(response, 504, "deadline-exceeded")
        assert [line.split(" ")[0] for line in storage_proxy.held[-1:]] == ["PUT"]
        assert await short.blob_names() == blobs_before
        status, body, headers = await short.post({"text": text}, headers=key)
        assert status == 200, body
        assert "Idempotent-Replayed" not in headers
        assert await sessions_asked(short, text) == 2


def sas_time(url: str, field: str) -> datetime:
    return datetime.fromisoformat(parse_qs(urlsplit(url).query)[field][0])


async def test_urls_of_seven_days_download_and_share_one_key_asked_for_less_than_seven_days(
    speech_host: SpeechHost, storage_proxy: HttpsProxy
) -> None:
    """At the longest URL lifetime, the key is asked for with a margin under Storage's 7-day limit
    from a start a few minutes in the past, and signs every URL of its window (one key, not one per URL)."""
    url = azurite.account_url(storage_proxy.port)
    async with speech_host(AUDIO_STORAGE_ACCOUNT_URL=url, AUDIO_URL_TTL_MINUTES="10080") as week:
        requests_before = len(storage_proxy.requests)
        answers = [await week.post({"text": unique_text()}) for _ in range(2)]
        asked = datetime.now(UTC)
        for status, body, _ in answers:
            assert status == 200, body
            assert await week.download(body["audio_url"])
            assert sas_time(body["audio_url"], "skt") <= asked - timedelta(minutes=4)
            key_expiry = sas_time(body["audio_url"], "ske")
            assert key_expiry - asked < timedelta(days=7) - timedelta(minutes=30)
            expires_at = datetime.fromisoformat(body["expires_at"])
            assert expires_at <= key_expiry and expires_at - asked > timedelta(days=6, hours=22)
        key_requests = [r for r in storage_proxy.requests[requests_before:] if "comp=userdelegationkey" in r]
        assert len(key_requests) == 1


class LaterClock:
    """The local clock, moved ahead by `ahead`."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


async def test_a_delegation_key_refused_after_the_commit_leaves_nothing(
    stack: Stack,
    identity_credential: ManagedIdentityCredential,
    storage_proxy: HttpsProxy,
    behind_proxy: SpeechClient,
) -> None:
    """The service in this process, its clock an injected one: the answer is committed, then its URL
    needs the next hour's delegation key, which storage never answers. The 503 leaves nothing."""
    url = azurite.account_url(storage_proxy.port)
    settings = Settings(azure_openai_endpoint=stack.openai_endpoint, audio_storage_account_url=url)
    clock = LaterClock()
    verify = str(stack.ca_file)  # this process cannot take the test CA from SSL_CERT_FILE
    blob_service = BlobServiceClient(
        url, credential=identity_credential, connection_verify=verify, retry_policy=fast_failing_retry()
    )
    store = AudioStore(
        blob_service, AUDIO_CONTAINER, settings.audio_block_size_bytes, timedelta(hours=1), clock
    )
    backend = RealtimeBackend(
        "default", realtime_client(stack.openai_endpoint, None, identity_credential), DEPLOYMENT_NAME
    )
    service = SpeechService(settings, store, [backend], identity_credential)
    try:
        await store.ready()  # the container and this hour's key
        blobs_before = await behind_proxy.blob_names()
        requests_before = len(storage_proxy.requests)
        clock.ahead = timedelta(hours=2)
        storage_proxy.lose_responses("POST", "comp=userdelegationkey", count=EVERY_ATTEMPT)
        text = unique_text()
        try:
            answering = await service.start(SpeechRequest(text=text), "key-refused", Timeline())
            with pytest.raises(StorageUnavailable, match="delegation key"):
                await answering.result()
        finally:
            storage_proxy.deliver_responses()
        assert await behind_proxy.blob_names() == blobs_before
        assert (await behind_proxy.emulator_session(text))["response_status"] == "completed"
        audio = [r.split(" ")[0] for r in storage_proxy.requests[requests_before:] if r.endswith(".wav")]
        assert audio == ["PUT", "DELETE"]  # committed, then deleted
    finally:
        await backend.close()
        await blob_service.close()
