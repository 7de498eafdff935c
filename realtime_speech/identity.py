"""The app's identity: one credential per process, and the bearer-token provider the model needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

from .errors import IdentityUnavailable

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
NO_TOKEN = "The managed identity could not provide a token for Azure OpenAI."


def app_credential(client_id: str | None) -> AsyncTokenCredential:
    """The managed identity in Azure (user-assigned when `client_id` is given); a developer's
    sign-in (Azure CLI, azd, ...) elsewhere. It caches tokens and refreshes them before expiry."""
    return DefaultAzureCredential(managed_identity_client_id=client_id)


def openai_token_provider(credential: AsyncTokenCredential) -> Callable[[], Awaitable[str]]:
    """An async provider of fresh Entra tokens for Azure OpenAI, failing with a 503 when none can be had."""
    provider = get_bearer_token_provider(credential, COGNITIVE_SERVICES_SCOPE)

    async def token() -> str:
        try:
            return await provider()
        except ClientAuthenticationError:
            raise IdentityUnavailable(NO_TOKEN) from None

    return token


async def openai_token_expires_on(credential: AsyncTokenCredential) -> float:
    """When the Azure OpenAI token the provider hands out now expires (Unix seconds): the credential
    caches it, so this is the token a connection opened now carries."""
    try:
        return float((await credential.get_token(COGNITIVE_SERVICES_SCOPE)).expires_on)
    except ClientAuthenticationError:
        raise IdentityUnavailable(NO_TOKEN) from None
