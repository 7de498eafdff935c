"""Local stand-in for Application Insights ingestion (the "track" protocol of the Azure Monitor exporter).

    POST /v2.1/track  (and /v2/track)
    Content-Type: application/json   [Content-Encoding: gzip]
    Authorization: Bearer <Entra token>          (required with --token-public-key)
    body: a JSON array of envelopes, or one envelope per line

    200 {"itemsReceived": N, "itemsAccepted": N, "errors": []}
    206 the same with one {"index", "statusCode": 400, "message"} per envelope that was refused
    400 the body is not JSON;  401 the token is missing, forged, expired or for another audience

With `--token-public-key` (the identity stand-in's public key, see `devtools.certs`) every track call
needs an RS256 token of an Entra-like issuer whose audience is Azure Monitor: `https://monitor.azure.com`
or `https://monitor.azure.com/` (the exporter asks for the scope `https://monitor.azure.com//.default`,
which the managed-identity protocol turns into the resource `https://monitor.azure.com/`). The exporter
sends bearer tokens only over HTTPS, so serve TLS (`--tls-cert/--tls-key`) whenever tokens are checked.

Live metrics (`/QuickPulseService.svc/ping` and `/post`) are answered with `x-ms-qps-subscribed: false`,
which tells the client that nobody is watching, so it keeps to a slow ping.

For tests and `make run` (never a token, only what was accepted):

    GET    /_ingest/items[?type=Request|RemoteDependency|Message|Exception|Metric|Event]
    DELETE /_ingest/items
    GET    /_ingest/calls      each track call: status, counts, the token's claims (aud, iss, appid, oid)
    GET    /_ingest/traces     the last traces, readable: each request with its dependencies and logs
    GET    /_ingest/health

Run: python -m devtools.appinsights_ingest --port 8082 [--host 127.0.0.1] [--token-public-key PEM]
     [--tls-cert server.pem --tls-key server-key.pem] [--print]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.certs import load_public_key

TRACK_PATHS = ("/v2.1/track", "/v2/track")
QUICKPULSE_PATHS = ("/QuickPulseService.svc/ping", "/QuickPulseService.svc/post")
MONITOR_AUDIENCES = ("https://monitor.azure.com", "https://monitor.azure.com/")
ENTRA_ISSUER_PREFIXES = ("https://sts.windows.net/", "https://login.microsoftonline.com/")
# Envelope data types as the service names them, by the short name used in queries.
ITEM_TYPES = {
    "Request": "RequestData",
    "RemoteDependency": "RemoteDependencyData",
    "Message": "MessageData",
    "Exception": "ExceptionData",
    "Metric": "MetricData",
    "Event": "EventData",
}
REQUIRED_FIELDS = ("name", "time", "iKey", "data")
MAX_ITEMS = 20_000
MAX_BODY_BYTES = 64 * 1024 * 1024
TRACE_CLAIMS = ("aud", "iss", "appid", "oid", "tid")

log = logging.getLogger("devtools.appinsights_ingest")


class Refused(Exception):
    """A track call the service would refuse as a whole."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Ingest:
    """What the stand-in accepted, and how it checks tokens."""

    public_key: rsa.RSAPublicKey | None = None
    echo: bool = False
    items: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ITEMS))
    calls: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ITEMS))
    live_metrics_calls: int = 0

    def authenticate(self, authorization: str | None) -> dict[str, Any] | None:
        """The token's claims worth showing, or None when no key is configured; Refused if invalid."""
        if self.public_key is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "Authorization header with a bearer token is required.")
        try:
            claims = jwt.decode(
                token.strip(),
                self.public_key,
                algorithms=["RS256"],
                audience=list(MONITOR_AUDIENCES),
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Refused(401, f"The token was refused: {exc}.") from None
        if not str(claims["iss"]).startswith(ENTRA_ISSUER_PREFIXES):
            raise Refused(401, "The token was not issued by Microsoft Entra ID.")
        return {name: claims[name] for name in TRACE_CLAIMS if name in claims}

    def accept(self, envelopes: list[Any]) -> list[dict[str, Any]]:
        """Keep the valid envelopes; one error per refused envelope, as the service reports them."""
        errors = []
        for index, envelope in enumerate(envelopes):
            problem = envelope_problem(envelope)
            if problem:
                errors.append({"index": index, "statusCode": 400, "message": problem})
                continue
            self.items.append(envelope)
            if self.echo:
                print(describe_item(envelope), flush=True)
        return errors


def envelope_problem(envelope: Any) -> str | None:
    """Why the service would refuse this envelope, or None."""
    if not isinstance(envelope, dict):
        return "An envelope must be a JSON object."
    missing = [name for name in REQUIRED_FIELDS if not envelope.get(name)]
    if missing:
        return f"Field(s) {', '.join(missing)} required."
    data = envelope["data"]
    if not isinstance(data, dict) or not data.get("baseType") or not isinstance(data.get("baseData"), dict):
        return "data must have a baseType and a baseData object."
    return None


def parse_envelopes(body: bytes) -> list[Any]:
    """A JSON array of envelopes, one envelope, or newline-delimited envelopes; gzip or not.

    aiohttp already inflates a body sent with `Content-Encoding: gzip`; one compressed without saying
    so is recognised by its magic number.
    """
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            raise Refused(400, "The body is not valid gzip.") from None
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise Refused(400, "The body is not JSON (an array or one envelope per line).") from None
    return parsed if isinstance(parsed, list) else [parsed]


def item_type(envelope: dict[str, Any]) -> str:
    """The short type name (Request, RemoteDependency, ...) of an accepted envelope."""
    base_type = envelope["data"]["baseType"]
    return next((name for name, full in ITEM_TYPES.items() if full == base_type), base_type)


def describe_item(envelope: dict[str, Any]) -> str:
    """One line: type, operation and parent ids, name and the essentials of the item."""
    tags, data = envelope.get("tags", {}), envelope["data"]["baseData"]
    kind = item_type(envelope)
    ids = f"op={tags.get('ai.operation.id', '-')} parent={tags.get('ai.operation.parentId', '-')}"
    if kind == "Metric":
        metrics = ", ".join(f"{m.get('name')}={m.get('value')}" for m in data.get("metrics", []))
        return f"Metric {metrics} {json.dumps(data.get('properties', {}), sort_keys=True)}"
    if kind == "Message":
        return f"Message {ids} [{data.get('severityLevel')}] {data.get('message')}"
    name = data.get("name", "")
    code = data.get("responseCode") or data.get("resultCode") or ""
    outcome = f"{data.get('duration')} {code} success={data.get('success')}"
    return f"{kind} {ids} id={data.get('id')} {name} {outcome}"


def render_traces(items: list[dict[str, Any]], limit: int) -> str:
    """The last `limit` operations as indented trees of requests, dependencies and messages."""
    by_operation: dict[str, list[dict[str, Any]]] = {}
    for envelope in items:
        operation = envelope.get("tags", {}).get("ai.operation.id")
        if operation and item_type(envelope) != "Metric":
            by_operation.setdefault(operation, []).append(envelope)
    blocks = []
    for operation, members in list(by_operation.items())[-limit:]:
        lines = [f"trace {operation}"]
        children: dict[str, list[dict[str, Any]]] = {}
        ids = {envelope["data"]["baseData"].get("id") for envelope in members}
        roots = []
        for envelope in members:
            parent = envelope.get("tags", {}).get("ai.operation.parentId")
            if parent in ids:
                children.setdefault(parent, []).append(envelope)
            else:
                roots.append(envelope)
        _render(roots, children, lines, depth=1)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _render(
    members: list[dict[str, Any]], children: dict[str, list[dict[str, Any]]], lines: list[str], depth: int
) -> None:
    for envelope in sorted(members, key=lambda item: item.get("time", "")):
        lines.append("  " * depth + describe_item(envelope))
        item_id = envelope["data"]["baseData"].get("id")
        if item_id in children:
            _render(children.pop(item_id), children, lines, depth + 1)


def _service_error(status: int, message: str, received: int = 0) -> web.Response:
    body = {
        "itemsReceived": received,
        "itemsAccepted": 0,
        "errors": [{"index": 0, "statusCode": status, "message": message}],
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return web.json_response(body, status=status, headers=headers)


# --- handlers --------------------------------------------------------------------------------------


async def _track(request: web.Request) -> web.Response:
    ingest: Ingest = request.app["ingest"]
    call: dict[str, Any] = {"path": request.path, "time": time.time()}
    ingest.calls.append(call)
    try:
        call["auth"] = ingest.authenticate(request.headers.get("Authorization"))
        envelopes = parse_envelopes(await request.read())
    except Refused as refused:
        call.update(status=refused.status, error=refused.message)
        log.info("refused track call: %s %s", refused.status, refused.message)
        return _service_error(refused.status, refused.message)
    errors = ingest.accept(envelopes)
    status = 206 if errors else 200
    accepted = len(envelopes) - len(errors)
    call.update(status=status, items_received=len(envelopes), items_accepted=accepted)
    log.info("track: %d received, %d accepted", len(envelopes), accepted)
    return web.json_response(
        {"itemsReceived": len(envelopes), "itemsAccepted": accepted, "errors": errors}, status=status
    )


async def _quickpulse(request: web.Request) -> web.Response:
    request.app["ingest"].live_metrics_calls += 1
    await request.read()
    return web.Response(status=200, headers={"x-ms-qps-subscribed": "false"})


async def _items(request: web.Request) -> web.Response:
    ingest: Ingest = request.app["ingest"]
    wanted = request.query.get("type")
    if wanted is not None and wanted not in ITEM_TYPES:
        return web.json_response({"error": f"type must be one of {', '.join(ITEM_TYPES)}"}, status=400)
    items = [item for item in ingest.items if wanted is None or item_type(item) == wanted]
    return web.json_response({"items": items})


async def _clear(request: web.Request) -> web.Response:
    ingest: Ingest = request.app["ingest"]
    ingest.items.clear()
    ingest.calls.clear()
    return web.Response(status=204)


async def _calls(request: web.Request) -> web.Response:
    ingest: Ingest = request.app["ingest"]
    return web.json_response({"calls": list(ingest.calls), "live_metrics_calls": ingest.live_metrics_calls})


async def _traces(request: web.Request) -> web.Response:
    limit = int(request.query.get("limit", "5"))
    return web.Response(text=render_traces(list(request.app["ingest"].items), max(1, limit)))


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "items": len(request.app["ingest"].items)})


def create_app(ingest: Ingest) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app["ingest"] = ingest
    app.router.add_route("*", "/{path:.*}", _dispatch)
    return app


_ROUTES: dict[tuple[str, str], Any] = {
    **{("POST", path): _track for path in TRACK_PATHS},
    **{("POST", path): _quickpulse for path in QUICKPULSE_PATHS},
    ("GET", "/_ingest/items"): _items,
    ("DELETE", "/_ingest/items"): _clear,
    ("GET", "/_ingest/calls"): _calls,
    ("GET", "/_ingest/traces"): _traces,
    ("GET", "/_ingest/health"): _health,
}


async def _dispatch(request: web.Request) -> web.StreamResponse:
    # Connection strings end their endpoints with "/", so the exporter posts to "//v2.1/track";
    # the service accepts that, and so does this stand-in (a redirect would not be followed).
    path = re.sub("/{2,}", "/", request.path)
    handler = _ROUTES.get((request.method, path))
    if handler is None:
        known = any(route_path == path for _, route_path in _ROUTES)
        raise web.HTTPMethodNotAllowed(request.method, []) if known else web.HTTPNotFound()
    return await handler(request)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.appinsights_ingest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-public-key", type=Path, help="require Entra tokens signed by this key (PEM)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument("--print", action="store_true", help="print one line per accepted item")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    public_key = load_public_key(args.token_public_key) if args.token_public_key else None
    app = create_app(Ingest(public_key=public_key, echo=args.print))
    tls = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    web.run_app(app, host=args.host, port=args.port, ssl_context=tls, print=None, access_log=None)


if __name__ == "__main__":
    main()
