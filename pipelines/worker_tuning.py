"""Settings of short-lived conversion worker processes (forked, gone when the conversion ends).

glibc's malloc hands large freed blocks back to the kernel at once (mmap'd blocks, heap trimming),
so a worker that parses an 8 MB chunk of json, frees it and parses the next faults every page in
again: a third of its system time, ~10% of the conversion's CPU (bench/bench_scale.py). A worker
keeps what it freed instead; it exits at the end of the conversion, so nothing is held for long.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = 1 << 30  # bytes: blocks below this are not mmap'd on their own, free heap below it not trimmed


def tune_worker() -> None:
    """ProcessPoolExecutor initializer of conversion workers; a no-op where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    for option, value in ((_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, 64 << 20)):
        if mallopt(option, value) != 1:  # pragma: no cover - an option this libc refuses
            log.debug("mallopt(%d) refused", option)
