"""Process-wide memory tuning for `dloop run` (the CLI applies it; library code does not).

The cyclic garbage collector: a full collection walks every tracked object, and after start-up most of them
(modules, classes, functions) live as long as the process. In 27 s of a 1,000-proposal burst, ten full
collections took 0.9 s, up to 126 ms each, and no HTTP request was answered meanwhile.
`freeze_startup_objects` takes what start-up built out of the collector's sight: later full collections took
about 7 ms each.

The C allocator (glibc; elsewhere `limit_malloc_arenas` does nothing): SQLite's caches and large Python
objects come from malloc, glibc gives each thread that allocates an arena of its own (up to 8 per core), and
aiosqlite runs every connection on a thread of its own. Memory freed in one arena is not reused by another.
Peak RSS over 10,000 proposals (bench/memory.py): 148 MB before, 142-146 MB in four runs with two arenas.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2  # a cap on their number; glibc still picks which thread uses which


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where there is none (musl, macOS, Windows)."""
    try:
        # The process's own symbols, libc's among them (ctypes.util.find_library would spawn ldconfig).
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl may have mallopt as a no-op stub
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' CDLL takes no None
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Bound glibc's malloc arenas; call before any thread starts. True when glibc took the setting."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def freeze_startup_objects() -> int:
    """Collect start-up's garbage, then exempt every object left from later collections; the number frozen.
    Once, when the service is up. A frozen object is still freed when nothing refers to it, but one that
    later ends up in a reference cycle never is: what is in flight at that moment (a request, a round's
    tasks) can leak once, a bounded amount."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
