"""CUDA pinned host memory, per process.

/proc shows memory the CUDA driver pinned only as a shared mapping named
`/dev/zero (deleted)`, like any MAP_SHARED|MAP_ANONYMOUS region. The uprobes on
the driver's entry points say which ranges it allocated (class cuda_pinned) and
which it registered (they keep their class, e.g. shm_posix, and are pinned too).
A range lives until it is freed or unregistered, or the process exits or execs.
"""
from dataclasses import dataclass

from ..kernel.events import CudaCallKind

ALLOCATED, REGISTERED = "allocated", "registered"


@dataclass
class PinnedRange:
    start: int
    requested: int      # the size the driver was asked for
    flags: int
    how: str            # ALLOCATED or REGISTERED
    symbol: str         # the entry point called
    caller: str         # the library that called it
    t: float

    @property
    def end(self):
        return self.start + self.requested


class PinnedTable:
    def __init__(self):
        self.ranges = {}    # start -> PinnedRange

    def apply(self, call, caller, t):
        """Record one successful CudaCall; return the range it made or ended."""
        if call.failed:
            return None
        if call.starts_range:
            how = ALLOCATED if call.call == CudaCallKind.ALLOC else REGISTERED
            r = PinnedRange(call.addr, call.size, call.flags, how, call.symbol, caller, t)
            self.ranges[call.addr] = r
            return r
        return self.ranges.pop(call.addr, None)

    def clear(self):
        self.ranges.clear()

    def spans(self, how):
        return [(r.start, r.end) for r in self.ranges.values() if r.how == how]

    def measure(self, vmas, classes):
        """Each live range with the mappings that hold it: [(range, mapped bytes,
        resident bytes, classes of those mappings)]. A mapping counts whole: the
        driver maps what it allocates, rounded up to its own granularity."""
        out = []
        for r in sorted(self.ranges.values(), key=lambda r: r.start):
            held = [(v, c) for v, c in zip(vmas, classes) if v.start < r.end and r.start < v.end]
            out.append((r, sum(v.size for v, _ in held), sum(v.rss for v, _ in held),
                        sorted({c for _, c in held})))
        return out


def overlaps(vma, spans):
    return any(start < vma.end and vma.start < end for start, end in spans)
