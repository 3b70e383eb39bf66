"""Call sites: the code behind each resident byte, from the stacks the kernel
sends with mm calls and sampled faults.

A site is a thread's Python frames (file, function, line), innermost first,
and its native return addresses. Each process keeps the resident bytes each
site holds now, by two kinds of evidence:
  1. A range an mm call made (a mapping of a file, of /dev/shm, a buffer that
     malloc or numpy mapped) is measured at each look (look.py): what it
     holds is its call's site's, exactly, whoever faulted the pages in. So a
     weights file is owned by the line that mapped it.
  2. What an object gained elsewhere ("loose" bytes: the heap, ranges made by
     calls too small to be sent) goes to the sites of the faults sampled
     there since the last look, by count; failing those, to the mm calls on
     the object, by size. What it lost is taken from its loose sites in
     proportion.
So the sum over sites is the process's growth since it was first seen, in
resident bytes (not in bytes asked for).
"""
import os
from collections import Counter
from dataclasses import dataclass, field

INTERPRETER_SHIM = "<interpreter trampoline>"   # 3.12's marker frame where C calls into Python
IMPORT_MACHINERY = "<frozen importlib"


@dataclass(frozen=True)
class Site:
    python: tuple      # python.Frame, innermost first
    native: tuple      # return addresses, innermost first
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((self.python, self.native)))   # a key of many dicts

    def __hash__(self):
        return self._hash

    def name(self):
        """The innermost Python frame outside the import machinery, as a
        person looks for it: 'dir/file.py:412 function' ('(import)' after
        it where an import made the memory: a library it loaded)."""
        if not self.python:
            return "(no Python frame)"
        own = [f for f in self.python if not f.code.filename.startswith(IMPORT_MACHINERY)]
        if not own:
            return frame_name(self.python[0].site())
        return frame_name(own[0].site()) + (" (import)" if own[0] is not self.python[0] else "")

    def frames(self):
        """[(filename, function, line)], innermost first."""
        return [list(frame.site()) for frame in self.python]


def frame_name(frame):
    filename, function, line = frame
    where = os.path.join(os.path.basename(os.path.dirname(filename)), os.path.basename(filename))
    return f"{where}:{line if line is not None else '?'} {function}"


UNKNOWN = Site((), ())


class SiteBook:
    """One process's sites: stacks waiting for their call, fault samples
    since the last look, and the bytes each site holds."""

    def __init__(self):
        self.waiting = {}          # tid -> Site of the call that thread sends next
        self.known = {}            # (the kernel's Python frames, native frames) -> their Site
        self.faults = []           # (address, Site) sampled since the last look
        self.ranges = {}           # Region -> (object key, resident bytes at its last measure)
        self.released = Counter()  # object key -> bytes of its ranges unmapped since the last look
        self.loose = {}            # object key -> Counter(Site -> bytes) outside measured ranges
        self.now = Counter()       # Site -> bytes, at the last look
        self.highest = Counter()   # Site -> bytes, at its highest: at a look, or a large range's measure

    def fault(self, address, site):
        self.faults.append((address, site))

    def range_ended(self, region):
        """region was unmapped: the bytes it held leave its site now, and its
        object's next fall is theirs, not its loose sites'."""
        entry = self.ranges.pop(region, None)
        if entry is not None:
            self.released[entry[0]] += entry[1]

    def settle(self, measured, moved, evidence):
        """One look's news. measured: [(Region, object key, resident bytes)]
        for ranges made by a call with a stack; moved: [(object key, delta)];
        evidence(key) -> Counter(Site -> weight) for loose growth."""
        by_ranges = Counter()
        for region, key, resident in measured:
            _, before = self.ranges.get(region, (key, 0))
            self.ranges[region] = (key, resident)
            by_ranges[key] += resident - before
        for key, delta in moved:
            rest = delta - by_ranges[key] + self.released.pop(key, 0)
            loose = self.loose.setdefault(key, Counter())
            if rest > 0:
                _share(loose, evidence(key) or Counter({UNKNOWN: 1}), rest)
            elif rest < 0:
                _take(loose, -rest)
            if not loose:
                del self.loose[key]
        self.released.clear()
        self.faults = []
        self.now = self.totals()
        for site, held in self.now.items():
            self.highest[site] = max(self.highest[site], held)

    def range_measured(self, region, resident):
        """A large range measured between looks (a KV cache filled and freed
        between two looks of a process with a thousand mappings): its site's
        highest counts it as it is now."""
        site = region.call.stack
        _, at_look = self.ranges.get(region, (None, 0))
        self.highest[site] = max(self.highest[site], self.now[site] - at_look + resident)

    def totals(self):
        """Site -> bytes held now."""
        out = Counter()
        for held in self.loose.values():
            out.update(held)
        for region, (_, resident) in self.ranges.items():
            out[region.call.stack] += resident
        return +out


def _share(held, weights, amount):
    total = sum(weights.values())
    for site, weight in weights.items():
        held[site] += amount * weight // total


def _take(held, amount):
    total = sum(held.values())
    if total <= amount:
        held.clear()
        return
    for site in list(held):
        held[site] -= held[site] * amount // total
        if held[site] <= 0:
            del held[site]
