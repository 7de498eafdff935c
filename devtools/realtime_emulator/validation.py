"""Validation of client events the way the service reports problems.

Each rule is a function ``(value, path) -> value`` that raises :class:`RequestError` with the
service's codes and wording (``unknown_parameter``, ``invalid_type``, ``invalid_value``,
``missing_required_parameter``, ``decimal_above_max_value`` ...), ``param`` being the dotted path
from the event's root (``session.audio.output.voice``). Fields the emulator stores but never acts on
(tools, prompt, tracing ...) are checked with the openai SDK's own types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from openai.types.realtime import (
    ConversationItem,
    RealtimeToolChoiceConfig,
    RealtimeToolsConfig,
    RealtimeTracingConfig,
    RealtimeTruncation,
)
from openai.types.realtime.realtime_reasoning import RealtimeReasoning
from openai.types.responses.response_prompt import ResponsePrompt

from .speech import VOICES

Rule = Callable[[Any, str], Any]


class RequestError(Exception):
    """An ``error`` event to send: a client mistake (the session stays as it was), or a failure that a
    scenario scripts (``type_`` ``server_error``, ``tokens``)."""

    def __init__(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        *,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.type = type_


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(path: str, expected: str, value: object) -> RequestError:
    return RequestError(
        "invalid_type",
        f"Invalid type for '{path}': expected {expected}, but got {describe(value)} instead.",
        path,
    )


def _quote(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _listing(values: tuple[object, ...]) -> str:
    quoted = [_quote(value) for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def string() -> Rule:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(path, "a string", value)
        return value

    return check


def boolean() -> Rule:
    def check(value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise _wrong_type(path, "a boolean", value)
        return value

    return check


def integer(minimum: int | None = None, maximum: int | None = None) -> Rule:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(path, "an integer", value)
        _check_range(value, path, minimum, maximum, "integer")
        return value

    return check


def decimal(minimum: float | None = None, maximum: float | None = None) -> Rule:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(path, "a decimal", value)
        _check_range(value, path, minimum, maximum, "decimal")
        return value

    return check


def _check_range(value: float, path: str, minimum: float | None, maximum: float | None, kind: str) -> None:
    if minimum is not None and value < minimum:
        raise RequestError(
            f"{kind}_below_min_value",
            f"Invalid '{path}': {kind} below minimum value. "
            f"Expected a value >= {minimum}, but got {value} instead.",
            path,
        )
    if maximum is not None and value > maximum:
        raise RequestError(
            f"{kind}_above_max_value",
            f"Invalid '{path}': {kind} above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            path,
        )


def one_of(*values: object) -> Rule:
    def check(value: Any, path: str) -> object:
        expected = "a string" if isinstance(values[0], str) else "an integer"
        if type(value) is not type(values[0]):
            raise _wrong_type(path, expected, value)
        if value not in values:
            raise RequestError(
                "invalid_value",
                f"Invalid value: {_quote(value)}. Supported values are: {_listing(values)}.",
                path,
            )
        return value

    return check


def nullable(rule: Rule) -> Rule:
    def check(value: Any, path: str) -> object:
        return None if value is None else rule(value, path)

    return check


def either(first: Rule, second: Rule) -> Rule:
    """``first`` unless the value has the type ``second`` expects (e.g. an integer or ``"inf"``)."""

    def check(value: Any, path: str) -> object:
        try:
            return first(value, path)
        except RequestError as error:
            if error.code != "invalid_type":
                raise
        return second(value, path)

    return check


def array(item: Rule, *, max_items: int | None = None) -> Rule:
    def check(value: Any, path: str) -> list[object]:
        if not isinstance(value, list):
            raise _wrong_type(path, "an array", value)
        if max_items is not None and len(value) > max_items:
            raise RequestError(
                "array_above_max_length",
                f"Invalid '{path}': array too long. Expected an array with maximum length {max_items}, "
                f"but got an array with length {len(value)} instead.",
                path,
            )
        return [item(element, f"{path}[{index}]") for index, element in enumerate(value)]

    return check


def obj(fields: Mapping[str, Rule], *, required: tuple[str, ...] = ()) -> Rule:
    def check(value: Any, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise _wrong_type(path, "an object", value)
        for name in value:
            if name not in fields:
                raise RequestError(
                    "unknown_parameter", f"Unknown parameter: '{_join(path, name)}'.", _join(path, name)
                )
        for name in required:
            if name not in value:
                raise RequestError(
                    "missing_required_parameter",
                    f"Missing required parameter: '{_join(path, name)}'.",
                    _join(path, name),
                )
        return {name: fields[name](element, _join(path, name)) for name, element in value.items()}

    return check


def tagged(variants: Mapping[str, Rule]) -> Rule:
    """An object whose ``type`` field picks the rule for the rest of it."""

    def check(value: Any, path: str) -> object:
        if not isinstance(value, dict):
            raise _wrong_type(path, "an object", value)
        if "type" not in value:
            raise RequestError(
                "missing_required_parameter",
                f"Missing required parameter: '{_join(path, 'type')}'.",
                _join(path, "type"),
            )
        one_of(*variants)(value["type"], _join(path, "type"))
        return variants[value["type"]](value, path)

    return check


def sdk_type(type_: object) -> Rule:
    """Check a field the emulator only stores against the openai SDK's type for it."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(type_)

    def check(value: Any, path: str) -> object:
        try:
            adapter.validate_python(value, strict=True)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = _join(path, ".".join(str(part) for part in first["loc"] if isinstance(part, str | int)))
            raise RequestError(
                "invalid_value", f"Invalid value for '{where}': {first['msg']}.", where
            ) from None
        return value

    return check


TYPE_ONLY = {"type": string()}
VOICE = one_of(*VOICES)
PCM = obj({"type": string(), "rate": one_of(24000)})
AUDIO_FORMAT = tagged({"audio/pcm": PCM, "audio/pcmu": obj(TYPE_ONLY), "audio/pcma": obj(TYPE_ONLY)})
TURN_DETECTION = nullable(
    tagged(
        {
            "server_vad": obj(
                {
                    "type": string(),
                    "threshold": decimal(0.0, 1.0),
                    "prefix_padding_ms": integer(0),
                    "silence_duration_ms": integer(0),
                    "idle_timeout_ms": nullable(integer(5000, 30000)),
                    "create_response": boolean(),
                    "interrupt_response": boolean(),
                }
            ),
            "semantic_vad": obj(
                {
                    "type": string(),
                    "eagerness": one_of("low", "medium", "high", "auto"),
                    "create_response": boolean(),
                    "interrupt_response": boolean(),
                }
            ),
        }
    )
)
TRANSCRIPTION = nullable(
    obj(
        {
            "model": string(),
            "language": nullable(string()),
            "prompt": nullable(string()),
        }
    )
)
NOISE_REDUCTION = nullable(
    obj({"type": one_of("near_field", "far_field"), "strength": decimal(0.0, 1.0)}, required=("type",))
)
OUTPUT_MODALITIES = array(one_of("text", "audio"), max_items=1)
MAX_OUTPUT_TOKENS = either(integer(1, 4096), one_of("inf"))

SESSION = obj(
    {
        "type": one_of("realtime"),
        "model": string(),
        "instructions": string(),
        "output_modalities": OUTPUT_MODALITIES,
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "audio": obj(
            {
                "input": obj(
                    {
                        "format": AUDIO_FORMAT,
                        "transcription": TRANSCRIPTION,
                        "noise_reduction": NOISE_REDUCTION,
                        "turn_detection": TURN_DETECTION,
                    }
                ),
                "output": obj({"format": AUDIO_FORMAT, "voice": VOICE, "speed": decimal(0.25, 1.5)}),
            }
        ),
        "include": nullable(array(one_of("item.input_audio_transcription.logprobs"))),
        "tools": sdk_type(RealtimeToolsConfig),
        "tool_choice": sdk_type(RealtimeToolChoiceConfig),
        "parallel_tool_calls": boolean(),
        "tracing": sdk_type(RealtimeTracingConfig),
        "truncation": sdk_type(RealtimeTruncation),
        "prompt": nullable(sdk_type(ResponsePrompt)),
        "reasoning": nullable(sdk_type(RealtimeReasoning)),
    },
    required=("type",),
)

CONTENT = tagged(
    {
        "input_text": obj({"type": string(), "text": string()}, required=("text",)),
        "input_audio": obj({"type": string(), "audio": string(), "transcript": nullable(string())}),
        "input_image": obj(
            {"type": string(), "image_url": string(), "detail": one_of("auto", "low", "high")}
        ),
        "output_text": obj({"type": string(), "text": string()}, required=("text",)),
        "output_audio": obj({"type": string(), "audio": string(), "transcript": nullable(string())}),
    }
)
MESSAGE = obj(
    {
        "type": string(),
        "role": one_of("user", "system", "assistant"),
        "content": array(CONTENT),
        "id": string(),
        "object": one_of("realtime.item"),
        "status": one_of("completed", "incomplete", "in_progress"),
    },
    required=("role", "content"),
)
OTHER_ITEM = sdk_type(ConversationItem)


def conversation_item(value: Any, path: str) -> object:
    """Messages are checked field by field; other item kinds by the SDK type (the emulator stores them)."""
    if isinstance(value, dict) and value.get("type") == "message":
        return MESSAGE(value, path)
    if not isinstance(value, dict):
        raise _wrong_type(path, "an object", value)
    return OTHER_ITEM(value, path)


RESPONSE_PARAMS = obj(
    {
        "instructions": string(),
        "output_modalities": OUTPUT_MODALITIES,
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "audio": obj({"output": obj({"format": AUDIO_FORMAT, "voice": VOICE})}),
        "conversation": string(),
        "metadata": nullable(sdk_type(dict[str, str])),
        "input": array(conversation_item),
        "tools": sdk_type(RealtimeToolsConfig),
        "tool_choice": sdk_type(RealtimeToolChoiceConfig),
        "parallel_tool_calls": boolean(),
        "prompt": nullable(sdk_type(ResponsePrompt)),
        "reasoning": nullable(sdk_type(RealtimeReasoning)),
    }
)

EVENT_ID = {"type": string(), "event_id": string()}
CLIENT_EVENTS: dict[str, Rule] = {
    "session.update": obj({**EVENT_ID, "session": SESSION}, required=("session",)),
    "conversation.item.create": obj(
        {**EVENT_ID, "item": conversation_item, "previous_item_id": nullable(string())}, required=("item",)
    ),
    "response.create": obj({**EVENT_ID, "response": RESPONSE_PARAMS}),
    "response.cancel": obj({**EVENT_ID, "response_id": string()}),
    "input_audio_buffer.append": obj({**EVENT_ID, "audio": string()}, required=("audio",)),
    "input_audio_buffer.clear": obj(EVENT_ID),
    "input_audio_buffer.commit": obj(EVENT_ID),
    "output_audio_buffer.clear": obj(EVENT_ID),
    "conversation.item.retrieve": obj({**EVENT_ID, "item_id": string()}, required=("item_id",)),
    "conversation.item.delete": obj({**EVENT_ID, "item_id": string()}, required=("item_id",)),
    "conversation.item.truncate": obj(
        {**EVENT_ID, "item_id": string(), "content_index": integer(0), "audio_end_ms": integer(0)},
        required=("item_id", "content_index", "audio_end_ms"),
    ),
}


def client_event(value: Any) -> dict[str, Any]:
    """Check a decoded client event: a known ``type`` and well-formed fields."""
    if not isinstance(value, dict):
        raise RequestError(
            "invalid_type", f"Invalid type for event: expected an object, but got {describe(value)}."
        )
    if "type" not in value:
        raise RequestError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
    one_of(*CLIENT_EVENTS)(value["type"], "type")
    return CLIENT_EVENTS[value["type"]](value, "")
