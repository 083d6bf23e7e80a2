"""Error messages that would name a path, a host or a stack frame are replaced;
the messages the services actually return stay as they are."""

from __future__ import annotations

import pytest

from services.common import errors
from services.gateway.redaction import generic_message, leaks, redacted, safe_text

LEAKY = [
    "generation: model 'x' is not served here (serving '/models/smollm2-360m.gguf')",
    "guardrail: policy file /etc/atalaya/policies.toml is invalid",
    "cannot open ~/models/llama.gguf",
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052",
    "memory: could not connect to server at postgres.atalaya.svc.cluster.local",
    "upstream at guardrail:50051 refused",
    "http://10.0.0.7:8000/v1/chat/completions returned 500",
    "connect to [::1]:50051 failed",
    'Traceback (most recent call last):\n  File "/app/services/x.py", line 3, in f',
    'File "core.py", line 12, in chat',
    "see C:\\models\\llama.gguf",
    "localhost refused the connection",
    "model 'models/smollm2-360m-instruct-q8_0.gguf' failed to load",
]

SAFE = [
    "user_id is required",
    "user_id is longer than 128 characters",
    "options.moderation_mode: unknown value 99",
    "sampling.top_p must be in (0, 1], got 1.5",
    "model 'smollm2' is not served here (serving 'smollm2-q4')",
    "model 'meta-llama/Llama-3.1-8B-Instruct' is not served by generation",
    "guardrail: queue full (3 items waiting, limit 10)",
    "messages[0].content is blank",
    "the message does not fit m's context window of 4096 tokens with max_tokens 512",
    "the user's request rate is used up; retry in 0.500 s",
    "guardrail service is unavailable",
    "memory failed (store): RuntimeError",
    "input/output tokens",
]


@pytest.mark.parametrize("text", LEAKY)
def test_paths_hosts_and_traces_are_found(text: str) -> None:
    assert leaks(text)
    assert safe_text(text, "withheld") == "withheld"


@pytest.mark.parametrize("text", SAFE)
def test_ordinary_messages_pass(text: str) -> None:
    assert not leaks(text)
    assert safe_text(text) == text


def test_a_leaky_error_keeps_its_class_and_retry_delay() -> None:
    exc = errors.ResourceExhausted("queue at 10.1.2.3:9000 is full", retry_after_s=2.0)
    clean = redacted(exc)
    assert isinstance(clean, errors.ResourceExhausted) and clean is not exc
    assert str(clean) == generic_message(exc) and clean.retry_after_s == 2.0
    safe = errors.NotFound("no such session for this user")
    assert redacted(safe) is safe

    class Special(errors.NotFound):
        pass

    assert str(redacted(Special("/srv/x/y missing"))) == "not found"
