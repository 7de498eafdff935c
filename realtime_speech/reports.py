"""`GET /api/health` for anyone and `GET /api/status` for the operator (function key).

Health says only what is safe for a stranger: up or not, whether the settings are complete (naming a
missing or invalid setting, never a value) and, with `?probe=true`, each dependency "ok" or a
sentence naming it. Status adds what an operator needs: which settings are set, the sessions in
flight against `MAX_CONCURRENT_SESSIONS`, and each backend's state in the pool (hosts, deployments,
priorities, weights, counts).
"""

from __future__ import annotations

from typing import Any

from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from .edge import speech_service
from .settings import SettingsError, get_settings, settings_status

_TRUE = ("1", "true", "yes")


async def health(req: Request) -> Response:
    """`GET /api/health[?probe=true]` (anonymous)."""
    probe = req.query_params.get("probe", "").lower() in _TRUE
    report, _ = await _checked(probe=probe)
    return _response(report)


async def status(req: Request) -> Response:
    """`GET /api/status` (auth level function): the checks, the settings and the backends."""
    report, service = await _checked(probe=True)
    report["settings"] = settings_status()
    if service is not None:
        report["sessions"] = service.sessions.status()
        report["backends"] = service.pool.status()
    return _response(report)


async def _checked(*, probe: bool) -> tuple[dict[str, Any], Any]:
    """The report every view shares, and the service when the settings allow one."""
    try:
        get_settings()
    except SettingsError as exc:
        return {"status": "misconfigured", "problems": exc.problems}, None
    report: dict[str, Any] = {"status": "ok"}
    service = await speech_service()
    if probe:
        report["checks"] = await service.probe()
        if any(check != "ok" for check in report["checks"].values()):
            report["status"] = "degraded"
    return report, service


def _response(report: dict[str, Any]) -> Response:
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)
