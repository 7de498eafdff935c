"""The dependency failures one request has seen, so that a deadline tells the caller what went wrong.

When the deadline ends a request that was waiting on a dependency already seen failing (storage
retrying through an outage, backends refusing connections), the caller should get that dependency's
documented problem (a 503 with Retry-After), not a generic 504: the 504 is for a model that was slow
to answer. Each request starts a fresh record (`begin`); the tasks it starts share it, since they copy
the context and the record is one mutable object; the storage client's retries and the backend pool
note what failed (`seen`); the deadline asks for the last one (`last`).
"""

from __future__ import annotations

from contextvars import ContextVar

from .errors import ServiceError

_seen: ContextVar[list[ServiceError] | None] = ContextVar("realtime_speech_incidents", default=None)


def begin() -> None:
    """Start this request's record (in the request's own task, before it starts others)."""
    _seen.set([])


def seen(error: ServiceError) -> None:
    """Note a dependency failure of the current request (nothing outside a request)."""
    record = _seen.get()
    if record is not None:
        record.append(error)


def last() -> ServiceError | None:
    """The latest dependency failure the current request saw, if any."""
    record = _seen.get()
    return record[-1] if record else None
