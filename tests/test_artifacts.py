"""The committed contract artifacts are exactly what the pinned compiler produces from the sources."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the solc compiler under node

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_artifacts_are_reproducible() -> None:
    node = shutil.which("node")
    if node is None or not (REPO_ROOT / "node_modules" / "solc").is_dir():
        pytest.skip("node or the pinned solc is missing: run `make setup`")
    result = subprocess.run(
        [node, "devtools/contracts/compile.mjs", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
