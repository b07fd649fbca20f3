"""core.memory: the process-wide tuning `dloop run` applies, checked in a fresh interpreter (a frozen
collector would otherwise stay frozen for the rest of the test session)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import gc, json
from core.memory import freeze_startup_objects, limit_malloc_arenas

class Cycle:
    def __init__(self):
        self.me = self

arenas = limit_malloc_arenas()
Cycle()  # start-up garbage: collected by the freeze, not frozen with the rest
frozen = freeze_startup_objects()
survivor = Cycle()
del survivor
later = gc.collect()  # what start-up left is frozen; a cycle made afterwards is still collected
print(json.dumps({"arenas": arenas, "frozen": frozen, "count": gc.get_freeze_count(), "later": later}))
"""


@pytest.mark.slow  # a fresh interpreter
def test_startup_objects_are_frozen_and_later_garbage_still_collected() -> None:
    # cwd="/": the package as installed is imported, not this checkout's directory by accident.
    done = subprocess.run([sys.executable, "-c", PROBE], cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["frozen"] > 1000 and result["count"] == result["frozen"], result
    assert result["later"] >= 1, result  # the cycle made after the freeze
    assert result["arenas"] is (platform.libc_ver()[0] == "glibc"), result
