"""web3's private internals the service relies on (chain/web3_internals.py) are all there. No chain needed.

When this fails after a web3 upgrade, re-read each overridden or reached-into method named in that module's
docstring against the new web3 before changing `WEB3_VERSION`.
"""

from __future__ import annotations

from pathlib import Path

from chain.web3_internals import WEB3_VERSION, internals_problems


def test_the_installed_web3_has_the_internals_we_rely_on() -> None:
    problems = internals_problems()
    assert not problems, (
        f"chain/web3_internals.py was written against web3=={WEB3_VERSION} (pinned in pyproject.toml): "
        + "; ".join(problems)
    )


def test_the_pinned_web3_is_the_version_the_internals_were_written_for() -> None:
    pinned = next(
        line.strip().strip('",')
        for line in (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith('"web3==')
    )
    assert pinned == f"web3=={WEB3_VERSION}", (
        f"pyproject.toml pins {pinned}, chain/web3_internals.py was written against web3=={WEB3_VERSION}"
    )
