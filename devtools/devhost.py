"""Local stand-in for the Functions host (`func start`) serving a `func.FunctionApp`'s HTTP functions.

    python -m devtools.devhost [--port 7071] [--host 127.0.0.1] [--app function_app]
                               [--settings local.settings.json]

Functions are discovered as the Python worker does (`app.get_functions()`) and served at
`/<routePrefix>/<route>` (`extensions.http.routePrefix` from `host.json` in the current directory,
default `api`). Route templates follow the host's syntax: `items/{id}`, `{id:int}`, `{id?}`,
`{id=default}`, `{*rest}`; literals match case-insensitively and literal segments take precedence over
parameters. Each request becomes a real `func.HttpRequest`; sync functions run in a worker thread, async
ones on the host's event loop; the returned `func.HttpResponse` (or `str`) is sent back with its status,
every header value, the worker's content type rule (`mimetype`, plus `charset` for `text/*`) and its
body bytes.

Settings: the `Values` of `local.settings.json` (when the file exists) are copied into `os.environ`
before aiohttp and the app are imported. A variable already set in the environment wins over the file,
as with Core Tools, so `FOO=x python -m devtools.devhost` overrides `FOO` from the file.

Not emulated:
- Keys: FUNCTION and ADMIN auth levels are not enforced locally (as with Core Tools), so bind to
  loopback only.
- Non-HTTP triggers (listed and skipped), bindings other than the HTTP trigger and its `$return`
  output, and the `context` argument.
- A known route with a method it does not declare gets 405 with `Allow`; the real host answers 404
  (azure-functions-host#10098).
- A function that raises gets 500 with a short plain-text body; the traceback goes only to this host's
  log, as with the real host.

One access-log line per request (method, path without the query string, which may carry SAS tokens or
keys, status, milliseconds). SIGINT/SIGTERM stop accepting connections and wait up to 60 s for requests
in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger

if TYPE_CHECKING:  # imported at run time only after the settings are loaded, see main()
    from aiohttp import web
    from multidict import MultiMapping

log = logging.getLogger("devhost")
access_log = logging.getLogger("devhost.access")

DEFAULT_ROUTE_PREFIX = "api"
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the Functions host's request length limit
# The host frames the response itself; a function's own framing headers would contradict it.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

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

Reply = tuple[int, list[tuple[str, str]], bytes]


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


def http_routes(app: func.FunctionApp, route_prefix: str) -> list[Route]:
    """The app's HTTP functions, most specific route first."""
    routes = []
    for function in app.get_functions():
        trigger = function.get_trigger()
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


def to_reply(result: Any) -> Reply:
    """Status, headers and body of a function's result, as the Python worker encodes them."""
    if isinstance(result, str):
        return 200, [("Content-Type", "text/plain; charset=utf-8")], result.encode()
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"expected func.HttpResponse or str, got {type(result).__name__}")
    headers = [(k, v) for k, v in result.headers.items() if k.lower() not in FRAMING_HEADERS]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", _content_type(result)))
    return result.status_code, headers, result.get_body()


def _content_type(response: func.HttpResponse) -> str:
    if response.mimetype.startswith("text/"):
        return f"{response.mimetype}; charset={response.charset}"
    return response.mimetype


def _plain(status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return status, [*headers, ("Content-Type", "text/plain; charset=utf-8")], text.encode()


def _joined(values: MultiMapping[str], separator: str) -> dict[str, str]:
    """A multidict as a plain dict, repeated keys joined."""
    return {key: separator.join(values.getall(key)) for key in values}


async def build_request(request: web.Request, route_params: Mapping[str, str]) -> func.HttpRequest:
    return func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=_joined(request.headers, ", "),
        params=_joined(request.query, ","),
        route_params=route_params,
        body=await request.read(),
    )


async def invoke(route: Route, req: func.HttpRequest) -> Reply:
    """Run the function; any failure becomes a 500 whose details stay in the log."""
    try:
        if inspect.iscoroutinefunction(route.handler):
            result = await route.handler(**{route.arg_name: req})
        else:
            result = await asyncio.to_thread(route.handler, **{route.arg_name: req})
        return to_reply(result)
    except Exception:
        log.exception("Executed 'Functions.%s' (Failed)", route.name)
        return _plain(500, "Internal Server Error")


async def respond(routes: Sequence[Route], request: web.Request) -> Reply:
    found = resolve(routes, request.method, request.rel_url.raw_path)
    if isinstance(found, tuple):
        route, params = found
        return await invoke(route, await build_request(request, params))
    if found:
        return _plain(405, "Method Not Allowed", [("Allow", ", ".join(sorted(found)))])
    return _plain(404, "Not Found")


def create_app(routes: Sequence[Route]) -> web.Application:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            status, headers, body = await respond(routes, request)
        except web.HTTPException as error:  # raised by aiohttp itself, e.g. 413 from request.read()
            status, headers, body = _plain(error.status, error.reason)
        elapsed_ms = (time.perf_counter() - started) * 1000
        access_log.info("%s %s %d %.1fms", request.method, request.rel_url.raw_path, status, elapsed_ms)
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_route("*", "/{path:.*}", handle)
    return app


def announce(routes: Sequence[Route], base_url: str) -> None:
    """Print the served functions as Core Tools does."""
    for route in sorted(routes, key=lambda r: r.name):
        methods = ",".join(sorted(route.methods)) if route.methods else "*"
        print(f"Functions: {route.name}: [{methods}] {base_url}{route.path}", flush=True)
    print(f"Dev host listening on {base_url} (Ctrl+C to stop)", flush=True)


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    routes = http_routes(load_app(args.app), read_route_prefix(Path("host.json")))
    runner = web.AppRunner(create_app(routes), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        announce(routes, f"http://{args.host}:{runner.addresses[0][1]}")
        await _until_signalled()
        log.info("Stopping: waiting for requests in flight")
    finally:
        await runner.cleanup()
    log.info("Stopped")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devhost", description="Serve a FunctionApp's HTTP functions locally."
    )
    parser.add_argument("--port", type=int, default=7071, help="0 picks a free port (default: 7071)")
    parser.add_argument("--host", default="127.0.0.1", help="keys are not enforced: keep it loopback")
    parser.add_argument("--app", default="function_app", help="module[:attribute] of the FunctionApp")
    parser.add_argument("--settings", type=Path, default=Path("local.settings.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    # Order matters: settings reach os.environ before aiohttp (which builds its default SSL context
    # from SSL_CERT_FILE at first import) and the app are imported, both inside serve().
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_settings(args.settings, os.environ)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
