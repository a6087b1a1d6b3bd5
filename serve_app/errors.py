"""Domain errors. Raise them anywhere; the ingress turns them into HTTP responses in exactly one place.

They cross Ray process boundaries (a preprocess replica raises, the ingress catches), so each keeps all its
state in ``args`` and pickles without a custom ``__reduce__``.
"""

from __future__ import annotations

from serve_app.protocol import ErrorBody, ErrorResponse


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the offending field."""


class ServeFleetError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None
    retryable = False

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param, code)

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def param(self) -> str | None:
        return self.args[1] if len(self.args) > 1 else None

    @property
    def code(self) -> str | None:
        code = self.args[2] if len(self.args) > 2 else None
        return code or self.default_code

    def __str__(self) -> str:
        return self.message

    def response_headers(self) -> dict[str, str]:
        """Headers the HTTP response carries for this error (subclasses add e.g. a computed Retry-After)."""
        return {"retry-after": "1"} if self.retryable else {}

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.error_type, param=self.param, code=self.code)
        )


class InvalidRequest(ServeFleetError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class ModelNotFound(ServeFleetError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class Conflict(ServeFleetError):
    """The request is well formed but the app's state does not allow it (e.g. promoting with no rollout)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class EngineUnavailable(ServeFleetError):
    """The engine pool could not take or finish the request; the client may retry."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "engine_unavailable"
    retryable = True


class Overloaded(ServeFleetError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "overloaded"
    retryable = True


class InternalError(ServeFleetError):
    pass
