"""What the gateway's error messages must not tell a client: file paths, hostnames
and addresses, stack traces.

The gateway passes its upstreams' client-facing messages on (a bad policy name, an
unknown model), and those are written to be safe; but an upstream's message can
still name a model by its file path, or a gRPC failure its peer's address. The
gateway checks every error message it returns, and every failure reason it puts in
a response, and replaces a message that looks like any of these with a generic one
of the same status. No library answers "does this text name a path or a host", so
the patterns below are written here; they err on the side of withholding."""

from __future__ import annotations

import copy
import re

from services.common import errors

_PATTERNS = (
    # Stack traces and their frames.
    re.compile(r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+"),
    # Absolute POSIX paths with a folder (/models/x.gguf, /home/ana), home and
    # Windows paths, file: URLs.
    re.compile(r"(?:^|[\s'\"(\[=:,])(?:~|\.{1,2})?/[\w.@+-]+/[\w.@+-]*"),
    re.compile(r"(?:^|[\s'\"(\[=:,])~/"),
    re.compile(r"\b[A-Za-z]:\\\\?[\w.-]"),
    # Relative paths to files of the kinds a deployment keeps (models, config, keys).
    re.compile(
        r"[\w.-]+/[\w./-]*\.(?:gguf|bin|safetensors|onnx|pt|py|toml|ya?ml|json|pem|key|crt|sock)\b",
        re.IGNORECASE,
    ),
    # URLs and gRPC targets (dns:///, ipv4:, unix:).
    re.compile(r"\b[a-z][a-z0-9+.-]*://", re.IGNORECASE),
    re.compile(r"\b(?:ipv4|ipv6|unix|unix-abstract|dns|xds):", re.IGNORECASE),
    # IP addresses, host:port, and the names of hosts in a cluster or on a machine.
    re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    re.compile(r"\[[0-9a-f:]*:[0-9a-f:]*\]", re.IGNORECASE),
    re.compile(r"\b[\w-]+(?:\.[\w-]+)*:\d{2,5}\b"),
    re.compile(r"\blocalhost\b", re.IGNORECASE),
    re.compile(
        r"\b[\w-]+(?:\.[\w-]+)*\.(?:local|localdomain|internal|svc|cluster|lan|corp|home)\b",
        re.IGNORECASE,
    ),
)

#: Messages that replace a leaky one, by the status its error maps to.
GENERIC: dict[type[errors.AtalayaError], str] = {
    errors.InvalidArgument: "the request is invalid",
    errors.NotFound: "not found",
    errors.FailedPrecondition: "the request cannot run in the current state",
    errors.ResourceExhausted: "resources are exhausted; retry later",
    errors.Unavailable: "a service the gateway needs is unavailable",
    errors.DeadlineExceeded: "the deadline passed",
    errors.Unimplemented: "not supported",
    errors.Unauthenticated: "invalid credentials",
    errors.PermissionDenied: "permission denied",
}
FALLBACK = "the request failed"


def leaks(text: str) -> bool:
    """True when `text` looks like it names a path, a host or a stack frame."""
    return any(p.search(text) for p in _PATTERNS)


def safe_text(text: str, fallback: str = FALLBACK) -> str:
    return fallback if leaks(text) else text


def generic_message(exc: errors.AtalayaError) -> str:
    for cls in type(exc).__mro__:
        message = GENERIC.get(cls)
        if message is not None:
            return message
    return FALLBACK


def redacted(exc: errors.AtalayaError) -> errors.AtalayaError:
    """`exc` itself when its message is safe; else a copy (same class, same retry
    delay) with the generic message of its status."""
    if not leaks(str(exc)):
        return exc
    clean = copy.copy(exc)
    clean.args = (generic_message(exc),)
    return clean
