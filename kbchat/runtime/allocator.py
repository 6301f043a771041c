"""Large tensors given back to the system when freed: glibc's mmap threshold fixed at 4 MiB.

glibc serves an allocation above its mmap threshold from a mapping of its own, unmapped on free, and
smaller ones from the heap, which returns memory only from its top. The threshold adapts: after a
mapped block is freed it rises to that block's size (up to 32 MiB), so later tensors of a few MiB land
on the heap, and tensors that grow a little each time (AlphaEdit's K_p, one row more per sequential
edit) leave holes no later one fits: a process making 1,000 sequential AlphaEdit edits grew by ~40 MB
per edit, its heap 3.8 GiB after 100 edits (the benchmark's run, killed for memory at edit 618).
Setting the threshold also stops the adaptation: the same solves then stay flat, and greedy answers
take the same CPU time within a few percent (`bench/alphaedit_memory.py`,
`bench/results/alphaedit-prior-memory.json`).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
THRESHOLD = 4 << 20  # bytes: above a small model's per-token tensors, below an (in, in) float64 solve (18 MiB)


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process (idempotent). False where there is no glibc
    (macOS, musl), where the allocator is left as it is."""
    try:  # the process's own symbols: find_library("c") would run ldconfig on every model load
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
