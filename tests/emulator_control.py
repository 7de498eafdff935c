"""A test-side handle on one realtime emulator process and its control routes (`/_emulator/...`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from devtools.process import ServiceProcess


@dataclass
class Emulator:
    """One backend's emulator and its control routes."""

    process: ServiceProcess
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.process.url

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def sessions(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/_emulator/sessions")

    async def asked(self) -> set[str]:
        """Every text this emulator was asked."""
        return {session["user_text"] for session in await self.sessions()}

    async def spares(self) -> list[dict[str, Any]]:
        """Sessions open and never configured: spares waiting for a request."""
        return [
            s for s in await self.sessions() if s["ended_by"] is None and s["first_session_update_at"] is None
        ]

    async def admissions(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/_emulator/admissions")

    async def open_sessions(self) -> int:
        return (await self.call("GET", "/_emulator/quota"))["open_sessions"]

    async def stats(self) -> dict[str, Any]:
        return await self.call("GET", "/_emulator/stats")

    async def reset(self) -> None:
        """No quota, handshake fault, handshake delay or idle timeout; empty logs."""
        await self.call("POST", "/_emulator/quota", {"max_sessions": None, "requests_per_minute": None})
        await self.call("POST", "/_emulator/handshake-faults", {"status": 429, "count": 0})
        await self.call("POST", "/_emulator/handshake-delay", {"ms": 0})
        await self.call("POST", "/_emulator/idle-timeout", {"seconds": None})
        await self.call("DELETE", "/_emulator/admissions")
        await self.call("DELETE", "/_emulator/sessions")
