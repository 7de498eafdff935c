"""The emulator's HTTP side: the realtime WebSocket endpoint, its handshake, and the control routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from . import protocol
from .auth import AuthenticationError, Authenticator
from .quota import QUOTA_FIELDS, Admissions, Quota, whole_seconds
from .scenarios import (
    HANDSHAKE_STATUSES,
    RESPONSE_SCENARIOS,
    Scenario,
    ScenarioError,
    build_scenario,
    scenario_from_query,
)
from .session import RealtimeSession, SessionRecord
from .speech import Engine

log = logging.getLogger(__name__)

REALTIME_PATH = "/openai/v1/realtime"
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024 * 1024
REFUSALS = {
    400: "BadRequest",
    401: "401",
    403: "PermissionDenied",
    404: "DeploymentNotFound",
    429: "429",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
REFUSAL_MESSAGES = {
    400: "Invalid request: the realtime handshake could not be processed.",
    401: "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.",
    403: "The principal lacks the required data action "
    "'Microsoft.CognitiveServices/accounts/OpenAI/deployments/realtime/action' to perform this operation.",
    404: "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again.",
    429: "Requests to the Realtime API have exceeded the call rate limit of your current pricing tier. "
    "Please retry after {retry_after} seconds.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}
DEFAULT_RETRY_AFTER = 1
# How often sessions are checked against the idle timeout (at most this late past it).
IDLE_CHECK_SECONDS = 0.05
MAX_HANDSHAKE_DELAY_MS = 60_000


@dataclass(frozen=True)
class EmulatorConfig:
    api_key: str | None = None
    token_public_key: bytes | None = None
    engine: Engine = "tones"
    quota: Quota = field(default_factory=Quota)
    handshake_delay_ms: int = 0
    idle_timeout_seconds: float | None = None


@dataclass
class HandshakeFault:
    status: int
    remaining: int
    retry_after_ms: int | None


@dataclass
class ScenarioFault:
    scenario: Scenario
    remaining: int


@dataclass
class EmulatorState:
    config: EmulatorConfig
    authenticator: Authenticator
    records: list[SessionRecord] = field(default_factory=list)
    open_sessions: set[RealtimeSession] = field(default_factory=set)
    fault: HandshakeFault | None = None
    scenario_fault: ScenarioFault | None = None
    connections_total: int = 0
    refusals_by_status: dict[int, int] = field(default_factory=dict)
    admissions: Admissions = field(default_factory=Admissions)
    handshake_delay_ms: int = 0
    """How long every handshake waits before it is answered (network and authentication in Azure)."""
    idle_timeout_seconds: float | None = None
    """Sessions idle this long (no client event, no response under way) are closed; None: never."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no session is open: what `GET /_emulator/stats?wait_idle=S` waits on."""

    def __post_init__(self) -> None:
        self.idle.set()

    def session_opened(self, session: RealtimeSession) -> None:
        self.open_sessions.add(session)
        self.idle.clear()

    def session_ended(self, session: RealtimeSession) -> None:
        self.open_sessions.discard(session)
        if not self.open_sessions:
            self.idle.set()

    def take_fault(self) -> HandshakeFault | None:
        fault = self.fault
        if fault is None or fault.remaining <= 0:
            return None
        fault.remaining -= 1
        return fault

    def take_scenario_fault(self) -> Scenario | None:
        fault = self.scenario_fault
        if fault is None or fault.remaining <= 0:
            return None
        fault.remaining -= 1
        return fault.scenario


STATE = web.AppKey("state", EmulatorState)


def create_app(config: EmulatorConfig) -> web.Application:
    app = web.Application()
    app[STATE] = EmulatorState(
        config,
        Authenticator(config.api_key, config.token_public_key),
        admissions=Admissions(Quota(**config.quota.as_json())),
        handshake_delay_ms=config.handshake_delay_ms,
        idle_timeout_seconds=config.idle_timeout_seconds,
    )
    app.router.add_get(REALTIME_PATH, realtime)
    app.router.add_post("/_emulator/handshake-faults", set_handshake_faults)
    app.router.add_post("/_emulator/scenario-faults", set_scenario_faults)
    app.router.add_get("/_emulator/handshake-delay", get_handshake_delay)
    app.router.add_post("/_emulator/handshake-delay", set_handshake_delay)
    app.router.add_get("/_emulator/idle-timeout", get_idle_timeout)
    app.router.add_post("/_emulator/idle-timeout", set_idle_timeout)
    app.router.add_get("/_emulator/sessions", list_sessions)
    app.router.add_delete("/_emulator/sessions", clear_sessions)
    app.router.add_get("/_emulator/sessions/{session_id}/input_audio", input_audio)
    app.router.add_get("/_emulator/quota", get_quota)
    app.router.add_post("/_emulator/quota", set_quota)
    app.router.add_get("/_emulator/admissions", list_admissions)
    app.router.add_delete("/_emulator/admissions", clear_admissions)
    app.router.add_get("/_emulator/health", health)
    app.router.add_get("/_emulator/stats", stats)
    app.on_startup.append(start_idle_reaper)
    app.on_shutdown.append(close_open_sessions)
    return app


async def realtime(request: web.Request) -> web.StreamResponse:
    """The WebSocket handshake, refused the way Azure refuses it, then the realtime session."""
    state = request.app[STATE]
    ws = web.WebSocketResponse(max_msg_size=MAX_CLIENT_MESSAGE_BYTES, compress=False)
    if not ws.can_prepare(request).ok:
        return refuse(state, 400, "bad_request", "Expected a WebSocket upgrade request.")
    if state.handshake_delay_ms:
        await asyncio.sleep(state.handshake_delay_ms / 1000)
    try:
        identity = state.authenticator.authenticate(request.headers)
    except AuthenticationError as error:
        return refuse(state, 401, "unauthorized", str(error))
    model = request.query.get("model")
    if not model:
        return refuse(state, 400, "bad_request", "Missing required query parameter: 'model'.")
    try:
        scenario = scenario_from_query(request.query)
    except ScenarioError as error:
        return refuse(state, 400, "bad_request", str(error))
    over_quota = state.admissions.check(len(state.open_sessions), time.time())
    if over_quota is not None:
        return refuse(
            state, 429, over_quota.reason, over_quota.message, retry_after_ms=over_quota.retry_after_ms
        )
    fault = state.take_fault()
    if fault is not None:
        return refuse(state, fault.status, "handshake_fault", retry_after_ms=fault.retry_after_ms)
    if scenario.handshake_status is not None:
        asked = None if scenario.retry_after is None else scenario.retry_after * 1000
        return refuse(state, scenario.handshake_status, "scenario", retry_after_ms=asked)

    scenario = state.take_scenario_fault() or scenario
    state.admissions.admitted(len(state.open_sessions), time.time())
    await ws.prepare(request)
    session = _open_session(state, ws, request, model, identity.as_record(), scenario)
    log.info(
        "session %s opened: auth=%s scenario=%s", session.record.session_id, identity.kind, scenario.name
    )
    try:
        await session.run()
    finally:
        state.session_ended(session)
        log.info("session %s ended: %s", session.record.session_id, session.record.ended_by)
    return ws


def _open_session(
    state: EmulatorState,
    ws: web.WebSocketResponse,
    request: web.Request,
    model: str,
    auth: dict[str, object],
    scenario: Scenario,
) -> RealtimeSession:
    session_id = protocol.new_id("sess")
    record = SessionRecord(
        session_id=session_id,
        model=model,
        auth=auth,
        scenario=scenario.name,
        scenario_params=scenario.params(),
        session=protocol.default_session(session_id, model),
    )
    session = RealtimeSession(ws, _tcp_closer(request), record, scenario, state.config.engine)
    state.records.append(record)
    state.session_opened(session)
    state.connections_total += 1
    return session


def _tcp_closer(request: web.Request) -> Callable[[], None]:
    """Closes the request's TCP connection as is: no WebSocket close frame, sent data still delivered."""

    def close() -> None:
        if request.transport is not None:
            request.transport.close()

    return close


def refuse(
    state: EmulatorState,
    status: int,
    reason: str,
    message: str | None = None,
    *,
    retry_after_ms: int | None = None,
) -> web.Response:
    """An Azure-style JSON error for a refused handshake, logged with its ``reason`` in the admissions
    log. 429 and 503 say when to retry (``Retry-After``, whole seconds); a 429 also in milliseconds
    (``retry-after-ms``), as Azure OpenAI does."""
    state.refusals_by_status[status] = state.refusals_by_status.get(status, 0) + 1
    headers = {"apim-request-id": str(uuid.uuid4())}
    retry_after = None
    if status in (429, 503):
        retry_after_ms = DEFAULT_RETRY_AFTER * 1000 if retry_after_ms is None else retry_after_ms
        retry_after = whole_seconds(retry_after_ms)
        headers["Retry-After"] = str(retry_after)
        if status == 429:
            headers["retry-after-ms"] = str(retry_after_ms)
    else:
        retry_after_ms = None
    state.admissions.refused(status, reason, retry_after_ms, len(state.open_sessions), time.time())
    text = message or REFUSAL_MESSAGES[status].format(retry_after=retry_after)
    log.info("handshake refused: %d %s (%s)", status, text, reason)
    return web.json_response(
        {"error": {"code": REFUSALS[status], "message": text}}, status=status, headers=headers
    )


async def set_handshake_faults(request: web.Request) -> web.Response:
    """``{"status": 429, "count": 2, "retry_after": 3}``: refuse the next ``count`` handshakes;
    ``retry_after_ms`` instead of ``retry_after`` asks for a wait in milliseconds."""
    try:
        body = await request.json()
        status = body["status"]
        count = body.get("count", 1)
        retry_after = body.get("retry_after")
        retry_after_ms = body.get("retry_after_ms")
    except (ValueError, KeyError, TypeError, AttributeError):
        return web.json_response(
            {"error": "expected JSON {status, count, retry_after or retry_after_ms}"}, status=400
        )
    waits = [wait for wait in (retry_after, retry_after_ms) if wait is not None]
    if (
        status not in HANDSHAKE_STATUSES
        or not _is_count(count)
        or not all(map(_is_count, waits))
        or len(waits) > 1
    ):
        return web.json_response(
            {
                "error": f"status must be one of {list(HANDSHAKE_STATUSES)}; count, retry_after or "
                "retry_after_ms (not both): integers >= 0"
            },
            status=400,
        )
    state = request.app[STATE]
    state.fault = HandshakeFault(
        status, count, retry_after * 1000 if retry_after is not None else retry_after_ms
    )
    return web.json_response(_fault_json(state.fault))


async def set_scenario_faults(request: web.Request) -> web.Response:
    """``{"scenario": "error_mid", "count": 1}``: the next ``count`` admitted connections start under
    that response scenario (as if their handshake query had chosen it)."""
    try:
        body = await request.json()
        name = body["scenario"]
        count = body.get("count", 1)
        scenario = build_scenario(name, {}) if name in RESPONSE_SCENARIOS else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return web.json_response({"error": "expected JSON {scenario, count}"}, status=400)
    if scenario is None or not _is_count(count):
        return web.json_response(
            {"error": f"scenario must be one of {list(RESPONSE_SCENARIOS)}; count: an integer >= 0"},
            status=400,
        )
    request.app[STATE].scenario_fault = ScenarioFault(scenario, count)
    return web.json_response({"scenario": name, "remaining": count})


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fault_json(fault: HandshakeFault | None) -> dict[str, Any] | None:
    if fault is None or fault.remaining <= 0:
        return None
    wait = fault.retry_after_ms
    return {
        "status": fault.status,
        "remaining": fault.remaining,
        "retry_after": None if wait is None else whole_seconds(wait),
        "retry_after_ms": wait,
    }


async def get_handshake_delay(request: web.Request) -> web.Response:
    return web.json_response({"ms": request.app[STATE].handshake_delay_ms})


async def set_handshake_delay(request: web.Request) -> web.Response:
    """``{"ms": N}``: every handshake from now on waits N ms before it is answered (0: none)."""
    body = await _json_object(request)
    ms = body.get("ms") if body is not None else None
    if body is None or set(body) != {"ms"} or not _is_count(ms) or ms > MAX_HANDSHAKE_DELAY_MS:
        return web.json_response(
            {"error": f"expected JSON {{ms}}: an integer from 0 to {MAX_HANDSHAKE_DELAY_MS}"}, status=400
        )
    state = request.app[STATE]
    state.handshake_delay_ms = ms
    log.info("handshake delay set: %d ms", ms)
    return web.json_response({"ms": ms})


async def get_idle_timeout(request: web.Request) -> web.Response:
    return web.json_response({"seconds": request.app[STATE].idle_timeout_seconds})


async def set_idle_timeout(request: web.Request) -> web.Response:
    """``{"seconds": S}``: close sessions idle for S seconds from now on (null: never)."""
    body = await _json_object(request)
    seconds = body.get("seconds") if body is not None else None
    if body is None or set(body) != {"seconds"} or not (seconds is None or _is_positive(seconds)):
        return web.json_response({"error": "expected JSON {seconds}: a number > 0, or null"}, status=400)
    state = request.app[STATE]
    state.idle_timeout_seconds = None if seconds is None else float(seconds)
    log.info("idle timeout set: %s s", seconds)
    return web.json_response({"seconds": state.idle_timeout_seconds})


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _is_positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


async def start_idle_reaper(app: web.Application) -> None:
    task = asyncio.create_task(_reap_idle_sessions(app[STATE]))
    app.on_cleanup.append(lambda _: _cancel(task))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _reap_idle_sessions(state: EmulatorState) -> None:
    """Close every session idle past the idle timeout (checked every IDLE_CHECK_SECONDS)."""
    while True:
        await asyncio.sleep(IDLE_CHECK_SECONDS)
        timeout = state.idle_timeout_seconds
        if timeout is None:
            continue
        for session in list(state.open_sessions):
            idle = session.idle_for()
            if idle is not None and idle >= timeout and not session.idle_closed:
                log.info("session %s idle for %.2f s: closing", session.record.session_id, idle)
                await session.close_idle()


async def list_sessions(request: web.Request) -> web.Response:
    return web.json_response([record.as_json() for record in request.app[STATE].records])


async def clear_sessions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cleared = len(state.records)
    state.records.clear()
    return web.json_response({"cleared": cleared})


async def input_audio(request: web.Request) -> web.Response:
    """The raw bytes of a session's last committed input audio (``?item_id=`` picks another one)."""
    session_id = request.match_info["session_id"]
    record = next((r for r in request.app[STATE].records if r.session_id == session_id), None)
    raw = None if record is None else record.input_audio_bytes(request.query.get("item_id"))
    if record is None or raw is None:
        return web.json_response({"error": "no such session or committed input audio"}, status=404)
    return web.Response(body=raw, content_type="application/octet-stream")


async def get_quota(request: web.Request) -> web.Response:
    return web.json_response(_quota_json(request.app[STATE]))


async def set_quota(request: web.Request) -> web.Response:
    """``{"max_sessions": N, "requests_per_minute": M}``: a given field sets its limit (null: no limit),
    an absent one keeps it."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not set(body) <= set(QUOTA_FIELDS)
        or not all(value is None or _is_count(value) for value in body.values())
    ):
        return web.json_response(
            {"error": f"expected a JSON object with {', '.join(QUOTA_FIELDS)}: integers >= 0 or null"},
            status=400,
        )
    state = request.app[STATE]
    for name, value in body.items():
        setattr(state.admissions.quota, name, value)
    log.info("quota set: %s", state.admissions.quota)
    return web.json_response(_quota_json(state))


def _quota_json(state: EmulatorState) -> dict[str, Any]:
    return {
        **state.admissions.quota.as_json(),
        "open_sessions": len(state.open_sessions),
        "admitted_last_minute": state.admissions.admitted_last_minute(time.time()),
    }


async def list_admissions(request: web.Request) -> web.Response:
    return web.json_response([entry.as_json() for entry in request.app[STATE].admissions.log])


async def clear_admissions(request: web.Request) -> web.Response:
    """Clear the admissions log, and forget the rolling minute's admissions with it."""
    return web.json_response({"cleared": request.app[STATE].admissions.forget()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    """The counters; with `?wait_idle=S`, first wait up to S seconds for the last open session to end."""
    state = request.app[STATE]
    try:
        wait_idle = float(request.query.get("wait_idle", "0"))
    except ValueError:
        return web.json_response({"error": "wait_idle must be a number of seconds"}, status=400)
    if wait_idle > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.idle.wait(), wait_idle)
    return web.json_response(
        {
            "connections_open": len(state.open_sessions),
            "connections_total": state.connections_total,
            "handshake_refusals": sum(state.refusals_by_status.values()),
            "handshake_refusals_by_status": {
                str(code): n for code, n in sorted(state.refusals_by_status.items())
            },
            "handshake_faults_pending": _fault_json(state.fault),
            "handshake_delay_ms": state.handshake_delay_ms,
            "idle_timeout_seconds": state.idle_timeout_seconds,
        }
    )


async def close_open_sessions(app: web.Application) -> None:
    for session in list(app[STATE].open_sessions):
        session.shutting_down = True
        await session.ws.close(code=1001, message=b"emulator shutting down")


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


async def serve(config: EmulatorConfig, listeners: list[Listener]) -> None:
    """Serve until SIGINT or SIGTERM; print one line per listener once it accepts connections, and one
    once it has stopped cleanly."""
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for listener in listeners:
            site = web.TCPSite(runner, listener.host, listener.port, ssl_context=listener.ssl_context)
            await site.start()
        for listener, address in zip(listeners, runner.addresses, strict=True):
            scheme = "https" if listener.ssl_context else "http"
            print(f"realtime emulator listening on {scheme}://{address[0]}:{address[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    print("realtime emulator stopped", flush=True)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
