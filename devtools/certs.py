"""Development certificates and the token-signing key for the local stand-ins.

Everything lives under a state directory (the project uses `.devstate/`, git-ignored):

- `ca.pem`: a throwaway test CA; clients trust it through `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`.
- `server.pem` / `server-key.pem`: a server certificate chain for `127.0.0.1`, `localhost` and `::1`
  (Azurite's HTTPS listener, the realtime emulator's optional TLS listener).
- `token-signing-key.pem` / `token-signing-public.pem`: the RSA key pair the identity endpoint signs
  its JWTs with; the realtime emulator verifies tokens with the public half.

Files are reused when present and valid for a while longer, so repeated runs keep the same CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SERVER_IDENTITIES = ("127.0.0.1", "localhost", "::1")
SERVER_CERT_LIFETIME = dt.timedelta(days=365)
# Regenerate when less than this is left, so a long-lived .devstate never serves an expired cert.
RENEW_BEFORE = dt.timedelta(days=30)
TOKEN_KEY_BITS = 2048


@dataclass(frozen=True)
class DevCerts:
    """Paths of the development TLS material and token-signing keys."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    token_signing_key: Path
    token_signing_public_key: Path

    @classmethod
    def in_dir(cls, state_dir: Path) -> DevCerts:
        return cls(
            ca_file=state_dir / "ca.pem",
            server_cert=state_dir / "server.pem",
            server_key=state_dir / "server-key.pem",
            token_signing_key=state_dir / "token-signing-key.pem",
            token_signing_public_key=state_dir / "token-signing-public.pem",
        )

    @property
    def token_key_id(self) -> str:
        """The `kid` of tokens signed with the signing key (see `key_id`)."""
        return key_id(self.token_signing_public_key.read_bytes())


def ensure_dev_certs(state_dir: Path) -> DevCerts:
    """Create (or reuse) the CA, the server certificate and the token-signing key pair."""
    state_dir.mkdir(parents=True, exist_ok=True)
    certs = DevCerts.in_dir(state_dir)
    with _locked(state_dir / ".certs.lock"):
        if not _tls_material_valid(certs):
            _write_tls_material(certs)
        if not _signing_keys_valid(certs):
            _write_signing_keys(certs)
    return certs


def key_id(public_key_pem: bytes) -> str:
    """A stable key id: base64url SHA-256 of the DER SubjectPublicKeyInfo, first 16 bytes."""
    public_key = serialization.load_pem_public_key(public_key_pem)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:16]).rstrip(b"=").decode()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialize generation between processes sharing a state dir (e.g. a demo and a test run)."""
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _tls_material_valid(certs: DevCerts) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
        chain = x509.load_pem_x509_certificates(certs.server_cert.read_bytes())
        key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    leaf = chain[0]
    return (
        _valid_long_enough(ca)
        and _valid_long_enough(leaf)
        and leaf.issuer == ca.subject
        and leaf.public_key() == key.public_key()
    )


def _valid_long_enough(cert: x509.Certificate) -> bool:
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def _write_tls_material(certs: DevCerts) -> None:
    ca = trustme.CA(organization_name="realtime-speech dev")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    server = ca.issue_cert(
        *SERVER_IDENTITIES,
        common_name="localhost",
        not_before=now - dt.timedelta(days=1),
        not_after=now + SERVER_CERT_LIFETIME,
    )
    _write_atomic(certs.server_key, server.private_key_pem.bytes(), private=True)
    _write_atomic(certs.server_cert, b"".join(blob.bytes() for blob in server.cert_chain_pems))
    _write_atomic(certs.ca_file, ca.cert_pem.bytes())


def _signing_keys_valid(certs: DevCerts) -> bool:
    try:
        key = serialization.load_pem_private_key(certs.token_signing_key.read_bytes(), password=None)
        public = serialization.load_pem_public_key(certs.token_signing_public_key.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(key, rsa.RSAPrivateKey) and key.public_key() == public


def _write_signing_keys(certs: DevCerts) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=TOKEN_KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(certs.token_signing_key, private_pem, private=True)
    _write_atomic(certs.token_signing_public_key, public_pem)


def _write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write via a temp file + rename so readers never see a half-written PEM."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_signing_key(path: Path) -> rsa.RSAPrivateKey:
    """The token-signing private key (PEM) the identity endpoint signs with."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """The token-signing public key (PEM) stand-ins verify tokens with."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{path} is not an RSA public key")
    return key
