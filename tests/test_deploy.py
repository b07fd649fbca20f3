"""deploy/dloop.service: the systemd unit runs `dloop migrate` then `dloop run` as an unprivileged user with
its database under the state directory, restarts on failure, and is hardened. `systemd-analyze verify`
checks it when systemd is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "dloop.service"
INSTALLED_DLOOP = "/opt/dloop/bin/dloop"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd allows a key more than once; an empty value resets it)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        sections[current][key.strip()].append(value.strip())
    return sections


def test_unit_runs_migrate_then_run_unprivileged_with_state_under_var_lib() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service[key]) == 1, (key, service[key])
        return service[key][0]

    assert one("User") == "dloop" and one("Group") == "dloop"
    assert one("Restart") == "on-failure"
    assert one("StateDirectory") == "dloop"
    assert "DLOOP_DATABASE_URL=sqlite+aiosqlite:////var/lib/dloop/dloop.db" in service["Environment"]
    assert one("EnvironmentFile").startswith("/etc/dloop/")
    assert one("ExecStartPre") == f"{INSTALLED_DLOOP} migrate"
    assert one("ExecStart") == f"{INSTALLED_DLOOP} run"
    assert one("KillSignal") == "SIGTERM"
    assert 5 <= int(one("TimeoutStopSec").removesuffix("s")) <= 90
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_unit_is_hardened() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    found = {key: service[key][-1] if service[key] else None for key in expected}
    assert found == expected
    assert "@system-service" in service["SystemCallFilter"]


@pytest.mark.slow  # runs systemd-analyze
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that the commands exist: point them at this checkout's dloop instead of /opt/dloop.
    dloop = Path(sys.executable).with_name("dloop")
    assert dloop.is_file(), dloop
    unit = tmp_path / "dloop.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_DLOOP, str(dloop)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "dloop.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
