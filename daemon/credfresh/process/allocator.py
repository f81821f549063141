"""glibc allocator settings that keep a weeks-long daemon's RSS flat.

RSS used to climb 7-8 MB in a 30-minute soak with a flat Python heap: glibc's per-thread
caches (tcache) fill with chunks freed by other threads. Only `GLIBC_TUNABLES`, read at
process start, turns them off, so `credfresh run` re-executes itself once with
`glibc.malloc.tcache_count=0` (benchmarks/PROFILE.md, "tcache"). The user's own `MALLOC_*`
or tcache setting wins; on musl there is nothing to do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Final

TCACHE_TUNABLE: Final = "glibc.malloc.tcache_count"
TUNABLES: Final = "GLIBC_TUNABLES"
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8


def is_glibc() -> bool:
    """True when this process runs on glibc (the only allocator these settings are for)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def tuned_by_user(environ: Mapping[str, str]) -> bool:
    """`MALLOC_*` variables mean the user tunes glibc's allocator: leave it all to them."""
    return any(name.startswith("MALLOC_") for name in environ)


def tunables_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the current one is already right."""
    if tuned_by_user(environ):
        return None
    current = environ.get(TUNABLES, "")
    if any(item.split("=", 1)[0] == TCACHE_TUNABLE for item in current.split(":") if item):
        return None
    setting = f"{TCACHE_TUNABLE}=0"
    return {**environ, TUNABLES: f"{current}:{setting}" if current else setting}


def reexec_without_tcache(environ: Mapping[str, str], argv: Sequence[str]) -> None:
    """Replace this process with itself under `tunables_env`; return if that is not needed.
    Only from the process entry, before any thread starts (pid and descriptors carry over).
    """
    env = tunables_env(environ)
    if env is None or not is_glibc() or not argv:
        return
    try:
        os.execve(sys.executable, list(argv), env)  # noqa: S606 - our own interpreter and argv
    except OSError:
        return


def tune_malloc(
    environ: Mapping[str, str], arenas: int = 2, mmap_threshold: int = 128 * 1024
) -> bool:
    """Cap the arenas (one per worker thread otherwise) and fix the mmap threshold (its
    dynamic growth moved each whole-file write's megabyte strings into the heap); unless
    `environ`, the process's, has the user's own `MALLOC_*` settings.
    """
    if tuned_by_user(environ) or not is_glibc():
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        arenas_set = libc.mallopt(M_ARENA_MAX, arenas)
        threshold_set = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        return bool(arenas_set and threshold_set)
    except (OSError, AttributeError):
        return False
