"""Telemetry: the real Azure Monitor exporter against the ingestion stand-in, over real sockets.

The code under test runs in its own process with its settings in the environment from the start, as
the Functions host runs it (the distro and aiohttp read their environment when they start). The
exporter gets its token from the managed-identity stand-in; the ingestion stand-in checks it. Both
processes get HTTP(S)_PROXY pointing at a trap, so any attempt to reach a non-local endpoint
(statsbeat, remote configuration, live metrics, IMDS) would show there.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.appinsights_ingest import envelope_problem, parse_envelopes
from devtools.certs import DevCerts, ensure_dev_certs
from devtools.identity_endpoint import DEFAULT_CLIENT_ID
from devtools.process import LOOPBACK, PORT_PLACEHOLDER, REPO_ROOT, ServiceProcess, http_probe, tcp_probe
from devtools.stack import is_ambient_setting
from realtime_speech import telemetry, telemetry_setup

IDENTITY_SECRET = "identity-header-" + uuid.uuid4().hex
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
HOST_SPAN_ID = "a3ce929d0e0e4736"
FAILED_TRACE_ID = "5c1a4dbdbf0a4d64a73d5c1b3e8b2f10"
CRASHED_TRACE_ID = "6d2b5ececf1b4e75b84e6d2c4f9c3a21"
# What must never leave the process: the question, the answer, credentials.
SECRET_TEXT = "please read my private diary aloud"
SECRET_TRANSCRIPT = "here is the private diary entry"
FUNCTION_KEY = "fk" + uuid.uuid4().hex
FAKE_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
SAS_SIGNATURE = "sig=" + uuid.uuid4().hex
USAGE = {
    "total_tokens": 97,
    "input_tokens": 31,
    "output_tokens": 66,
    "input_token_details": {"text_tokens": 31, "audio_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 16, "audio_tokens": 50},
}
TELEMETRY_PREFIXES = ("APPLICATIONINSIGHTS_", "OTEL_", "PYTHON_APPLICATIONINSIGHTS_", "PYTHON_ENABLE_")

# A request like the HTTP edge and the service make them: phases, backend attempts, a storage call,
# usage, the log line; then a failed request and one whose exception escapes.
SCENARIO = textwrap.dedent(
    """
    import asyncio, json, logging, os, sys

    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob.aio import BlobClient

    from realtime_speech import telemetry, telemetry_setup
    from realtime_speech.errors import UpstreamFailed, UpstreamUnavailable
    from realtime_speech.logs import install_redaction

    install_redaction()
    env = os.environ
    if env.get("SCENARIO_AS_WORKER"):  # what the worker does with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            connection_string=env["APPLICATIONINSIGHTS_CONNECTION_STRING"], logger_name=""
        )
    mode = telemetry_setup.configure()
    log = logging.getLogger("realtime_speech")

    async def storage_call():
        blob = BlobClient.from_blob_url(env["SCENARIO_BLOB_URL"])
        async with blob:
            try:
                await blob.get_blob_properties()
            except ResourceNotFoundError:
                pass

    async def succeeded():
        headers = {"traceparent": env["SCENARIO_TRACEPARENT"]}
        if env.get("SCENARIO_AS_WORKER"):  # the worker attaches the host's context to the invocation
            from opentelemetry import context
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            host = {"traceparent": env["SCENARIO_HOST_TRACEPARENT"]}
            token = context.attach(TraceContextTextMapPropagator().extract(host))
            try:
                await answered(headers)
            finally:
                context.detach(token)
        else:
            await answered(headers)

    async def answered(headers):
        url = "https://app.example/api/speech?code=" + env["SCENARIO_FUNCTION_KEY"]
        with telemetry.request_span("POST", "/api/speech", headers, request_id="req-ok", url=url) as request:
            telemetry.set_attributes(voice="marin", format="wav")
            with telemetry.phase("connect"):
                for number, backend in enumerate(("west", "east"), 1):
                    try:
                        with telemetry.attempt(backend, number):
                            if backend == "west":
                                raise UpstreamUnavailable("west refused the connection")
                    except UpstreamUnavailable:
                        continue
            telemetry.set_attributes(backend="east")
            with telemetry.phase("stream"):
                await asyncio.sleep(0.01)
            with telemetry.phase("commit"):
                await storage_call()
            with telemetry.phase("sign"):
                pass
            telemetry.record_usage(json.loads(env["SCENARIO_USAGE"]))
            request.end(200, first_audio_ms=120.5, audio_seconds=2.5, response_status="completed")
            line = {"request_id": "req-ok", "status": 200, "auth": "Bearer " + env["SCENARIO_JWT"]}
            log.info("speech %s", json.dumps(line))

    async def failed():
        headers = {"traceparent": "00-" + env["SCENARIO_FAILED_TRACE"] + "-1111111111111111-01"}
        with telemetry.request_span("POST", "/api/speech", headers, request_id="req-fail") as request:
            telemetry.set_attributes(voice=env["SCENARIO_TEXT"], format=env["SCENARIO_SAS"])
            try:
                with telemetry.phase("connect"), telemetry.attempt("east", 1):
                    pass
                with telemetry.phase("stream"):
                    raise UpstreamFailed("The model closed the connection: " + env["SCENARIO_TRANSCRIPT"])
            except UpstreamFailed as exc:
                request.end(exc.status, problem_type=exc.code)

    async def crashed():
        headers = {"traceparent": "00-" + env["SCENARIO_CRASHED_TRACE"] + "-2222222222222222-01"}
        try:
            with telemetry.request_span("POST", "/api/speech", headers, request_id="req-crash"):
                raise RuntimeError(env["SCENARIO_TEXT"])
        except RuntimeError:
            pass

    async def main():
        await succeeded()
        await failed()
        await crashed()

    asyncio.run(main())
    print(json.dumps({"mode": mode, "otel_imported": "opentelemetry" in sys.modules}), flush=True)
    if mode != "off":
        sys.stdin.read()  # stay alive until the test has seen the export (OTEL_* intervals)
    """
)


# --- pure logic ------------------------------------------------------------------------------------


def test_authentication_string_names_the_identity() -> None:
    parse = telemetry_setup.EntraAuthentication.parse
    assert parse("Authorization=AAD").client_id is None
    assert parse("Authorization=AAD;ClientId=1234-abcd").client_id == "1234-abcd"
    assert parse(" authorization = aad ; clientid = 1234-abcd ;").client_id == "1234-abcd"
    for invalid in ("Authorization=ikey", "ClientId=1234", "Authorization", "Authorization=AAD;Secret=x"):
        with pytest.raises(ValueError, match="APPLICATIONINSIGHTS_AUTHENTICATION_STRING"):
            parse(invalid)


def test_ingestion_endpoint_is_read_from_the_connection_string() -> None:
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x.in/;"
    assert telemetry_setup.ingestion_endpoint(connection) == "https://x.in/"
    assert telemetry_setup.ingestion_endpoint("InstrumentationKey=00000000-0000-0000-0000-000000000000") == ""


def test_only_allow_listed_attributes_exist_even_with_telemetry_off() -> None:
    assert telemetry_setup.mode() == "off"
    telemetry.set_attributes(voice="alloy", audio_seconds=1.5, http_status=200)  # a no-op, accepted
    with pytest.raises(TypeError, match="text"):
        telemetry.set_attributes(text="hello")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="transcript"):
        telemetry.set_attributes(voice="alloy", transcript="hi")  # type: ignore[call-arg]


def test_stand_in_reads_every_body_the_exporters_send() -> None:
    envelope = {"name": "x", "time": "t", "iKey": "k", "data": {"baseType": "MessageData", "baseData": {}}}
    array = json.dumps([envelope, envelope]).encode()
    lines = b"\n".join(json.dumps(envelope).encode() for _ in range(3))
    assert len(parse_envelopes(array)) == 2
    assert len(parse_envelopes(gzip.compress(lines))) == 3  # gzip recognised by its magic number
    assert len(parse_envelopes(json.dumps(envelope).encode())) == 1
    assert envelope_problem(envelope) is None
    assert "iKey" in (envelope_problem({**envelope, "iKey": ""}) or "")
    assert envelope_problem({**envelope, "data": {"baseType": "MessageData"}}) is not None


# --- the stand-ins ---------------------------------------------------------------------------------


class ProxyTrap:
    """Accepts connections and records each first line: any request meant for the internet."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._server = socket.create_server((LOOPBACK, 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.lines.append(connection.recv(4096).decode(errors="replace").split("\r\n")[0])
                except OSError:
                    self.lines.append("(no request line)")

    def close(self) -> None:
        self._server.close()


@dataclass
class Ingestion:
    """The running stand-ins and how to reach them."""

    certs: DevCerts
    identity: ServiceProcess
    ingest: ServiceProcess
    trap: ProxyTrap
    tls: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.tls = ssl.create_default_context(cafile=str(self.certs.ca_file))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection(LOOPBACK, self.ingest.port, timeout=10, context=self.tls)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            payload = response.read()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, json.loads(payload) if is_json else payload.decode()
        finally:
            connection.close()

    def items(self, item_type: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/_ingest/items" + (f"?type={item_type}" if item_type else ""))[1]["items"]

    def calls(self) -> list[dict[str, Any]]:
        return self.request("GET", "/_ingest/calls")[1]["calls"]

    def identity_token(self, resource: str) -> str:
        connection = http.client.HTTPConnection(LOOPBACK, self.identity.port, timeout=10)
        try:
            query = f"/msi/token?api-version=2019-08-01&resource={resource}"
            connection.request("GET", query, headers={"X-IDENTITY-HEADER": IDENTITY_SECRET})
            return json.loads(connection.getresponse().read())["access_token"]
        finally:
            connection.close()

    def app_env(self, **overrides: str) -> dict[str, str]:
        """A process environment as the Functions host would give it, without a developer's settings."""
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not is_ambient_setting(name) and not name.upper().startswith(TELEMETRY_PREFIXES)
        }
        proxy = f"http://{LOOPBACK}:{self.trap.port}"
        return {
            **inherited,
            "PYTHONUNBUFFERED": "1",
            "IDENTITY_ENDPOINT": f"{self.identity.url}/msi/token",
            "IDENTITY_HEADER": IDENTITY_SECRET,
            "SSL_CERT_FILE": str(self.certs.ca_file),
            "REQUESTS_CA_BUNDLE": str(self.certs.ca_file),
            **{name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
            "NO_PROXY": f"{LOOPBACK},localhost",
            "no_proxy": f"{LOOPBACK},localhost",
            **overrides,
        }


@pytest.fixture(scope="module")
def ingestion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingestion]:
    state = tmp_path_factory.mktemp("telemetry")
    certs = ensure_dev_certs(state)
    trap = ProxyTrap()
    logs = state / "logs"
    identity = ServiceProcess(
        "identity",
        [
            *(sys.executable, "-m", "devtools.identity_endpoint", "--port", PORT_PLACEHOLDER),
            *(f"--secret={IDENTITY_SECRET}", "--signing-key", str(certs.token_signing_key)),
        ],
        probe=http_probe("/health"),
        log_dir=logs,
    )
    ingest = ServiceProcess(
        "appinsights-ingest",
        [
            *(sys.executable, "-m", "devtools.appinsights_ingest", "--port", PORT_PLACEHOLDER),
            *("--token-public-key", str(certs.token_signing_public_key)),
            *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        ],
        probe=tcp_probe,
        log_dir=logs,
        scheme="https",
    )
    for service in (identity, ingest):
        service.spawn()
    try:
        for service in (identity, ingest):
            service.wait_ready()
        yield Ingestion(certs, identity, ingest, trap)
    finally:
        for service in (ingest, identity):
            service.stop()
        trap.close()


@dataclass
class Run:
    """What the scenario printed and what the stand-in holds after it."""

    output: dict[str, Any]
    items: list[dict[str, Any]]
    calls: list[dict[str, Any]]

    def of_type(self, item_type: str) -> list[dict[str, Any]]:
        wanted = {"Request": "RequestData", "RemoteDependency": "RemoteDependencyData"}.get(item_type)
        wanted = wanted or f"{item_type}Data"
        return [item for item in self.items if item["data"]["baseType"] == wanted]

    def in_trace(self, item_type: str, trace_id: str) -> list[dict[str, Any]]:
        return [item for item in self.of_type(item_type) if item["tags"]["ai.operation.id"] == trace_id]

    def metric(self, name: str, **properties: str) -> list[dict[str, Any]]:
        return [
            {**metric, "properties": item["data"]["baseData"].get("properties", {})}
            for item in self.of_type("Metric")
            for metric in item["data"]["baseData"]["metrics"]
            if metric["name"] == name
            and properties.items() <= item["data"]["baseData"].get("properties", {}).items()
        ]


def scenario_env(ingestion: Ingestion, **overrides: str) -> dict[str, str]:
    blob_url = f"{ingestion.identity.url}/devstoreaccount1/audio/missing.wav"
    return ingestion.app_env(
        SCENARIO_TRACEPARENT=f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01",
        SCENARIO_FAILED_TRACE=FAILED_TRACE_ID,
        SCENARIO_CRASHED_TRACE=CRASHED_TRACE_ID,
        SCENARIO_BLOB_URL=blob_url,
        SCENARIO_FUNCTION_KEY=FUNCTION_KEY,
        SCENARIO_USAGE=json.dumps(USAGE),
        SCENARIO_JWT=FAKE_JWT,
        SCENARIO_TEXT=SECRET_TEXT,
        SCENARIO_TRANSCRIPT=SECRET_TRANSCRIPT,
        SCENARIO_SAS=SAS_SIGNATURE,
        # exports within a second, through the standard variables the app must honour
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        **overrides,
    )


def azure_monitor_settings(ingestion: Ingestion) -> dict[str, str]:
    """The connection and Entra authentication strings that point the exporter at the stand-in."""
    endpoint = f"https://{LOOPBACK}:{ingestion.ingest.port}/"
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"
        ),
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"Authorization=AAD;ClientId={DEFAULT_CLIENT_ID}",
    }


def run_scenario(env: dict[str, str], exported: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Run the scenario; while it stays alive, wait until `exported()` holds (30 s at most: the
    ingestion stand-in has no event to wait on, and the bound only has to outlast a busy machine)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SCENARIO],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line, f"the scenario failed: {process.communicate(timeout=30)[1][-3000:]}"
        output = json.loads(line)
        deadline = time.monotonic() + 30
        while not exported() and time.monotonic() < deadline:
            time.sleep(0.1)
        output["exported_while_running"] = exported()
        process.stdin.close()
        process.wait(timeout=30)
        return output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def exported(ingestion: Ingestion) -> Run:
    """One run of the scenario with the Azure Monitor exporter and Entra auth, short intervals."""
    ingestion.request("DELETE", "/_ingest/items")
    env = scenario_env(
        ingestion,
        **azure_monitor_settings(ingestion),
        OTEL_SERVICE_NAME="speech-under-test",
    )

    def everything_arrived() -> bool:
        run = Run({}, ingestion.items(), [])
        return (
            len(run.of_type("Request")) >= 3
            and bool(run.of_type("Message"))
            and bool(run.metric("speech.requests"))
        )

    output = run_scenario(env, everything_arrived)
    return Run(output, ingestion.items(), ingestion.calls())


# --- the exported telemetry ------------------------------------------------------------------------


def test_exports_while_running_with_the_otel_intervals(exported: Run) -> None:
    assert exported.output["mode"] == "azure-monitor"
    # Default intervals are 5 s (spans, logs) and 60 s (metrics): arriving within 10 s means the
    # OTEL_* variables reached the SDK through the distro.
    assert exported.output["exported_while_running"]
    roles = {item["tags"].get("ai.cloud.role") for item in exported.items}
    assert roles == {"speech-under-test"}


def test_request_continues_the_callers_trace(exported: Run) -> None:
    [request] = exported.in_trace("Request", TRACE_ID)
    data = request["data"]["baseData"]
    assert request["tags"]["ai.operation.parentId"] == CALLER_SPAN_ID
    assert data["name"] == "POST /api/speech"
    assert (data["responseCode"], data["success"]) == ("200", True)
    assert data["url"] == "https://app.example/api/speech"  # the query (a function key) is dropped
    assert {
        "speech.request_id": "req-ok",
        "speech.voice": "marin",
        "speech.format": "wav",
        "speech.backend": "east",
        "speech.response_status": "completed",
        "speech.audio_seconds": "2.5",
        "speech.first_audio_ms": "120.5",
        "speech.tokens.input": "31",
        "speech.tokens.output": "66",
        "speech.tokens.output.audio": "50",
        "speech.tokens.output.text": "16",
    }.items() <= data["properties"].items()


def test_phases_attempts_and_storage_spans_nest_below_the_request(exported: Run) -> None:
    [request] = exported.in_trace("Request", TRACE_ID)
    dependencies = exported.in_trace("RemoteDependency", TRACE_ID)
    by_id = {item["data"]["baseData"]["id"]: item for item in dependencies}

    def children(parent: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        parent_id = parent["data"]["baseData"]["id"]
        found: dict[str, list[dict[str, Any]]] = {}
        for item in dependencies:
            if item["tags"]["ai.operation.parentId"] == parent_id:
                found.setdefault(item["data"]["baseData"]["name"], []).append(item)
        return found

    phases = children(request)
    assert set(phases) == {"connect", "stream", "commit", "sign"}
    assert all(phase[0]["data"]["baseData"]["type"] == "InProc" for phase in phases.values())
    attempts = children(phases["connect"][0])["connect attempt"]
    attempt_data = [attempt["data"]["baseData"] for attempt in attempts]
    by_backend = {data["properties"]["speech.backend"]: data for data in attempt_data}
    assert {backend: data["success"] for backend, data in by_backend.items()} == {"west": False, "east": True}
    assert by_backend["west"]["properties"]["speech.problem_type"] == "upstream-unavailable"
    # The storage SDK's own spans (azure-core tracing): the client call, then its HTTP request.
    [sdk_call] = children(phases["commit"][0])["BlobClient.get_blob_properties"]
    [http_call] = children(sdk_call).values()
    assert http_call[0]["data"]["baseData"]["resultCode"] == "404"
    assert http_call[0]["data"]["baseData"]["name"].startswith("HEAD /devstoreaccount1/audio/")
    assert len(by_id) == len(dependencies)


def test_failures_carry_the_problem_type(exported: Run) -> None:
    [failed] = exported.in_trace("Request", FAILED_TRACE_ID)
    data = failed["data"]["baseData"]
    assert (data["responseCode"], data["success"]) == ("502", False)
    assert data["properties"]["speech.problem_type"] == "upstream-failed"
    assert data["properties"]["speech.voice"] == "invalid"  # free text is never attached
    [stream] = [
        item
        for item in exported.in_trace("RemoteDependency", FAILED_TRACE_ID)
        if item["data"]["baseData"]["name"] == "stream"
    ]
    assert stream["data"]["baseData"]["success"] is False
    assert stream["data"]["baseData"]["properties"]["speech.problem_type"] == "upstream-failed"
    [crashed] = exported.in_trace("Request", CRASHED_TRACE_ID)
    assert crashed["data"]["baseData"]["responseCode"] == "500"
    assert crashed["data"]["baseData"]["properties"]["speech.problem_type"] == "internal-error"


def test_metrics_answer_the_operators_questions(exported: Run) -> None:
    [first_audio] = exported.metric("speech.time_to_first_audio", backend="east")
    assert (first_audio["value"], first_audio["count"]) == (120.5, 1)
    assert exported.metric("speech.requests", outcome="ok", backend="east", http_status="200")
    assert exported.metric("speech.requests", outcome="upstream-failed", http_status="502")
    assert exported.metric("speech.requests", outcome="internal-error", http_status="500")
    assert sum(m["count"] for m in exported.metric("speech.duration")) == 3
    [audio] = exported.metric("speech.audio.duration", format="wav", backend="east")
    assert audio["value"] == 2.5
    tokens = {
        (m["properties"]["direction"], m["properties"]["modality"]): m["value"]
        for m in exported.metric("speech.tokens", backend="east")
    }
    expected = {("input", "text"): 31, ("input", "audio"): 0, ("output", "text"): 16, ("output", "audio"): 50}
    assert tokens == expected


def test_log_line_is_correlated_and_redacted(exported: Run) -> None:
    [request] = exported.in_trace("Request", TRACE_ID)
    messages = exported.in_trace("Message", TRACE_ID)
    [line] = [item for item in messages if item["data"]["baseData"]["message"].startswith("speech ")]
    assert line["tags"]["ai.operation.parentId"] == request["data"]["baseData"]["id"]
    message = line["data"]["baseData"]["message"]
    assert json.loads(message.removeprefix("speech "))["auth"] == "Bearer REDACTED"


def test_exporter_authenticates_with_the_managed_identity(exported: Run) -> None:
    track_calls = [call for call in exported.calls if call["path"].endswith("/track")]
    assert track_calls
    for call in track_calls:
        assert call["status"] == 200
        assert call["auth"]["aud"] in ("https://monitor.azure.com", "https://monitor.azure.com/")
        assert call["auth"]["appid"] == DEFAULT_CLIENT_ID


def test_nothing_secret_or_personal_is_exported(exported: Run) -> None:
    everything = json.dumps(exported.items)
    for secret in (SECRET_TEXT, SECRET_TRANSCRIPT, FUNCTION_KEY, FAKE_JWT, SAS_SIGNATURE, IDENTITY_SECRET):
        assert secret not in everything
    assert "sig=" not in everything
    assert "Bearer ey" not in everything
    assert "eyJ" not in everything


def test_nothing_reaches_the_internet(exported: Run, ingestion: Ingestion) -> None:
    assert exported.output["mode"] == "azure-monitor"
    assert ingestion.trap.lines == []


def test_with_no_telemetry_configured_nothing_is_sent(ingestion: Ingestion, exported: Run) -> None:
    calls_before = len(ingestion.calls())
    output = run_scenario(scenario_env(ingestion))
    assert output["mode"] == "off"
    assert output["otel_imported"] is False  # not even imported: the cheapest no-op
    assert len(ingestion.calls()) == calls_before
    assert ingestion.trap.lines == []


def test_under_the_workers_pipeline_the_host_owns_the_request(ingestion: Ingestion, exported: Run) -> None:
    """PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: the worker configured the distro, the host
    records the request; the app's span goes below the host's, and nothing is exported twice."""
    ingestion.request("DELETE", "/_ingest/items")
    env = scenario_env(
        ingestion,
        SCENARIO_AS_WORKER="1",
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="azure_functions",  # the worker sets it (else IMDS is asked)
        SCENARIO_HOST_TRACEPARENT=f"00-{TRACE_ID}-{HOST_SPAN_ID}-01",
        **azure_monitor_settings(ingestion),
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
        OTEL_TRACES_SAMPLER="microsoft.fixed_percentage",
        OTEL_TRACES_SAMPLER_ARG="1.0",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="django,fastapi,flask,httpx,psycopg2,requests,urllib,urllib3",
    )

    def arrived() -> bool:
        run = Run({}, ingestion.items(), [])
        return bool(run.in_trace("Message", TRACE_ID)) and bool(run.metric("speech.requests"))

    output = run_scenario(env, arrived)
    run = Run(output, ingestion.items(), ingestion.calls())
    assert output["mode"] == "external"
    assert run.in_trace("Request", TRACE_ID) == []  # the host's request is the only one
    dependencies = run.in_trace("RemoteDependency", TRACE_ID)
    [ours] = [item for item in dependencies if item["data"]["baseData"]["name"] == "POST /api/speech"]
    assert ours["tags"]["ai.operation.parentId"] == HOST_SPAN_ID
    assert ours["data"]["baseData"]["properties"]["speech.backend"] == "east"
    phases = {
        item["data"]["baseData"]["name"]
        for item in dependencies
        if item["tags"]["ai.operation.parentId"] == ours["data"]["baseData"]["id"]
    }
    assert phases == {"connect", "stream", "commit", "sign"}
    ids = [item["data"]["baseData"]["id"] for item in dependencies]
    assert len(ids) == len(set(ids))  # one pipeline: nothing exported twice
    assert len(run.metric("speech.time_to_first_audio")) == 1
    assert all(call["auth"]["appid"] == DEFAULT_CLIENT_ID for call in run.calls)
    assert ingestion.trap.lines == []


# --- the stand-in's authentication -----------------------------------------------------------------


def _envelope() -> dict[str, Any]:
    return {
        "name": "Microsoft.ApplicationInsights.Message",
        "time": "2026-01-01T00:00:00.000000Z",
        "iKey": str(uuid.uuid4()),
        "tags": {"ai.operation.id": uuid.uuid4().hex},
        "data": {"baseType": "MessageData", "baseData": {"ver": 2, "message": "auth check"}},
    }


def _forged_token(resource: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"aud": resource, "iss": "https://sts.windows.net/x/", "iat": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm="RS256")


@pytest.mark.parametrize("case", ["missing", "forged", "other audience", "not a bearer"])
def test_stand_in_refuses_what_the_service_refuses(ingestion: Ingestion, case: str) -> None:
    headers = {
        "missing": {},
        "forged": {"Authorization": "Bearer " + _forged_token("https://monitor.azure.com/")},
        "other audience": {
            "Authorization": "Bearer " + ingestion.identity_token("https://storage.azure.com/")
        },
        "not a bearer": {"Authorization": "Basic " + base64.b64encode(b"user:password").decode()},
    }[case]
    envelope = _envelope()
    status, body = ingestion.request("POST", "/v2.1/track", json.dumps([envelope]).encode(), headers)
    assert status == 401
    assert (body["itemsAccepted"], body["errors"][0]["statusCode"]) == (0, 401)
    assert all(item["iKey"] != envelope["iKey"] for item in ingestion.items())


def test_stand_in_accepts_a_monitor_token_and_gzip(ingestion: Ingestion) -> None:
    token = ingestion.identity_token("https://monitor.azure.com")
    envelopes = [_envelope(), {"name": "broken"}]
    body = gzip.compress(b"\n".join(json.dumps(envelope).encode() for envelope in envelopes))
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip"}
    status, answer = ingestion.request("POST", "/v2/track", body, headers)
    assert status == 206
    assert (answer["itemsReceived"], answer["itemsAccepted"]) == (2, 1)
    assert answer["errors"][0]["index"] == 1
    assert any(item["iKey"] == envelopes[0]["iKey"] for item in ingestion.items("Message"))


# --- OTLP ------------------------------------------------------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP receiver keeping each export request, decoded, by signal."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        kinds = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest}
        kinds["/v1/logs"] = ExportLogsServiceRequest
        self.received: dict[str, list[Any]] = {path: [] for path in kinds}
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received[self.path].append(kinds[self.path].FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_otlp_pipeline_exports_traces_metrics_and_logs(ingestion: Ingestion) -> None:
    receiver = OtlpReceiver()
    try:
        env = scenario_env(
            ingestion,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        )
        output = run_scenario(env, lambda: all(receiver.received.values()))
    finally:
        receiver.close()
    assert output["mode"] == "otlp"
    assert output["exported_while_running"]
    spans = [
        span
        for export in receiver.received["/v1/traces"]
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    in_trace = [span for span in spans if span.trace_id.hex() == TRACE_ID]
    [request] = [span for span in in_trace if span.name == "POST /api/speech"]
    assert request.parent_span_id.hex() == CALLER_SPAN_ID
    children = {span.name for span in spans if span.parent_span_id == request.span_id}
    assert children == {"connect", "stream", "commit", "sign"}
    logs = [
        record
        for export in receiver.received["/v1/logs"]
        for resource in export.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
        if record.body.string_value.startswith("speech ")
    ]
    assert [(record.trace_id.hex(), record.span_id) for record in logs] == [(TRACE_ID, request.span_id)]
    metric_names = {
        metric.name
        for export in receiver.received["/v1/metrics"]
        for resource in export.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {"speech.time_to_first_audio", "speech.requests", "speech.tokens"} <= metric_names
    everything = "".join(str(export) for exports in receiver.received.values() for export in exports)
    assert SECRET_TEXT not in everything and FUNCTION_KEY not in everything and "sig=" not in everything
