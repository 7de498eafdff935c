"""Handshake authentication as Azure OpenAI does it: an API key, or a Microsoft Entra access token.

Accepted: an ``api-key`` header equal to the key; ``Authorization: Bearer <key>``; or a Bearer JWT
signed RS256 by the configured public key, for the audience ``https://cognitiveservices.azure.com``
(with or without the trailing slash), not expired. Credentials are compared and verified, never
logged or recorded: a session records the kind of credential and a few token claims.

With neither a key nor a public key configured, any credential is accepted unverified (local demos).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import jwt

AUDIENCES = ("https://cognitiveservices.azure.com", "https://cognitiveservices.azure.com/")
RECORDED_CLAIMS = ("aud", "iss", "oid", "tid", "appid")

MISSING_CREDENTIAL = (
    "Access denied due to missing subscription key. "
    "Make sure to include subscription key when making requests to an API."
)
INVALID_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
INVALID_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)


@dataclass(frozen=True)
class Identity:
    kind: Literal["api-key", "entra"]
    claims: dict[str, object] = field(default_factory=dict)

    def as_record(self) -> dict[str, object]:
        return {"kind": self.kind, "claims": self.claims}


class AuthenticationError(Exception):
    """The handshake is refused with HTTP 401; the message is Azure's for the kind of credential."""


class Authenticator:
    def __init__(self, api_key: str | None, token_public_key: bytes | None) -> None:
        self._api_key = api_key
        self._public_key = token_public_key

    @property
    def verifies(self) -> bool:
        return self._api_key is not None or self._public_key is not None

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """Who is connecting, from the handshake headers; raises :class:`AuthenticationError`."""
        key = headers.get("api-key")
        if key is not None:
            return self._check_key(key)
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationError(MISSING_CREDENTIAL)
        if self._api_key is not None and _same(credential, self._api_key):
            return Identity("api-key")
        if credential.count(".") == 2:
            return self._check_token(credential)
        if not self.verifies:
            return Identity("api-key")
        raise AuthenticationError(INVALID_TOKEN)

    def _check_key(self, key: str) -> Identity:
        if self._api_key is not None and _same(key, self._api_key):
            return Identity("api-key")
        if not self.verifies and key:
            return Identity("api-key")
        raise AuthenticationError(INVALID_KEY)

    def _check_token(self, token: str) -> Identity:
        try:
            if self._public_key is not None:
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["RS256"],
                    audience=list(AUDIENCES),
                    options={"require": ["exp", "aud"]},
                )
            elif not self.verifies:
                claims = jwt.decode(token, options={"verify_signature": False})
            else:
                raise AuthenticationError(INVALID_TOKEN)
        except jwt.PyJWTError:
            raise AuthenticationError(INVALID_TOKEN) from None
        return Identity("entra", {name: claims.get(name) for name in RECORDED_CLAIMS})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
