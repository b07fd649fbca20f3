"""pytest plugin for `make test-fast`: while a test runs (setup, call and teardown), starting anvil, any other
process or a listening socket fails it with a message saying to mark it `slow`.

`python -m pytest -m "not slow" -p tests.support.no_processes` checks that the fast selection really needs no
chain, no subprocess and no server; it also catches a new test that forgot its `slow` marker.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.anvil import AnvilProcess

_GUARDED: list[tuple[Any, str, str]] = [
    (subprocess.Popen, "__init__", "starts a process"),
    (AnvilProcess, "__init__", "starts anvil"),
    (socket.socket, "listen", "listens on a socket"),
]


def _refuse(nodeid: str, what: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"{nodeid} {what}: mark it `pytest.mark.slow` (make test-fast runs -m 'not slow')")

    return refuse


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in _GUARDED]
    for owner, name, what in _GUARDED:
        setattr(owner, name, _refuse(item.nodeid, what))
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:  # inherited (socket.listen comes from _socket.socket)
                delattr(owner, name)
            else:
                setattr(owner, name, original)
