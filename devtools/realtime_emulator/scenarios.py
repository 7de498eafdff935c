"""Scripted scenarios: how the emulator misbehaves, chosen per connection or per user message.

A connection's scenario comes from the handshake query (``?scenario=drop&at=0.2``); a directive in a
user message or in the session's instructions (``[[emulator:long seconds=300]]``) overrides it for the
responses (and committed input audio) that follow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

DIRECTIVE_START = "[[emulator:"
DIRECTIVE_SYNTAX = "[[emulator:NAME key=value ...]]"
DIRECTIVE = re.compile(r"\[\[emulator:([A-Za-z0-9_]+)((?:\s+[A-Za-z_]+=[^\s\]]+)*)\s*\]\]")

RESPONSE_SCENARIOS = {
    "normal": "the whole answer at full speed, response.done completed",
    "error_mid": "an error event (server_error) after part of the audio; no response.done",
    "drop": "the TCP connection is closed after part of the audio, without a close frame",
    "stall": "part of the audio, then silence: no response.done, the connection stays open",
    "incomplete": "audio cut short, response.done incomplete (reason max_output_tokens)",
    "failed": "audio cut short, response.done failed with status_details.error (server_error)",
    "cancelled": "audio cut short, response.done cancelled (reason client_cancelled or turn_detected)",
    "rate_limit": "an error event (code rate_limit_exceeded) instead of a response",
    "slow": "audio paced against the clock: real time at pace=1.0, pace times faster otherwise",
    "long": "seconds=N of audio (default 300) at full speed",
    "transcript_late": "input audio transcription sent delay=S seconds (default 0.5) after response.done",
    "transcript_never": "no input audio transcription events at all",
    "transcript_failed": "the input audio transcription fails (its .failed event instead of .completed)",
}
HANDSHAKE_STATUSES = (400, 401, 403, 404, 429, 500, 503)
HANDSHAKE_SCENARIOS = {f"handshake_{status}": status for status in HANDSHAKE_STATUSES}
CUT_SCENARIOS = frozenset({"error_mid", "drop", "stall", "incomplete", "failed", "cancelled"})
CANCEL_REASONS = ("client_cancelled", "turn_detected")
TRANSCRIPT_SCENARIOS = frozenset({"transcript_late", "transcript_never", "transcript_failed"})
DEFAULT_TRANSCRIPT_DELAY = 0.5
MAX_SECONDS = 3600.0

PARAMETERS = {
    "seconds": "exact audio length in seconds (any response scenario)",
    "pace": "speed factor of real-time pacing, 1.0 = real time (any response scenario)",
    "at": "fraction 0-1 of the audio sent before the scenario acts (default 0.5)",
    "reason": "cancelled only: client_cancelled (default) or turn_detected",
    "retry_after": "handshake scenarios: Retry-After seconds (429 and 503)",
    "delay": "transcript_late only: seconds between response.done and the transcription (default 0.5)",
}


class ScenarioError(ValueError):
    """A scenario name or parameter the emulator does not know."""


@dataclass(frozen=True)
class Scenario:
    name: str = "normal"
    seconds: float | None = None
    pace: float | None = None
    at: float = 0.5
    reason: str = "client_cancelled"
    retry_after: int | None = None
    delay: float = DEFAULT_TRANSCRIPT_DELAY

    @property
    def handshake_status(self) -> int | None:
        return HANDSHAKE_SCENARIOS.get(self.name)

    def params(self) -> dict[str, object]:
        """The parameters that shape this scenario, for the session record."""
        values: dict[str, object] = {"seconds": self.seconds, "pace": self.pace}
        if self.name in CUT_SCENARIOS:
            values["at"] = self.at
        if self.name == "cancelled":
            values["reason"] = self.reason
        if self.handshake_status:
            values["retry_after"] = self.retry_after
        if self.name == "transcript_late":
            values["delay"] = self.delay
        return {key: value for key, value in values.items() if value is not None}


def build_scenario(name: str, params: Mapping[str, str]) -> Scenario:
    """Check a scenario name and its ``key=value`` parameters (as text) and apply the defaults."""
    if name not in RESPONSE_SCENARIOS and name not in HANDSHAKE_SCENARIOS:
        known = ", ".join([*RESPONSE_SCENARIOS, *HANDSHAKE_SCENARIOS])
        raise ScenarioError(f"unknown emulator scenario {name!r}; known: {known}")
    scenario = Scenario(name=name)
    if name == "slow":
        scenario = replace(scenario, pace=1.0)
    if name == "long":
        scenario = replace(scenario, seconds=300.0)
    for key, text in params.items():
        if key not in _allowed_parameters(name):
            raise ScenarioError(f"parameter {key!r} does not apply to emulator scenario {name!r}")
        scenario = replace(scenario, **{key: _parse_parameter(key, text)})
    return scenario


def scenario_from_query(query: Mapping[str, str]) -> Scenario:
    """The connection's scenario from the handshake query; other query parameters are ignored."""
    params = {key: value for key, value in query.items() if key in PARAMETERS}
    return build_scenario(query.get("scenario", "normal"), params)


def find_directive(text: str) -> Scenario | None:
    """The scenario of the first ``[[emulator:NAME key=value ...]]`` directive in ``text``, if any."""
    start = text.find(DIRECTIVE_START)
    if start < 0:
        return None
    match = DIRECTIVE.match(text, start)
    if match is None:
        raise ScenarioError(f"malformed emulator directive; expected {DIRECTIVE_SYNTAX}")
    params = dict(pair.split("=", 1) for pair in match.group(2).split())
    scenario = build_scenario(match.group(1), params)
    if scenario.handshake_status:
        raise ScenarioError(f"{scenario.name} applies to the handshake; select it with ?scenario=")
    return scenario


def strip_directives(text: str) -> str:
    return DIRECTIVE.sub(" ", text)


def _allowed_parameters(name: str) -> set[str]:
    if name in HANDSHAKE_SCENARIOS:
        return {"retry_after"}
    allowed = {"seconds", "pace"}
    if name in CUT_SCENARIOS:
        allowed.add("at")
    if name == "cancelled":
        allowed.add("reason")
    if name == "transcript_late":
        allowed.add("delay")
    return allowed


def _parse_parameter(key: str, text: str) -> object:
    if key == "reason":
        if text not in CANCEL_REASONS:
            raise ScenarioError(f"reason must be one of {', '.join(CANCEL_REASONS)}, not {text!r}")
        return text
    try:
        value = float(text)
    except ValueError:
        raise ScenarioError(f"parameter {key}={text!r} is not a number") from None
    if key == "at" and not 0.0 <= value <= 1.0:
        raise ScenarioError(f"at={text} must be between 0 and 1")
    if key in ("seconds", "pace") and not (value > 0 and math.isfinite(value)):
        raise ScenarioError(f"{key}={text} must be a positive number")
    if key == "delay" and not (0 <= value <= MAX_SECONDS):
        raise ScenarioError(f"delay={text} must be between 0 and {MAX_SECONDS:.0f} seconds")
    if key == "seconds" and value > MAX_SECONDS:
        raise ScenarioError(f"seconds={text} is more than the emulator's limit of {MAX_SECONDS:.0f}")
    if key == "retry_after":
        if value < 0 or value != int(value):
            raise ScenarioError(f"retry_after={text} must be a whole number of seconds")
        return int(value)
    return value
