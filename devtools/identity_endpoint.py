"""Local stand-in for the App Service managed-identity endpoint (api-version 2019-08-01).

azure-identity's `ManagedIdentityCredential` (and `DefaultAzureCredential`) use this protocol when
`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set:

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>[&client_id=...]
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

    200 {"access_token": "<jwt>", "expires_on": "<epoch seconds>", "resource": "<resource>",
         "token_type": "Bearer", "client_id": "<client id>"}

Errors use App Service's shape, `{"statusCode": N, "message": "..."}`.

Tokens are RS256 JWTs shaped like Entra v1 app tokens (`iss` = `https://sts.windows.net/<tenant>/`,
`aud` = the requested resource, `oid`/`tid`/`appid`...). Azurite's `--oauth basic` checks only the
issuer prefix, the audience and the lifetime; the realtime emulator verifies the signature with the
public key. Token values are never logged.

Run: python -m devtools.identity_endpoint --port 8081 --secret S --signing-key .devstate/token-signing-key.pem
"""

from __future__ import annotations

import argparse
import hmac
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.certs import key_id, load_signing_key

API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"
SECRET_HEADER = "X-IDENTITY-HEADER"
DEFAULT_TENANT_ID = "7e7a7e70-0000-4000-8000-000000000001"
DEFAULT_OBJECT_ID = "0b1ec7a0-0000-4000-8000-000000000002"
DEFAULT_CLIENT_ID = "c11e47a0-0000-4000-8000-000000000003"
# Selectors of a user-assigned identity that App Service understands.
IDENTITY_SELECTORS = ("client_id", "object_id", "principal_id", "mi_res_id")

log = logging.getLogger("devtools.identity_endpoint")


@dataclass(frozen=True)
class Identity:
    """The one managed identity this endpoint hands out tokens for."""

    tenant_id: str = DEFAULT_TENANT_ID
    object_id: str = DEFAULT_OBJECT_ID
    client_id: str = DEFAULT_CLIENT_ID

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"


@dataclass
class TokenIssuer:
    """Signs RS256 access tokens for one identity and counts what it issued."""

    signing_key: rsa.RSAPrivateKey
    identity: Identity = field(default_factory=Identity)
    lifetime_seconds: int = 3600
    issued: Counter[str] = field(default_factory=Counter)
    refused: int = 0

    @cached_property
    def kid(self) -> str:
        public_pem = self.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return key_id(public_pem)

    def issue(self, resource: str) -> tuple[str, int]:
        """Return (token, expires_on) for `resource`."""
        now = int(time.time())
        expires_on = now + self.lifetime_seconds
        claims = {
            "aud": resource,
            "iss": self.identity.issuer,
            "iat": now,
            "nbf": now - 5 * 60,  # Entra backdates nbf to tolerate clock skew
            "exp": expires_on,
            "oid": self.identity.object_id,
            "sub": self.identity.object_id,
            "tid": self.identity.tenant_id,
            "appid": self.identity.client_id,
            "azp": self.identity.client_id,
            "appidacr": "2",
            "idtyp": "app",
            "ver": "1.0",
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": self.kid})
        self.issued[resource] += 1
        return token, expires_on


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(issuer: TokenIssuer, secret: str) -> web.Application:
    app = web.Application()
    app["issuer"] = issuer
    app["secret"] = secret
    app.router.add_get(TOKEN_PATH, _token)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    return app


async def _token(request: web.Request) -> web.Response:
    issuer: TokenIssuer = request.app["issuer"]
    try:
        _check_secret(request, request.app["secret"])
        resource = _check_query(request, issuer.identity)
    except RequestError as error:
        issuer.refused += 1
        log.info("refused token request: %s %s", error.status, error.message)
        return web.json_response({"statusCode": error.status, "message": error.message}, status=error.status)
    token, expires_on = issuer.issue(resource)
    log.info("issued token for resource %s", resource)
    return web.json_response(
        {
            "access_token": token,
            "expires_on": str(expires_on),  # App Service sends epoch seconds as a string
            "resource": resource,
            "token_type": "Bearer",
            "client_id": issuer.identity.client_id,
        }
    )


def _check_secret(request: web.Request, secret: str) -> None:
    presented = request.headers.get(SECRET_HEADER)
    if presented is None:
        raise RequestError(400, f"Missing {SECRET_HEADER} header.")
    if not hmac.compare_digest(presented.encode(), secret.encode()):
        raise RequestError(401, f"Invalid {SECRET_HEADER} header.")


def _check_query(request: web.Request, identity: Identity) -> str:
    """Validate api-version, resource and an optional identity selector; return the resource."""
    query = request.query
    if query.get("api-version") != API_VERSION:
        raise RequestError(400, f"Unsupported api-version; this endpoint speaks {API_VERSION}.")
    resource = query.get("resource", "").strip()
    if not resource:
        raise RequestError(400, "Missing resource parameter.")
    selectors = {name: query[name] for name in IDENTITY_SELECTORS if name in query}
    if len(selectors) > 1:
        raise RequestError(400, "Only one of client_id, object_id, principal_id or mi_res_id may be given.")
    known = {
        "client_id": identity.client_id,
        "object_id": identity.object_id,
        "principal_id": identity.object_id,
    }
    for name, value in selectors.items():
        if name not in known or value.lower() != known[name].lower():  # no ARM resource ids here
            raise RequestError(400, f"No managed identity found for the given {name}.")
    return resource


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    issuer: TokenIssuer = request.app["issuer"]
    return web.json_response(
        {
            "issued": dict(issuer.issued),
            "issued_total": sum(issuer.issued.values()),
            "refused": issuer.refused,
        }
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.identity_endpoint", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret", required=True, help="expected X-IDENTITY-HEADER value (IDENTITY_HEADER)")
    parser.add_argument("--signing-key", type=Path, required=True, help="RSA private key (PEM)")
    parser.add_argument("--tenant-id", default=DEFAULT_TENANT_ID)
    parser.add_argument("--object-id", default=DEFAULT_OBJECT_ID)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--token-lifetime", type=int, default=3600, metavar="SECONDS")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    identity = Identity(tenant_id=args.tenant_id, object_id=args.object_id, client_id=args.client_id)
    issuer = TokenIssuer(load_signing_key(args.signing_key), identity, args.token_lifetime)
    app = create_app(issuer, args.secret)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
