"""glibc malloc settings for a long-running service: bounded arenas, warm working memory.

Arenas: glibc gives each thread that meets contention its own arena (up to 8 per core), and an
arena keeps the pages it freed. The service allocates on several threads (the event loop, the
decoding pool, the model thread), so a long run over many clients grew its resident memory by
hundreds of MiB with no object alive to account for it (measured by `make reliability`'s
many-clients check). Two arenas keep that bounded.

Working memory: by default glibc hands a forward pass's big freed blocks back to the kernel
(munmap, or trimming a thread arena's heap), and the next batch faults every page back in,
zero-filled: 1,200 page faults per 32-image request to a 32-px cnn9, 13% of the service's CPU
(`benchmarks.serve`'s A/B, README). Fixed thresholds keep blocks under 32 MiB in the arenas and
let an arena keep up to 128 MiB free before trimming, so their pages stay mapped. Blocks over
32 MiB (a 128-image batch's widest activations there) are still mapped afresh each time: glibc
accepts no higher threshold, and some runs keep 250-500 faults per request for them.

Elsewhere than glibc both calls do nothing; a malloc setting the operator gave through the
environment (`GLIBC_TUNABLES`, `MALLOC_*_`) is left as it is.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""mallopt's parameter numbers (glibc malloc.h)."""

MMAP_THRESHOLD = 32 << 20
"""The largest mmap threshold glibc accepts on 64 bits (its dynamic threshold's ceiling)."""
TRIM_THRESHOLD = 128 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library this process already runs on (as zygote.py reaches it), looked up once:
    `ctypes.util.find_library` would run `ldconfig` at every call."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):  # TypeError: Windows has no "this process" handle
        return None


def _mallopt(*settings: tuple[int, int]) -> bool:
    libc = _libc()
    try:
        return libc is not None and all(
            [bool(libc.mallopt(param, value)) for param, value in settings]
        )
    except AttributeError:  # no mallopt: not glibc
        return False


def operator_set_malloc(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment already tunes malloc (then the service leaves it alone)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(key.startswith("MALLOC_") for key in environ)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """`mallopt(M_ARENA_MAX, arenas)`; True where glibc took it. Call before threads start."""
    return _mallopt((M_ARENA_MAX, arenas))


def keep_working_memory() -> bool:
    """Fixed mmap and trim thresholds (see the module); True where glibc took them."""
    return _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_malloc() -> bool:
    """The service's malloc settings, unless the operator's environment sets malloc's; True
    where glibc took them. Call before the decoding and model threads start."""
    if operator_set_malloc():
        return False
    return all([limit_malloc_arenas(), keep_working_memory()])
