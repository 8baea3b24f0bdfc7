"""Hands the C heap's free pages back to the kernel after a job ends (glibc; elsewhere a no-op).

A job's end is the daemon's one burst of allocation (the child's result, the verdict, the status
and release files). glibc keeps the freed memory inside its heap, and after large frees it raises
its own trim threshold, so those holes stay resident: the soak saw the heap's free space grow
from 2 to 5 MB an hour without any object leaking. ``malloc_trim(0)`` returns whole free pages
anywhere in the heap; it takes a few milliseconds, once per job.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # musl, macOS: nothing to trim this way
        return None


_MALLOC_TRIM = _find_malloc_trim()


def supported() -> bool:
    """Whether this C library can trim its heap (glibc)."""
    return _MALLOC_TRIM is not None


def trim() -> bool:
    """Release the heap's free pages; True when some were released."""
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False
