"""core.memory: the process-wide tuning `dloop run` applies, checked in a fresh interpreter (a frozen
collector would otherwise stay frozen for the rest of the test session)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import gc, json, weakref
from core.memory import freeze_startup_objects, limit_malloc_arenas

class Cycle:
    def __init__(self):
        self.me = self

arenas = limit_malloc_arenas()
startup_garbage = weakref.ref(Cycle())  # unreachable already: the freeze's collection frees it
frozen = freeze_startup_objects()
startup_freed = startup_garbage() is None
later = Cycle()
later_garbage = weakref.ref(later)
del later
gc.collect()  # what start-up left is frozen; a cycle made afterwards is still collected
print(json.dumps({
    "arenas": arenas, "frozen": frozen, "count": gc.get_freeze_count(),
    "startup_freed": startup_freed, "later_freed": later_garbage() is None,
}))
"""


@pytest.mark.slow  # a fresh interpreter
def test_startup_objects_are_frozen_and_later_garbage_still_collected() -> None:
    # cwd="/": the package as installed is imported, not this checkout's directory by accident.
    done = subprocess.run([sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["frozen"] > 1000 and result["count"] == result["frozen"], result
    assert result["startup_freed"] and result["later_freed"], result
    assert result["arenas"] is (platform.libc_ver()[0] == "glibc"), result
