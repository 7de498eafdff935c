"""Local stand-in for the Functions host (`func start`) serving a `func.FunctionApp`'s HTTP functions
the way the Python worker does with the HTTP streams extension (`azurefunctions-extensions-http-fastapi`).

    python -m devtools.devhost [--port 7071] [--host 127.0.0.1] [--app function_app]
                               [--settings local.settings.json]

The worker runs a FastAPI app with one catch-all route under uvicorn and hands each request to the
function as a FastAPI/Starlette `Request`; so does this host (`asgi_app()` builds that ASGI app, also
used in process by `devtools.driver`). Functions are discovered as the worker does
(`app.get_functions()`) and served at `/<routePrefix>/<route>` (`extensions.http.routePrefix` from
`host.json` in the current directory, default `api`). Route templates follow the host's syntax:
`items/{id}`, `{id:int}`, `{id?}`, `{id=default}`, `{*rest}`; literals match case-insensitively and
literal segments take precedence over parameters. The matched route params are put into
`request.path_params` by the extension's own `RequestSynchronizer`. Async functions run on the
host's event loop, sync ones in a worker thread. What a function returns goes back to FastAPI as the
worker's catch-all returns it: a Response (`JSONResponse`, `StreamingResponse`...) is sent as is, a
`StreamingResponse` chunk by chunk as its iterator yields them; anything else is encoded by FastAPI
(JSON).

A client that disconnects reaches the function: uvicorn reports `http.disconnect`, Starlette's
`StreamingResponse` is listening for it and cancels the stream, so an async generator behind it gets
`CancelledError` at the `await` it is suspended in (one suspended at a `yield` is closed when it is
garbage-collected instead). The real host proxies to the worker's uvicorn the same way.

Settings: the `Values` of `local.settings.json` (when the file exists) are copied into `os.environ`
before aiohttp and the app are imported. A variable already set in the environment wins over the file,
as with Core Tools, so `FOO=x python -m devtools.devhost` overrides `FOO` from the file.

Keys: as with Core Tools, FUNCTION and ADMIN auth levels are not enforced unless keys are given.
With `--function-key KEY` (and `--master-key KEY`) the host enforces them as in Azure: a FUNCTION
route needs a function key or the master key, an ADMIN route the master key, in the `code` query
parameter or the `x-functions-key` header; without one the answer is 401 with an empty body, before
the function runs. ANONYMOUS routes are open either way. Without keys, bind to loopback only.

The request body reaches the function as a stream, as through the host's proxy with the HTTP streams
extension: the function reads it while it arrives (and can answer before reading it). A body
declared over 100 MiB (the host's limit) is refused with 413 before the function runs; a chunked body
that grows past it ends, for the function, as a client that left, and the caller gets 413.

Not emulated:
- Non-HTTP triggers (listed and skipped; the warm-up trigger runs once at start-up, before the host
  listens, as on an instance the platform adds), bindings other than the HTTP trigger and its
  `$return` output, and the `context` argument; the old `func.HttpRequest`/`func.HttpResponse` model (the app
  uses the streams extension throughout).
- A known route with a method it does not declare gets 405 with `Allow`; the real host answers 404
  (azure-functions-host#10098).

A function that raises gets 500 with a short plain-text body; the traceback goes only to this host's
log, as with the real host. One access-log line per request, written when the response has been sent
(for a stream, when it ends): method, path without the query string (it may carry SAS tokens or
keys), status, milliseconds. SIGINT/SIGTERM stop accepting connections, wait up to 60 s for requests
in flight (streams included), then exit with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import secrets
import signal
import socket
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, unquote

import azure.functions as func
import uvicorn
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.warmup import WarmUpTrigger
from azurefunctions.extensions.http.fastapi import Request, RequestSynchronizer
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("devhost")
access_log = logging.getLogger("devhost.access")

DEFAULT_ROUTE_PREFIX = "api"
KEEP_ALIVE_SECONDS = 120
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the Functions host's request length limit
SHUTDOWN_GRACE_SECONDS = 60
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The methods of the extension's catch-all route (azurefunctions.extensions.http.fastapi.WebApp).
FUNCTION_KEY_HEADER = "x-functions-key"
FUNCTION_KEY_PARAMETER = "code"
CATCH_ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"]

_PARAM = re.compile(r"\{([^{}]+)\}")
_TOKEN = re.compile(
    r"(?P<star>\*{1,2})?(?P<name>[^:?=*]+)(?P<constraints>(?::[^:?=]+)*)(?P<opt>\?)?(?:=(?P<default>.*))?"
)
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}(?:-?[0-9A-Fa-f]{4}){3}-?[0-9A-Fa-f]{12}",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
}
# Precedence rank of a route segment, lower wins (as in ASP.NET Core routing).
_LITERAL, _CONSTRAINED, _PLAIN, _OPTIONAL, _CATCH_ALL = range(5)

_INDEXED: weakref.WeakKeyDictionary[func.FunctionApp, list[func.Function]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Template:
    """A compiled route template."""

    pattern: re.Pattern[str]
    params: tuple[str, ...]
    defaults: Mapping[str, str]
    precedence: tuple[int, ...]

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Route params of a percent-encoded path, or None."""
        found = self.pattern.fullmatch(raw_path)
        if found is None:
            return None
        values = dict(self.defaults)
        for index, name in enumerate(self.params):
            value = found.group(f"p{index}")
            if value is not None:
                values[name] = unquote(value)
        return values


@dataclass(frozen=True)
class Route:
    """One HTTP function as served."""

    name: str
    path: str  # display form, e.g. /api/items/{id}
    methods: frozenset[str] | None  # None: every method
    template: Template
    handler: Callable[..., Any]
    arg_name: str
    auth_level: func.AuthLevel = func.AuthLevel.ANONYMOUS

    def allows(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def compile_template(route_prefix: str, route: str) -> Template:
    """Compile `route` under `route_prefix`; a trailing slash is accepted, as by the host."""
    segments = [s for s in f"{route_prefix.strip('/')}/{route.strip('/')}".split("/") if s]
    parts: list[str] = []
    params: list[str] = []
    defaults: dict[str, str] = {}
    precedence: list[int] = []
    for segment in segments:
        regex, rank = _compile_segment(segment, params, defaults)
        parts.append(regex)
        precedence.append(rank)
    pattern = re.compile("".join(parts) + "/?", re.IGNORECASE)
    return Template(pattern, tuple(params), defaults, tuple(precedence))


def _compile_segment(segment: str, params: list[str], defaults: dict[str, str]) -> tuple[str, int]:
    """Regex for `/segment` and its precedence rank; appends the segment's params."""
    tokens = _PARAM.split(segment)  # literal, param, literal, param, ..., literal
    if len(tokens) == 3 and not tokens[0] and not tokens[2]:
        regex, rank = _compile_param(tokens[1], params, defaults)
        if rank >= _OPTIONAL:
            return f"(?:/{regex})?", rank
        return f"/{regex}", rank
    regex = "".join(
        _compile_param(token, params, defaults)[0] if index % 2 else re.escape(token)
        for index, token in enumerate(tokens)
    )
    return f"/{regex}", _LITERAL if len(tokens) == 1 else _CONSTRAINED


def _compile_param(token: str, params: list[str], defaults: dict[str, str]) -> tuple[str, int]:
    parsed = _TOKEN.fullmatch(token.strip())
    if parsed is None:
        raise ValueError(f"unsupported route parameter {{{token}}}")
    name = parsed["name"]
    group = f"p{len(params)}"
    params.append(name)
    if parsed["default"] is not None:
        defaults[name] = parsed["default"]
    if parsed["star"]:
        return f"(?P<{group}>.*)", _CATCH_ALL
    constraints = [c.split("(")[0].lower() for c in parsed["constraints"].split(":") if c]
    value = next((_CONSTRAINTS[c] for c in constraints if c in _CONSTRAINTS), "[^/]+")
    if parsed["opt"] or parsed["default"] is not None:
        return f"(?P<{group}>{value})", _OPTIONAL
    return f"(?P<{group}>{value})", _CONSTRAINED if constraints else _PLAIN


def read_route_prefix(host_json: Path) -> str:
    """`extensions.http.routePrefix` from host.json; `api` when absent."""
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    config = json.loads(host_json.read_text(encoding="utf-8-sig"))
    prefix = config.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
    return str(prefix).strip("/")


def load_settings(path: Path, environ: MutableMapping[str, str]) -> None:
    """Copy `Values` from a local.settings.json into `environ`; variables already set win."""
    if not path.is_file():
        log.info("No %s; using the environment only", path)
        return
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    if data.get("IsEncrypted"):
        raise SystemExit(f"{path}: encrypted settings are not supported; set IsEncrypted to false")
    loaded = 0
    for name, value in data.get("Values", {}).items():
        if not isinstance(value, str):
            raise SystemExit(f"{path}: Values.{name} must be a string")
        if name in environ:
            log.info("Skipping '%s' from %s: already set in the environment", name, path)
            continue
        environ[name] = value
        loaded += 1
    log.info("Loaded %d settings from %s", loaded, path)


def load_app(app_ref: str) -> func.FunctionApp:
    """Import `module[:attribute]` (attribute defaults to `app`)."""
    module_name, _, attribute = app_ref.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, func.FunctionApp):
        raise SystemExit(f"{app_ref}: expected a func.FunctionApp, got {type(app).__name__}")
    return app


def indexed_functions(app: func.FunctionApp) -> list[func.Function]:
    """`app.get_functions()`, called once per app as the worker does: a second call fails on the app's
    own duplicate-name check, and a process may build several ASGI apps (drivers) from one app."""
    if app not in _INDEXED:
        _INDEXED[app] = app.get_functions()
    return _INDEXED[app]


def http_routes(app: func.FunctionApp, route_prefix: str) -> list[Route]:
    """The app's HTTP functions, most specific route first."""
    routes = []
    for function in indexed_functions(app):
        trigger = function.get_trigger()
        if isinstance(trigger, WarmUpTrigger):
            continue
        if not isinstance(trigger, HttpTrigger):
            log.warning("Skipping %s: only HTTP functions are served", function.get_function_name())
            continue
        routes.append(_route(function, trigger, route_prefix))
    return sorted(routes, key=lambda r: r.template.precedence)


def _route(function: func.Function, trigger: HttpTrigger, route_prefix: str) -> Route:
    methods = frozenset(str(m).upper() for m in trigger.methods) if trigger.methods else None
    path = "/" + "/".join(p for p in (route_prefix, (trigger.route or "").strip("/")) if p)
    return Route(
        name=function.get_function_name() or "",
        path=path,
        methods=methods,
        template=compile_template(route_prefix, trigger.route or ""),
        handler=function.get_user_function(),
        arg_name=trigger.name,
        auth_level=trigger.auth_level or func.AuthLevel.FUNCTION,
    )


def resolve(
    routes: Sequence[Route], method: str, raw_path: str
) -> tuple[Route, dict[str, str]] | frozenset[str]:
    """The route for `method` and `raw_path` with its params, else the methods the path allows
    (empty when no route matches the path)."""
    allowed: set[str] = set()
    for route in routes:
        params = route.template.match(raw_path)
        if params is None:
            continue
        if route.allows(method):
            return route, params
        allowed |= route.methods or set()
    return frozenset(allowed)


# --- the worker's side: FastAPI catch-all, one function per request ----------------------------------

_SYNCHRONIZER = RequestSynchronizer()


def _plain(status: int, headers: Mapping[str, str] | None = None) -> PlainTextResponse:
    """A short plain-text answer of the host's own: the status phrase."""
    return PlainTextResponse(HTTPStatus(status).phrase, status, headers)


def _raw_path(scope: Scope) -> str:
    """The request path as sent (percent-encoded, no query string)."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope["path"])


async def invoke(route: Route, request: Request, route_params: Mapping[str, str]) -> Any:
    """Call the function as the worker does; a failure becomes a 500 whose details stay in the log."""
    _SYNCHRONIZER.sync_route_params(request, dict(route_params))
    try:
        return await invoke_any(route.handler, {route.arg_name: request})
    except Exception:
        log.exception("Executed 'Functions.%s' (Failed)", route.name)
        return _plain(500)


@dataclass(frozen=True)
class HostKeys:
    """The keys the host enforces (none: every auth level is open, as with Core Tools)."""

    function_keys: frozenset[str] = frozenset()
    master_key: str | None = None

    def admits(self, route: Route, request: Request) -> bool:
        """Whether the request carries a key the route's auth level accepts."""
        if route.auth_level == func.AuthLevel.ANONYMOUS or not (self.function_keys or self.master_key):
            return True
        given = request.headers.get(FUNCTION_KEY_HEADER) or request.query_params.get(FUNCTION_KEY_PARAMETER)
        if not given:
            return False
        accepted = (
            {self.master_key}
            if route.auth_level == func.AuthLevel.ADMIN
            else {
                *self.function_keys,
                self.master_key,
            }
        )
        return any(key and secrets.compare_digest(given, key) for key in accepted)


async def invoke_any(handler: Callable[..., Any], arguments: Mapping[str, Any]) -> Any:
    """Async functions run on the host's event loop, sync ones in a worker thread."""
    if inspect.iscoroutinefunction(handler):
        return await handler(**arguments)
    return await asyncio.to_thread(handler, **arguments)


async def dispatch(routes: Sequence[Route], request: Request, keys: HostKeys = HostKeys()) -> Any:
    """The function's result for this request, or the host's 401/404/405."""
    found = resolve(routes, request.method, _raw_path(request.scope))
    if isinstance(found, tuple):
        route, params = found
        if not keys.admits(route, request):
            return Response(status_code=401)
        return await invoke(route, request, params)
    if found:
        return _plain(405, {"Allow": ", ".join(sorted(found))})
    return _plain(404)


# --- the host's side: request length limit, access log ----------------------------------------------


@dataclass
class Exchange:
    """One request as the access log sees it."""

    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    complete: bool = False
    client_left: bool = False
    failed: bool = False

    def watch_receive(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not self.complete:
                self.client_left = True
            return message

        return watched

    def watch_send(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.complete = True
            await send(message)

        return watched

    def log(self) -> None:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        status = "-" if self.status is None else str(self.status)
        note = " (failed)" if self.failed else " (client disconnected)" if self.client_left else ""
        access_log.info("%s %s %s %.1fms%s", self.method, self.path, status, elapsed_ms, note)


class HostFrontEnd:
    """What the Functions host does around the worker: pass the body on as it arrives, refuse bodies
    over the limit (413), log each request once its response has been sent."""

    def __init__(self, app: ASGIApp, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope["method"], _raw_path(scope))
        try:
            await self._handle(scope, exchange.watch_receive(receive), exchange.watch_send(send))
        except Exception:
            exchange.failed = True
            raise
        finally:
            exchange.log()

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _declared_length(scope) > self.max_request_bytes:
            await _plain(413)(scope, receive, send)
            return
        body = BodyLimit(receive, send, self.max_request_bytes)
        await self.app(scope, body.receive, body.send)
        if body.over and not body.answered:
            await _plain(413)(scope, receive, send)


class BodyLimit:
    """The body passed on as it arrives, counted: past `limit` bytes the function sees the client
    leave (`http.disconnect`), and what it answers afterwards is replaced by the host's 413."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._size = 0
        self.over = False
        self.answered = False
        """Whether the function began its response before the body went over the limit."""

    async def receive(self) -> Message:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                self.over = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.over and not self.answered:
            return  # the host answers 413 instead
        if message["type"] == "http.response.start":
            self.answered = True
        await self._send(message)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


def _asgi_app(routes: Sequence[Route], max_request_bytes: int, keys: HostKeys) -> ASGIApp:
    # The worker's app: FastAPI with one catch-all route (see the extension's WebApp.route); without
    # FastAPI's /docs and /openapi.json, which the host never forwards to the worker.
    web_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @web_app.api_route("/{path:path}", methods=CATCH_ALL_METHODS, response_model=None)
    async def catch_all(request: Request) -> Any:
        return await dispatch(routes, request, keys)

    return HostFrontEnd(web_app, max_request_bytes)


def asgi_app(
    app: func.FunctionApp,
    route_prefix: str = DEFAULT_ROUTE_PREFIX,
    *,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    keys: HostKeys = HostKeys(),
) -> ASGIApp:
    """The ASGI app serving `app`'s HTTP functions under `/<route_prefix>/` as host and worker do:
    routing, keys (401), 404/405, route params, 500 on failure, the body limit (413) and the access
    log."""
    return _asgi_app(http_routes(app, route_prefix), max_request_bytes, keys)


# --- the server ---------------------------------------------------------------------------------------


def announce(routes: Sequence[Route], base_url: str) -> None:
    """Print the served functions as Core Tools does."""
    for route in sorted(routes, key=lambda r: r.name):
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        print(f"Functions: {route.name}: [{methods}] {base_url}{route.path}", flush=True)
    print(f"Dev host listening on {base_url} (Ctrl+C to stop)", flush=True)


class DevServer(uvicorn.Server):
    """uvicorn's server that announces the functions once it listens and ends with status 0 on
    SIGINT/SIGTERM (uvicorn itself re-raises the signal once it has shut down)."""

    def __init__(self, config: uvicorn.Config, routes: Sequence[Route]) -> None:
        super().__init__(config)
        self.routes = routes

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            announce(self.routes, f"http://{self.config.host}:{port}")

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("Stopping: waiting up to %d s for requests in flight", SHUTDOWN_GRACE_SECONDS)
        super().handle_exit(sig, frame)  # a second SIGINT forces the exit


async def warm_up(app: func.FunctionApp) -> None:
    """Run the app's warm-up function (a `warmupTrigger`), as the platform does on an instance it adds
    before sending it traffic; what it raises is logged, and the host serves anyway."""
    for function in indexed_functions(app):
        trigger = function.get_trigger()
        if isinstance(trigger, WarmUpTrigger):
            started = time.perf_counter()
            try:
                await invoke_any(function.get_user_function(), {trigger.name: func.warmup.WarmUpContext()})
            except Exception:
                log.exception("Warm-up function %s failed", function.get_function_name())
            ms = (time.perf_counter() - started) * 1000
            log.info("Warm-up function %s ran in %.0f ms", function.get_function_name(), ms)


async def serve(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    routes = http_routes(app, read_route_prefix(Path("host.json")))
    await warm_up(app)
    config = uvicorn.Config(
        _asgi_app(routes, MAX_REQUEST_BYTES, host_keys(args)),
        host=args.host,
        port=args.port,
        log_config=None,  # keep this process's logging setup
        access_log=False,  # HostFrontEnd writes one line per request, without the query string
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        # uvicorn closes idle connections after 5 s, racing clients that reuse them; the Functions
        # front end keeps them far longer.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    await DevServer(config, routes).serve()
    log.info("Stopped")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devhost", description="Serve a FunctionApp's HTTP functions locally."
    )
    parser.add_argument("--port", type=int, default=7071, help="0 picks a free port (default: 7071)")
    parser.add_argument("--host", default="127.0.0.1", help="without keys: keep it loopback")
    parser.add_argument(
        "--function-key", action="append", default=[], help="enforce FUNCTION auth level with this key"
    )
    parser.add_argument("--master-key", help="the master key (FUNCTION and ADMIN auth levels)")
    parser.add_argument("--app", default="function_app", help="module[:attribute] of the FunctionApp")
    parser.add_argument("--settings", type=Path, default=Path("local.settings.json"))
    return parser.parse_args(argv)


def host_keys(args: argparse.Namespace) -> HostKeys:
    return HostKeys(frozenset(args.function_key), args.master_key)


def main(argv: Sequence[str] | None = None) -> None:
    # Order matters: settings reach os.environ before aiohttp (which builds its default SSL context
    # from SSL_CERT_FILE at first import) and the app are imported, both inside serve().
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_settings(args.settings, os.environ)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
