"""Structured logs: one JSON object per line, one event per line.

Use `log_event(logger, "vote_sent", node="ai-gov-01", proposal=7, tx=...)`. Never pass a key: the formatter
also masks anything that looks like a 32-byte hex secret, as a second line of defence.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

_SECRET_HEX = re.compile(r"(?<![0-9a-fA-Fx])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_HASH_FIELDS = {"tx", "tx_hash", "block_hash", "hash", "parent_hash", "topic", "content_hash"}


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"dloop_fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "dloop_fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                payload[key] = value if key in _HASH_FIELDS else _mask(value)
        if record.exc_info and record.exc_info[1] is not None:
            payload["error"] = _mask(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
        return json.dumps(payload, default=str, ensure_ascii=False)


def _mask(value: Any) -> Any:
    # Transaction and block hashes are 32 bytes too; they only travel in the fields named in _HASH_FIELDS.
    if isinstance(value, str):
        return _SECRET_HEX.sub("<redacted-32-bytes>", value)
    return value


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("web3", "websockets", "aiosqlite", "sqlalchemy", "uvicorn.access", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
