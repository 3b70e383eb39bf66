"""A look at one process: its smaps, classified and summed by class and by
mapped object, reconciled with VmRSS read just before and just after."""
import bisect
import mmap
import time
from dataclasses import dataclass, field

from .classes import ANON, CLASSES
from .pinned import ALLOCATED, REGISTERED, overlaps
from .procfs import NoSuchProcess, Vma

RECONCILE_MIN_BYTES = 4 << 20
RECONCILE_FRACTION = 0.01
# A process in the middle of a large munmap or madvise has already dropped the
# mapping from smaps while its RSS counters still fall, and one that execs
# during a look has two layouts in it: look again shortly.
RETRY_DELAYS_S = (0.005, 0.01, 0.02, 0.04)


@dataclass
class ObjectUsage:
    """What one mapped object (a file, a shm segment, the heap, anonymous memory)
    holds in one process, summed over its mappings."""
    cls: str
    name: str
    rss: int = 0
    pss: int = 0
    mapped: int = 0
    dev: tuple = (0, 0)
    inode: int = 0
    ranges: list = field(default_factory=list)   # (start, end) of each of its mappings
    pinned: int = 0      # resident bytes in ranges registered with the CUDA driver

    def add(self, vma, registered):
        if overlaps(vma, registered):
            self.pinned += vma.rss
        self.rss += vma.rss
        self.pss += vma.pss
        self.mapped += vma.size
        self.ranges.append((vma.start, vma.end))


@dataclass
class Snapshot:
    t: float                      # seconds on the driver's clock
    vm_rss: int                   # VmRSS read just after smaps
    vm_rss_before: int            # and just before: a moving process moves between
    status: object                # procfs.Status read after smaps
    stat: object                  # procfs.Stat read last: fault counts, the exec'd layout
    classes: dict                 # class -> resident bytes
    pss: dict                     # class -> proportional resident bytes
    objects: dict = field(default_factory=dict)   # (class, name) -> ObjectUsage
    pinned: list = field(default_factory=list)    # PinnedTable.measure() at this look
    read_seconds: float = 0.0
    read_ns: tuple = (0, 0)       # when it was read, on the kernel's clock (CLOCK_MONOTONIC)
    sited: dict = field(default_factory=dict)     # Region -> resident bytes, for ranges whose call's stack is known
    _spans: list = field(default=None, repr=False)

    @property
    def total(self):
        return sum(self.classes.values())

    def object_at(self, addr):
        """The ObjectUsage whose mappings hold addr, or None."""
        spans = self._sorted_spans()
        i = bisect.bisect_right(self._starts, addr) - 1
        return spans[i][2] if i >= 0 and addr < spans[i][1] else None

    def objects_in(self, start, end):
        """The ObjectUsages whose mappings overlap [start, end)."""
        spans = self._sorted_spans()
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = {}
        while i < len(spans) and spans[i][0] < end:
            if spans[i][1] > start:
                out[id(spans[i][2])] = spans[i][2]
            i += 1
        return list(out.values())

    def _sorted_spans(self):
        """(start, end, object) of every mapping, by start: mappings never overlap."""
        if self._spans is None:
            self._spans = sorted(((start, end, obj) for obj in self.objects.values()
                                  for start, end in obj.ranges), key=lambda s: s[0])
            self._starts = [s[0] for s in self._spans]
        return self._spans

    @property
    def tolerance(self):
        return max(RECONCILE_MIN_BYTES, int(RECONCILE_FRACTION * self.vm_rss))

    @property
    def drift(self):
        """How far the classes are from the VmRSS bracket read around them (0 when inside)."""
        lo, hi = sorted((self.vm_rss_before, self.vm_rss))
        return min(0, self.total - lo) + max(0, self.total - hi)

    @property
    def reconciled(self):
        return abs(self.drift) <= self.tolerance

    def forget_detail(self):
        """Drop the per-object detail: only a few looks keep it."""
        self.objects = {}
        self.sited = {}
        self._spans = None


def take_look(proc, t, classifier, pinned, regions=None, sited=()):
    """Look at the process behind ProcDir `proc`. A look that does not reconcile
    with VmRSS, or that an exec cut in two, is taken again a few times; returns
    None if every try straddled an exec. Raises procfs.ProcessError (gone,
    denied, zombie, or exiting: half torn down, smaps no longer adds up)."""
    snap = None
    for delay in (0,) + RETRY_DELAYS_S:
        time.sleep(delay)
        snap = _look_once(proc, t, classifier, pinned, regions, sited)
        if snap is not None and snap.reconciled:
            break
    return snap


def _look_once(proc, t, classifier, pinned, regions, sited):
    started = time.monotonic_ns()
    layout = proc.stat().layout
    before = proc.status()
    vmas = proc.smaps()
    after = proc.status()
    stat = proc.stat()
    if stat.exiting:
        raise NoSuchProcess(proc.pid, "exiting")
    if stat.layout != layout:
        return None     # an exec came between the two reads
    vma_classes = classifier.classify(vmas, pinned.spans(ALLOCATED))
    registered = pinned.spans(REGISTERED)
    classes = dict.fromkeys(CLASSES, 0)
    pss = dict.fromkeys(CLASSES, 0)
    objects = {}
    seen = {}     # large range -> its resident bytes in this look
    for vma, cls in zip(vmas, vma_classes):
        classes[cls] += vma.rss
        pss[cls] += vma.pss
        for part, name in _parts(proc, vma, cls, regions, seen):
            key = (cls, name)
            if key not in objects:
                objects[key] = ObjectUsage(cls, name, dev=vma.dev, inode=vma.inode)
            objects[key].add(part, registered)
    for region, resident in seen.items():
        region.measured(t, resident)
    sited_resident = _measure_ranges(proc, vmas, sited, seen)
    read_ns = (started, time.monotonic_ns())
    return Snapshot(t, after.vm_rss, before.vm_rss, after, stat, classes, pss, objects,
                    pinned.measure(vmas, vma_classes), (read_ns[1] - started) / 1e9, read_ns,
                    sited_resident)


def _parts(proc, vma, cls, regions, seen):
    """A mapping's objects: its file; or for private anonymous memory, each
    large range an mm call made in it (a KV cache is not lumped with every
    other anonymous mapping), measured exactly, and the rest. The kernel merges
    neighbouring anonymous mappings into one, so a range is rarely a mapping.
    seen sums each range's resident bytes over the mappings it spans."""
    if cls != ANON or regions is None:
        return [(vma, vma.path or "[anonymous]")]
    parts, rest_rss, gaps, at = [], vma.rss, [], vma.start
    for region in sorted(regions.anonymous_in(vma.start, vma.end), key=lambda r: r.start):
        region.seen_by_look = True
        start, end = max(vma.start, region.start), min(vma.end, region.end)
        whole = start == vma.start and end == vma.end
        resident = vma.rss if whole else min(rest_rss, proc.resident(start, end) or 0)
        seen[region] = seen.get(region, 0) + resident
        parts.append((_share(vma, start, end, resident), region.name))
        rest_rss -= resident
        gaps += [(at, start)] if start > at else []
        at = max(at, end)
    gaps += [(at, vma.end)] if vma.end > at else []
    if gaps and (rest_rss or not parts):
        parts += [(part, vma.path or "[anonymous]") for part in _spread(vma, gaps, rest_rss)]
    return parts


def _spread(vma, gaps, resident):
    """The parts of vma at gaps [(start, end)] (what its ranges leave), sharing
    `resident` bytes by size: each part keeps its own addresses, so that an
    address in a range is never found in the rest."""
    size = sum(end - start for start, end in gaps)
    out, left = [], resident
    for i, (start, end) in enumerate(gaps):
        share = left if i == len(gaps) - 1 else resident * (end - start) // size // mmap.PAGESIZE * mmap.PAGESIZE
        out.append(_share(vma, start, end, share))
        left -= share
    return out


def _measure_ranges(proc, vmas, ranges, seen):
    """Each range's resident bytes, from the mappings this look read: a range
    that is whole mappings is their Rss, read in the same pass as the objects
    it lies in; one the kernel merged with its neighbours is its share of
    their pages, measured just after. A range the kernel cannot measure
    (no PAGEMAP_SCAN) is left out."""
    out, starts = {}, [vma.start for vma in vmas]
    for region in ranges:
        if region in seen:
            out[region] = seen[region]
            continue
        total = 0
        i = max(0, bisect.bisect_right(starts, region.start) - 1)
        while total is not None and i < len(vmas) and vmas[i].start < region.end:
            vma = vmas[i]
            start, end = max(vma.start, region.start), min(vma.end, region.end)
            if start == vma.start and end == vma.end:
                total += vma.rss
            elif start < end:
                part = proc.resident(start, end)
                total = None if part is None else total + min(vma.rss, part)
            i += 1
        if total is not None:
            out[region] = total
    return out


def _share(vma, start, end, resident):
    """The part [start, end) of vma holding `resident` bytes (PSS in proportion)."""
    pss = vma.pss * resident // vma.rss if vma.rss else 0
    return Vma(start, end, vma.perms, vma.offset, vma.dev, vma.inode, vma.path, resident, pss)


@dataclass
class ObjectChange:
    cls: str
    name: str
    delta: int
    rss_after: int
    ranges: list      # the object's mappings before and after: where its causes acted


def diff(prev, new, min_bytes):
    """Objects whose RSS moved by at least min_bytes, largest move first."""
    changes = []
    for key in prev.objects.keys() | new.objects.keys():
        old = prev.objects.get(key)
        cur = new.objects.get(key)
        delta = (cur.rss if cur else 0) - (old.rss if old else 0)
        if abs(delta) >= min_bytes:
            ranges = (old.ranges if old else []) + (cur.ranges if cur else [])
            changes.append(ObjectChange(key[0], key[1], delta, cur.rss if cur else 0, ranges))
    return sorted(changes, key=lambda c: -abs(c.delta))
