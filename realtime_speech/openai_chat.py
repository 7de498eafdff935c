"""OpenAI's Chat Completions shapes, with audio: a request becomes the service's question, voice and
conversation; an answer becomes a `chat.completion` or its `chat.completion.chunk`s; a problem
becomes OpenAI's error body. Pure: no I/O (the HTTP side is `chat_api`).

Limits (each refusal names its `param`): at most `MAX_MESSAGES` messages, `MAX_TOTAL_TEXT_CHARS`
characters of text in all of them, `MAX_INSTRUCTIONS_CHARS` of system and developer text, the last
user message's text at most `MAX_TEXT_CHARS` (as `/api/speech`), JSON nested at most `MAX_DEPTH`
deep; audio as for a spoken question (AUDIO_INPUT_MAX_BYTES and AUDIO_INPUT_MAX_SECONDS for all of it).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from .errors import ServiceError
from .models import (
    MAX_OUTPUT_TOKENS,
    MAX_TEXT_CHARS,
    VOICES,
    AnswerReference,
    Conversation,
    HistoryTurn,
    SpeechRequest,
    SpeechResult,
    SpokenPart,
)
from .wav import WAV_HEADER_BYTES

MAX_MESSAGES = 100
MAX_TOTAL_TEXT_CHARS = 100_000
MAX_INSTRUCTIONS_CHARS = 16_000
MAX_DEPTH = 20
# The body beside its audio: every text limit at its worst, escaped.
MAX_BODY_TEXT_BYTES = 6 * MAX_TOTAL_TEXT_CHARS + 64 * 1024

# What this app's format names are for OpenAI's.
FORMATS = {"wav": "wav", "mp3": "mp3", "pcm16": "wav"}
INPUT_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg"}
# Accepted and honoured.
HONOURED = frozenset(
    {
        "model",
        "messages",
        "modalities",
        "audio",
        "max_completion_tokens",
        "max_tokens",
        "n",
        "stream",
        "stream_options",
    }
)
# Accepted and ignored: they have no realtime equivalent and do not change what is said.
IGNORED = frozenset(
    {
        "temperature",
        "top_p",
        "seed",
        "user",
        "metadata",
        "store",
        "frequency_penalty",
        "presence_penalty",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "parallel_tool_calls",
    }
)
# Known to OpenAI, but their meaning cannot be honoured: refused, naming the parameter.
REFUSED = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "response_format",
        "logprobs",
        "top_logprobs",
        "stop",
        "logit_bias",
        "prediction",
        "web_search_options",
        "reasoning_effort",
        "verbosity",
    }
)
# A refused parameter sent with its default value asks for nothing and is accepted.
_HARMLESS = {
    "response_format": ({"type": "text"},),
    "logprobs": (False, None),
    "stop": (None,),
    "tools": (None, []),
    "top_logprobs": (None,),
}
_CODES = {400: "invalid-request", 404: "not-found", 413: "payload-too-large"}
# Retrying these only pays for the same failure again.
_NOT_RETRIED = {"internal-error", "not-configured", "upstream-auth-failed"}


class ChatError(ServiceError):
    """A refused chat request, with OpenAI's `code` and the `param` at fault."""

    status, code, title = 400, "invalid-request", "The request is not valid"

    def __init__(
        self, detail: str, param: str | None = None, openai_code: str = "invalid_value", status: int = 400
    ):
        super().__init__(detail, param=param)
        self.openai_code = openai_code
        self.status = status  # type: ignore[misc]
        self.code = _CODES[status]  # type: ignore[misc]


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, in the service's terms."""

    model: str
    question: SpeechRequest
    conversation: Conversation
    format: str
    """OpenAI's audio format: wav, mp3 or pcm16."""
    audio_type: str | None = None
    """The media type of a spoken question, as declared."""
    stream: bool = False
    include_usage: bool = False


# --- the request -------------------------------------------------------------------------------------


def body_limit(audio_max_bytes: int) -> int:
    """The largest body worth reading: the text limits and all the audio in base64."""
    return MAX_BODY_TEXT_BYTES + audio_max_bytes * 4 // 3 + 4


def parse_chat_request(body: bytes, deployments: Sequence[str], audio_max_bytes: int) -> ChatRequest:
    """Check a Chat Completions body (strict JSON, known parameters, the limits) and turn it into the
    service's question; every failure names its `param`."""
    document = _strict_json(body)
    if not isinstance(document, dict):
        raise ChatError("The body must be a JSON object.", None)
    _check_parameters(document)
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise ChatError(
            "`model` is required: one of GET /api/v1/models.", "model", "missing_required_parameter"
        )
    if model not in deployments:
        raise ChatError(
            f"The model '{model[:100]}' does not exist; see GET /api/v1/models.",
            "model",
            "model_not_found",
            status=404,
        )
    stream = _boolean(document, "stream")
    include_usage = _stream_options(document, stream)
    fmt, voice = _audio(document, stream)
    max_tokens = _max_tokens(document)
    n = document.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise ChatError("`n` must be 1: one realtime response gives one choice.", "n", "unsupported_value")
    instructions, history, question, spoken_question = _messages(document.get("messages"))
    spoken = [part for turn in history for part in turn.content if isinstance(part, SpokenPart)]
    if spoken_question is not None:
        spoken.append(spoken_question)
    audio_bytes = sum(len(part.data) for part in spoken)
    if audio_bytes > audio_max_bytes:
        raise ChatError(
            f"The messages hold {audio_bytes} bytes of audio; at most {audio_max_bytes} are accepted.",
            "messages",
            "audio_above_max_size",
            status=413,
        )
    speech = SpeechRequest.model_validate(
        {**question, "voice": voice, "format": FORMATS[fmt], "max_output_tokens": max_tokens}, strict=False
    )
    question_param = spoken_question.param if spoken_question else None
    conversation = Conversation(instructions, tuple(history), model, question_param)
    audio_type = spoken_question.content_type if spoken_question else None
    return ChatRequest(model, speech, conversation, fmt, audio_type, stream, include_usage)


def _strict_json(body: bytes) -> Any:
    """JSON as OpenAI takes it, stricter than Python's: no NaN or Infinity, no repeated keys, nesting
    at most MAX_DEPTH deep."""

    def no_constant(name: str) -> Any:
        raise ChatError(f"The body is not valid JSON ({name} is not a JSON value).", None, "invalid_json")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            repeated = next(name for name in names if names.count(name) > 1)
            raise ChatError(f"The body repeats the key '{repeated[:100]}'.", None, "invalid_json")
        return dict(pairs)

    try:
        document = json.loads(body, parse_constant=no_constant, object_pairs_hook=unique)
    except RecursionError:
        raise ChatError(f"The body is nested deeper than {MAX_DEPTH} levels.", None, "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ChatError):
            raise
        raise ChatError(f"The body is not valid JSON ({type(exc).__name__}).", None, "invalid_json") from None
    if _depth(document) > MAX_DEPTH:
        raise ChatError(f"The body is nested deeper than {MAX_DEPTH} levels.", None, "invalid_json")
    return document


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in `value`, without recursion (the parser of Python 3.13 and
    later reads nesting deeper than Python's own recursion limit)."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_parameters(document: Mapping[str, Any]) -> None:
    for name, value in document.items():
        if name in HONOURED or name in IGNORED:
            continue
        if name in REFUSED:
            if value in _HARMLESS.get(name, ()):
                continue
            raise ChatError(
                f"`{name}` is not supported: the answer is one spoken realtime response.",
                name,
                "unsupported_parameter",
            )
        raise ChatError(f"Unrecognized request argument supplied: {name[:100]}", name, "unknown_parameter")


def _boolean(document: Mapping[str, Any], name: str) -> bool:
    value = document.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ChatError(f"`{name}` must be a boolean.", name, "invalid_type")
    return value


def _stream_options(document: Mapping[str, Any], stream: bool) -> bool:
    options = document.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ChatError("`stream_options` is only allowed with `stream: true`.", "stream_options")
    if not isinstance(options, dict) or not options.keys() <= {"include_usage", "include_obfuscation"}:
        raise ChatError("`stream_options` takes `include_usage` (a boolean).", "stream_options")
    return _boolean(options, "include_usage")


def _audio(document: Mapping[str, Any], stream: bool) -> tuple[str, str]:
    modalities = document.get("modalities")
    if (
        not isinstance(modalities, list)
        or not all(isinstance(modality, str) for modality in modalities)
        or "audio" not in modalities
        or not set(modalities) <= {"text", "audio"}
    ):
        raise ChatError(
            'The answer is spoken: `modalities` must be ["text", "audio"] or ["audio"].', "modalities"
        )
    audio = document.get("audio")
    if not isinstance(audio, dict):
        raise ChatError(
            "`audio` ({voice, format}) is required with audio output.", "audio", "missing_required_parameter"
        )
    unknown = audio.keys() - {"voice", "format"}
    if unknown:
        raise ChatError(
            f"Unrecognized argument: audio.{sorted(unknown)[0][:100]}", "audio", "unknown_parameter"
        )
    voice, fmt = audio.get("voice"), audio.get("format")
    if voice not in VOICES:
        raise ChatError(f"`audio.voice` must be one of {', '.join(VOICES)}.", "audio.voice")
    if fmt not in ("wav", "mp3", "pcm16"):
        raise ChatError("`audio.format` must be wav, mp3 or pcm16.", "audio.format")
    if stream and fmt != "pcm16":
        raise ChatError(
            f"Unsupported value: 'audio.format' does not support '{fmt}' when stream=true. "
            "Supported values are: 'pcm16'.",
            "audio.format",
            "unsupported_value",
        )
    return fmt, voice


def _max_tokens(document: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise ChatError(f"`{name}` must be an integer from 1 to {MAX_OUTPUT_TOKENS}.", name)
        return value
    return None


@dataclass
class _Messages:
    """What the messages say, gathered in order, with the running text total."""

    instructions: list[str] = field(default_factory=list)
    turns: list[HistoryTurn] = field(default_factory=list)
    text_chars: int = 0

    def text(self, value: Any, param: str) -> str:
        if not isinstance(value, str):
            raise ChatError("Text must be a string.", param, "invalid_type")
        self.text_chars += len(value)
        if self.text_chars > MAX_TOTAL_TEXT_CHARS:
            raise ChatError(
                f"The messages hold more than {MAX_TOTAL_TEXT_CHARS} characters of text.",
                param,
                "string_above_max_length",
                status=413,
            )
        return value


def _messages(
    messages: Any,
) -> tuple[str | None, list[HistoryTurn], dict[str, Any], SpokenPart | None]:
    """Instructions (system and developer text, joined), the earlier turns, the question (the last
    message, a user's) and its audio when it is spoken."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("`messages` must be a non-empty array.", "messages", "missing_required_parameter")
    if len(messages) > MAX_MESSAGES:
        raise ChatError(
            f"At most {MAX_MESSAGES} messages are accepted.", "messages", "array_above_max_length"
        )
    gathered = _Messages()
    for index, message in enumerate(messages):
        _message(gathered, message, f"messages[{index}]")
    if not gathered.turns or messages[-1].get("role") != "user":
        raise ChatError("The last message must be a user message.", f"messages[{len(messages) - 1}].role")
    last = gathered.turns.pop()
    instructions = "\n\n".join(gathered.instructions) or None
    if instructions is not None and len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise ChatError(
            f"The system and developer messages hold more than {MAX_INSTRUCTIONS_CHARS} characters.",
            "messages",
            "string_above_max_length",
        )
    question, spoken, before = _question(last, len(messages) - 1)
    if before is not None:
        gathered.turns.append(before)
    return instructions, gathered.turns, question, spoken


def _message(gathered: _Messages, message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise ChatError("A message must be an object.", where, "invalid_type")
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise ChatError("`role` must be system, developer, user or assistant.", f"{where}.role")
    allowed = {"role", "content", "name"} | ({"audio", "refusal"} if role == "assistant" else set())
    unknown = message.keys() - allowed
    if unknown:
        name = sorted(unknown)[0]
        code = "unsupported_parameter" if name in ("tool_calls", "function_call") else "unknown_parameter"
        raise ChatError(f"`{name}` is not supported in a {role} message.", f"{where}.{name}", code)
    content = message.get("content")
    if role in ("system", "developer"):
        gathered.instructions.append(_plain_text(gathered, content, where))
    elif role == "user":
        gathered.turns.append(HistoryTurn("user", tuple(_user_parts(gathered, content, where))))
    else:
        gathered.turns.append(HistoryTurn("assistant", (_assistant_part(gathered, message, where),)))


def _plain_text(gathered: _Messages, content: Any, where: str) -> str:
    if isinstance(content, str):
        return gathered.text(content, f"{where}.content")
    if not isinstance(content, list) or not content:
        raise ChatError("`content` must be a string or text parts.", f"{where}.content", "invalid_type")
    texts = []
    for index, part in enumerate(content):
        param = f"{where}.content[{index}]"
        if not isinstance(part, dict) or part.get("type") != "text" or part.keys() != {"type", "text"}:
            raise ChatError("Only text parts are accepted here.", param, "invalid_type")
        texts.append(gathered.text(part["text"], f"{param}.text"))
    return "\n".join(texts)


def _user_parts(gathered: _Messages, content: Any, where: str) -> Iterator[str | SpokenPart]:
    if isinstance(content, str):
        yield gathered.text(content, f"{where}.content")
        return
    if not isinstance(content, list) or not content:
        raise ChatError("`content` must be a string or parts.", f"{where}.content", "invalid_type")
    for index, part in enumerate(content):
        param = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and part.keys() == {"type", "text"}:
            yield gathered.text(part["text"], f"{param}.text")
        elif kind == "input_audio" and part.keys() == {"type", "input_audio"}:
            yield _spoken(part["input_audio"], f"{param}.input_audio")
        elif kind in ("image_url", "file"):
            raise ChatError(
                f"`{kind}` parts are not supported: text and input_audio are.", param, "unsupported_value"
            )
        else:
            raise ChatError("A part must be {type: text, text} or {type: input_audio, input_audio}.", param)


def _spoken(value: Any, param: str) -> SpokenPart:
    if not isinstance(value, dict) or value.keys() != {"data", "format"}:
        raise ChatError("`input_audio` takes `data` (base64) and `format`.", param)
    if value["format"] not in INPUT_AUDIO_TYPES:
        raise ChatError("`input_audio.format` must be wav or mp3.", f"{param}.format")
    try:
        data = base64.b64decode(value["data"], validate=True) if isinstance(value["data"], str) else None
    except binascii.Error:
        data = None
    if not data:
        raise ChatError("`input_audio.data` must be base64 (RFC 4648, with padding).", f"{param}.data")
    return SpokenPart(data, f"{param}.data", INPUT_AUDIO_TYPES[value["format"]])


def _assistant_part(gathered: _Messages, message: Mapping[str, Any], where: str) -> str | AnswerReference:
    audio = message.get("audio")
    if audio is not None:
        if not isinstance(audio, dict) or not isinstance(audio.get("id"), str) or audio.keys() != {"id"}:
            raise ChatError("`audio` must be {id} of an earlier answer.", f"{where}.audio")
        return AnswerReference(audio["id"], f"{where}.audio.id")
    content = message.get("content")
    if content is None:
        raise ChatError("An assistant message needs `content` or `audio.id`.", f"{where}.content")
    if isinstance(content, list):  # text and refusal parts
        texts = []
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal") or part.keys() != {"type", kind}:
                raise ChatError("Only text and refusal parts are accepted here.", f"{where}.content[{index}]")
            texts.append(gathered.text(part[kind], f"{where}.content[{index}].{kind}"))
        return "\n".join(texts)
    return gathered.text(content, f"{where}.content")


def _question(last: HistoryTurn, index: int) -> tuple[dict[str, Any], str | None, HistoryTurn | None]:
    """The last user message as the question: its last spoken part when it has one (its other parts
    are sent just before, in order), else its text."""
    spoken = [part for part in last.content if isinstance(part, SpokenPart)]
    if spoken:
        question = spoken[-1]
        rest = tuple(part for part in last.content if part is not question)
        return {"audio": question.data}, question, (HistoryTurn("user", rest) if rest else None)
    text = "\n".join(part for part in last.content if isinstance(part, str))
    if not text.strip():
        raise ChatError("The last user message is empty.", f"messages[{index}].content")
    if len(text) > MAX_TEXT_CHARS:
        raise ChatError(
            f"The last user message holds more than {MAX_TEXT_CHARS} characters.",
            f"messages[{index}].content",
            "string_above_max_length",
        )
    return {"text": text}, None, None


# --- the answer --------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid4().hex}"


def finish_reason(result: SpeechResult) -> str:
    """`length` when `max_completion_tokens` cut the answer, `content_filter` when a filter did."""
    if result.status == "incomplete" and result.status_reason in ("max_output_tokens", "content_filter"):
        return "length" if result.status_reason == "max_output_tokens" else "content_filter"
    return "stop"


def usage(realtime: Mapping[str, Any] | None) -> dict[str, Any]:
    """The session's usage in OpenAI's completion terms."""
    realtime = realtime or {}
    given = realtime.get("input_token_details") or {}
    said = realtime.get("output_token_details") or {}
    prompt, completion = realtime.get("input_tokens", 0), realtime.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": realtime.get("total_tokens", prompt + completion),
        "prompt_tokens_details": {
            "cached_tokens": given.get("cached_tokens", 0),
            "audio_tokens": given.get("audio_tokens", 0),
            "text_tokens": given.get("text_tokens", 0),
            "image_tokens": given.get("image_tokens", 0),
        },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": said.get("audio_tokens", 0),
            "text_tokens": said.get("text_tokens", 0),
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def data_offset(chat_format: str) -> int:
    """Where `data` starts in the stored file: after the WAV header for raw `pcm16`."""
    return WAV_HEADER_BYTES if chat_format == "pcm16" else 0


_DATA = "\x00data\x00"


def completion_parts(
    chat: ChatRequest, completion: str, created: int, audio_id: str, result: SpeechResult
) -> tuple[bytes, bytes]:
    """The `chat.completion` JSON before and after `message.audio.data`, which is streamed between
    them from the stored file."""
    body = {
        "id": completion,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason(result),
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "annotations": [],
                    "audio": {
                        "id": audio_id,
                        "data": _DATA,
                        "expires_at": int(result.expires_at.timestamp()),
                        "transcript": result.transcript,
                        "url": result.audio_url,
                    },
                },
            }
        ],
        "usage": usage(result.usage),
        **_heard(result),
    }
    before, after = json.dumps(body, separators=(",", ":")).split(json.dumps(_DATA))
    return (before + '"').encode(), ('"' + after).encode()


def _heard(result: SpeechResult) -> dict[str, Any]:
    """This app's extension for a spoken question: what was heard (null when it did not come)."""
    return {"input_transcript": result.input_transcript} if result.input_audio is not None else {}


class Base64Pieces:
    """Base64 of a byte stream in pieces that each decode on their own: every piece but the last
    encodes a multiple of `unit` bytes (a multiple of 3; 6 for whole PCM16 samples too)."""

    def __init__(self, unit: int = 3) -> None:
        self._unit = unit
        self._held = b""

    def feed(self, data: bytes) -> str:
        data = self._held + data
        cut = len(data) - len(data) % self._unit
        self._held = data[cut:]
        return base64.b64encode(data[:cut]).decode()

    def end(self) -> str:
        held, self._held = self._held, b""
        return base64.b64encode(held).decode()


class ChunkStream:
    """`Answering`'s events as `chat.completion.chunk` Server-Sent Events (see README: a role chunk
    with `audio.id`; transcript and data pieces; one `{expires_at, url}` chunk; the finish chunk; the
    usage chunk when asked; `[DONE]`). A failure is a `data: {"error": ...}` event that ends it."""

    def __init__(
        self, chat: ChatRequest, completion: str, created: int, audio_id_of: Callable[[str], str]
    ) -> None:
        self._chat = chat
        self._head = {
            "id": completion,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat.model,
        }
        self._audio_id_of = audio_id_of
        self._data = Base64Pieces(unit=6)

    def frames(self, event: Mapping[str, Any]) -> Iterable[bytes]:
        kind = event["type"]
        if kind == "speech.started":
            audio = {"id": self._audio_id_of(event["blob_name"])}
            yield self._chunk({"role": "assistant", "content": None, "audio": audio})
        elif kind == "speech.transcript.delta":
            yield self._chunk({"audio": {"transcript": event["delta"]}})
        elif kind == "speech.audio.delta":
            data = self._data.feed(base64.b64decode(event["audio"]))
            if data:
                yield self._chunk({"audio": {"data": data}})
        elif kind == "speech.input_transcript":
            yield self._chunk({}, input_transcript=event["transcript"])
        elif kind == "speech.done":
            yield from self._ending(
                SpeechResult.model_validate({k: v for k, v in event.items() if k != "type"})
            )

    def _ending(self, result: SpeechResult) -> Iterator[bytes]:
        rest = self._data.end()
        if rest:
            yield self._chunk({"audio": {"data": rest}})
        yield self._chunk(
            {"audio": {"expires_at": int(result.expires_at.timestamp()), "url": result.audio_url}}
        )
        yield self._chunk({}, finish_reason(result))
        if self._chat.include_usage:
            yield _data({**self._head, "choices": [], "usage": usage(result.usage)})
        yield b"data: [DONE]\n\n"

    def error(self, error: ServiceError, request_id: str) -> bytes:
        return _data(error_body(error))

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extension: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if self._chat.include_usage else {}
        return _data({**self._head, "choices": [choice], **extra, **extension})


def _data(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def now() -> int:
    return int(time.time())


# --- errors ------------------------------------------------------------------------------------------


def error_body(error: ServiceError) -> dict[str, Any]:
    """OpenAI's error shape: message, type, param, code (never a secret: details never hold one)."""
    return {
        "error": {
            "message": error.detail,
            "type": _error_type(error.status),
            "param": error.param,
            "code": getattr(error, "openai_code", None) or error.code.replace("-", "_"),
        }
    }


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def should_retry(error: ServiceError) -> bool:
    """Whether a retry can help: a slow upload, rate limits and a full instance, unavailable or failed
    upstreams, deadlines; never bad input, auth or configuration (each retry would open a paid session
    for the same failure)."""
    if error.status in (408, 429):
        return True
    return error.status >= 500 and error.code not in _NOT_RETRIED
