"""The dev host: pure parts and the in-process driver without sockets, the HTTP behaviour (streams and
disconnects included) through a real subprocess and real sockets."""

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import aiohttp
import azure.functions as func
import httpx
import psutil
import pytest
from azurefunctions.extensions.http.fastapi import Request, Response

from devtools import devhost, run
from devtools.driver import FunctionDriver
from devtools.process import free_port
from tests import devhost_sample_app as sample
from tests.devhost_sample_app import BINARY_BODY, FIRST_EVENT, LAST_EVENT

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
    async def get_thing(req: Request) -> Response:
        return Response("thing")

    @app.route(route="things/new", methods=["POST"])
    async def new_thing(req: Request) -> Response:
        return Response("new")

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


@pytest.mark.parametrize("module", ["devtools.devhost", "devtools.driver"])
def test_importing_the_module_does_not_import_aiohttp_or_the_app(module: str) -> None:
    """aiohttp reads SSL_CERT_FILE at first import, so only main() (or a driver being made) may import
    it and the app, after the settings."""
    probe = f"import sys, {module}; sys.exit('aiohttp' in sys.modules or 'function_app' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, timeout=TIMEOUT).returncode == 0


# --- in process: the driver and the ASGI app --------------------------------------------------------


async def test_the_warm_up_function_runs_once_before_serving_and_its_failure_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[object] = []
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.warm_up_trigger(arg_name="context")
    async def warmup(context: func.warmup.WarmUpContext) -> None:
        calls.append(context)
        raise RuntimeError("the warm-up failed")

    @app.route(route="ping", methods=["GET"])
    async def ping(req: Request) -> Response:
        return Response("pong")

    assert [route.name for route in devhost.http_routes(app, "api")] == ["ping"]
    assert "Skipping" not in caplog.text  # the warm-up function is not an unserved trigger
    await devhost.warm_up(app)
    assert len(calls) == 1 and isinstance(calls[0], func.warmup.WarmUpContext)
    assert "Warm-up function warmup failed" in caplog.text


async def test_driver_posts_speech_as_json_under_the_route_prefix() -> None:
    async with FunctionDriver(sample.app) as driver:
        response = await driver.post_speech({"text": "hi"}, headers={"Idempotency-Key": "k1"})
    assert driver.speech_path == "/api/speech"
    assert (response.status_code, response.headers["content-type"]) == (202, "application/json")
    assert response.json() == {"received": {"text": "hi"}, "key": "k1"}


async def test_driver_goes_through_the_hosts_routing_and_error_handling() -> None:
    async with FunctionDriver(sample.app, route_prefix="v1") as driver:
        echoed = await driver.request("PUT", "/v1/echo/w/a?x=1", content=b"raw")
        missing = await driver.request("GET", "/api/hello")
        failed = await driver.request("GET", "/v1/fail")
        raw_body = await driver.post_speech(content=b"{}", headers={"Content-Type": "application/json"})
    assert echoed.json()["route_params"] == {"kind": "w", "rest": "a"}
    assert echoed.json()["body"] == "raw"
    assert missing.status_code == 404
    assert (failed.status_code, failed.text) == (500, "Internal Server Error")
    assert raw_body.json()["received"] == {}


async def test_driver_gets_a_stream_whole() -> None:
    async with FunctionDriver(sample.app) as driver:
        started = asyncio.create_task(driver.request("GET", "/api/stream/in-process"))
        await sample.first_event_sent["in-process"].wait()
        assert not started.done()  # the stream has not ended, so the response is not handed over yet
        await driver.request("POST", "/api/release/in-process")
        response = await started
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == FIRST_EVENT + LAST_EVENT


async def _chunks(total: int, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"x" * 64, 200),
        (b"x" * 65, 413),  # declared by Content-Length
        (_chunks(64), 200),
        (_chunks(65), 413),  # chunked: counted while it is read
    ],
)
async def test_request_body_over_the_limit_is_413(body: bytes | AsyncIterator[bytes], status: int) -> None:
    app = devhost.asgi_app(sample.app, "api", max_request_bytes=64)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as client:
        response = await client.post("/api/echo/big", content=body)
    assert response.status_code == status
    if status == 413:
        assert response.text == HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase  # "Content Too Large" from 3.13


@pytest.mark.parametrize(
    ("keys", "path", "headers", "status"),
    [
        (devhost.HostKeys(), "/api/echo/open", {}, 200),  # no keys configured: open, as Core Tools
        (devhost.HostKeys(frozenset({"fk"})), "/api/echo/nokey", {}, 401),
        (devhost.HostKeys(frozenset({"fk"})), "/api/echo/wrong?code=nope", {}, 401),
        (devhost.HostKeys(frozenset({"fk"})), "/api/echo/query?code=fk", {}, 200),
        (devhost.HostKeys(frozenset({"fk"})), "/api/echo/header", {"x-functions-key": "fk"}, 200),
        (devhost.HostKeys(frozenset({"fk"}), "mk"), "/api/echo/master", {"x-functions-key": "mk"}, 200),
    ],
)
async def test_function_keys_are_enforced_once_configured(
    keys: devhost.HostKeys, path: str, headers: dict[str, str], status: int
) -> None:
    app = devhost.asgi_app(sample.app, "api", keys=keys)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host") as client:
        response = await client.post(path, content=b"{}", headers=headers)
        anonymous = await client.get("/api/hello")
    assert response.status_code == status
    if status == 401:
        assert response.content == b""  # refused by the host, before the function
    assert anonymous.status_code == 200  # an ANONYMOUS route needs no key either way


# --- the dev host as a subprocess ---------------------------------------------------------------


@dataclass
class DevHost:
    process: asyncio.subprocess.Process
    base_url: str
    banner: list[str]
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        url = httpx.URL(self.base_url)
        return url.host, url.port or 80

    def log(self) -> str:
        return self.log_path.read_text()

    async def stop(self) -> int:
        """SIGTERM, and the exit status; killed if it has not exited within `TIMEOUT`."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), TIMEOUT)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


@asynccontextmanager
async def running_host(workdir: Path) -> AsyncIterator[DevHost]:
    """A dev host (`start_host`) that is stopped when the block ends, whether or not the test failed."""
    dev_host = await start_host(workdir)
    try:
        yield dev_host
    finally:
        if dev_host.process.returncode is None:
            await dev_host.stop()


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
    async with running_host(tmp_path_factory.mktemp("devhost")) as dev_host:
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
    # Starlette builds request.url from the decoded path; the query string stays as sent.
    assert echoed["url"] == host.base_url + "/api/echo/widgets/a/b c?x=1&note=two%20words"
    assert echoed["params"] == {"x": "1", "note": "two words"}
    assert echoed["route_params"] == {"kind": "widgets", "rest": "a/b c"}
    assert echoed["headers"]["x-trace"] == "abc"
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["body"] == body.decode()


@pytest.mark.parametrize(("path", "on_main_thread"), [("/api/async", True), ("/api/sync", False)])
async def test_async_functions_run_on_the_event_loop_sync_ones_in_a_thread(
    client: aiohttp.ClientSession, path: str, on_main_thread: bool
) -> None:
    async with client.get(path) as response:
        assert response.status == 200
        assert await response.json() == {"on_main_thread": on_main_thread}


async def test_route_params_constraints_and_precedence(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/Items/42") as response:
        assert await response.json() == {"route_params": {"id": "42"}}
    async with client.get("/api/items/latest") as response:  # a dict, not a Response: FastAPI's JSON
        assert (response.status, await response.json()) == (200, {"item": "latest"})
    async with client.get("/api/items/abc") as response:
        assert response.status == 404


async def test_status_headers_and_binary_body_are_exact(client: aiohttp.ClientSession) -> None:
    async with client.get("/api/binary") as response:
        assert response.status == 201
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Sample"] == "one"
        assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert await response.read() == BINARY_BODY


@pytest.mark.parametrize("path", ["/api/nothing", "/hello", "/", "/docs", "/openapi.json"])
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


async def test_body_declared_over_100_mib_is_413_without_being_sent(host: DevHost) -> None:
    reader, writer = await asyncio.open_connection(*host.address)
    try:
        length = devhost.MAX_REQUEST_BYTES + 1
        writer.write(f"POST /api/echo/big HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413 ")


async def _outcome(client: aiohttp.ClientSession, stream_id: str) -> str:
    """How the sample app's stream generator ended, once it has ("running" if it has not within
    `OUTCOME_WAIT_SECONDS`)."""
    async with client.get(f"/api/outcome/{stream_id}") as response:
        return (await response.json())["outcome"]


async def test_stream_chunks_reach_the_client_as_they_are_yielded(
    host: DevHost, client: aiohttp.ClientSession
) -> None:
    async with client.get("/api/stream/released") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        # The generator is blocked until the release below: this chunk cannot be a buffered whole.
        assert await response.content.readexactly(len(FIRST_EVENT)) == FIRST_EVENT
        async with client.post("/api/release/released") as released:
            assert released.status == 204
        assert await response.read() == LAST_EVENT
    assert await _outcome(client, "released") == "completed"
    assert re.search(r"access: GET /api/stream/released 200 \d+\.\dms$", host.log(), re.MULTILINE)


async def test_client_disconnect_cancels_the_stream(host: DevHost, client: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession(host.base_url) as leaving:
        response = await leaving.get("/api/stream/abandoned")
        assert await response.content.readexactly(len(FIRST_EVENT)) == FIRST_EVENT
        response.close()  # drops the connection mid-stream

    assert await _outcome(client, "abandoned") == "cancelled"
    pattern = r"access: GET /api/stream/abandoned 200 \d+\.\dms \(client disconnected\)$"
    async with asyncio.timeout(TIMEOUT):
        # The access line is written once the response has ended, which may be after the handler's
        # outcome; the log is another process's file: there is no event to wait on.
        while not re.search(pattern, host.log(), re.MULTILINE):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    async with running_host(tmp_path) as dev_host, aiohttp.ClientSession(dev_host.base_url) as session:
        request = asyncio.create_task(session.get("/api/slow?seconds=0.5"))
        async with asyncio.timeout(TIMEOUT):
            # The log is a file written by another process: there is no event to wait on.
            while "slow: started" not in dev_host.log():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert await dev_host.stop() == 0
        async with await request as response:
            assert (response.status, await response.text()) == (200, "done")
    assert "Stopping" in dev_host.log()


# --- make run (devtools.run) --------------------------------------------------------------------------

RUN_PORT_FLAGS = ("--host-port", "--azurite-port", "--emulator-port", "--identity-port")
RUN_START_TIMEOUT = 120


async def _read_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen = ""
    while marker not in seen:
        line = await stream.readline()
        if not line:
            raise RuntimeError(f"devtools.run exited early:\n{seen}")
        seen += line.decode()
    return seen


async def test_run_serves_writes_settings_and_stops_everything_on_sigint(tmp_path: Path) -> None:
    ports = {flag: free_port() for flag in RUN_PORT_FLAGS}
    state_dir = tmp_path / "state"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "devtools.run", "--state-dir", str(state_dir)),
        *(str(item) for pair in ports.items() for item in pair),
        cwd=tmp_path,  # local.settings.json goes to the working directory, as for `func start`
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started: list[psutil.Process] = []
    try:
        assert process.stdout is not None
        printed = await asyncio.wait_for(_read_until(process.stdout, "Ctrl-C"), RUN_START_TIMEOUT)
        started = psutil.Process(process.pid).children(recursive=True)
        commands = " ".join(" ".join(child.cmdline()) for child in started)
        host_url = f"http://localhost:{ports['--host-port']}"
        settings = json.loads((tmp_path / "local.settings.json").read_text())
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{host_url}/api/health") as health:
                assert health.status != 404  # the dev host serves function_app
            token_url = settings["Values"]["IDENTITY_ENDPOINT"]
            query = {"api-version": "2019-08-01", "resource": "https://storage.azure.com"}
            secret = {"X-IDENTITY-HEADER": settings["Values"]["IDENTITY_HEADER"]}
            async with session.get(token_url, params=query, headers=secret) as token:
                assert token.status == 200  # the secret written down is the running endpoint's
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT * 2) == 0
        _, alive = psutil.wait_procs(started, timeout=TIMEOUT)
    finally:  # whatever happened above: nothing it started outlives the test
        if process.returncode is None:
            process.kill()
            await process.wait()
        for child in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    for service in (
        "devtools.identity_endpoint",
        "azurite-blob",
        "devtools.realtime_emulator",
        "devtools.devhost",
    ):
        assert service in commands
    assert alive == []  # every process it started stopped on SIGINT

    assert f"curl -s {host_url}/api/speech -H 'Content-Type: application/json' -d '{{\"text\"" in printed
    assert f"curl -N {host_url}/api/speech -H 'Accept: text/event-stream'" in printed
    assert f"{host_url}/api/playground" in printed
    assert f"curl -s {host_url}/api/status" in printed
    assert "wrote local.settings.json" in printed

    values = settings["Values"]
    azurite_port, emulator_port, identity_port = (ports[f] for f in RUN_PORT_FLAGS[1:])
    assert settings["IsEncrypted"] is False
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["PYTHON_ENABLE_INIT_INDEXING"] == "1"
    assert values["PLAYGROUND_ENABLED"] == "true"
    assert f"BlobEndpoint=https://127.0.0.1:{azurite_port}/devstoreaccount1;" in values["AzureWebJobsStorage"]
    assert values["AUDIO_STORAGE_ACCOUNT_URL"] == f"https://127.0.0.1:{azurite_port}/devstoreaccount1"
    assert values["AZURE_OPENAI_ENDPOINT"] == f"http://127.0.0.1:{emulator_port}"
    assert values["IDENTITY_ENDPOINT"] == f"http://127.0.0.1:{identity_port}/msi/token"
    assert values["IDENTITY_HEADER"] == run.identity_secret(state_dir)


def test_run_keeps_an_existing_settings_file_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text('{"IsEncrypted": false, "Values": {"MINE": "1"}}')

    assert run.write_new_file(path, {"IsEncrypted": False, "Values": {}}) is False

    assert path.read_text() == '{"IsEncrypted": false, "Values": {"MINE": "1"}}'
    note = run.instructions("http://localhost:7071", path, written=False, log_dir=tmp_path)
    assert f"{path} exists: left as it is" in note
    assert "OpenAI-compatible base URL (model gpt-realtime): http://localhost:7071/api/v1" in note


def test_run_identity_secret_is_kept_across_runs(tmp_path: Path) -> None:
    first = run.identity_secret(tmp_path / "state")
    assert run.identity_secret(tmp_path / "state") == first
    assert (tmp_path / "state" / "identity-secret").stat().st_mode & 0o777 == 0o600
