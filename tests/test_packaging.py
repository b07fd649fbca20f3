"""Packaging: the wheel holds every package and its data (the alembic scripts, the ABIs, the devnet
artifacts), and a plain `pip install` of the repository into a fresh virtualenv gives a `dloop` that
migrates a database and runs against a devnet from a folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from devtools.anvil import AnvilProcess, free_port
from devtools.devnet import deploy_devnet
from tests.support.service import devnet_environ

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# The project's own top-level packages, as ruff's import sorting knows them.
FIRST_PARTY: list[str] = _pyproject()["tool"]["ruff"]["lint"]["isort"]["known-first-party"]  # type: ignore[index]


def test_every_package_is_listed_for_the_wheel() -> None:
    # The list is explicit (storage.alembic maps to the top-level alembic/ folder): a new sub-package must
    # be added to it, or the installed service would miss it.
    setuptools = _pyproject()["tool"]["setuptools"]  # type: ignore[index]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in FIRST_PARTY
        for init in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    # A mapped folder (alembic/ has no __init__.py: it would shadow the library) and its folders of modules.
    for name, folder in setuptools["package-dir"].items():
        on_disk |= {
            ".".join([name, *module.parent.relative_to(REPO / folder).parts])
            for module in (REPO / folder).rglob("*.py")
            if "__pycache__" not in module.parts
        }
    assert on_disk == listed, f"missing: {sorted(on_disk - listed)}, stale: {sorted(listed - on_disk)}"
    assert setuptools["package-dir"] == {"storage.alembic": "alembic"}
    assert not (REPO / "alembic" / "__init__.py").exists(), "it would shadow the alembic library"


def test_the_dashboard_files_are_package_data() -> None:
    # The page's templates, CSS and JS are served from the installed package (no CDN): each must match a
    # package-data pattern of `web`, or the wheel would ship a dashboard without them.
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["web"]  # type: ignore[index]
    files = [
        p.relative_to(REPO / "web")
        for folder in ("templates", "static")
        for p in (REPO / "web" / folder).rglob("*")
        if p.is_file()
    ]
    assert files
    unmatched = [str(f) for f in files if not any(f.match(pattern) for pattern in patterns)]
    assert not unmatched, unmatched


def _source_copy(destination: Path) -> Path:
    """The repository as pip sees it, without the virtualenv, node_modules and build output. pip builds a
    local directory in place, and setuptools' build/ folder would otherwise be left in the checkout (its
    stale files would end up in later wheels)."""
    skip = shutil.ignore_patterns(
        ".git",
        ".venv",
        "node_modules",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "results",
        "*.db",
        "*.db-*",
        "*.log",
        ".env",
        ".env.devnet",
    )
    shutil.copytree(REPO, destination, ignore=skip)
    return destination


def _outside_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of this checkout, the tests or the dev virtualenv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DLOOP_", "AI_NODE_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_pip_install_into_a_fresh_virtualenv_migrates_and_runs(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, dloop = venv / "bin" / "python", venv / "bin" / "dloop"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    shutil.rmtree(source)  # whatever runs now comes from the virtualenv, not from a source tree

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, storage, storage.migrations as m, devtools.anvil as a, devtools.devnet as d, "
            "chain.abis;"
            "print(json.dumps({'storage': storage.__file__, 'alembic': str(m.alembic_dir()), "
            "'head': m.head_revision(), 'checkout': a.REPO_ROOT and str(a.REPO_ROOT), "
            "'artifact': d.load_artifact('AssetDAO')['contractName']}))",
        ],
        cwd=outside,
        env=_outside_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    found = json.loads(probe.stdout)
    site = str(venv)
    assert found["storage"].startswith(site) and found["alembic"].startswith(site), found
    assert found["alembic"].endswith(os.path.join("storage", "alembic")), found
    assert found["head"] and found["checkout"] is None and found["artifact"] == "AssetDAO", found

    with AnvilProcess() as anvil:
        devnet = deploy_devnet(anvil.http_url, proposals=2)
        db = outside / "dloop.db"
        port = free_port()
        env = _outside_env(**devnet_environ(anvil.ws_url, devnet, db, DLOOP_HTTP_PORT=str(port)))
        migrate = subprocess.run(
            [str(dloop), "migrate"], cwd=outside, env=env, capture_output=True, text=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stderr[-4000:]
        assert db.is_file() and "up to date" in migrate.stdout

        log = outside / "run.log"
        with log.open("wb") as out:
            run = subprocess.Popen(
                [str(dloop), "run"], cwd=outside, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            health = _wait_for_health(f"http://127.0.0.1:{port}/health", run, log)
            # The dashboard renders from the installed templates and static files (package data).
            base = f"http://127.0.0.1:{port}"
            page = httpx.get(f"{base}/dashboard", timeout=10)
            assert page.status_code == 200 and "dloop governance" in page.text, page.text[:2000]
            for asset in ("/static/dashboard.js", "/static/dashboard.css"):
                assert httpx.get(f"{base}{asset}", timeout=10).status_code == 200, asset
            run.send_signal(signal.SIGTERM)
            exit_code = run.wait(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    text = log.read_text(errors="replace")
    assert exit_code == 0, text[-4000:]
    assert health.status_code == 200, (health.status_code, health.text, text[-4000:])
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = [record["event"] for record in records]
    assert "service_starting" in events and "service_stopped" in events, events
    # The package brings uvloop (Linux), and DLOOP_EVENT_LOOP's default (auto) takes it.
    assert {r["event_loop"] for r in records if r["event"] == "service_starting"} == {"uvloop"}, records
    assert "Traceback" not in text, text[-4000:]


def _wait_for_health(
    url: str, run: subprocess.Popen[bytes], log: Path, timeout: float = 90.0
) -> httpx.Response:
    """Until /health answers 200 (healthy), or the last JSON answer (503 with its checks) at the deadline."""
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        if run.poll() is not None:
            raise AssertionError(f"dloop run exited ({run.returncode}):\n{log.read_text()[-4000:]}")
        try:
            last = httpx.get(url, timeout=2)
            last.json()
            if last.status_code == 200:
                return last
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    if last is None:
        raise AssertionError(f"/health never answered:\n{log.read_text()[-4000:]}")
    return last
