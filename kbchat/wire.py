"""What travels between a kbchat host and its clients: server-sent events, error bodies and edit
records as JSON, read back into the same types."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import httpx

from kbchat.errors import KbchatError, error_class
from kbchat.records import CheckRecord, EditRecord


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data of each server-sent event (multi-line data joined with newlines; comments skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def error_from_body(body: Any, status: int) -> KbchatError:
    """The KbchatError an error body describes ({"error": {"message", "code", ...}})."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return KbchatError(f"the host answered HTTP {status}: {str(body)[:200]}")
    return error_class(error.get("code"))(str(error.get("message") or f"HTTP {status}"))


def error_from_response(response: httpx.Response) -> KbchatError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_from_body(body, response.status_code)


def record_from_json(data: Mapping[str, Any]) -> EditRecord:
    """The inverse of `EditRecord.to_json()`."""
    fields = dict(data)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    if fields.get("reverted_at"):
        fields["reverted_at"] = datetime.fromisoformat(fields["reverted_at"])
    fields["checks"] = tuple(CheckRecord(**c) for c in fields.get("checks") or ())
    known = EditRecord.__dataclass_fields__
    return EditRecord(**{k: v for k, v in fields.items() if k in known})
