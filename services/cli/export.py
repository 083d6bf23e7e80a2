"""`atalaya feedback-export`: stored feedback as CSV or JSON lines, for evaluation
(read from the memory service, where the gateway stores it with the turns)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

from atalaya.common.v1 import common_pb2
from atalaya.memory.v1 import memory_pb2

from services.cli.security import PLAINTEXT, Connection
from services.client import MemoryClient

FIELDS = (
    "user_id",
    "session_id",
    "turn_request_id",
    "score",
    "comment",
    "recorded_at",
    "model",
    "template",
    "user_message",
    "reply",
)


def row(record: memory_pb2.FeedbackRecord) -> dict[str, Any]:
    messages = {int(m.role): m.content for m in record.messages}
    meta: Mapping[str, str] = record.metadata
    return {
        "user_id": record.user_id,
        "session_id": record.session_id,
        "turn_request_id": record.turn_request_id,
        "score": round(float(record.score), 6),
        "comment": record.comment,
        "recorded_at": record.recorded_at.ToJsonString() if record.HasField("recorded_at") else "",
        "model": meta.get("model", ""),
        "template": meta.get("template", ""),
        "user_message": messages.get(common_pb2.ROLE_USER, ""),
        "reply": messages.get(common_pb2.ROLE_ASSISTANT, ""),
    }


def write(rows: Iterable[dict[str, Any]], fmt: str, out: IO[str]) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
            count += 1
    else:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            count += 1
    return count


async def export(
    target: str,
    user_id: str,
    fmt: str,
    out: IO[str],
    *,
    with_messages: bool,
    timeout_s: float,
    connection: Connection = PLAINTEXT,
) -> int:
    async with connection.connect(MemoryClient, target, timeout_s) as memory:
        records = [
            row(r)
            async for r in memory.export_feedback(user_id=user_id, include_messages=with_messages)
        ]
    count = write(records, fmt, out)
    print(f"{count} feedback records", file=sys.stderr)
    return 0
