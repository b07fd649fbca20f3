"""Logs: tracebacks kept, secrets masked in every field, the message text and the traceback, in both formats
(JSON and console), and DLOOP_LOG_FORMAT wired from the settings through `dloop run`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from core.logs import ConsoleFormatter, JsonFormatter, Masker, configure_logging, log_event, make_formatter

REPO = Path(__file__).resolve().parents[1]
KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
TX_HASH = "0x" + "ab" * 32
TOKEN = "api-token-0c1d2e3f"


def _record(
    message: str, *args: object, exc: BaseException | None = None, **fields: object
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("dloop.test", logging.ERROR, __file__, 1, message, args, exc_info)
    record.dloop_fields = fields
    return record


def _failure() -> ValueError:
    try:
        raise ValueError(f"could not sign with {KEY} (token {TOKEN})")
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secrets_masked_everywhere_and_hashes_kept(log_format: str) -> None:
    formatter = make_formatter(log_format, secrets=[KEY, TOKEN])
    record = _record(
        "signing %s failed for %s",
        KEY.removeprefix("0x").upper(),  # any case, without 0x
        TOKEN,
        exc=_failure(),
        detail=f"key {KEY}",
        nested={"keys": [KEY], TOKEN: 1},
        raw=bytes.fromhex(KEY[2:]),
        tx_hash=TX_HASH,
    )
    text = formatter.format(record)
    assert KEY[2:].lower() not in text.lower() and TOKEN not in text, text
    assert TX_HASH in text  # hash fields keep their 32 bytes
    assert "Traceback (most recent call last)" in text and "_failure" in text
    assert "<redacted" in text


def test_json_keeps_the_traceback_as_a_field() -> None:
    line = JsonFormatter(Masker([TOKEN])).format(_record("round_crashed", exc=_failure(), round=3))
    assert "\n" not in line
    payload = json.loads(line)
    assert payload["event"] == "round_crashed" and payload["round"] == 3 and payload["level"] == "error"
    assert payload["error"].startswith("ValueError: could not sign with <redacted-32-bytes>")
    assert payload["traceback"].startswith("Traceback (most recent call last)")
    assert payload["traceback"].rstrip().endswith("(token <redacted>)")


def test_console_is_one_readable_line_with_the_traceback_indented_below() -> None:
    text = ConsoleFormatter().format(
        _record("vote_failed", exc=_failure(), node="ai-gov-01", proposal=7, reason="gas too low", ok=True)
    )
    first, *rest = text.splitlines()
    assert first.startswith("20") and first.endswith("[dloop.test]")
    assert ' ERROR   vote_failed node=ai-gov-01 proposal=7 reason="gas too low" ok=true error=' in first
    assert rest and all(line.startswith("    ") for line in rest)
    assert rest[0].strip() == "Traceback (most recent call last):"
    # A message with a line break is still one line.
    assert "\n" not in ConsoleFormatter().format(_record("two\nlines"))


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="json, console"):
        make_formatter("xml")


def test_configure_logging_routes_every_logger(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO", "console", secrets=[TOKEN])
        log_event(logging.getLogger("dloop.x"), "hello", token=TOKEN)
        logging.getLogger("some.library").warning("saw %s", TOKEN)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    err = capsys.readouterr().err
    assert "hello token=<redacted>" in err and "saw <redacted>" in err and TOKEN not in err


@pytest.mark.slow  # runs `dloop run` processes
def test_dloop_run_configures_logs_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dloop import commands

    for name in ("DLOOP_RPC_WS_URL", "DLOOP_CONTRACT_ADDRESS", "AI_NODE_1_PRIVATE_KEY", "DLOOP_LOG_FORMAT"):
        monkeypatch.setenv(name, ENV[name])
    monkeypatch.setenv("DLOOP_API_TOKEN", TOKEN)
    monkeypatch.delenv("DLOOP_EVENT_LOOP", raising=False)
    loops: list[str] = []
    # The settings and logs only, and the event loop the service would run on.
    monkeypatch.setattr(commands, "run_async", lambda *_args, event_loop: loops.append(event_loop))
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        assert commands.run_command(argparse.Namespace(env_file=None)) == 0
        formatter = root.handlers[0].formatter
        text = formatter.format(_record("oops %s", TOKEN, key=KEY)) if formatter else ""
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    assert isinstance(formatter, ConsoleFormatter)
    assert TOKEN not in text and KEY[2:] not in text and "oops <redacted> key=<redacted>" in text
    assert loops == ["uvloop"]  # DLOOP_EVENT_LOOP's default, auto, with uvloop installed


ENV = {
    "PATH": "/usr/bin:/bin",
    "DLOOP_RPC_WS_URL": "ws://127.0.0.1:9",
    "DLOOP_CONTRACT_ADDRESS": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "AI_NODE_1_PRIVATE_KEY": KEY,
    "DLOOP_LOG_FORMAT": "console",
    "PYTHONPATH": str(REPO),
}


@pytest.mark.slow  # runs a `dloop run` process
def test_a_wrong_log_format_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "dloop.cli", "run"],
        env={**ENV, "DLOOP_LOG_FORMAT": "yaml"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "dloop: error: DLOOP_LOG_FORMAT: must be json or console, got 'yaml'"
    ]


def test_log_context_fields_reach_every_event_inside_and_tasks_started_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two deployments' listeners log the same events: the deployment bound around each tells them apart."""
    import anyio

    from core.logs import log_context

    logger = logging.getLogger("dloop.test")

    async def main() -> None:
        async def child() -> None:
            log_event(logger, "in_task", proposal=1)

        with log_context(deployment="beta"):
            log_event(logger, "inside", deployment_hint="x")
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
        log_event(logger, "outside")

    with caplog.at_level(logging.INFO, logger="dloop.test"):
        anyio.run(main)
    fields = {r.getMessage(): r.dloop_fields for r in caplog.records}  # type: ignore[attr-defined]
    assert fields["inside"] == {"deployment": "beta", "deployment_hint": "x"}
    assert fields["in_task"] == {"deployment": "beta", "proposal": 1}
    assert fields["outside"] == {}


def test_registered_secrets_are_masked_in_any_case_inside_longer_text() -> None:
    token, key = "Tok3n-Secret", "0x" + "aB" * 32
    masker = Masker([token, key])
    for text in (f"bearer {token.upper()}!", f"x{token.lower()}y", f"key={key.upper()[2:]}", f"[{key}]"):
        assert "<redacted>" in masker.text(text, keep_hex=True), text
    assert masker.text("ai-gov-01") == "ai-gov-01"
    non_ascii = Masker(["Straße-token"])  # not ASCII: always the regex
    assert non_ascii.text("STRASSE-TOKEN or straße-TOKEN") == "STRASSE-TOKEN or <redacted>"


def test_the_timestamp_is_isoformats_to_the_millisecond() -> None:
    formatter = JsonFormatter()
    for created in (0.0, 1765087356.9995, 1765087356.9999996, 1740553295.419, 1765087356.0004):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "e", (), None)
        record.created = created
        expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(record))["ts"] == expected.replace("+00:00", "Z")
