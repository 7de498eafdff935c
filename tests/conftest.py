"""Shared fixtures: one local stack (identity endpoint, Azurite, realtime emulator) per test session.

The test process itself imports aiohttp early, so it cannot rely on `SSL_CERT_FILE`: clients here
get the test CA explicitly (`ca_ssl_context`, `connection_verify=str(stack.ca_file)`). Processes
started with `stack.start_host()` get the CA through their environment, as a deployed app would.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from pathlib import Path

import pytest
import pytest_asyncio
from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient

from devtools import prerequisites
from devtools.stack import Stack, is_ambient_setting, start_stack

from .speech_client import SpeechClient

# Tests send up to 20 questions at once to one host; the limit itself is tested in test_limits.py.
TEST_HOST_SETTINGS = {"MAX_CONCURRENT_SESSIONS": "100"}

ClientEnv = Callable[..., AbstractContextManager[dict[str, str]]]
SpeechHost = Callable[..., AbstractAsyncContextManager[SpeechClient]]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one message, when the machine lacks a tool the tests use (`make test` installs
    them first where it can; a bare `pytest` only checks)."""
    absent = prerequisites.missing(prerequisites.tools(sys.executable))
    if absent:
        pytest.exit(prerequisites.report(absent), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stand-ins for the whole session, state in a private tmp dir (parallel runs don't clash).

    The realtime emulator also gets its TLS listener (`stack.openai_tls_endpoint`) for `wss://` clients.
    """
    with start_stack(Path(tmp_path_factory.mktemp("stack")), emulator_tls=True) as running:
        yield running


@pytest.fixture(scope="session")
def client_env(stack: Stack) -> ClientEnv:
    """`with client_env(**overrides) as settings:` puts the stack's app settings into os.environ.

    For code that reads its configuration from the environment when it is constructed (e.g.
    azure-identity credentials). Ambient Azure variables of the developer's shell are hidden for the
    duration; overrides follow `Stack.app_settings` (None removes a setting).
    """

    @contextmanager
    def apply(**overrides: str | None) -> Iterator[dict[str, str]]:
        settings = stack.app_settings(**overrides)
        with pytest.MonkeyPatch.context() as patch:
            for name in [name for name in os.environ if is_ambient_setting(name)]:
                patch.delenv(name)
            for name, value in settings.items():
                patch.setenv(name, value)
            yield settings

    return apply


@pytest.fixture(scope="session")
def ca_ssl_context(stack: Stack) -> ssl.SSLContext:
    """Trusts only the test CA (Azurite's certificate, the emulator's TLS listener)."""
    return ssl.create_default_context(cafile=str(stack.ca_file))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def identity_credential(client_env: ClientEnv) -> AsyncIterator[ManagedIdentityCredential]:
    """An async ManagedIdentityCredential bound to the stack's identity endpoint (App Service flavour)."""
    with client_env():
        credential = ManagedIdentityCredential()  # reads IDENTITY_ENDPOINT/IDENTITY_HEADER here, once
    async with credential:
        yield credential


@pytest_asyncio.fixture(loop_scope="session")
async def blob_service(
    stack: Stack, identity_credential: ManagedIdentityCredential
) -> AsyncIterator[BlobServiceClient]:
    """A BlobServiceClient on Azurite authenticated with managed-identity tokens."""
    async with BlobServiceClient(
        stack.storage_url, credential=identity_credential, connection_verify=str(stack.ca_file)
    ) as client:
        yield client


async def _speech_client(
    stack: Stack, credential: ManagedIdentityCredential, app: str | None = None, **overrides: str | None
) -> AsyncIterator[SpeechClient]:
    """A running function host (dev host, own process) with the stack's settings plus `overrides`,
    serving `app` (`module[:attribute]`, default `function_app`)."""
    host = stack.start_host({**TEST_HOST_SETTINGS, **overrides}, app=app)
    client = SpeechClient(
        host_url=host.url,
        emulator_url=stack.openai_endpoint,
        storage_url=stack.storage_url,
        ca_file=str(stack.ca_file),
        credential=credential,
        api_key=overrides.get("AZURE_OPENAI_API_KEY"),
        host=host,
    )
    try:
        yield client
    finally:
        await client.close()
        host.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def speech(stack: Stack, identity_credential: ManagedIdentityCredential) -> AsyncIterator[SpeechClient]:
    """The function app with managed-identity auth, as deployed."""
    async for client in _speech_client(stack, identity_credential):
        yield client


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def api_key_speech(
    stack: Stack, identity_credential: ManagedIdentityCredential
) -> AsyncIterator[SpeechClient]:
    """The function app with `AZURE_OPENAI_API_KEY` set (local key auth to the model)."""
    async for client in _speech_client(
        stack, identity_credential, AZURE_OPENAI_API_KEY=stack.emulator_api_key
    ):
        yield client


@pytest.fixture(scope="session")
def speech_host(stack: Stack, identity_credential: ManagedIdentityCredential) -> SpeechHost:
    """`async with speech_host(app=None, **overrides) as client:` a function host of its own (e.g. a
    short `REALTIME_TIMEOUT_SECONDS`), stopped when the block ends."""
    return lambda app=None, **overrides: asynccontextmanager(_speech_client)(
        stack, identity_credential, app, **overrides
    )
