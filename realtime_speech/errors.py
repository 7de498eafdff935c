"""The failures a caller can see, each with a stable code, an HTTP status and an RFC 9457 rendering.

Every module raises these; only the HTTP edge turns them into responses. Details never carry
secrets: tokens, keys and SAS signatures stay out of every message.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "urn:realtime-speech:problem:"
DEFAULT_RETRY_AFTER_SECONDS = 5.0


class ServiceError(Exception):
    """A failure with a documented status. Subclasses set `status`, `code` and `title`; the ones a
    caller should retry later (429, 503) also set `default_retry_after`, so they always carry a
    `Retry-After`."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    default_retry_after: ClassVar[float | None] = None

    def __init__(self, detail: str, *, retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.param = param
        """The request field at fault, when one is (named in OpenAI-shaped errors)."""
        self.asked_retry_after = retry_after
        """The wait a dependency asked for (e.g. an upstream `Retry-After`), None when it named none."""
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after
        """The wait the caller is told (`Retry-After`)."""

    def problem(self, request_id: str) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": request_id,
        }


class InvalidRequest(ServiceError):
    status, code, title = 400, "invalid-request", "The request is not valid"


class ContextTooLong(InvalidRequest):
    code, title = "context-length-exceeded", "The conversation does not fit the model's context"


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload-too-large", "The request body is too large"


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported-media-type", "The request's media type is not supported"


class NotFound(ServiceError):
    status, code, title = 404, "not-found", "Not found"


class NotConfigured(ServiceError):
    status, code, title = 500, "not-configured", "The function app is not configured"


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency-key-reused", "The Idempotency-Key was used for another request"


class UpstreamRateLimited(ServiceError):
    status, code, title = 429, "upstream-rate-limited", "The model's rate limit was reached"
    default_retry_after = DEFAULT_RETRY_AFTER_SECONDS


class TooManySessions(ServiceError):
    """MAX_CONCURRENT_SESSIONS reached: another instance, or this one a moment later, takes the request."""

    status, code, title = 429, "too-many-sessions", "The instance is answering as many questions as it may"
    default_retry_after = 1.0


class RequestTimeout(ServiceError):
    status, code, title = 408, "request-timeout", "The request body did not arrive in time"


class UpstreamAuthFailed(ServiceError):
    status, code, title = 502, "upstream-auth-failed", "The model refused the app's credentials"


class UpstreamFailed(ServiceError):
    status, code, title = 502, "upstream-failed", "The model did not complete the answer"


class BackendMisconfigured:
    """A handshake refusal that says one backend of the pool is set up wrongly, not that the model is
    busy or down: the backend pool counts it against that backend (its circuit opens)."""


class DeploymentNotFound(BackendMisconfigured, UpstreamFailed):
    """404 at the handshake: the backend's resource has no deployment of that name."""


class BackendAccessDenied(BackendMisconfigured, UpstreamAuthFailed):
    """403 at the handshake: the app's identity lacks the role on that backend's resource."""


class UpstreamUnavailable(ServiceError):
    status, code, title = 503, "upstream-unavailable", "The model could not be reached"
    default_retry_after = DEFAULT_RETRY_AFTER_SECONDS


class IdentityUnavailable(ServiceError):
    status, code, title = 503, "identity-unavailable", "The managed identity could not provide a token"
    default_retry_after = DEFAULT_RETRY_AFTER_SECONDS


class StorageUnavailable(ServiceError):
    status, code, title = 503, "storage-unavailable", "Blob storage could not be reached"
    default_retry_after = DEFAULT_RETRY_AFTER_SECONDS


class DeadlineExceeded(ServiceError):
    status, code, title = 504, "deadline-exceeded", "The answer took longer than the deadline"
