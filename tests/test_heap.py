"""``daemon.heap.trim`` gives a fragmented C heap's free pages back (a real glibc heap, measured
in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from daemon import heap
from tests.conftest import REPO

FRAGMENT = r"""
import ctypes, json
from daemon import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

chunks = [libc.malloc(4096) for _ in range(10_000)]  # 40 MB, touched below
for c in chunks:
    ctypes.memset(c, 1, 4096)
for c in chunks[:-1]:  # the last one pins the heap's top: free() alone cannot shrink it
    libc.free(c)
before = rss_mb()
trimmed = heap.trim()
print(json.dumps({"before": before, "after": rss_mb(), "trimmed": trimmed}))
"""


@pytest.mark.skipif(not heap.supported(), reason="the C library is not glibc")
def test_trim_returns_the_free_pages_of_a_fragmented_heap() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT], cwd=REPO, capture_output=True, text=True, check=True
    )
    figures = json.loads(out.stdout)
    assert figures["trimmed"] is True
    assert figures["before"] - figures["after"] > 30, figures  # of the 40 MB freed
