"""Logging without secrets: every log record of the process is redacted as it is made.

The SDKs log on their own (websockets writes handshake headers at DEBUG, azure-core request URLs,
aiohttp its errors), so redacting only our own messages is not enough, and a filter on handlers would
miss handlers added later. Wrapping the log record factory covers every logger and every handler.
Redacted: bearer tokens, JWTs, SAS signatures (`sig=`), API and function keys, the managed-identity
header and similar `name: value` / `name=value` secrets.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

REDACTED = "REDACTED"

_SECRET_NAMES = (
    r"api[-_]?key|x-functions-key|ocp-apim-subscription-key|x-identity-header|identity[-_]header"
    r"|access[-_]token|refresh[-_]token|client[-_]secret|account[-_]?key|password|secret"
)
# Each pattern matches what to keep (group `keep`) followed by the secret.
_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        r"(?P<keep>)\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*",  # a JWT anywhere
        r"(?i)(?P<keep>\bbearer\s+)[^\s\"',;]+",
        r"(?i)(?P<keep>\bsig=)[^&\s\"'<>;]+",
        r"(?i)(?P<keep>[?&]code=)[^&\s\"'<>;]+",
        rf"(?i)(?P<keep>\b(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;)]+",
    )
)
WITHHELD = "[log message withheld: it could not be redacted]"


def redact(text: str) -> str:
    """`text` with every secret it contains replaced by REDACTED."""
    for pattern in _PATTERNS:
        text = pattern.sub(_keep_and_redact, text)
    return text


def _keep_and_redact(match: re.Match[str]) -> str:
    # A function, not a template: a template makes `re` import at each call, which fails while
    # the interpreter shuts down (and objects still log from their finalizers).
    return match["keep"] + REDACTED


def redact_record(record: logging.LogRecord) -> None:
    """Merge the message, its arguments and any traceback into one redacted message; if that fails,
    the message is withheld rather than logged as it is."""
    try:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            message += "\n" + record.stack_info
        message = redact(message)
    except Exception:
        message = WITHHELD
    record.msg, record.args = message, ()
    record.exc_info = record.exc_text = record.stack_info = None


def install_redaction() -> None:
    """Redact every log record of the process from now on (once; later calls change nothing)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
