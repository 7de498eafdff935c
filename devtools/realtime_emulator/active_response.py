"""A response in flight: what was asked, its plan once the speech is made, what it has sent so far,
where its content goes, and the client's request to cancel it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .planning import Plan, ResponseRequest, plan_response
from .speech import Engine, synthesize


@dataclass
class ActiveResponse:
    response_id: str
    request: ResponseRequest
    item_id: str = ""
    """The assistant item the response speaks into, known once the response is opened."""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    transcript: list[str] = field(default_factory=list)
    audio_bytes: int = 0
    cancelled: bool = False
    _plan: Plan | None = None

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"response {self.response_id} has no plan yet")
        return self._plan

    def prepare(self, engine: Engine) -> None:
        """Make the speech that answers the request and plan how much of it to send (blocking: run it
        in a thread)."""
        request = self.request
        speech = synthesize(
            request.user_text,
            request.settings["voice"],
            seconds=request.scenario.seconds,
            speed=request.speed,
            engine=engine,
        )
        self._plan = plan_response(request, speech)

    @property
    def text(self) -> str:
        """The transcript sent so far."""
        return "".join(self.transcript)

    @property
    def sent_audio(self) -> bytes:
        """The audio sent so far, in the output format."""
        return self.plan.output_audio[: self.audio_bytes]

    @property
    def where(self) -> dict[str, Any]:
        """The content part's address, as every content event carries it."""
        return {
            "response_id": self.response_id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }
