"""Structured logs, one event per line: JSON objects (the default, for journald and log shippers) or a
readable console line (`DLOOP_LOG_FORMAT=console`, for a person at a terminal).

Use `log_event(logger, "vote_sent", node="ai-gov-01", proposal=7, tx=...)`. Never pass a key: as a second
line of defence the formatters mask, in every field, the message text and the traceback, anything that
looks like a 32-byte hex secret (except in the hash fields of `_HASH_FIELDS`) and every secret the process
registered with `configure_logging(secrets=...)` (the node keys, the API token), wherever it appears.

An exception passed as `exc_info` is kept: its type and message as `error`, the whole traceback as
`traceback` (JSON) or indented below the line (console).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import math
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

_SECRET_HEX = re.compile(r"(?<![0-9a-fA-Fx])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_HASH_FIELDS = {"tx", "tx_hash", "block_hash", "hash", "parent_hash", "topic", "content_hash"}
_REDACTED_HEX = "<redacted-32-bytes>"
_REDACTED = "<redacted>"
LOG_FORMATS = ("json", "console")
# Shorter strings are not registered as secrets: masking "abc" everywhere would garble the logs.
_MIN_SECRET_LENGTH = 6
_NOISY = ("web3", "websockets", "aiosqlite", "sqlalchemy", "uvicorn.access", "httpx", "asyncio")


# Fields every event of the current task (and the tasks it starts) carries, e.g. the deployment it serves.
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "dloop_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every event logged inside (tasks started inside inherit them: anyio copies the
    context), so two deployments' listeners tell their lines apart without knowing of each other."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        context = _CONTEXT.get()
        logger.log(level, event, extra={"dloop_fields": {**context, **fields} if context else fields})


class Masker:
    """Replaces secrets in text: registered values (any case, with or without 0x) and 32-byte hex."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            variants.add(secret)
            if secret.lower().startswith("0x"):
                variants.add(secret[2:])
        kept = sorted((v for v in variants if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
        self._exact = re.compile("|".join(re.escape(v) for v in kept), re.IGNORECASE) if kept else None
        self._folded = tuple(v.lower() for v in kept) if all(v.isascii() for v in kept) else None

    def text(self, value: str, *, keep_hex: bool = False) -> str:
        if self._exact is not None and self._may_hold_secret(value):
            value = self._exact.sub(_REDACTED, value)
        if keep_hex or len(value) < 64:  # a 32-byte hex secret is 64 digits long
            return value
        return _SECRET_HEX.sub(_REDACTED_HEX, value)

    def _may_hold_secret(self, value: str) -> bool:
        """A quick test before the regex (every field of every line passes here): an ASCII value holds a
        registered ASCII secret, in any case, only if its lower case contains the secret's."""
        if self._folded is None or not value.isascii():
            return True
        folded = value.lower()
        return any(secret in folded for secret in self._folded)

    def value(self, value: Any, *, keep_hex: bool = False) -> Any:
        """`value` made JSON-safe with every string in it masked (lists, tuples and dicts walked)."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value, keep_hex=keep_hex)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v, keep_hex=keep_hex) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, keep_hex=keep_hex) for v in value]
        if isinstance(value, bytes | bytearray | memoryview):
            return self.text("0x" + bytes(value).hex(), keep_hex=keep_hex)
        return self.text(str(value), keep_hex=keep_hex)


class _EventFormatter(logging.Formatter):
    def __init__(self, masker: Masker | None = None) -> None:
        super().__init__()
        self.masker = masker or Masker()

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's event, fields, error and traceback, all masked."""
        mask = self.masker
        out: dict[str, Any] = {"event": mask.text(record.getMessage())}
        fields = getattr(record, "dloop_fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                # Transaction and block hashes are 32 bytes too; they only travel in these fields.
                out[str(key)] = mask.value(value, keep_hex=key in _HASH_FIELDS)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = mask.text(f"{type(exc).__name__}: {exc}")
            out["traceback"] = mask.text(self.formatException(record.exc_info).rstrip("\n"))
        elif record.exc_text:
            out["traceback"] = mask.text(record.exc_text.rstrip("\n"))
        if record.stack_info:
            out["stack"] = mask.text(self.formatStack(record.stack_info).rstrip("\n"))
        return out

    def formatException(self, ei: Any) -> str:
        return "".join(traceback.format_exception(*ei))


class JsonFormatter(_EventFormatter):
    """One JSON object per line: ts, level, logger, event, the event's fields, error and traceback."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        payload.update(self.fields(record))
        return json.dumps(payload, default=str, ensure_ascii=False)


class ConsoleFormatter(_EventFormatter):
    """`2026-01-02T03:04:05.678Z INFO  vote_sent node=ai-gov-01 proposal=7  [dloop.voter]`, one line per
    event; a traceback follows, indented."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        event = str(fields.pop("event")).replace("\r", "\\r").replace("\n", "\\n")
        trace = fields.pop("traceback", None)
        stack = fields.pop("stack", None)
        pairs = " ".join(f"{key}={_console_value(value)}" for key, value in fields.items())
        line = f"{_timestamp(record)} {record.levelname:<7} {event}"
        line = f"{line} {pairs}" if pairs else line
        line = f"{line}  [{record.name}]"
        for block in (trace, stack):
            if block:
                line += "\n" + "\n".join("    " + part for part in str(block).splitlines())
        return line


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text: lines come many a second


def _timestamp(record: logging.LogRecord) -> str:
    """As `datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")` with "Z" (microseconds
    rounded half to even, then cut to milliseconds), the date and time formatted once per second."""
    whole = math.floor(record.created)
    micros = round((record.created - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if _second[0] != whole:
        _second[:] = [whole, dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{micros // 1000:03d}Z"


def _console_value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=" for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def make_formatter(log_format: str = "json", secrets: Iterable[str] = ()) -> logging.Formatter:
    masker = Masker(secrets)
    if log_format == "json":
        return JsonFormatter(masker)
    if log_format == "console":
        return ConsoleFormatter(masker)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")


def configure_logging(level: str = "INFO", log_format: str = "json", *, secrets: Iterable[str] = ()) -> None:
    """Every log record of the process to stderr, one event per line, in `log_format`; `secrets` (the
    node keys, the API token) are masked wherever they would appear."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
