"""A test-side client of the running function host, the emulator's log and the audio container."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

Response = tuple[int, Any, "aiohttp.typedefs.LooseHeaders"]


@dataclass
class SpeechClient:
    host_url: str
    emulator_url: str
    storage_url: str
    ca_file: str
    credential: AsyncTokenCredential
    container: str = "audio"
    api_key: str | None = None
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

    async def post(self, body: dict[str, Any], request_id: str | None = None) -> Response:
        return await self.post_raw(json.dumps(body).encode(), "application/json", request_id)

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

    async def download(self, url: str) -> bytes:
        async with self.http.get(url, ssl=self.tls) as response:
            assert response.status == 200, await response.text()
            return await response.read()

    async def put_with_sas(self, url: str, data: bytes) -> int:
        """Try to overwrite the blob with the SAS; returns the HTTP status."""
        headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}
        async with self.http.put(url, data=data, headers=headers, ssl=self.tls) as response:
            return response.status

    async def emulator_sessions(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.emulator_url}/_emulator/sessions") as response:
            assert response.status == 200
            return await response.json()

    async def emulator_session(self, user_text: str) -> dict[str, Any]:
        """The one emulator session that was asked `user_text`."""
        matches = [s for s in await self.emulator_sessions() if s["user_text"] == user_text]
        assert len(matches) == 1, f"{len(matches)} sessions were asked this text"
        return matches[0]

    def _container(self) -> ContainerClient:
        service = BlobServiceClient(
            self.storage_url, credential=self.credential, connection_verify=self.ca_file
        )
        return service.get_container_client(self.container)

    async def blob_names(self) -> set[str]:
        async with self._container() as container:
            return {blob.name async for blob in container.list_blobs()}

    async def committed_blocks(self, blob_name: str) -> list[int]:
        """Sizes of the blob's committed blocks, in order."""
        async with self._container() as container:
            committed, _ = await container.get_blob_client(blob_name).get_block_list("committed")
            return [block.size for block in committed]

    async def read_json_blob(self, blob_name: str) -> Any:
        async with self._container() as container:
            downloader = await container.download_blob(blob_name)
            return json.loads(await downloader.readall())
