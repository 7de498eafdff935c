"""The dev host: pure parts in process, the HTTP behaviour through a real subprocess and real sockets."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import azure.functions as func
import pytest

from devtools import devhost
from tests.devhost_sample_app import BINARY_BODY

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = "tests.devhost_sample_app"
TIMEOUT = 15


# --- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("items/{id:int}", "/api/items/42", {"id": "42"}),
        ("items/{id:int}", "/api/items/abc", None),
        ("items/{id?}", "/api/items", {}),
        ("items/{id=7}", "/api/items", {"id": "7"}),
        ("items/{id=7}", "/api/items/8", {"id": "8"}),
        ("files/{*rest}", "/api/files/a/b%20c", {"rest": "a/b c"}),
        ("files/{name}.{ext}", "/api/files/a.b.wav", {"name": "a.b", "ext": "wav"}),
        ("Speech", "/api/speech/", {}),
        ("speech", "/api/speechx", None),
        ("speech", "/speech", None),
    ],
)
def test_route_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert devhost.compile_template("api", template).match(path) == expected


def test_empty_route_prefix() -> None:
    assert devhost.compile_template("", "speech").match("/speech") == {}


@pytest.mark.parametrize(
    ("host_json", "prefix"),
    [
        (None, "api"),
        ({"version": "2.0"}, "api"),
        ({"extensions": {"http": {"routePrefix": ""}}}, ""),
        ({"extensions": {"http": {"routePrefix": "/v1/"}}}, "v1"),
    ],
)
def test_route_prefix_from_host_json(tmp_path: Path, host_json: dict | None, prefix: str) -> None:
    path = tmp_path / "host.json"
    if host_json is not None:
        path.write_text(json.dumps(host_json))
    assert devhost.read_route_prefix(path) == prefix


def _things_app() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="things/{id}", methods=["GET"])
    def get_thing(req: func.HttpRequest) -> str:
        return "thing"

    @app.route(route="things/new", methods=["POST"])
    def new_thing(req: func.HttpRequest) -> str:
        return "new"

    return app


def test_resolve_prefers_literals_then_falls_back_by_method() -> None:
    routes = devhost.http_routes(_things_app(), "api")

    route, params = devhost.resolve(routes, "POST", "/api/things/new")
    assert (route.name, params) == ("new_thing", {})
    route, params = devhost.resolve(routes, "GET", "/api/things/new")
    assert (route.name, params) == ("get_thing", {"id": "new"})
    assert devhost.resolve(routes, "DELETE", "/api/things/new") == {"GET", "POST"}
    assert devhost.resolve(routes, "GET", "/api/other") == frozenset()


def test_settings_fill_the_environment_without_overriding_it(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "file", "B": "file"}}))
    environ = {"B": "env"}

    devhost.load_settings(path, environ)

    assert environ == {"A": "file", "B": "env"}


@pytest.mark.parametrize(
    "settings", [{"IsEncrypted": True, "Values": {}}, {"IsEncrypted": False, "Values": {"PORT": 1}}]
)
def test_unusable_settings_are_refused(tmp_path: Path, settings: dict) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(SystemExit):
        devhost.load_settings(path, {})


def test_missing_settings_file_is_fine(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    devhost.load_settings(tmp_path / "absent.json", environ)
    assert environ == {}


@pytest.mark.parametrize(
    ("response", "content_type"),
    [
        ("text", "text/plain; charset=utf-8"),
        (func.HttpResponse("x"), "text/plain; charset=utf-8"),
        (func.HttpResponse("x", mimetype="text/html", charset="latin-1"), "text/html; charset=latin-1"),
        (func.HttpResponse("{}", mimetype="application/json"), "application/json"),
        (func.HttpResponse("x", headers={"content-type": "application/x-custom"}), "application/x-custom"),
    ],
)
def test_content_type_follows_the_worker(response: func.HttpResponse | str, content_type: str) -> None:
    _, headers, _ = devhost.to_reply(response)
    assert [v for k, v in headers if k.lower() == "content-type"] == [content_type]


def test_framing_headers_are_left_to_the_host() -> None:
    _, headers, body = devhost.to_reply(func.HttpResponse(b"abc", headers={"Content-Length": "99"}))
    assert body == b"abc"
    assert all(k.lower() != "content-length" for k, _ in headers)


def test_importing_the_module_does_not_import_aiohttp() -> None:
    """aiohttp reads SSL_CERT_FILE at first import, so only main() may import it, after the settings."""
    probe = "import sys, devtools.devhost; sys.exit('aiohttp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, timeout=TIMEOUT).returncode == 0


# --- the dev host as a subprocess ---------------------------------------------------------------


@dataclass
class DevHost:
    process: asyncio.subprocess.Process
    base_url: str
    banner: list[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), TIMEOUT)


async def start_host(workdir: Path) -> DevHost:
    """Start the dev host on a free port with a settings file and one overriding environment variable."""
    settings = workdir / "local.settings.json"
    values = {"SAMPLE_FROM_SETTINGS": "from-file", "SAMPLE_OVERRIDDEN": "from-file"}
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    env = {k: v for k, v in os.environ.items() if k != "SAMPLE_FROM_SETTINGS"} | {
        "SAMPLE_OVERRIDDEN": "from-env"
    }
    argv = ["-m", "devtools.devhost", "--port", "0", "--app", SAMPLE_APP, "--settings", str(settings)]
    log_path = workdir / "host.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    try:
        banner = await asyncio.wait_for(_read_banner(process), TIMEOUT)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    base_url = re.search(r"http://\S+", banner[-1])
    assert base_url, banner
    return DevHost(process, base_url.group(), banner, log_path)


async def _read_banner(process: asyncio.subprocess.Process) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Dev host listening on"):
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"dev host exited early: {lines}")
        lines.append(line.decode().rstrip())
    return lines


@pytest.fixture(scope="module")
async def host(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevHost]:
    dev_host = await start_host(tmp_path_factory.mktemp("devhost"))
    yield dev_host
    assert await dev_host.stop() == 0


@pytest.fixture(scope="module")
async def client(host: DevHost) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(host.base_url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def test_startup_lists_http_functions_like_core_tools(host: DevHost) -> None:
    assert f"Functions: hello: [GET] {host.base_url}/api/hello" in host.banner
    assert f"Functions: echo: [POST,PUT] {host.base_url}/api/echo/{{kind}}/{{*rest}}" in host.banner
    assert not any("hourly" in line for line in host.banner)
    assert "Skipping hourly" in host.log()


async def test_settings_reach_the_app_and_the_environment_wins(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/hello") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await response.text() == "from-file from-env"


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_request_passes_through_faithfully(
    host: DevHost, client: aiohttp.ClientSession, method: str
) -> None:
    body = json.dumps({"text": "héllo"}, ensure_ascii=False).encode()
    path_and_query = "/api/echo/widgets/a/b%20c?x=1&note=two%20words"
    headers = {"X-Trace": "abc", "Content-Type": "application/json"}
    # echo's auth level is FUNCTION: no key needed locally.
    async with client.request(method, path_and_query, data=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        echoed = await response.json()

    assert echoed["method"] == method
    assert echoed["url"] == host.base_url + path_and_query
    assert echoed["params"] == {"x": "1", "note": "two words"}
    assert echoed["route_params"] == {"kind": "widgets", "rest": "a/b c"}
    assert echoed["headers"]["x-trace"] == "abc"
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["body"] == body.decode()
    assert echoed["on_main_thread"] is False  # sync functions run in a worker thread


async def test_async_function_runs_on_the_event_loop(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/async") as response:
        assert response.status == 200
        assert await response.json() == {"on_main_thread": True}


async def test_route_params_constraints_and_precedence(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/Items/42") as response:
        assert await response.json() == {"route_params": {"id": "42"}}
    async with client.get("/api/items/latest") as response:
        assert (response.status, await response.text()) == (200, "latest")
    async with client.get("/api/items/abc") as response:
        assert response.status == 404


async def test_status_headers_and_binary_body_are_exact(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/binary") as response:
        assert response.status == 201
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Sample"] == "one"
        assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert await response.read() == BINARY_BODY


@pytest.mark.parametrize("path", ["/api/nothing", "/hello", "/"])
async def test_unknown_route_is_404(client: aiohttp.ClientSession, path: str) -> None:
    async with client.get(path) as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"), [("DELETE", "/api/echo/w", "POST, PUT"), ("POST", "/api/hello", "GET")]
)
async def test_wrong_method_is_405_with_allow(
    client: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    async with client.request(method, path) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allow


async def test_failure_is_500_with_the_traceback_only_in_the_log(
    host: DevHost, client: aiohttp.ClientSession
) -> None:
    async with client.get("/api/fail") as response:
        assert response.status == 500
        body = await response.text()
    assert body == "Internal Server Error"
    assert "RuntimeError: sample failure with a secret detail" in host.log()
    assert "Traceback" in host.log()


async def test_access_log_has_no_query_string(host: DevHost, client: aiohttp.ClientSession) -> None:
    async with client.get("/api/hello?code=KEY-IN-QUERY") as response:
        assert response.status == 200
    assert re.search(r"devhost\.access: GET /api/hello 200 \d+\.\dms$", host.log(), re.MULTILINE)
    assert "KEY-IN-QUERY" not in host.log()


async def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    dev_host = await start_host(tmp_path)
    async with aiohttp.ClientSession(dev_host.base_url) as session:
        request = asyncio.create_task(session.get("/api/slow?seconds=0.5"))
        async with asyncio.timeout(TIMEOUT):
            # The log is a file written by another process: there is no event to wait on.
            while "slow: started" not in dev_host.log():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert await dev_host.stop() == 0
        async with await request as response:
            assert (response.status, await response.text()) == (200, "done")
    assert "Stopping" in dev_host.log()
