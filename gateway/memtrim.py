"""Giving freed memory back to the operating system after a burst (glibc's malloc_trim).

Thousands of back-end sessions opened for a wave of phones and closed a minute
later leave their memory freed but resident: glibc keeps free chunks inside its
heap, where the TLS buffers of those sessions lived. ``give_back`` asks glibc to
return every free page it can; elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger("casgate.memory")

_trim = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc: nothing to ask
    _trim = None


def give_back() -> bool:
    """Return free heap pages to the system; True when the C library could be asked."""
    if _trim is None:
        return False
    t0 = time.perf_counter()
    released = _trim(0)
    log.debug("malloc_trim", extra={"event": "memory", "released": bool(released),
                                    "ms": round((time.perf_counter() - t0) * 1000, 2)})
    return True
