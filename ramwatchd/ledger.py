"""Stage 3: the ledger. Per process and per mapping, what is resident and in which
class, taken from /proc/PID/smaps whenever the probes say a process changed.

Each snapshot is reconciled with VmRSS from /proc/PID/status: the classes are a
partition of the kernel's own number, and any difference is kept and shown.
"""
import bisect
import time
from dataclasses import dataclass, field

from . import procfs
from .classes import CLASSES, Classifier
from .pinned import ALLOCATED, REGISTERED, PinnedTable, overlaps

RECONCILE_MIN_BYTES = 4 << 20
RECONCILE_FRACTION = 0.01


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
    t: float                      # seconds on the capture's clock
    vm_rss: int                   # VmRSS read just after smaps
    vm_rss_before: int            # and just before: a moving process moves between
    status: procfs.Status
    classes: dict                 # class -> resident bytes
    pss: dict                     # class -> proportional resident bytes
    objects: dict = field(default_factory=dict)   # (class, name) -> ObjectUsage
    pinned: list = field(default_factory=list)    # PinnedTable.measure() at this look
    read_seconds: float = 0.0
    _spans: list = field(default=None, repr=False)

    @property
    def total(self):
        return sum(self.classes.values())

    def object_at(self, addr):
        """The ObjectUsage whose mappings hold addr, or None."""
        if self._spans is None:
            self._spans = sorted((start, end, obj) for obj in self.objects.values()
                                 for start, end in obj.ranges)
            self._starts = [s[0] for s in self._spans]
        i = bisect.bisect_right(self._starts, addr) - 1
        return self._spans[i][2] if i >= 0 and addr < self._spans[i][1] else None

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


# A process in the middle of a large munmap or madvise has already dropped the
# mapping from smaps while its RSS counters still fall: look again shortly.
RETRY_DELAYS_S = (0.005, 0.01, 0.02, 0.04)


def take_snapshot(pid, t, classifier, pinned=None):
    """Read smaps between two reads of status and sum it by class and object.
    A look that does not reconcile with VmRSS is retried a few times, since
    the process may be mid-way through releasing memory."""
    pinned = pinned or PinnedTable()
    for delay in RETRY_DELAYS_S:
        snap = _look(pid, t, classifier, pinned)
        if snap.reconciled:
            break
        time.sleep(delay)
    return snap


def _look(pid, t, classifier, pinned):
    started = time.monotonic()
    before = procfs.read_status(pid)
    vmas = procfs.read_smaps(pid)
    after = procfs.read_status(pid)
    if procfs.is_exiting(pid):
        raise procfs.ProcessGone(pid)   # half torn down: smaps no longer adds up
    classes = dict.fromkeys(CLASSES, 0)
    pss = dict.fromkeys(CLASSES, 0)
    objects = {}
    vma_classes = classifier.classify(vmas, pinned.spans(ALLOCATED))
    registered = pinned.spans(REGISTERED)
    for vma, cls in zip(vmas, vma_classes):
        classes[cls] += vma.rss
        pss[cls] += vma.pss
        key = (cls, vma.path or "[anonymous]")
        if key not in objects:
            objects[key] = ObjectUsage(cls, key[1], dev=vma.dev, inode=vma.inode)
        objects[key].add(vma, registered)
    return Snapshot(t, after.vm_rss, before.vm_rss, after, classes, pss, objects,
                    pinned.measure(vmas, vma_classes), time.monotonic() - started)


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


@dataclass
class ProcessRecord:
    """Everything the ledger knows about one process."""
    pid: int
    comm: str
    cmdline: str
    ppid: int
    first_seen: float
    baseline: Snapshot = None
    latest: Snapshot = None
    largest: Snapshot = None          # the snapshot with the most RSS
    history: list = field(default_factory=list)   # (t, classes) per snapshot
    exited_at: float = None
    dirty: bool = True
    last_read: float = -1e9
    settle_at: float = None           # when to look once more after movement stops
    faults_at_start: tuple = (0, 0)
    faults: tuple = (0, 0)            # (minor, major) since first seen
    peak: tuple = None                # (bytes, t, rss members) from the kernel
    pinned: PinnedTable = field(default_factory=PinnedTable)
    reconciliation: dict = field(default_factory=lambda: {"samples": 0, "failed": 0, "worst_drift": 0})

    @property
    def alive(self):
        return self.exited_at is None


class Ledger:
    """Snapshots of every traced process, refreshed when marked dirty and due."""

    def __init__(self, classifier=None, min_interval=0.1, cost_factor=20, settle_delay=0.2,
                 keep_history=True):
        self.classifier = classifier or Classifier()
        self.processes = {}
        # A process is read again no sooner than min_interval, nor sooner than
        # cost_factor times its last read took, so huge processes are read less.
        self.min_interval = min_interval
        self.cost_factor = cost_factor
        self.settle_delay = settle_delay
        # A capture keeps every look; the daemon, which runs for months, only the latest.
        self.keep_history = keep_history

    def add(self, pid, t):
        status = procfs.read_status(pid)
        rec = ProcessRecord(pid, status.name, procfs.read_cmdline(pid), status.ppid, t)
        rec.faults_at_start = procfs.read_fault_counts(pid)
        self.processes[pid] = rec
        return rec

    def mark_dirty(self, pid):
        rec = self.processes.get(pid)
        if rec is not None:
            rec.dirty = True

    def due(self, now):
        for rec in self.processes.values():
            if not rec.alive:
                continue
            moved = rec.dirty and now - rec.last_read >= self._interval(rec)
            if moved or (rec.settle_at is not None and now >= rec.settle_at):
                yield rec

    def _interval(self, rec):
        cost = rec.latest.read_seconds if rec.latest else 0
        return max(self.min_interval, self.cost_factor * cost)

    def refresh(self, rec, t, min_change=None):
        """Take a new snapshot of rec; return the objects that moved by at least
        min_change since the last one ([] at first, or when min_change is None:
        the daemon wants figures, not a timeline).
        Raises procfs.ProcessGone if the process has exited."""
        snap = take_snapshot(rec.pid, t, self.classifier, rec.pinned)
        minor, major = procfs.read_fault_counts(rec.pid)
        rec.faults = (minor - rec.faults_at_start[0], major - rec.faults_at_start[1])
        prev, rec.latest = rec.latest, snap
        # Movement smaller than the kernel's RSS step sends no event: after a
        # look caused by movement, one more look once things are quiet.
        rec.settle_at = t + self.settle_delay if rec.dirty else None
        rec.dirty, rec.last_read = False, t
        if self.keep_history:
            rec.history.append((t, snap.vm_rss, dict(snap.classes)))
        check = rec.reconciliation
        check["samples"] += 1
        check["failed"] += not snap.reconciled
        if abs(snap.drift) > abs(check["worst_drift"]):
            check["worst_drift"] = snap.drift
        if self.keep_history and rec.baseline is None:
            rec.baseline = snap
        if self.keep_history and (rec.largest is None or snap.total >= rec.largest.total):
            rec.largest = snap
        if prev is None:
            return []
        changes = [] if min_change is None else diff(prev, snap, min_change)
        if prev is not rec.baseline and prev is not rec.largest:
            prev.objects = {}   # only baseline, largest and latest keep mapping detail
        return changes

    def refresh_comm(self, pid):
        rec = self.processes.get(pid)
        if rec is not None:
            try:
                rec.comm = procfs.read_status(pid).name
                rec.cmdline = procfs.read_cmdline(pid)
            except procfs.ProcessGone:
                pass
