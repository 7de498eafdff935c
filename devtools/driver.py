"""Drive the function app in process, with no socket: requests go through the same ASGI app as the dev
host (`devtools.devhost.asgi_app`: routing, route params, 404/405/413/500, the function, its Response).

    from devtools.driver import FunctionDriver

    async with FunctionDriver() as driver:                       # function_app.app, host.json's prefix
        response = await driver.post_speech({"text": "Hello"}, headers={"Idempotency-Key": "k1"})
        response.status_code, response.headers["content-type"], response.json()
        health = await driver.request("GET", "/api/health", params={"probe": "true"})

Every call returns an `httpx.Response`; `request()` takes httpx's keyword arguments (`json=`,
`content=`, `headers=`, `params=`...), and `driver.client` is the underlying `httpx.AsyncClient` (e.g.
for `httpx_sse.aconnect_sse(driver.client, "POST", driver.speech_path, json=...)`).

What it is not:
- Not a stream: httpx's `ASGITransport` hands over a response once the app has sent all of it, so a
  `StreamingResponse` (Server-Sent Events) arrives whole when it ends, and the client cannot
  disconnect mid-stream. Time to the first chunk, or a caller leaving, needs the dev host over a
  socket (`Stack.start_host()`).
- Not a settings loader: the app reads its settings from `os.environ` when it is imported, and so
  does aiohttp (`SSL_CERT_FILE`, first import). Run the driver in a process whose environment already
  holds them (e.g. `env=stack.host_env()`); the app is imported when the driver is made, not when this
  module is imported.
"""

from __future__ import annotations

import importlib
import logging
from types import TracebackType
from typing import Any, Self

import azure.functions as func
import httpx

from devtools.devhost import asgi_app, read_route_prefix
from devtools.process import REPO_ROOT

BASE_URL = "http://localhost:7071"  # what the function sees as its host, as under `func start`

# httpx logs every request with its full URL, query string included (keys, SAS); the host's access log
# already has one line per request without it.
logging.getLogger("httpx").setLevel(logging.WARNING)


class FunctionDriver:
    """An in-process HTTP client of a `func.FunctionApp` (default: `function_app.app`).

    `route_prefix` defaults to `extensions.http.routePrefix` of the repository's host.json; `timeout`
    (seconds) bounds each call, None for no bound.
    """

    def __init__(
        self,
        app: func.FunctionApp | None = None,
        *,
        route_prefix: str | None = None,
        timeout: float | None = 180.0,
    ) -> None:
        self.app = app if app is not None else importlib.import_module("function_app").app
        self.route_prefix = (
            route_prefix if route_prefix is not None else read_route_prefix(REPO_ROOT / "host.json")
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi_app(self.app, self.route_prefix)),
            base_url=BASE_URL,
            timeout=timeout,
        )

    def path(self, route: str) -> str:
        """The URL path of a function's route, e.g. `path("speech")` is `/api/speech`."""
        return "/" + "/".join(part for part in (self.route_prefix, route.strip("/")) if part)

    @property
    def speech_path(self) -> str:
        return self.path("speech")

    async def request(self, method: str, path: str, **httpx_kwargs: Any) -> httpx.Response:
        """One request, e.g. `request("GET", "/api/health")`; the body is read before this returns."""
        return await self.client.request(method, path, **httpx_kwargs)

    async def post_speech(self, payload: Any = None, **httpx_kwargs: Any) -> httpx.Response:
        """`POST /api/speech` with `payload` as JSON, or a raw body with `content=` (and `headers=`)."""
        if payload is not None:
            httpx_kwargs["json"] = payload
        return await self.request("POST", self.speech_path, **httpx_kwargs)

    async def get_health(self, **httpx_kwargs: Any) -> httpx.Response:
        """`GET /api/health`; `params={"probe": "true"}` for the deep check."""
        return await self.request("GET", self.path("health"), **httpx_kwargs)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
