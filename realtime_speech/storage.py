"""Audio in Blob Storage: files staged block by block while the model speaks, records, and SAS URLs.

An audio file is a block blob committed as `[header, body blocks...]`: body blocks are staged while
audio streams in, the header (a WAV header; none for mp3) last, once the length is known, and one
`Put Block List` makes the blob appear whole. Until that commit nothing is visible, so a failed
request leaves no half-written blob (uncommitted blocks are discarded by the service).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import BlobSasPermissions, ContentSettings, UserDelegationKey, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient, LinearRetry

from . import incidents
from .errors import IdentityUnavailable, ServiceError, StorageUnavailable

HEADER_BLOCK_ID = f"{0:08d}"
# The smallest block staged while audio streams: at real-time pace (48 kB/s) about one per second.
MIN_BLOCK_BYTES = 64 * 1024
# A key's and a URL's validity start this far in the past: a local clock ahead of Storage's must not
# make them valid only from a moment Storage has not reached yet.
CLOCK_SKEW = timedelta(minutes=5)
# Storage refuses a user-delegation key that expires more than 7 days after its own clock's now: keys
# are asked for an hour less, so a local clock somewhat ahead does not fail every key request.
MAX_KEY_LIFETIME = timedelta(days=7) - timedelta(hours=1)
# One key signs the URLs of this long; then the next is fetched.
KEY_WINDOW = timedelta(hours=1)
# Connections to Blob Storage kept open at once. Each TLS connection holds about 300 KiB (asyncio's
# 256 KiB read buffer and the TLS state); aiohttp's default of 100 let bursts keep 60 or more alive.
# A request holds a connection only while one storage call is under way, two at most at a time.
MAX_STORAGE_CONNECTIONS = 32
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0  # a whole block's upload included
# A stored file is read in GETs of at most this much (the SDK's defaults, 32 MiB for the first GET and
# 4 MiB after it, would hold a whole 10-minute WAV in memory at once).
READ_PIECE_BYTES = 1024 * 1024


def blob_service_client(
    account_url: str,
    credential: AsyncTokenCredential,
    *,
    connection_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
) -> BlobServiceClient:
    """The process-wide client, failing fast when storage is down.

    The SDK's default retry waits about 15, 18 and 24 s between attempts, so an outage would use up
    the request's deadline (a 504) instead of answering 503 in a few seconds. Here: two retries about
    a second apart (full jitter), 5 s to connect, 30 s for a response (a whole block included), and
    at most `MAX_STORAGE_CONNECTIONS` connections, and reads of `READ_PIECE_BYTES` at a time. Call it
    from the event loop that will use it.
    """
    # The session the SDK would make, with a bounded connection pool.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_STORAGE_CONNECTIONS),
        trust_env=True,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    # The timeouts belong to the transport: the client's own timeout arguments do not reach a transport
    # that is passed in (it would keep azure-core's 300 s).
    transport = AioHttpTransport(
        session=session,
        session_owner=True,
        connection_timeout=connection_timeout,
        read_timeout=read_timeout,
    )
    return BlobServiceClient(
        account_url,
        credential=credential,
        transport=transport,
        retry_policy=fast_failing_retry(),
        max_single_get_size=READ_PIECE_BYTES,
        max_chunk_get_size=READ_PIECE_BYTES,
    )


def fast_failing_retry() -> NotedRetry:
    """Two retries about a second apart (full jitter), each failed attempt noted (see `NotedRetry`)."""
    return NotedRetry(backoff=1, random_jitter_range=1, retry_total=2)


class NotedRetry(LinearRetry):
    """The storage retry policy, noting each failed attempt as an incident of the current request, so
    that a deadline reached while storage is failing reports storage (see `incidents`)."""

    def increment(
        self,
        settings: dict[str, Any],
        request: PipelineRequest,
        response: PipelineResponse | None = None,
        error: AzureError | None = None,
    ) -> bool:
        if error is not None:
            incidents.seen(StorageUnavailable(f"Blob Storage could not be reached ({type(error).__name__})."))
        elif response is not None and response.http_response.status_code >= 500:
            status = response.http_response.status_code
            incidents.seen(StorageUnavailable(f"Blob Storage kept failing (HTTP {status})."))
        return super().increment(settings, request, response, error)


@asynccontextmanager
async def storage_errors(action: str) -> AsyncIterator[None]:
    """Turn Azure SDK failures into the documented 503s, naming the action but never a secret."""
    try:
        yield
    except ServiceError:
        raise
    except ClientAuthenticationError as exc:
        if exc.response is None:  # the credential failed before storage was asked
            raise IdentityUnavailable(f"No token for Blob Storage while trying to {action}.") from None
        raise StorageUnavailable(
            f"Blob Storage refused to {action} (HTTP {exc.status_code}): check the identity's "
            "'Storage Blob Data Contributor' role on the audio account."
        ) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageUnavailable(
            f"Blob Storage could not be reached to {action} ({type(exc).__name__})."
        ) from None
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        raise StorageUnavailable(f"Blob Storage failed to {action} (HTTP {status}).") from None


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class UrlSigning:
    """What a read-only URL signed now uses: a user-delegation key and the URL's validity."""

    key: UserDelegationKey
    start: datetime
    expiry: datetime


class DelegationKeys:
    """User-delegation keys for URLs of one lifetime (`url_ttl`): one key per `KEY_WINDOW`, asked for
    from `CLOCK_SKEW` in the past until the window's last URL has expired, and never more than
    `MAX_KEY_LIFETIME` ahead. Past about 6 days 22 hours a URL cannot live its whole lifetime (the key
    ends first): it then lives until its key's end, between 6 days 22 and 23 hours.

    `fetch(start, expiry)` asks Storage for a key; `clock` is the local clock (UTC).
    """

    def __init__(
        self,
        fetch: Callable[[datetime, datetime], Awaitable[UserDelegationKey]],
        url_ttl: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._fetch = fetch
        self._url_ttl = url_ttl
        self._key_lifetime = min(url_ttl + KEY_WINDOW, MAX_KEY_LIFETIME)
        self._clock = clock
        self._key: UserDelegationKey | None = None
        self._fetched_at = self._key_expiry = datetime.min.replace(tzinfo=UTC)
        self._lock = asyncio.Lock()

    async def signing(self) -> UrlSigning:
        """The key for a URL signed now (the window's, or a new one) and that URL's validity."""
        now = self._clock().replace(microsecond=0)  # a SAS and a key's times have whole seconds
        async with self._lock:
            if self._key is None or not self._fetched_at <= now < self._fetched_at + KEY_WINDOW:
                expiry = now + self._key_lifetime
                self._key = await self._fetch(now - CLOCK_SKEW, expiry)
                self._fetched_at, self._key_expiry = now, expiry
            return UrlSigning(self._key, now - CLOCK_SKEW, min(now + self._url_ttl, self._key_expiry))


class AudioStore:
    """The audio container: one per process, shared by every request. `clock` signs its URLs."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        block_size: int,
        url_ttl: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._service = service
        self._container = service.get_container_client(container)
        self._block_size = block_size
        self._ready: asyncio.Task[None] | None = None
        self._url_ttl = url_ttl
        self._keys = DelegationKeys(self._fetch_delegation_key, url_ttl, clock)

    @property
    def container_name(self) -> str:
        return self._container.container_name

    async def close(self) -> None:
        await self._service.close()

    def prepare(self) -> asyncio.Task[None]:
        """Start, once per process, what requests need before their first write and their SAS: the
        container and a delegation key. It overlaps the first request's model session.

        Requests wait for it with `ready()`; after a failure, the next request tries again.
        """
        ready = self._ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception() is not None)):
            self._ready = ready = asyncio.ensure_future(self._prepare())
        return ready

    async def ready(self) -> None:
        """Wait until `prepare()` is done. Shielded: a request that gives up (a failure, its deadline)
        must not cancel the preparation every other request is waiting for."""
        await asyncio.shield(self.prepare())

    async def check(self) -> None:
        """Whether storage answers now: one cheap authenticated call (the container's properties),
        not retried, after the one-time preparation."""
        await self.ready()
        async with storage_errors("read the audio container's properties"):
            await self._container.get_container_properties(retry_total=0)

    async def _prepare(self) -> None:
        async with storage_errors("create the audio container"):
            with suppress(ResourceExistsError):
                await self._container.create_container()
        await self._keys.signing()

    def writer(self, blob_name: str, content_type: str) -> BlockBlobWriter:
        """A writer for a new blob; nothing is visible until its commit."""
        self.prepare()  # now, so that it overlaps the model session
        blob = self._container.get_blob_client(blob_name)
        return BlockBlobWriter(blob, self._block_size, self.ready, content_type)

    async def save_record(self, blob_name: str, record: dict[str, Any], *, only_if_new: bool = False) -> bool:
        """Store a JSON record; with `only_if_new`, only if no blob of that name exists yet (the check
        and the write are one conditional request). Returns whether it was written."""
        data = json.dumps(record, ensure_ascii=False, indent=2, default=str).encode()
        async with storage_errors("save a request record"):
            await self.ready()
            try:
                await self._container.upload_blob(
                    blob_name,
                    data,
                    overwrite=not only_if_new,
                    content_settings=ContentSettings(content_type="application/json"),
                )
            except ResourceExistsError:  # only_if_new, and the blob exists
                return False
        return True

    @property
    def url_ttl(self) -> timedelta:
        """How long a read URL is valid at most (AUDIO_URL_TTL_MINUTES)."""
        return self._url_ttl

    async def load_record(self, blob_name: str) -> dict[str, Any] | None:
        """A stored record, or None when there is none."""
        stored = await self.load_record_written(blob_name)
        return None if stored is None else stored[0]

    async def load_record_written(self, blob_name: str) -> tuple[dict[str, Any], datetime] | None:
        """A stored record and when it was written, or None when there is none."""
        async with storage_errors("read a request record"):
            try:
                downloader = await self._container.download_blob(blob_name)
            except ResourceNotFoundError:
                return None
            return json.loads(await downloader.readall()), downloader.properties.last_modified

    async def read(self, blob_name: str, offset: int = 0) -> AsyncIterator[bytes]:
        """A stored blob from `offset`, piece by piece as it downloads (bounded memory)."""
        async with storage_errors("read an audio file"):
            downloader = await self._container.download_blob(blob_name, offset=offset)
        async with storage_errors("read an audio file"):
            async for chunk in downloader.chunks():
                yield chunk

    async def delete(self, blob_name: str) -> None:
        async with storage_errors("delete a blob"):
            with suppress(ResourceNotFoundError):
                await self._container.delete_blob(blob_name)

    async def read_url(self, blob_name: str, download_name: str, content_type: str) -> tuple[str, datetime]:
        """A read-only user-delegation SAS URL for the blob, and when it expires."""
        signing = await self._keys.signing()
        https = self._service.url.startswith("https:")
        sas = generate_blob_sas(
            account_name=self._service.account_name,
            container_name=self.container_name,
            blob_name=blob_name,
            user_delegation_key=signing.key,
            permission=BlobSasPermissions(read=True),
            start=signing.start,
            expiry=signing.expiry,
            protocol="https" if https else None,
            content_disposition=f'attachment; filename="{download_name}"',
            content_type=content_type,
        )
        blob_url = self._container.get_blob_client(blob_name).url
        return f"{blob_url}?{sas}", signing.expiry

    async def _fetch_delegation_key(self, start: datetime, expiry: datetime) -> UserDelegationKey:
        async with storage_errors("get a user delegation key"):
            return await self._service.get_user_delegation_key(start, expiry)


class BlockBlobWriter:
    """Streams a file's body into a block blob so that little is left to upload when it ends; the
    header (known only at the end, possibly empty) is staged last and committed first.

    A file shorter than one block is never staged: `commit` writes it whole with one Put Blob, one
    request instead of three (stage the body, stage the header, commit). Once the body has filled a
    block, blocks are staged in the background, one at a time: whenever the uploader is free and at
    least `MIN_BLOCK_BYTES` have arrived, what has arrived becomes the next block. At real-time pace
    those blocks stay small and almost everything is staged by the time the body ends; at full speed
    they grow up to the block size. A full block waits for the one in flight (back-pressure), so
    memory is bounded by a few blocks whatever the file's length.
    """

    def __init__(
        self,
        blob: BlobClient,
        block_size: int,
        container_ready: Callable[[], Awaitable[None]],
        content_type: str,
    ) -> None:
        self._blob = blob
        self._block_size = block_size
        self._container_ready = container_ready
        self._content = ContentSettings(content_type=content_type)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._block_ids: list[str] = []
        self._header: bytes | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._finished: asyncio.Task[Any] | None = None

    async def write(self, chunk: bytes) -> None:
        """Append the next bytes of the body. A chunk larger than a block (a spoken question as
        received) is taken a block at a time: one huge stage would be copied whole into the
        connection's send buffers."""
        if self._header is not None:
            raise RuntimeError("body written after its end")
        if len(chunk) > self._block_size:
            for start in range(0, len(chunk), self._block_size):
                await self.write(chunk[start : start + self._block_size])
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self._block_size:
            await self._drain()
        elif not self._block_ids or self._in_flight or self._buffered < MIN_BLOCK_BYTES:
            return
        self._stage_in_background(self._take_buffered())

    def finish(self, header: bytes) -> None:
        """The body has ended and `header` goes before it: once blocks were staged, stage the tail and
        the header now, overlapping whatever the caller still waits for; a shorter file stays in memory
        for the Put Blob of `commit`."""
        if self._header is not None:
            raise RuntimeError("the file was finished already")
        self._header = header
        if self._block_ids:
            self._finished = asyncio.ensure_future(self._stage_tail_and_header())

    async def commit(self) -> None:
        """Make the file visible in one request: Put Block List, or Put Blob of the whole file when no
        block was staged."""
        if self._header is None:
            raise RuntimeError("commit before finish")
        async with storage_errors("write the audio"):
            if self._finished is None:
                await self._container_ready()
                data = self._take_buffered(self._header)
                await self._blob.upload_blob(data, overwrite=True, content_settings=self._content)
            else:
                await self._finished
                header_block = [HEADER_BLOCK_ID] if self._header else []
                await self._blob.commit_block_list(
                    [*header_block, *self._block_ids], content_settings=self._content
                )

    async def abort(self) -> None:
        """Stop uploading; nothing is committed, so the blob never appears."""
        tasks = [*self._in_flight, *([self._finished] if self._finished else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stage_tail_and_header(self) -> None:
        if self._buffered:
            self._stage_in_background(self._take_buffered())
        if self._header:
            self._stage_in_background(self._header, HEADER_BLOCK_ID)
        await self._drain()

    def _stage_in_background(self, data: bytes, block_id: str | None = None) -> None:
        if block_id is None:
            block_id = f"{len(self._block_ids) + 1:08d}"
            self._block_ids.append(block_id)
        task = asyncio.ensure_future(self._stage(block_id, data))
        self._in_flight.add(task)
        task.add_done_callback(self._forget_if_staged)

    def _forget_if_staged(self, task: asyncio.Task[Any]) -> None:
        """A staged block is done with; a failed one stays until `_drain` raises its error."""
        if not task.cancelled() and task.exception() is None:
            self._in_flight.discard(task)

    def _take_buffered(self, head: bytes = b"") -> bytes:
        """`head` and the buffered body as one bytes object (a single chunk as it is, not copied); the
        chunks are let go."""
        data = b"".join([head, *self._chunks] if head else self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def _stage(self, block_id: str, data: bytes) -> None:
        async with storage_errors("write the audio"):
            await self._container_ready()
            await self._blob.stage_block(block_id, data, length=len(data))

    async def _drain(self) -> None:
        """Wait for every block in flight; a failed stage fails the write."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight)
