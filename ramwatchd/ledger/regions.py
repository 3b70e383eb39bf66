"""The ranges a process's mm calls made, kept until they are unmapped.

They serve three ends. A growth in a range names the call that made it,
however many looks came between the call and the first touch. A large private
anonymous range is an object of its own in a look (a 1 GiB KV cache is not
lumped with every other anonymous mapping). And a large range is measured
while it lives, cheaply (procfs.ProcDir.resident walks only its pages), so a
weights file mapped for half a second in a process whose smaps takes 90 ms to
read is seen at its highest, whatever the looks saw.
"""
import bisect
import resource
from dataclasses import dataclass, field, replace

from ..kernel.events import MAP_SHARED, Mmap, Mremap
from ..units import fmt_bytes
from .classes import DEVICE, FILE_CODE

LARGE_BYTES = 64 << 20          # a range this large is measured and named on its own
# A large range is measured often while it is new or still filling, so that a
# weights file mapped for half a second is seen at its highest: every
# MEASURE_INTERVAL_S, or for a larger one every MEASURE_BYTES_PER_S of its
# size (the scan walks its every page; memory fills at ~1 GiB/s, so 10 % of
# it a measure). One that stopped growing only every QUIET_MEASURE_INTERVAL_S:
# looks at smaps measure it too.
MEASURE_INTERVAL_S = 0.02
MEASURE_BYTES_PER_S = 10 << 30
QUIET_MEASURE_INTERVAL_S = 1.0
PAGE_BYTES = resource.getpagesize()
UNMEASURED = {FILE_CODE, DEVICE}


@dataclass(eq=False)
class Region:
    start: int
    end: int
    call: object           # the MmCall that made it
    t: float               # when
    path: str              # the file mapped, "" for anonymous memory
    shared: bool
    cls: str = ""          # its memory class (classes.py), once known
    peak: int = 0          # resident bytes at their highest
    peak_t: float = None
    ended_at: float = None
    seen_by_look: bool = False
    measured_at: float = -1e9
    growing: bool = True   # its last measure found more than the one before
    last_measure: int = 0
    size_made: int = field(default=0, init=False)   # its size when made: its name keeps it

    def __post_init__(self):
        self.size_made = self.end - self.start

    @property
    def size(self):
        return self.end - self.start

    def continued_from(self, start):
        """Its part from start on, as a range of its own: the same call, file
        and name, measured afresh."""
        upper = replace(self, start=start, peak=0, peak_t=None, measured_at=-1e9,
                                    growing=True, last_measure=0)
        upper.size_made = self.size_made
        return upper

    def measure_due(self, now):
        if self.growing:
            interval = max(MEASURE_INTERVAL_S, self.size / MEASURE_BYTES_PER_S)
        else:
            interval = QUIET_MEASURE_INTERVAL_S
        return now - self.measured_at >= interval

    def measured(self, now, resident):
        """Its resident bytes at now (None: the kernel could not say)."""
        self.measured_at = now
        if resident is None:
            return
        self.growing = resident > self.last_measure
        self.last_measure = resident
        if resident > self.peak:
            self.peak, self.peak_t = resident, now

    @property
    def large(self):
        return self.size_made >= LARGE_BYTES

    @property
    def name(self):
        """Its object name in a look: the file, or what made anonymous memory."""
        if self.path:
            return self.path
        return f"[anon {self.call.what().split(' ')[0]} {fmt_bytes(self.size_made)} @ {self.t:.2f}s]"


def made_by(call, t):
    """The range a successful mmap or mremap made, or None."""
    if isinstance(call, Mmap) and not call.failed:
        return Region(call.ret, call.ret + pages(call.length), call, t, "", bool(call.flags & MAP_SHARED))
    if isinstance(call, Mremap) and not call.failed:
        return Region(call.ret, call.ret + pages(call.new_length), call, t, "", False)
    return None


def pages(length):
    """length rounded up to whole pages: what the kernel maps or unmaps."""
    return (length + PAGE_BYTES - 1) & ~(PAGE_BYTES - 1)


class Regions:
    """One process's live ranges. They never overlap (a new range replaces
    what it overlaps), so they are kept sorted by address: a process makes
    thousands, and each call looks up the few it touches."""

    def __init__(self):
        self._starts = []
        self._ranges = []
        self._large = []     # the few large ones, asked for at every look and counters read

    @property
    def live(self):
        return list(self._ranges)

    def add(self, region):
        """A new range replaces whatever it overlaps (MAP_FIXED, or a reused
        address); returns the ranges that ended so."""
        ended = self.cut(region.start, region.end, region.t)
        i = bisect.bisect_left(self._starts, region.start)
        self._starts.insert(i, region.start)
        self._ranges.insert(i, region)
        if region.large:
            self._large.append(region)
        return ended

    def cut(self, start, end, t):
        """[start, end) is unmapped: ranges wholly inside end; those it only
        overlaps shrink. Returns the ranges that ended."""
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        last = bisect.bisect_left(self._starts, end)
        ended, kept = [], []
        for r in self._ranges[first:last]:
            if r.end <= start or end <= r.start:
                kept.append(r)
            elif start <= r.start and r.end <= end:
                r.ended_at = t
                ended.append(r)
            elif start <= r.start:
                r.start = end              # its lower end unmapped
                kept.append(r)
            elif end >= r.end:
                r.end = start              # its upper end
                kept.append(r)
            else:
                # A hole in its middle, often filled at once: a MAP_FIXED mapping
                # inside a PROT_NONE reservation, as the loader and the CUDA
                # driver make them. Two ranges now, as in the kernel, so that
                # neither is measured over the other's pages.
                upper = r.continued_from(end)
                r.end = start
                kept += [r, upper]
                if upper.large:
                    self._large.append(upper)
        if ended or kept:
            self._ranges[first:last] = kept
            self._starts[first:last] = [r.start for r in kept]
        if any(r.large for r in ended):
            self._large = [r for r in self._large if r.ended_at is None]
        return ended

    def end_all(self, t):
        ended, self._ranges, self._starts, self._large = self._ranges, [], [], []
        for r in ended:
            r.ended_at = t
        return ended

    def making(self, name):
        """The live large range an object of this name is: a file mapped, or
        anonymous memory named after the call that made it."""
        for r in self._large:
            if r.name == name:
                return r
        return None

    def at(self, addr):
        """The live range holding addr, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._ranges[i].end:
            return self._ranges[i]
        return None

    def sited(self):
        """The live ranges made by a call whose stack is known, but a device's."""
        return [r for r in self._ranges if r.call.stack is not None and r.cls != DEVICE]

    def large(self):
        return list(self._large)

    def measured(self):
        """The live large ranges worth measuring: not a library's code, whose
        pages come and go with what the program calls."""
        return [r for r in self.large() if r.cls not in UNMEASURED]

    def anonymous_in(self, start, end):
        """The large private anonymous ranges overlapping [start, end)."""
        return [r for r in self.large() if not r.path and not r.shared and r.start < end and start < r.end]
