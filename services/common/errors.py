"""Domain errors. Service cores raise these; one server interceptor maps them to
gRPC status codes (services.common.interceptors). Their messages are shown to
clients, so they must never carry prompts, completions or internal details."""

from __future__ import annotations


class AtalayaError(Exception):
    """Base class for errors whose message is safe to return to a client."""


class InvalidArgument(AtalayaError):
    """The request is malformed or exceeds a documented limit."""


class NotFound(AtalayaError):
    """The named entity does not exist (for this caller)."""


class FailedPrecondition(AtalayaError):
    """The system is not in a state in which the request can run."""


class ResourceExhausted(AtalayaError):
    """A queue or quota is full; the client should back off and retry (after
    `retry_after_s` seconds, when the server knows)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(AtalayaError):
    """The caller's credentials are missing or invalid. The message never says which
    check failed: that would help an attacker."""


class PermissionDenied(AtalayaError):
    """The caller is known but may not do this (another user's data, a service the
    allowlist does not let it call)."""


class Unavailable(AtalayaError):
    """A dependency (database, model, downstream service) cannot be reached now."""


class DeadlineExceeded(AtalayaError):
    """The request's deadline passed before the work finished."""


class Unimplemented(AtalayaError):
    """The operation is not supported by this deployment or backend."""
