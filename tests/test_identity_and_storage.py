"""The identity and storage stand-ins, through the real SDKs over real sockets.

azure-identity gets tokens from the managed-identity endpoint; azure-storage-blob uses them against
Azurite (HTTPS, `--oauth basic`) to stage and commit blocks and to get a user-delegation key; the
read-only user-delegation SAS works for reading and nothing else. Also the process control the outage
tests rely on: stop/restart on the same port, and nothing left running after close.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import ssl
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import psutil
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobBlock, BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from devtools.azurite import ACCOUNT_NAME
from devtools.process import ServiceProcess, ServiceStartError, http_probe, tcp_probe
from devtools.stack import Stack
from tests.conftest import ClientEnv

STORAGE = "https://storage.azure.com"
COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"


def _verified_claims(stack: Stack, token: str, audience: str) -> dict[str, object]:
    public_key = stack.certs.token_signing_public_key.read_bytes()
    return jwt.decode(
        token,
        public_key,
        algorithms=["RS256"],
        audience=audience,
        issuer=f"https://sts.windows.net/{stack.tenant_id}/",
        options={"require": ["exp", "nbf", "iat", "aud", "iss", "jti"]},
    )


def _assert_identity_claims(stack: Stack, claims: dict[str, object]) -> None:
    assert claims["oid"] == claims["sub"] == stack.object_id
    assert claims["tid"] == stack.tenant_id
    assert claims["appid"] == claims["azp"] == stack.client_id
    assert claims["idtyp"] == "app"


async def _raw_token_request(
    stack: Stack, headers: dict[str, str], **query: str
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.identity_endpoint, params=query, headers=headers) as response,
    ):
        return response.status, await response.json()


# --- identity endpoint ------------------------------------------------------------------------------


async def test_token_response_has_the_app_service_shape(stack: Stack) -> None:
    headers = {"X-IDENTITY-HEADER": stack.identity_header}
    status, body = await _raw_token_request(
        stack, headers, **{"api-version": "2019-08-01", "resource": STORAGE}
    )

    assert status == 200
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["resource"] == STORAGE
    assert body["token_type"] == "Bearer"
    assert body["client_id"] == stack.client_id
    claims = _verified_claims(stack, str(body["access_token"]), STORAGE)
    assert int(str(body["expires_on"])) == claims["exp"]


@pytest.mark.parametrize(
    ("header", "query", "status"),
    [
        ("wrong", {"api-version": "2019-08-01", "resource": STORAGE}, 401),
        (None, {"api-version": "2019-08-01", "resource": STORAGE}, 400),
        ("valid", {"api-version": "2017-09-01", "resource": STORAGE}, 400),
        ("valid", {"api-version": "2019-08-01"}, 400),
        (
            "valid",
            {"api-version": "2019-08-01", "resource": STORAGE, "client_id": str(uuid.UUID(int=1))},
            400,
        ),
    ],
    ids=["wrong-header", "missing-header", "old-api-version", "missing-resource", "unknown-client-id"],
)
async def test_bad_token_requests_are_refused(
    stack: Stack, header: str | None, query: dict[str, str], status: int
) -> None:
    headers = (
        {}
        if header is None
        else {"X-IDENTITY-HEADER": stack.identity_header if header == "valid" else header}
    )
    refused_before = stack.identity_stats()["refused"]

    got, body = await _raw_token_request(stack, headers, **query)

    assert got == status
    assert body["statusCode"] == status and "access_token" not in body
    assert stack.identity_stats()["refused"] == refused_before + 1


async def test_managed_identity_credential_gets_a_storage_token(
    stack: Stack, identity_credential: ManagedIdentityCredential
) -> None:
    token = await identity_credential.get_token(f"{STORAGE}/.default")

    header = jwt.get_unverified_header(token.token)
    assert header["alg"] == "RS256"
    assert header["kid"] == stack.certs.token_key_id
    unverified = jwt.decode(token.token, options={"verify_signature": False})
    assert unverified["aud"] == STORAGE  # azure-identity strips "/.default"
    claims = _verified_claims(stack, token.token, STORAGE)
    _assert_identity_claims(stack, claims)
    assert claims["exp"] == token.expires_on
    assert claims["nbf"] <= claims["iat"] < claims["exp"]


async def test_default_azure_credential_gets_a_cognitive_services_token(
    stack: Stack, client_env: ClientEnv
) -> None:
    with client_env():
        credential = DefaultAzureCredential()
    async with credential:
        token = await credential.get_token(f"{COGNITIVE_SERVICES}/.default")

    _assert_identity_claims(stack, _verified_claims(stack, token.token, COGNITIVE_SERVICES))


async def test_tokens_are_unique_and_cached_by_the_credential(stack: Stack, client_env: ClientEnv) -> None:
    with client_env():
        credential = ManagedIdentityCredential()
    issued_before = stack.identity_stats()["issued"]
    async with credential:
        first = await credential.get_token(f"{COGNITIVE_SERVICES}/.default")
        again = await credential.get_token(f"{COGNITIVE_SERVICES}/.default")
        storage = await credential.get_token(f"{STORAGE}/.default")
    issued_after = stack.identity_stats()["issued"]

    assert again.token == first.token  # served from azure-identity's cache
    assert issued_after[COGNITIVE_SERVICES] == issued_before.get(COGNITIVE_SERVICES, 0) + 1
    assert issued_after[STORAGE] == issued_before.get(STORAGE, 0) + 1
    jti = {jwt.decode(t.token, options={"verify_signature": False})["jti"] for t in (first, storage)}
    assert len(jti) == 2


async def test_credential_selecting_the_identity_by_client_id(stack: Stack, client_env: ClientEnv) -> None:
    with client_env():
        credential = ManagedIdentityCredential(client_id=stack.client_id)  # sent as ?client_id=
    async with credential:
        token = await credential.get_token(f"{STORAGE}/.default")

    _assert_identity_claims(stack, _verified_claims(stack, token.token, STORAGE))


async def test_credential_with_a_wrong_identity_header_is_refused(client_env: ClientEnv) -> None:
    with client_env(IDENTITY_HEADER="not-the-secret"):
        credential = ManagedIdentityCredential()
    async with credential:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token(f"{STORAGE}/.default")


# --- Azurite with managed-identity tokens -----------------------------------------------------------


def _new_container_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def _stage_and_commit(blob: BlobClient, chunks: list[bytes]) -> None:
    block_ids = [f"{index:08d}" for index in range(len(chunks))]
    for block_id, chunk in zip(block_ids, chunks, strict=True):
        await blob.stage_block(block_id, chunk)
    await blob.commit_block_list([BlobBlock(block_id) for block_id in block_ids])


async def _read_only_sas_url(service: BlobServiceClient, blob: BlobClient) -> str:
    now = dt.datetime.now(dt.UTC)
    key = await service.get_user_delegation_key(now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1))
    sas = generate_blob_sas(
        ACCOUNT_NAME,
        blob.container_name,
        blob.blob_name,
        user_delegation_key=key,
        permission=BlobSasPermissions(read=True),
        expiry=now + dt.timedelta(minutes=30),
    )
    return f"{blob.url}?{sas}"


async def test_blocks_committed_with_a_token_read_back_through_a_user_delegation_sas(
    stack: Stack, blob_service: BlobServiceClient, ca_ssl_context: ssl.SSLContext
) -> None:
    container = await blob_service.create_container(_new_container_name())
    blob = container.get_blob_client("speech.wav")
    chunks = [secrets.token_bytes(64 * 1024), secrets.token_bytes(1000), b"tail"]
    await _stage_and_commit(blob, chunks)

    url = await _read_only_sas_url(blob_service, blob)

    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).scheme == "https"
    assert query["skoid"] == [stack.object_id] and query["sktid"] == [stack.tenant_id]
    assert query["sp"] == ["r"]
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ca_ssl_context) as response:
        assert response.status == 200
        assert await response.read() == b"".join(chunks)


async def test_user_delegation_sas_is_read_only_and_signed(
    stack: Stack, blob_service: BlobServiceClient
) -> None:
    container = await blob_service.create_container(_new_container_name())
    blob = container.get_blob_client("speech.wav")
    await _stage_and_commit(blob, [b"original"])
    url = await _read_only_sas_url(blob_service, blob)
    verify = str(stack.ca_file)

    async with BlobClient.from_blob_url(url, connection_verify=verify) as sas_blob:
        assert await (await sas_blob.download_blob()).readall() == b"original"
        with pytest.raises(HttpResponseError) as refused:
            await sas_blob.upload_blob(b"overwritten", overwrite=True)
        assert refused.value.status_code == 403

    tampered = url.replace("sp=r", "sp=rw")
    async with BlobClient.from_blob_url(tampered, connection_verify=verify) as forged:
        with pytest.raises(HttpResponseError) as forged_refused:
            await forged.upload_blob(b"overwritten", overwrite=True)
        assert forged_refused.value.status_code == 403
    assert await (await blob.download_blob()).readall() == b"original"


class _TokenForAnotherResource:
    """Hands out a cognitive-services token whatever scope storage asks for."""

    def __init__(self, credential: ManagedIdentityCredential) -> None:
        self._credential = credential

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return await self._credential.get_token(f"{COGNITIVE_SERVICES}/.default")

    async def close(self) -> None:
        pass


async def test_azurite_rejects_a_token_for_another_audience(
    stack: Stack, identity_credential: ManagedIdentityCredential
) -> None:
    async with BlobServiceClient(
        stack.storage_url,
        credential=_TokenForAnotherResource(identity_credential),
        connection_verify=str(stack.ca_file),
    ) as client:
        with pytest.raises(HttpResponseError) as refused:
            await client.create_container(_new_container_name())
    assert refused.value.status_code in (401, 403)
    assert refused.value.error_code == "AuthenticationFailed"


# --- outages: stop and restart on the same port -----------------------------------------------------


async def test_azurite_outage_and_restart_on_the_same_port(
    stack: Stack, blob_service: BlobServiceClient
) -> None:
    container = await blob_service.create_container(_new_container_name())
    blob = container.get_blob_client("before-outage.wav")
    await _stage_and_commit(blob, [b"kept across restarts"])
    port = stack.azurite.port

    await stack.azurite.astop()
    try:
        assert not stack.azurite.running
        with pytest.raises(ServiceRequestError):
            await blob.get_blob_properties(retry_total=0)
    finally:
        await stack.azurite.astart()

    assert stack.azurite.port == port and stack.storage_url.endswith(f":{port}/{ACCOUNT_NAME}")
    # The same client (and its credential) carries on; data persisted under the state dir survives.
    assert await (await blob.download_blob()).readall() == b"kept across restarts"
    await _stage_and_commit(container.get_blob_client("after-outage.wav"), [b"new"])


async def test_identity_endpoint_outage_and_restart_on_the_same_port(
    stack: Stack, client_env: ClientEnv
) -> None:
    port = stack.identity.port
    headers = {"X-IDENTITY-HEADER": stack.identity_header}
    query = {"api-version": "2019-08-01", "resource": STORAGE}

    await stack.identity.astop()
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await _raw_token_request(stack, headers, **query)
    finally:
        await stack.identity.astart()

    assert stack.identity.port == port
    with client_env():
        credential = ManagedIdentityCredential()
    async with credential:
        token = await credential.get_token(f"{STORAGE}/.default")
    _assert_identity_claims(stack, _verified_claims(stack, token.token, STORAGE))


# --- the realtime emulator as wired by the stack --------------------------------------------------


@pytest.fixture
def emulator(stack: Stack) -> ServiceProcess:
    assert stack.emulator is not None
    return stack.emulator


async def _handshake(url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | bool = True) -> str:
    """Open the realtime WebSocket and return the type of the first event (or 'HTTP <status>')."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers, ssl=ssl_context) as ws:
                return str((await ws.receive_json(timeout=10))["type"])
        except aiohttp.WSServerHandshakeError as refused:
            return f"HTTP {refused.status}"


async def test_emulator_accepts_managed_identity_tokens_and_its_key(
    stack: Stack, emulator: ServiceProcess, identity_credential: ManagedIdentityCredential
) -> None:
    url = f"{stack.openai_endpoint.replace('http', 'ws', 1)}/openai/v1/realtime?model=gpt-realtime"
    token = (await identity_credential.get_token(f"{COGNITIVE_SERVICES}/.default")).token
    storage_token = (await identity_credential.get_token(f"{STORAGE}/.default")).token

    assert await _handshake(url, {"Authorization": f"Bearer {token}"}) == "session.created"
    assert await _handshake(url, {"api-key": stack.emulator_api_key}) == "session.created"
    assert await _handshake(url, {"Authorization": f"Bearer {storage_token}"}) == "HTTP 401"
    assert await _handshake(url, {"api-key": "wrong"}) == "HTTP 401"


async def test_emulator_tls_listener_is_trusted_through_the_test_ca(
    stack: Stack, emulator: ServiceProcess, ca_ssl_context: ssl.SSLContext
) -> None:
    url = f"{stack.openai_tls_endpoint.replace('https', 'wss', 1)}/openai/v1/realtime?model=gpt-realtime"

    assert await _handshake(url, {"api-key": stack.emulator_api_key}, ca_ssl_context) == "session.created"


# --- process control --------------------------------------------------------------------------------


def test_app_settings_and_overrides(stack: Stack) -> None:
    settings = stack.app_settings(AUDIO_CONTAINER="other", SSL_CERT_FILE=None, EXTRA="1")

    assert settings["AUDIO_STORAGE_ACCOUNT_URL"] == stack.storage_url
    assert settings["IDENTITY_ENDPOINT"] == stack.identity_endpoint.rstrip("/")
    assert settings["IDENTITY_HEADER"] == stack.identity_header
    assert settings["REQUESTS_CA_BUNDLE"] == str(stack.ca_file)
    assert settings["AZURE_OPENAI_DEPLOYMENT_NAME"] == "gpt-realtime"
    assert settings["AUDIO_CONTAINER"] == "other" and settings["EXTRA"] == "1"
    assert "SSL_CERT_FILE" not in settings
    if stack.emulator is not None:
        assert settings["AZURE_OPENAI_ENDPOINT"] == stack.openai_endpoint


def test_host_env_hides_ambient_azure_settings(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_ID", "from-the-developer-shell")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "from-the-developer-shell")

    env = stack.host_env({"AUDIO_URL_TTL_MINUTES": "5", "IDENTITY_HEADER": None})

    assert "AZURE_CLIENT_ID" not in env and "AZURE_OPENAI_API_KEY" not in env
    assert "IDENTITY_HEADER" not in env
    assert env["AUDIO_URL_TTL_MINUTES"] == "5"
    assert env["IDENTITY_ENDPOINT"] == stack.identity_endpoint
    assert env["PATH"] == os.environ["PATH"]
    assert stack.host_env({"AZURE_CLIENT_ID": stack.client_id})["AZURE_CLIENT_ID"] == stack.client_id


def test_a_service_that_dies_on_start_reports_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad config', flush=True); sys.exit(3)"]
    service = ServiceProcess("broken", argv, probe=http_probe("/"), log_dir=tmp_path)

    with pytest.raises(ServiceStartError, match=r"(?s)code 3.*bad config"):
        service.start()
    assert not service.running


_LISTENER_WITH_STUBBORN_CHILD = """
import signal, socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print("child", child.pid, flush=True)
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
time.sleep(60)
"""


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """True once `pid` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_stop_takes_down_the_process_group_and_restart_keeps_the_port(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", _LISTENER_WITH_STUBBORN_CHILD, "{port}"]
    service = ServiceProcess("stubborn", argv, probe=tcp_probe, log_dir=tmp_path, stop_timeout=2)

    with service:
        port, leader = service.port, service.pid
        child = int(service.log_tail().split("child ")[-1].split()[0])
        service.restart()
        assert service.port == port and service.running and service.pid != leader
        assert _gone(leader) and _gone(child)
        child = int(service.log_tail().split("child ")[-1].split()[0])
    assert not service.running and _gone(child)
    service.stop()  # idempotent


async def test_stack_runs_a_function_host_and_close_leaves_nothing_behind(
    tmp_path: Path, ca_ssl_context: ssl.SSLContext
) -> None:
    with Stack(tmp_path, with_emulator=False, azurite_in_memory=True).start() as stack:
        host = stack.start_host({"SAMPLE_OVERRIDDEN": "from-stack"}, app="tests.devhost_sample_app")
        pids = [service.pid for service in stack.services]
        assert len(pids) == 4 and host.url.startswith("http://127.0.0.1:")  # identity, Azurite, ingest, host
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{host.url}/api/hello") as response:
                assert response.status == 200 and "from-stack" in await response.text()
            headers = {"X-IDENTITY-HEADER": stack.identity_header}
            params = {"api-version": "2019-08-01", "resource": STORAGE}
            async with session.get(stack.identity_endpoint, params=params, headers=headers) as response:
                assert response.status == 200

    assert all(pid is not None and _gone(pid) for pid in pids)
    assert not any(service.running for service in stack.services)
    logs = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))
    assert "issued token for resource https://storage.azure.com" in logs
    assert stack.identity_header not in logs and "eyJ" not in logs
