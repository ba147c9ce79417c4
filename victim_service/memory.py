"""Bound glibc's malloc arenas, so many threads cannot hoard freed memory.

glibc gives each thread that meets contention its own arena (up to 8 per core), and an arena
keeps the pages it freed. The service allocates on several threads (the event loop, the
decoding pool, the model thread), so a long run over many clients grew its resident memory by
hundreds of MiB with no object alive to account for it (measured by `make reliability`'s
many-clients check). Two arenas keep that bounded; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8
"""mallopt's parameter number for the arena limit (glibc malloc.h)."""


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """`mallopt(M_ARENA_MAX, arenas)`; True where glibc took it. Call before threads start."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
