"""Load-test settings: each one a Locust command-line option and an environment
variable (ATALAYA_LOADTEST_<NAME>), shown in Locust's web UI too."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from loadtests.locust.metrics import Slo
from services.common import topology

PROMPTS_PATH = Path(__file__).resolve().parents[1] / "prompts" / "conversations.jsonl"
SHAPES = ("constant", "step", "spike", "soak", "arrival")
TASKS = ("chat", "embed", "classify", "recall")


@dataclass(frozen=True)
class LoadSettings:
    gateway: str = topology.target("gateway")
    embedding: str = topology.target("embedding")
    guardrail: str = topology.target("guardrail")
    memory: str = topology.target("memory")
    chat_weight: int = 8
    embed_weight: int = 1
    classify_weight: int = 1
    recall_weight: int = 1
    think_min_s: float = 0.5
    think_max_s: float = 2.0
    arrival_rate: float = 0.0  # requests/s over all users; > 0 paces instead of think time
    shape: str = "constant"
    step_users: int = 2
    step_seconds: float = 10.0
    spike_users: int = 0  # 0: four times --users
    spike_at_s: float = 10.0
    spike_seconds: float = 10.0
    ramp_seconds: float = 10.0
    slo_ttft_p95_ms: float = 2000.0
    slo_tpot_p95_ms: float = 200.0
    slo_e2e_p95_ms: float = 30000.0
    max_tokens: int = 64
    moderation: str = "buffered"
    policy: str = ""
    classify_policy: str = "fast"
    prompts: str = str(PROMPTS_PATH)
    report_dir: str = ""
    max_requests: int = 0  # 0: no limit besides the run time
    request_timeout_s: float = 60.0
    server_metrics: str = ""  # Prometheus URLs (comma-separated) for the measurement check
    allow_remote: bool = False

    @property
    def slo(self) -> Slo:
        return Slo(self.slo_ttft_p95_ms, self.slo_tpot_p95_ms, self.slo_e2e_p95_ms)

    @property
    def weights(self) -> dict[str, int]:
        return {
            "chat": self.chat_weight,
            "embed": self.embed_weight,
            "classify": self.classify_weight,
            "recall": self.recall_weight,
        }

    @property
    def targets(self) -> dict[str, str]:
        return {
            "gateway": self.gateway,
            "embedding": self.embedding,
            "guardrail": self.guardrail,
            "memory": self.memory,
        }

    def validate(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, not {self.shape!r}")
        if self.moderation not in ("buffered", "optimistic"):
            raise ValueError("moderation must be buffered or optimistic")
        if min(self.weights.values()) < 0 or sum(self.weights.values()) == 0:
            raise ValueError("task weights must be >= 0 and not all 0")
        if not 0 <= self.think_min_s <= self.think_max_s:
            raise ValueError("think time needs 0 <= think_min_s <= think_max_s")
        if self.shape == "arrival" and self.arrival_rate <= 0:
            raise ValueError("the arrival shape needs --arrival-rate > 0")
        if not self.allow_remote:
            for name, target in self.targets.items():
                if not is_loopback(target):
                    raise ValueError(
                        f"{name} target {target} is not a loopback address; load tests "
                        "only target this machine unless --allow-remote is given"
                    )

    @classmethod
    def from_options(cls, options: Any) -> LoadSettings:
        """From a parsed namespace (Locust's parsed_options); missing names keep defaults."""
        values = {f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)}
        return cls(**values)


def is_loopback(target: str) -> bool:
    """True when host:port names an address on this machine's loopback."""
    host = target.rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: Any) -> None:
    """Register every setting on Locust's parser (configargparse: env_var works)."""
    group = parser.add_argument_group("Atalaya", "Atalaya load test (env ATALAYA_LOADTEST_*)")
    defaults = LoadSettings()
    helps = {
        "shape": f"load shape: one of {', '.join(SHAPES)}",
        "arrival_rate": "target requests/s over all users (paces users instead of think time)",
        "spike_users": "users during the spike (0: four times --users)",
        "max_requests": "stop after this many requests (0: only the run time bounds the test)",
        "report_dir": "write summary.json, turns.jsonl, report.html here at the end",
        "server_metrics": "Prometheus URLs of the gateway/generation (TTFT histogram sums)",
        "allow_remote": "allow targets that are not loopback addresses",
        "classify_policy": "guardrail policy of the classify task",
        "policy": "guardrail policy of chat turns (empty: the gateway's default)",
    }
    for f in fields(LoadSettings):
        default = getattr(defaults, f.name)
        env_var = "ATALAYA_LOADTEST_" + f.name.upper()
        help_text = helps.get(f.name, f.name.replace("_", " ")) + " (default %(default)s)"
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), action="store_true", env_var=env_var, help=help_text)
            continue
        kind: type[Any] = type(default)
        group.add_argument(
            _flag(f.name), type=kind, default=default, env_var=env_var, help=help_text
        )
