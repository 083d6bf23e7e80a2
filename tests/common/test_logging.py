"""services.common.logging: the JSON line, trace ids, extras, exceptions, user
content kept out; and the rule that identifiers go in `extra=`, enforced on the
formatter (a record with %-arguments shows as a defect) and on the source tree
(an AST walk of services/ and loadtests/)."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common.logging import (
    LOG_DEFECT,
    RESERVED_FIELDS,
    ExtrasFormatter,
    JsonFormatter,
    configure_logging,
    configure_text_logging,
    show_extras,
)
from services.guardrail.config import GuardrailSettings
from services.guardrail.core import ClassifyCall, GuardrailCore
from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.policy import resolve_policies
from services.guardrail.protocol import ALL_CODES, PRIVACY

ROOT = Path(__file__).resolve().parents[2]


class Lines:
    """A logger whose records go through a formatter into a list of lines."""

    def __init__(self, name: str, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(formatter)
        self.logger = logging.getLogger(name)
        self.logger.handlers[:] = [handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def text(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines("services.test_logging", JsonFormatter("gateway"))
    yield captured
    captured.logger.handlers.clear()


# --- the JSON line ------------------------------------------------------------------


def test_a_line_is_one_json_object_with_the_fixed_fields(lines: Lines) -> None:
    lines.logger.info("turn not stored")
    [raw] = lines.text()
    line = json.loads(raw)
    assert set(line) == {"ts", "level", "service", "logger", "msg"}
    assert line["level"] == "INFO"
    assert line["service"] == "gateway"
    assert line["logger"] == "services.test_logging"
    assert line["msg"] == "turn not stored"
    assert datetime.fromisoformat(line["ts"]).utcoffset() == timedelta(0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])


def test_inside_a_span_the_line_has_its_trace_and_span_ids(
    lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")  # the suite turns the SDK off
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner") as span:
        lines.logger.warning("guardrail failed")
    lines.logger.warning("after the span")
    inside, after = lines.json()
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert len(inside["trace_id"]) == 32 and len(inside["span_id"]) == 16
    assert "trace_id" not in after and "span_id" not in after


def test_extras_are_fields_of_the_line(lines: Lines) -> None:
    lines.logger.info(
        "model loaded",
        extra={"model": "smollm2", "n_ctx": 2048, "codes": ["S1", "S7"], "path": Path("/m")},
    )
    [line] = lines.json()
    assert line["msg"] == "model loaded"
    assert line["model"] == "smollm2"
    assert line["n_ctx"] == 2048  # numbers stay numbers
    assert line["codes"] == ["S1", "S7"]
    assert line["path"] == "/m"  # what JSON cannot hold is written as text


def test_an_exception_is_written_with_its_traceback(lines: Lines) -> None:
    try:
        raise RuntimeError("engine crashed")
    except RuntimeError:
        lines.logger.exception("batch failed", extra={"batch_size": 3})
    [line] = lines.json()
    assert line["level"] == "ERROR"
    assert line["msg"] == "batch failed"
    assert line["batch_size"] == 3
    assert line["exc"].startswith("Traceback (most recent call last)")
    assert line["exc"].rstrip().endswith("RuntimeError: engine crashed")


def test_non_ascii_is_written_as_is(lines: Lines) -> None:
    lines.logger.info("turn stored", extra={"user_id": "añá"})
    assert '"añá"' in lines.text()[0]


# --- identifiers in the message: a defect the line shows ------------------------------


def test_own_record_with_arguments_is_marked_as_a_defect(lines: Lines) -> None:
    lines.logger.warning("turn not stored (request %s): %s", "r-17", "memory down")
    [line] = lines.json()
    assert line["msg"] == "turn not stored (request %s): %s"  # the constant part only
    assert line["log_defect"] == LOG_DEFECT
    assert line["log_args"] == ["r-17", "memory down"]
    assert "r-17" not in line["msg"]


def test_other_libraries_records_are_formatted_as_they_were() -> None:
    captured = Lines("somelib.client", JsonFormatter("gateway"))
    captured.logger.info("HTTP Request: %s %s", "POST", "http://x/v1")
    [line] = captured.json()
    assert line["msg"] == "HTTP Request: POST http://x/v1"
    assert "log_defect" not in line and "log_args" not in line


def test_a_line_without_arguments_has_no_defect_fields(lines: Lines) -> None:
    lines.logger.info("started", extra={"port": 50051})
    [line] = lines.json()
    assert "log_defect" not in line and "log_args" not in line


# --- user content stays out of the logs -----------------------------------------------

SECRET = "my card is 4111 1111 1111 1111 and I live at 12 Calle Sol"


class _Detector(Detector):
    def __init__(self, name: DetectorName, outcome: Verdict | Exception) -> None:
        self.name = name
        self._outcome = outcome

    def covers(self) -> frozenset[str]:
        return frozenset({PRIVACY}) if self.name is DetectorName.PII else ALL_CODES

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        if isinstance(self._outcome, Exception):
            raise self._outcome
        error = "no verdict line" if self._outcome is Verdict.UNPARSEABLE else ""
        return DetectorResult(self.name, self._outcome, error=error)


async def test_failing_detectors_log_identifiers_and_reasons_not_the_message() -> None:
    captured = Lines("services.guardrail", JsonFormatter("guardrail"))
    try:
        detectors: dict[DetectorName, Detector] = {
            DetectorName.PII: _Detector(DetectorName.PII, Verdict.SAFE),
            DetectorName.SEMANTIC: _Detector(DetectorName.SEMANTIC, RuntimeError("oom")),
            DetectorName.LLAMA_GUARD: _Detector(DetectorName.LLAMA_GUARD, Verdict.UNPARSEABLE),
        }
        settings = GuardrailSettings()
        core = GuardrailCore(detectors, resolve_policies(settings.policies), settings)
        call = ClassifyCall("req-9", [("user", SECRET)], policy="parallel")
        outcome = await core.classify(call)
    finally:
        captured.logger.handlers.clear()
    assert outcome.fail_mode_applied
    logged = {line["msg"]: line for line in captured.json()}
    assert len(captured.text()) == 3
    assert set(logged) == {"detector failed", "detector answer unparseable", "fail mode applied"}
    assert all(line["request_id"] == "req-9" for line in logged.values())
    failed = logged["detector failed"]
    assert failed["detector"] == "semantic" and failed["error_type"] == "RuntimeError"
    assert "RuntimeError: oom" in failed["exc"]
    unparseable = logged["detector answer unparseable"]
    assert unparseable["detector"] == "llama_guard" and unparseable["reason"] == "no verdict line"
    assert logged["fail mode applied"]["policy"] == "parallel"
    for raw in captured.text():
        assert "4111" not in raw and "Calle Sol" not in raw


# --- terminals: the extras as key=value -------------------------------------------------


def test_extras_formatter_appends_the_fields_and_keeps_the_rest() -> None:
    captured = Lines("services.stack.traces", ExtrasFormatter(logging.Formatter("%(message)s")))
    captured.logger.info("receiving OTLP traces", extra={"endpoint": "127.0.0.1:4317"})
    captured.logger.info("stopped")
    try:
        raise ValueError("disk full")
    except ValueError:
        captured.logger.exception("cannot store spans", extra={"reason": "disk full"})
    first, second, third, *traceback = captured.text()
    assert first == "receiving OTLP traces endpoint=127.0.0.1:4317"
    assert second == "stopped"
    assert third == "cannot store spans reason=disk full"
    assert traceback[0].startswith("Traceback") and traceback[-1] == "ValueError: disk full"


def test_show_extras_wraps_handlers_once() -> None:
    handler = logging.StreamHandler(io.StringIO())
    inner = logging.Formatter("[x] %(message)s")
    handler.setFormatter(inner)
    show_extras([handler])
    show_extras([handler])
    record = logging.LogRecord(
        "atalaya.loadtest", logging.INFO, "", 0, "report written", None, None
    )
    record.report_dir = "out"
    assert handler.format(record) == "[x] report written report_dir=out"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)


def test_configure_logging_sends_json_lines_to_stdout(
    root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("memory", "WARNING")
    configure_logging("memory", "WARNING")  # again: still one handler
    assert len(root_logging.handlers) == 1
    assert root_logging.level == logging.WARNING
    logging.getLogger("services.memory.store").warning("schema migrated", extra={"versions": 2})
    logging.getLogger("services.memory.store").info("not shown")
    assert logging.getLogger("httpx").level == logging.WARNING
    [raw] = capsys.readouterr().out.splitlines()
    line = json.loads(raw)
    assert (line["service"], line["msg"], line["versions"]) == ("memory", "schema migrated", 2)


def test_configure_text_logging_writes_key_values_to_stderr(
    root_logging: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_text_logging()
    logging.getLogger("__main__").info("receiving OTLP traces", extra={"path": "spans.jsonl"})
    assert capsys.readouterr().err == "INFO __main__: receiving OTLP traces path=spans.jsonl\n"


# --- the rule over the source tree ---------------------------------------------------

LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal"})
LOGGER_NAMES = frozenset({"log", "logger", "logging", "_log", "_logger"})
FIELD = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def _receiver(node: ast.expr) -> str | None:
    """The name a call is made on: `log`, `self._log`, `logging.getLogger(...)`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call) and _receiver(node.func) == "getLogger":
        return "logger"
    return None


def _logger_names(tree: ast.AST) -> set[str]:
    """Names bound to logging.getLogger(...) anywhere in the module, plus the usual ones."""
    names = set(LOGGER_NAMES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if _receiver(func) == "getLogger":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {name for t in targets if (name := _receiver(t)) is not None}
    return names


def _is_logger(name: str, bound: set[str]) -> bool:
    lowered = name.lower()
    return name in bound or lowered in LOGGER_NAMES or lowered.endswith(("_log", "_logger"))


def log_calls(source: str) -> list[ast.Call]:
    tree = ast.parse(source)
    bound = _logger_names(tree)
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and (node.func.attr in LEVELS or node.func.attr == "log")
            and (name := _receiver(node.func.value)) is not None
            and _is_logger(name, bound)
        ):
            calls.append(node)
    return calls


def log_call_problems(source: str, where: str = "<string>") -> list[str]:
    """Every logging call whose message is not a plain string literal, that passes
    %-arguments, or whose extra= is not a dict of snake_case, unreserved names."""
    problems = []
    for call in log_calls(source):
        at = f"{where}:{call.lineno}"
        args = call.args[1:] if call.func.attr == "log" else call.args  # type: ignore[attr-defined]
        if not args:
            problems.append(f"{at}: no message")
            continue
        message, rest = args[0], args[1:]
        if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
            problems.append(f"{at}: the message is not a string literal ({ast.unparse(message)})")
        if rest:
            problems.append(f"{at}: arguments formatted into the message; use extra=")
        for keyword in call.keywords:
            if keyword.arg is None:
                problems.append(f"{at}: **kwargs hide what is logged")
            elif keyword.arg == "extra":
                problems += [f"{at}: {p}" for p in _extra_problems(keyword.value)]
    return problems


def _extra_problems(extra: ast.expr) -> list[str]:
    if not isinstance(extra, ast.Dict):
        return ["extra= is not a dict literal, so its fields cannot be checked"]
    problems = []
    for key in extra.keys:
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            problems.append("an extra field name is not a string literal")
        elif not FIELD.fullmatch(key.value):
            problems.append(f"extra field {key.value!r} is not snake_case")
        elif key.value in RESERVED_FIELDS:
            problems.append(f"extra field {key.value!r} collides with the record or the line")
    return problems


BAD = {
    "f-string": 'log.info(f"model {name} loaded")',
    "%-arguments": 'log.warning("turn not stored (request %s)", request_id)',
    "%-operator": 'log.warning("turn not stored (request %s)" % request_id)',
    "format": 'log.info("model {} loaded".format(name))',
    "concatenation": 'log.error("cannot load " + path)',
    "a variable": "log.error(exc)",
    "str()": "log.error(str(exc))",
    "log(level, ...)": 'log.log(logging.INFO, "loaded %s", name)',
    "module-level logging": 'logging.warning("bad %s", x)',
    "self._log": 'self._log.info(f"{x}")',
    "any logger name": 'audit = logging.getLogger("audit")\naudit.info(f"{user}")',
    "getLogger().info": 'logging.getLogger(__name__).info("x=%d", x)',
    "camelCase field": 'log.info("loaded", extra={"requestId": r})',
    "reserved: msg": 'log.info("loaded", extra={"msg": m})',
    "reserved: name": 'log.info("loaded", extra={"name": n})',
    "reserved: service": 'log.info("loaded", extra={"service": s})',
    "extra not a literal": 'log.info("loaded", extra=fields)',
    "**kwargs": 'log.info("loaded", **kw)',
    "no message": "log.info()",
}


@pytest.mark.parametrize("source", BAD.values(), ids=BAD.keys())
def test_the_checker_finds_a_planted_defect(source: str) -> None:
    assert log_calls(source), "the checker did not see the call"
    assert log_call_problems(source)


def test_the_checker_passes_structured_calls_and_ignores_other_calls() -> None:
    good = """
log = logging.getLogger(__name__)
log.info("model loaded", extra={"model": name, "n_ctx": 2048})
log.warning("health check failed", extra={"model": name}, exc_info=True)
log.exception("batch failed", extra={"batch_size": len(batch)})
log.log(logging.INFO, "draining", extra={"grace_period_s": 2.0})
self._logger.debug(
    "a long constant message "
    "over two lines",
)
math.log(x)
catalog.error(f"not a logger {x}")
raise Unavailable(f"model {name!r} is not loaded")
"""
    assert len(log_calls(good)) == 5
    assert log_call_problems(good) == []


def _sources() -> list[Path]:
    return sorted(p for top in ("services", "loadtests") for p in (ROOT / top).rglob("*.py"))


def test_no_logging_call_in_the_tree_formats_values_into_its_message() -> None:
    problems: list[str] = []
    calls_per_file: dict[str, int] = {}
    for path in _sources():
        where = str(path.relative_to(ROOT))
        source = path.read_text(encoding="utf-8")
        calls_per_file[where] = len(log_calls(source))
        problems += log_call_problems(source, where)
    assert problems == []
    # The walk saw the tree: the files that log are there, with their calls.
    assert calls_per_file["services/gateway/core.py"] >= 3
    assert calls_per_file["services/common/server.py"] >= 5
    assert calls_per_file["loadtests/locust/locustfile.py"] >= 4
    assert sum(calls_per_file.values()) >= 50
