"""Encrypted JSON keystores (geth/eth-account format), one file per node, sorted by file name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import ConfigError


def load_keystore_dir(directory: Path, password_file: Path) -> list[str]:
    if not directory.is_dir():
        raise ConfigError("DLOOP_KEYSTORE_DIR", f"{directory} is not a directory")
    try:
        password = password_file.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError("DLOOP_KEYSTORE_PASSWORD_FILE", f"cannot be read ({exc.strerror})") from None
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError("DLOOP_KEYSTORE_DIR", f"{directory} holds no keystore files")
    keys: list[str] = []
    for path in files:
        try:
            keys.append(decrypt(json.loads(path.read_text()), password))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                "DLOOP_KEYSTORE_DIR", f"{path.name} could not be decrypted with the password file"
            ) from None
    return keys


def decrypt(keyfile: Any, password: str) -> str:
    """The 0x-hex key of a parsed keystore; ValueError, KeyError or TypeError when it does not open."""
    # Imported here: eth-account (and the pydantic models it builds) costs about 5 MB of every `dloop run`,
    # and only a keystore directory needs it, once, at start-up.
    from eth_account import Account

    return "0x" + bytes(Account.decrypt(keyfile, password)).hex()
