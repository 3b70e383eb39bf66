"""The process tracker: the one owner of every watched process's life, for a
capture and for the daemon alike.

It starts tracking a process (at attach, at a fork the kernel saw, at
discovery), follows its execs, renames and exit, keeps its RSS series and
peak, decides when it is due for a look at smaps, attributes its page faults,
and finds the CUDA driver it loads. Every /proc read happens through it, and a
process that vanishes between two reads, is denied, or is a zombie is a normal
outcome it reports as news (Ended), never an exception that reaches a driver.
"""
import dataclasses
import mmap
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass

from ..kernel import cuda
from ..kernel.events import (ANON, FILE, SHMEM, STACK_SAMPLE_BYTES, Brk, CudaCall, CudaCallKind, Exec, Exit, Fork,
                             Mmap, MmCall, Mremap, Munmap, OomVictim, Rename, RssStep, Stack)
from . import procfs, python, regions, symbols
from .causes import explain
from .classes import ANON_HEAP, CUDA_PINNED, Classifier
from .look import diff, take_look
from .process import (ATTACHED, DISCOVERED, FORKED, CallsShed, Change, DriverProbed, Ended, Execed,
                      Looked, OomKill, PinnedCall, Process, RegionEnded, Renamed, SpikeSeen, Started,
                      StacksUnreadable)
from .rss import Peak, SpikeRule
from .sites import INTERPRETER_SHIM, Site, SiteBook

BIG_CALL_BYTES = 64 << 20   # a call this large reads the counters whatever the rate
MAX_CALLS_KEPT = 4096       # per process between two looks; the largest are kept
MAX_TORN_LOOKS = 3          # looks in a row a releasing call cut in two, before one is taken as it is
RENAME_HOLD_NS = 50_000_000
PYTHON_TRIES = 3            # times a process's interpreter is looked for, PYTHON_RETRY_S apart
PYTHON_RETRY_S = 0.1
STACKS_KNOWN = 4096         # per process, the stacks whose Site is kept for their next time
TOP_SITES_NAMED = 8         # a process's largest sites get their native frames named as it runs
VANISHED_GRACE_S = 1.0      # a process found gone is ended then if no exit event came
REGION_MOVE_BYTES = 1 << 20 # a process's large ranges are measured again once its RSS moved this much
FAULTS_INTERVAL_S = 0.1     # the kernel's fault samples are taken no more often
MAPS_SEARCH_INTERVAL_S = 1.0   # a process's maps are searched for the CUDA driver no more often


@dataclass
class LookPolicy:
    """When a process is due for a look at its smaps (and a read of its status)."""
    min_interval: float = 0.1       # no more often than this,
    cost_factor: float = 20         # nor than this many times its last look took
    settle_delay: float = 0.2       # once more this long after movement stops
    min_age: float = 0.02           # not while an exec'd program is younger than this
    first_look_after: float = 1.0   # a process that never moves: its first look
    rss_interval: float = 0.02      # its counters, on movement, no more often than this

    def interval(self, p):
        """A look that met the process mid-way through a large populate or
        munmap took longer than its steady cost: the shortest of the last
        few looks is that cost."""
        return max(self.min_interval, self.cost_factor * min(p.read_costs, default=0.0))


class Clock:
    """Seconds since the driver started, and the kernel's timestamps on that scale."""

    def __init__(self, t0=None):
        self.t0 = time.monotonic() if t0 is None else t0

    def now(self):
        return time.monotonic() - self.t0

    def of_kernel(self, ts_ns):
        return ts_ns / 1e9 - self.t0


class Tracker:
    def __init__(self, kernel, clock, classifier=None, policy=None, spike_rule=None,
                 keep_history=True, adopt_unknown=False, details=False, stacks=False, proc_root=procfs.PROC):
        self.kernel = kernel                # kernel.probes.Probes, or a stand-in
        self.clock = clock
        self.classifier = classifier or Classifier()
        self.policy = policy or LookPolicy()
        self.spike_rule = spike_rule or SpikeRule()
        self.keep_history = keep_history    # a capture keeps every look; the daemon the latest
        self.adopt_unknown = adopt_unknown  # the daemon: any process the kernel shows is tracked
        self.details = details              # read exe and cgroup too (the daemon groups by them)
        self.stacks = stacks                # find each process's Python for the kernel's stacks
        self.proc_root = proc_root
        self.alive = {}                     # pid -> Process
        self.processes = {}                 # key -> Process, ended ones too until forgotten
        self.ignored = {}                   # pid -> (start, why): kernel threads, unreadable
        self.unattributed_faults = 0        # sampled in no known mapping
        self._moved = set()                 # processes with new RSS readings since spikes()
        self._to_measure = set()            # processes whose counters were read in this batch
        self._renames = {}                  # pid -> Rename event held back (see _settle_renames)
        self._faults_collected = -1e9
        self._last_of = {}                  # pid -> the last process that had it
        self._symbols = {}                  # (process key, address) -> its native frame's name
        self._python_unknown = {}           # pid -> a process whose interpreter is not known yet
        self._handlers = {Fork: self._on_fork, Exec: self._on_exec, Rename: self._on_rename,
                          Exit: self._on_exit, CudaCall: self._on_cuda, Stack: self._on_stack,
                          OomVictim: self._on_oom}
        exact = getattr(getattr(kernel, "options", None), "exact_rss", False)
        self.exact_rss = exact

    # ---- starting to track -------------------------------------------------

    def attach(self, pid, now):
        """Track pid, there before the capture began, and look at it now: that
        look is its baseline. Raises procfs.ProcessError if it cannot be read."""
        handle = procfs.ProcDir(pid, root=self.proc_root)
        try:
            p = self._from_proc(handle, now, ATTACHED)
        except procfs.ProcessError:
            handle.close()
            raise
        self.kernel.trace(pid)
        return p, self.look(p, now)

    def adopt(self, pid, now, origin=DISCOVERED):
        """Track pid, found by discovery or shown by the kernel; None (and it is
        ignored until it is gone) for kernel threads and unreadable processes."""
        if pid in self.alive:
            return self.alive[pid], []
        try:
            handle = procfs.ProcDir(pid, root=self.proc_root)
        except procfs.NoSuchProcess:
            return None, []
        except procfs.ProcessError as err:
            self.ignored[pid] = (None, _why(err))
            return None, []
        try:
            stat = handle.stat()
            if stat.kernel_thread or stat.zombie:
                self.ignored[pid] = (handle.start, "kernel thread" if stat.kernel_thread else "zombie")
                handle.close()
                return None, []
            p = self._from_proc(handle, now, origin)
        except procfs.NoSuchProcess:
            handle.close()
            return None, []
        except procfs.ProcessError as err:
            self.ignored[pid] = (handle.start, _why(err))
            handle.close()
            return None, []
        self.kernel.trace(pid)
        return p, [Started(p)]

    def _from_proc(self, handle, now, origin):
        stat = handle.stat()
        p = Process(handle.pid, handle.start, stat.ppid, self.alive.get(stat.ppid), stat.comm, handle.cmdline(),
                    now, origin)
        p.handle = handle
        p.image_started = now
        p.dirty = False
        if self.details:
            p.exe, p.cgroup = handle.exe(), handle.cgroup()
        stale = self._add(p)
        if stale is not None:      # a process whose exit was missed: its pid is p's now
            self._end(stale, now, "gone")
        return p

    def _add(self, p):
        p.rss.keep_points = self.keep_history
        stale = self.alive.get(p.pid)
        self.alive[p.pid] = p
        self._last_of[p.pid] = p
        self.processes[p.key] = p
        self.ignored.pop(p.pid, None)
        if self.stacks and p.python is None:
            self._python_unknown[p.pid] = p
        return stale

    def find(self, pid):
        """The process pid now, else the last one that had it (gone since)."""
        return self.alive.get(pid) or self._last_of.get(pid)

    def touch(self, p):
        """Look at p again when it is due, as if it had moved (a process whose
        share of a shared object changed because another one mapped it)."""
        p.dirty = True

    def forget(self, p):
        """Drop an ended process and all it held (the daemon keeps none)."""
        self.processes.pop(p.key, None)
        if self._last_of.get(p.pid) is p:
            del self._last_of[p.pid]

    # ---- kernel events -----------------------------------------------------

    def on_events(self, events):
        """Apply a batch of kernel events, in order; returns the news."""
        # A process that execs later in this batch has already become its new
        # program: its counters read now belong to that, not to the events
        # before the exec.
        last_exec = {ev.pid: i for i, ev in enumerate(events) if type(ev) is Exec}
        news = []
        for i, ev in enumerate(events):
            stale = last_exec.get(ev.pid, -1) > i
            if type(ev) is RssStep:
                news += self._on_rss_step(ev, stale)
            elif isinstance(ev, MmCall):
                news += self._on_mm_call(ev, stale)
            else:
                handler = self._handlers.get(type(ev))
                if handler is not None:
                    news += handler(ev)
        return news + self._measure_read(self.clock.now()) + self._settle_renames()

    def _settle_renames(self):
        """exec renames the process too, just before its Exec event: a rename
        is news only once no exec has followed it for RENAME_HOLD_NS since it
        arrived."""
        news = []
        for pid, (ev, arrived) in list(self._renames.items()):
            if time.monotonic_ns() - arrived >= RENAME_HOLD_NS:
                del self._renames[pid]
                news += self._rename(ev)
        return news

    def _process_of(self, pid):
        """The tracked process pid, adopting it if the daemon tracks everything."""
        p = self.alive.get(pid)
        if p is None and self.adopt_unknown and pid not in self.ignored:
            p, news = self.adopt(pid, self.clock.now())
            return p, news
        return p, []

    def _on_fork(self, ev):
        t = self.clock.of_kernel(ev.ts_ns)
        start = procfs.boot_ns_to_ticks(ev.child_boot_ns)
        parent = self.alive.get(ev.pid)
        self._renames.pop(ev.child, None)
        news = []
        known = self.alive.get(ev.child)
        if known is not None:
            if abs(known.start - start) <= 1:
                return []       # discovery found it before this event came
            news += self._end(known, t, "gone")   # its exit was never seen (the ring buffer was full)
        # No /proc read: a child that execs or exits within milliseconds (a
        # shell's helpers) costs nothing more. It starts as a copy of its parent.
        p = Process(ev.child, start, ev.pid, parent, parent.comm if parent else ev.comm,
                    parent.cmdline if parent else "", t, FORKED,
                    exe=parent.exe if parent else "", cgroup=parent.cgroup if parent else "")
        p.image_started = t
        p.dirty = False
        if parent is not None and parent.python is not None:   # a copy of its parent's memory
            p.python = parent.python
            self.kernel.set_python(p.pid, p.python.kernel_layout())
        self._add(p)
        return news + [Started(p)]

    def _on_exec(self, ev):
        self._renames.pop(ev.pid, None)
        p, news = self._process_of(ev.pid)
        if p is None:
            return news
        t = self.clock.of_kernel(ev.ts_ns)
        p.execs.append((t, ev.filename))
        news += [SpikeSeen(p, spike) for spike in p.rss.new_spikes(self.spike_rule, float("inf"))]
        news += [RegionEnded(p, r) for r in p.regions.end_all(t) if r.large]
        p.sites = SiteBook()       # the old program's code holds nothing now
        p.comm = ev.comm
        p.cmdline = os.path.basename(ev.filename)
        p.rss.new_image()
        p.vm_hwm = 0
        if p.python_decided_at is None or p.python_decided_at < t:
            self._forget_python(p)   # the old program's (the new one's may have been read already)
            if self.stacks:
                self._python_unknown[p.pid] = p
        p.pinned.clear()
        p.driver_checked = False
        p.latest = None            # the next look is the new program's first: no releases
        p.last_read = -1e9         # and it waits for min_age only, not for the old program's interval
        p.calls.clear()
        p.pending_faults.clear()
        p.image_started = t
        p.dirty = True
        p.names_read = False       # read when needed: most helpers are gone before
        return news + [Execed(p, ev.filename)]

    def _on_rename(self, ev):
        self._renames[ev.renamed] = (ev, time.monotonic_ns())
        return []

    def _rename(self, ev):
        p = self.alive.get(ev.renamed)
        if p is None or p.comm == ev.newcomm:
            return []
        t = self.clock.of_kernel(ev.ts_ns)
        old = (p.comm, p.cmdline)
        p.comm = ev.newcomm
        p.renames.append((t, old[0], p.comm))
        self.read_names(p)
        return [Renamed(p, *old)]

    def _on_exit(self, ev):
        self._renames.pop(ev.pid, None)
        p = self.alive.get(ev.pid)
        if p is None:
            return []
        if ev.peak:
            p.rss.raise_peak(Peak(ev.peak, self.clock.of_kernel(ev.peak_ns), ev.peak_rss))
        # Its /proc stays while it gives its memory back, and its last counter
        # changes are still on their way: none of them brings it back.
        self.ignored[p.pid] = (p.start, "exited")
        return self._end(p, self.clock.of_kernel(ev.ts_ns), "exited")

    def _on_rss_step(self, ev, stale):
        p, news = self._process_of(ev.pid)
        if p is None:
            return news
        t = self.clock.of_kernel(ev.ts_ns)
        self._moved_at(p, t)
        if ev.exact:
            p.rss.add(t, ev.rss[FILE] + ev.rss[ANON] + ev.rss[SHMEM], ev.rss)
        elif not stale and self._wants_rss(p, 0):
            news += self._read_rss(p, self.clock.now())
        return news

    def _on_mm_call(self, ev, stale):
        p = self.alive.get(ev.pid)
        if p is None or ev.failed:
            return []
        t = self.clock.of_kernel(ev.ts_ns)
        self._moved_at(p, t)
        site = p.sites.waiting.pop(ev.tid, None)
        if site is not None:
            ev = dataclasses.replace(ev, stack=site)
        p.calls.append(ev)
        if ev.releases:
            p.half_done_ns = max(p.half_done_ns, ev.ts_ns)
        if len(p.calls) > MAX_CALLS_KEPT:
            p.calls = sorted(p.calls, key=lambda c: -c.size)[:MAX_CALLS_KEPT // 2]
            p.calls.sort(key=lambda c: c.ts_ns)
        news = self._track_regions(p, ev, t)
        if isinstance(ev, Mmap) and ev.prot & mmap.PROT_EXEC and not ev.anonymous and not self._young(p):
            news += self._find_driver(p, ev)    # a library's code: perhaps the CUDA driver
        if not stale and self._wants_rss(p, ev.size):
            news += self._read_rss(p, self.clock.now())
        return news

    def _track_regions(self, p, call, t):
        """Keep p's ranges as its calls make and unmap them."""
        ended = []
        if isinstance(call, Munmap):
            ended = p.regions.cut(call.addr, call.addr + regions.pages(call.length), t)
        elif isinstance(call, Mremap):
            ended = p.regions.cut(call.old_addr, call.old_addr + regions.pages(call.old_length), t)
        region = regions.made_by(call, t)
        if region is not None:
            if region.large:
                self._describe(p, region)
            ended += p.regions.add(region)
        for r in ended:
            p.sites.range_ended(r)
        return [RegionEnded(p, r) for r in ended if r.large]

    def _describe(self, p, region):
        """A large range's file and class: what the timeline will call it."""
        if isinstance(region.call, Mmap) and not region.call.anonymous:
            try:
                region.path = self._handle(p).map_file(region.start, region.end) or self._path_at(p, region.start)
            except procfs.ProcessError:
                pass
        region.cls = self.classifier.classify_range(region.start, region.end, region.path, region.shared)

    def _path_at(self, p, addr):
        for start, end, path in self._handle(p).maps():
            if start <= addr < end:
                return path
        return ""

    def _measure_regions(self, p, now):
        """p's live large ranges, when due and p's memory moved since: their peaks."""
        if abs(p.rss.last - p.rss_at_measure) < REGION_MOVE_BYTES:
            return []
        due = [r for r in p.regions.measured() if r.measure_due(now)]
        if not due:
            return []
        p.rss_at_measure = p.rss.last
        try:
            handle = self._handle(p)
            for r in due:
                resident = handle.resident(r.start, r.end)
                r.measured(now, resident)
                if resident is not None and r.call.stack is not None:
                    p.sites.range_measured(r, resident)
        except procfs.ProcessError as err:
            return self._ended_by(p, now, err)
        return []

    def catch_up(self, now):
        """Read the counters of processes that moved since their last read,
        once the RSS interval has passed, where they hold a large range still
        measured: the kernel's last step before a fill ends can be far from
        its end, and a KV cache freed before the next look would be
        remembered short of its highest."""
        news = []
        for p in list(self.alive.values()):
            if (p.moved_at is not None and p.moved_at > p.last_status and not self._young(p)
                    and now - p.last_status >= self.policy.rss_interval and p.regions.measured()):
                news += self._read_rss(p, now)
        return news + self._measure_read(now)

    def _wants_rss(self, p, call_size):
        """Read p's counters now? At most every rss_interval, and not while its
        exec'd program is starting up (a shell's helpers live a few ms), except
        after a call large enough to make a spike."""
        if p.vanished_at is not None:
            return False
        now = self.clock.now()
        if call_size >= BIG_CALL_BYTES:
            return True
        return not self._young(p) and now - p.last_status >= self.policy.rss_interval

    def _young(self, p):
        """An exec'd program still starting up: most such are a shell's helpers,
        gone within milliseconds. Its first look catches up on what it loaded."""
        return bool(p.execs) and self.clock.now() - p.image_started < self.policy.min_age

    def _on_cuda(self, ev):
        p, news = self._process_of(ev.pid)
        if p is None:
            return news
        t = self.clock.of_kernel(ev.ts_ns)
        caller = self._library_at(p, ev.caller)
        pinned = p.pinned.apply(ev, caller, t)
        if ev.call == CudaCallKind.ALLOC:
            p.half_done_ns = max(p.half_done_ns, ev.ts_ns)
        if ev.call == CudaCallKind.ALLOC and ev.result == 0:
            # Mapped inside the call, before the driver said what it was for.
            region = p.regions.at(ev.addr)
            if region is not None:
                region.cls = CUDA_PINNED
        self._moved_at(p, t)
        return news + [PinnedCall(p, ev, caller, pinned)]

    def _on_stack(self, ev):
        p = self.alive.get(ev.pid)
        if p is None:
            return []
        site = self._site(p, ev)
        if ev.fault_addr:
            p.sites.fault(ev.fault_addr, site)
        else:
            p.sites.waiting[ev.tid] = site
        return []

    def _site(self, p, ev):
        """The Site of a kernel Stack: its Python frames read from their code
        objects (3.12's trampoline frames dropped), its native return
        addresses. A loop sends the same stack again and again: it is read once."""
        key = (ev.frames, ev.native)
        site = p.sites.known.get(key)
        if site is None:
            if len(p.sites.known) >= STACKS_KNOWN:
                p.sites.known.clear()
            site = p.sites.known[key] = Site(self._python_frames(p, ev.frames), ev.native)
        return site

    def _python_frames(self, p, frames):
        out = []
        if p.python is not None and p.vanished_at is None:
            try:
                for frame in python.read_frames(self._handle(p), p.python, frames):
                    if frame is not None and frame.function != INTERPRETER_SHIM:
                        out.append(frame)
            except procfs.ProcessError:
                pass
        return tuple(out)

    def find_pythons(self, now):
        """Find the interpreters of processes started or exec'd since, apart
        from looks: a server's first look can wait seconds for its turn, and
        the imports made meanwhile would have no Python frames. One still
        starting (its libpython not mapped yet) is asked again PYTHON_RETRY_S
        later; one that is Python but cannot be read says why, once."""
        news = []
        for pid, p in list(self._python_unknown.items()):
            if self.alive.get(pid) is not p or p.python is not None or p.python_tries >= PYTHON_TRIES:
                del self._python_unknown[pid]
            elif not self._young(p) and now - p.python_asked_at >= PYTHON_RETRY_S:
                news += self._find_python(p, now)
        return news

    def _find_python(self, p, now):
        p.python_asked_at = now
        try:
            handle = self._handle(p)
            if handle.status().name != p.comm:
                return []       # an exec or a rename is on its way: ask after it
            p.python_tries += 1
            p.python = python.find_interpreter(handle)
        except python.NotYet:
            return []
        except python.Unsupported as err:
            p.python_tries, p.python_decided_at = PYTHON_TRIES, now
            return [StacksUnreadable(p, str(err))]
        except procfs.ProcessError:
            return []
        p.python_decided_at = now
        self.kernel.set_python(p.pid, p.python.kernel_layout())
        return []

    def _forget_python(self, p):
        if p.python is not None:
            self.kernel.set_python(p.pid, None)
        p.python, p.python_tries, p.python_decided_at, p.python_asked_at = None, 0, None, -1e9

    def name_sites(self):
        """Name the native frames of each live process's largest sites now,
        while its libraries can be read (the symbolizer reads its maps): at
        the end, some will have exited."""
        for p in self.alive.values():
            for site, _ in p.sites.highest.most_common(TOP_SITES_NAMED):
                self.native_names(p, site)

    def native_names(self, p, site):
        """Names of site's native frames ('function [library]'), while p lives."""
        unnamed = [addr for addr in site.native if (p.key, addr) not in self._symbols]
        if unnamed and p.alive:
            try:
                handle = self._handle(p)
                file_maps = handle.file_maps()
                for addr in unnamed:
                    self._symbols[(p.key, addr)] = symbols.name(handle, file_maps, addr) or f"{addr:#x}"
            except procfs.ProcessError:
                pass
        return [self._symbols.get((p.key, addr), f"{addr:#x}") for addr in site.native]

    def _on_oom(self, ev):
        p, news = self._process_of(ev.victim)
        return news + [OomKill(p, ev)]

    def _moved_at(self, p, t):
        p.moved_at = t
        p.dirty = True

    # ---- /proc reads ---------------------------------------------------------

    def _handle(self, p):
        """p's open /proc directory; raises procfs.ProcessError."""
        if p.vanished_at is not None:
            raise procfs.NoSuchProcess(p.pid, "gone")
        if p.handle is None:
            p.handle = procfs.ProcDir(p.pid, start=p.start, root=self.proc_root)
        return p.handle

    def _read_rss(self, p, now):
        """Read p's counters now; with --exact-rss, give the kernel those it lacks."""
        try:
            status = self._handle(p).status()
        except procfs.ProcessError as err:
            return self._ended_by(p, now, err)
        p.last_status = now
        p.vm_hwm = max(p.vm_hwm, status.vm_hwm)
        p.rss.add(now, status.vm_rss, status.rss_members)
        self._moved.add(p)
        if self.exact_rss:
            self.kernel.seed_rss(p.pid, status.rss_members)
        self._to_measure.add(p)
        return []

    def _measure_read(self, now):
        """Measure the large ranges of the processes whose counters were just
        read, once the whole batch of events is applied: a MAP_FIXED mapping
        later in the batch is no longer counted in the range it was placed in."""
        news = []
        for p in self._to_measure:
            if p.alive:
                news += self._measure_regions(p, now)
        self._to_measure.clear()
        return news

    def read_names(self, p):
        """p's cmdline (and exe) as they are now: they change at exec and
        rename. A process gone meanwhile keeps what was known."""
        try:
            handle = self._handle(p)
            p.cmdline = handle.cmdline() or p.cmdline
            if self.details:
                p.exe = handle.exe()
        except procfs.ProcessError:
            pass
        p.names_read = True

    def output_target(self, p, fd):
        """What p's stdout or stderr (fd) writes to, or None if p is gone: a
        helper whose output its parent reads writes to the parent's pipe, not
        to the program's output."""
        target = p.output_targets.get(fd)
        if target is None:
            try:
                target = p.output_targets[fd] = self._handle(p).fd_target(fd)
            except procfs.ProcessError:
                return None
        return target

    def _library_at(self, p, addr):
        try:
            for start, end, path in self._handle(p).maps():
                if start <= addr < end:
                    return os.path.basename(path) or "anonymous code"
        except procfs.ProcessError:
            pass
        return "?"

    def _find_driver(self, p, call):
        """Probe the CUDA driver library p maps, if it maps one not probed yet.
        The code just mapped is named by its map_files link, one readlink;
        where the kernel merged it with a neighbour, by its maps. Through
        /proc/PID/root, a container's own copy is reached too."""
        if p.driver_checked:
            return []
        now = self.clock.now()
        try:
            handle = self._handle(p)
            path = handle.map_file(call.ret, call.ret + regions.pages(call.length))
            if path is None and now - p.maps_searched_at >= MAPS_SEARCH_INTERVAL_S:
                p.maps_searched_at = now    # an import maps a hundred libraries in a second
                paths = [path for _, _, path in handle.maps()]
            else:
                paths = [path] if path is not None else []
        except procfs.ProcessError:
            return []
        return self._probe_drivers(p, {path for path in paths if cuda.is_driver(path)})

    def _probe_drivers(self, p, paths):
        news = []
        for path in paths:
            p.driver_checked = True
            symbols = self.kernel.attach_cuda(f"/proc/{p.pid}/root{path}")
            if symbols:
                news.append(DriverProbed(p, path, symbols))
        return news

    # ---- ends ----------------------------------------------------------------

    def _ended_by(self, p, now, err):
        """A read of p failed. Gone or a zombie: its events up to its exit may
        still be on their way (an exec, the exit itself), so it stays tracked,
        unread, until its exit event comes or VANISHED_GRACE_S passes. Denied:
        it is ended; and if it was p that was denied (not a check of whose the
        pid is now), the kernel stops sending its events."""
        if isinstance(err, (procfs.NoSuchProcess, procfs.ZombieProcess)):
            if p.vanished_at is None:
                p.vanished_at = now
                self._close_handle(p)
            return []
        confirmed = p.handle is not None
        news = self._end(p, now, _why(err))
        if confirmed and self.alive.get(p.pid) is None:
            self.kernel.untrace(p.pid)
        return news

    def _close_handle(self, p):
        if p.handle is not None:
            p.handle.close()
            p.handle = None

    def _end(self, p, t, how):
        if not p.alive:
            return []
        p.exited_at = t
        p.ended_how = how
        news = [RegionEnded(p, r) for r in p.regions.end_all(t) if r.large]
        self._forget_python(p)
        p.pinned.clear()           # the driver's ranges die with the process
        self._close_handle(p)
        if self.alive.get(p.pid) is p:
            del self.alive[p.pid]
        self._moved.discard(p)
        return news + [Ended(p)]

    # ---- looks ---------------------------------------------------------------

    def due(self, now):
        """Watched processes due for a look, the longest unread first. One the
        kernel says is half-way through a call that a look would catch half
        done (a large munmap, a CUDA allocation) waits for it to end."""
        due = [p for p in self.alive.values() if p.watched and p.vanished_at is None and self._is_due(p, now)]
        if due:
            busy = self.kernel.busy()
            due = [p for p in due if p.pid not in busy]
        return sorted(due, key=lambda p: p.last_read)

    def _is_due(self, p, now):
        age = now - p.image_started
        if now - p.last_read < self.policy.interval(p) or (p.execs and age < self.policy.min_age):
            return False
        if p.dirty:
            return True
        if p.latest is None:
            return age >= self.policy.first_look_after
        return p.settle_at is not None and now >= p.settle_at

    def look(self, p, now, min_change=None):
        """Look at p's smaps now (read, then settle). The news holds Looked,
        with the objects that moved by min_change or more since its last look
        (none when min_change is None: the daemon wants figures, not a
        timeline), or Ended."""
        snap, news = self.read(p, now)
        return news if snap is None else news + self.settle(p, snap, min_change)

    def read(self, p, now):
        """The first half of a look: (p's smaps now, news). The snapshot is
        None where none could be had: p ended (the news says so, unless it
        had already), or an exec cut every try in two (it stays due)."""
        if not p.alive:
            return None, []        # ended by events taken during another's look
        try:
            snap = take_look(self._handle(p), now, self.classifier, p.pinned, p.regions,
                             p.regions.sited() if self.stacks else ())
        except procfs.ProcessError as err:
            return None, self._ended_by(p, now, err)
        p.last_read = now
        return snap, []

    def settle(self, p, snap, min_change=None, retry_torn=True):
        """The second half of a look read by read(): what moved since the last
        one, explained by the calls that ended before it. A driver that wants
        causes takes the kernel's events in between: a call that ended while
        smaps was being read is still in the ring buffer."""
        if not p.alive or p.image_started > snap.t:
            return []              # it ended or exec'd meanwhile: the look is of nothing now
        if min_change is not None and retry_torn and self._torn(p, snap):
            p.torn_looks += 1      # (a look for figures only, the daemon's, has no causes to lose)
            return []              # it stays due, and is looked at again after its interval
        p.torn_looks = 0
        calls = [c for c in p.calls if c.ts_ns <= snap.read_ns[1]]
        prev = p.latest
        first_of_image = prev is None or prev.stat.layout != snap.stat.layout
        self._record_look(p, snap, snap.t)
        object_faults = self._attribute_faults(p, snap)
        moved = [] if first_of_image else diff(prev, snap, 1)
        changes = [] if min_change is None else self._changes(p, calls, moved, min_change, object_faults)
        if self.stacks:
            self._settle_sites(p, calls, moved, snap)
        p.calls = [c for c in p.calls if c.ts_ns > snap.read_ns[1]]   # the next look's
        if prev is not None and prev is not p.baseline and prev is not p.largest:
            prev.forget_detail()    # only baseline, largest and latest keep mapping detail
        news = [Looked(p, snap, changes)]
        if not p.driver_checked:
            news += self._probe_drivers(p, {o.name for o in snap.objects.values() if cuda.is_driver(o.name)})
        return news

    def _torn(self, p, snap):
        """Whether a call that a look catches half done ran while smaps was
        read: a release (munmap, mremap, madvise) would show without its
        cause, the rest at the next look; a CUDA allocation's new mapping
        would look like plain shared memory. A process that never stops
        making such calls is taken as it is after MAX_TORN_LOOKS tries."""
        if p.torn_looks >= MAX_TORN_LOOKS:
            return False
        return p.half_done_ns >= snap.read_ns[0] or p.pid in self.kernel.busy()

    def _record_look(self, p, snap, now):
        if not p.names_read:
            self.read_names(p)
        p.looks += 1
        p.read_costs = (p.read_costs + [snap.read_seconds])[-3:]
        p.latest = snap
        minor, major = snap.stat.minflt, snap.stat.majflt
        if p.faults_at_start is None:
            p.faults_at_start = (minor, major)
        p.faults = (minor - p.faults_at_start[0], major - p.faults_at_start[1])
        p.rss.add(now, snap.vm_rss, snap.status.rss_members)
        p.vm_hwm = max(p.vm_hwm, snap.status.vm_hwm)
        self._moved.add(p)
        # Movement below the kernel's step sends no event: after a look that
        # movement caused, one more once things are quiet.
        p.settle_at = now + self.policy.settle_delay if p.dirty else None
        p.dirty = False
        check = p.reconciliation
        check["samples"] += 1
        check["failed"] += not snap.reconciled
        if abs(snap.drift) > abs(check["worst_drift"]):
            check["worst_drift"] = snap.drift
        if self.keep_history:
            p.history.append((now, snap.vm_rss, dict(snap.classes)))
            if p.baseline is None and p.origin == ATTACHED:
                p.baseline = snap
            if p.largest is None or snap.total >= p.largest.total:
                p.largest = snap

    def _changes(self, p, calls_before, moved, min_change, object_faults):
        out = []
        for ch in (ch for ch in moved if abs(ch.delta) >= min_change):
            calls = calls_before
            made = p.regions.making(ch.name) if ch.delta > 0 else None
            if made is not None:
                # The range it grew in may have been made looks ago; calls on
                # its addresses before that were on something else.
                calls = [made.call] + [c for c in calls_before if c is not made.call and c.ts_ns >= made.call.ts_ns]
            cause, caused_at = explain(ch, calls, object_faults.get((ch.cls, ch.name), 0))
            out.append(Change(ch.cls, ch.name, ch.delta, ch.rss_after, cause,
                              None if caused_at is None else self.clock.of_kernel(caused_at)))
        return out

    def _settle_sites(self, p, calls, moved, snap):
        """Give what p's memory gained since the last look to the code that
        made it, and take what it lost from its sites (sites.py says how)."""
        measured = []
        for region, resident in snap.sited.items():
            obj = snap.object_at(region.start)
            if obj is not None:
                measured.append((region, (obj.cls, obj.name), resident))


        faults, by_calls, brks = _evidence(p, calls, snap)

        def evidence(key):
            if faults.get(key):
                return faults[key]
            return by_calls.get(key, Counter()) + (brks if key[0] == ANON_HEAP else Counter())
        p.sites.settle(measured, [((ch.cls, ch.name), ch.delta) for ch in moved], evidence)

    # ---- page faults, spikes, discovery --------------------------------------

    def collect_faults(self, now):
        """Take the kernel's fault samples (at most every FAULTS_INTERVAL_S);
        they are attributed at each look."""
        if now - self._faults_collected < FAULTS_INTERVAL_S:
            return
        self._faults_collected = now
        for (pid, region), n in self.kernel.drain_fault_samples().items():
            p = self.alive.get(pid)
            if p is None:
                self.unattributed_faults += n
            else:
                p.pending_faults[region] = p.pending_faults.get(region, 0) + n

    def _attribute_faults(self, p, snap):
        """p's samples since its last look -> the objects that hold them now."""
        by_object = {}
        for region, n in p.pending_faults.items():
            obj = snap.object_at(region)
            if obj is None:
                self.unattributed_faults += n
                continue
            key = (obj.cls, obj.name)
            by_object[key] = by_object.get(key, 0) + n
            p.fault_classes[obj.cls] = p.fault_classes.get(obj.cls, 0) + n
        p.pending_faults = {}
        return by_object

    def collect_shed(self):
        """mm calls the kernel counted instead of sending, per process."""
        news = []
        for pid, (calls, size) in self.kernel.drain_shed_calls().items():
            p = self.find(pid)
            if p is not None:
                p.shed[0] += calls
                p.shed[1] += size
                news.append(CallsShed(p, calls, size))
        return news

    def spikes(self, now):
        """Spikes whose fall window has closed since the last call."""
        news = []
        for p in list(self._moved):
            for spike in p.rss.new_spikes(self.spike_rule, now):
                news.append(SpikeSeen(p, spike))
        self._moved = {p for p in self._moved if p.alive}
        return news

    def verify(self, now):
        """Check that every tracked process is still the one known (an exit the
        kernel's events missed, a pid reused since) and re-read names changed
        without an event (a setproctitle-style argv rewrite)."""
        news = []
        for p in list(self.alive.values()):
            news += self._recheck(p, now)
        return news

    def discover(self, now):
        """Check every tracked process against /proc (a missed exit, a reused pid,
        a name rewritten without an event) and track the ones not seen yet."""
        pids = set(procfs.list_pids(self.proc_root))
        news = []
        for p in list(self.alive.values()):
            if p.pid not in pids:
                self._ended_by(p, now, procfs.NoSuchProcess(p.pid, "gone"))
            news += self._recheck(p, now)
        for pid, (start, _) in list(self.ignored.items()):
            if pid not in pids or not self._same_start(pid, start):
                del self.ignored[pid]
        for pid in pids - self.alive.keys() - self.ignored.keys():
            news += self.adopt(pid, now)[1]
        return news

    def _recheck(self, p, now):
        if p.vanished_at is not None:
            return self._end(p, now, "gone") if now - p.vanished_at >= VANISHED_GRACE_S else []
        try:
            handle = self._handle(p)
            stat = handle.stat()
            if stat.zombie:
                raise procfs.ZombieProcess(p.pid, "exited, not yet reaped")
            cmdline = handle.cmdline()
            cgroup = handle.cgroup() if self.details else p.cgroup
            exe = handle.exe() if self.details and not p.names_read else p.exe
        except procfs.ProcessError as err:
            return self._ended_by(p, now, err)
        if not p.names_read:       # its exec'd program's names, first read
            p.comm, p.cmdline, p.cgroup, p.exe, p.names_read = stat.comm, cmdline, cgroup, exe, True
            return []
        if (stat.comm, cmdline, cgroup) == (p.comm, p.cmdline, p.cgroup):
            return []
        old = (p.comm, p.cmdline)
        p.comm, p.cmdline, p.cgroup = stat.comm, cmdline, cgroup
        if old != (p.comm, p.cmdline):
            p.renames.append((now, old[0], p.comm))
        return [Renamed(p, *old)]

    def _same_start(self, pid, start):
        if start is None:
            return False    # never read: try it again
        try:
            handle = procfs.ProcDir(pid, start=start, root=self.proc_root)
        except procfs.ProcessError:
            return False
        handle.close()
        return True

    def signal(self, p, sig):
        """Send sig to p if p is still alive: never to a newer process that got
        its pid. The pidfd is taken first; p's /proc handle reading after that
        proves the pidfd is p's."""
        if not p.alive:
            return False
        try:
            pidfd = os.pidfd_open(p.pid)
        except OSError:
            return False
        try:
            self._handle(p).stat()
            signal.pidfd_send_signal(pidfd, sig)
            return True
        except (procfs.ProcessError, OSError):
            return False
        finally:
            os.close(pidfd)

    def close(self):
        for p in self.alive.values():
            if p.handle is not None:
                p.handle.close()
                p.handle = None


def _evidence(p, calls, snap):
    """What says which code grew each of snap's objects since the last look,
    worked out in one pass: the sites of the faults sampled in it (outside
    ranges measured on their own), else the sites of the calls on its
    addresses (their ranges not measured on their own), by size; brk's for
    the heap. Each {(class, name): Counter(Site
    -> weight)}, but brk's one Counter."""
    faults, by_calls, brks = {}, {}, Counter()
    for addr, site in p.sites.faults:
        obj = snap.object_at(addr)
        if obj is not None and not _measured_at(p, snap, addr):
            faults.setdefault((obj.cls, obj.name), Counter())[site] += 1
    for call in calls:
        if call.stack is None:
            continue
        if isinstance(call, Brk):
            brks[call.stack] += 1      # each a move of the break by MIN_SYSCALL_BYTES or so
        elif call.span and not _measured_at(p, snap, call.span[0]):   # what a measured range holds is its own
            weight = max(call.size, STACK_SAMPLE_BYTES)   # a smaller call's stack was sampled
            for obj in snap.objects_in(*call.span):
                by_calls.setdefault((obj.cls, obj.name), Counter())[call.stack] += weight
    return faults, by_calls, brks


def _measured_at(p, snap, addr):
    """addr lies in a range whose resident bytes its own site holds (or will,
    from this look on)."""
    region = p.regions.at(addr)
    return region is not None and (region in p.sites.ranges or region in snap.sited)


def _why(err):
    return "denied" if isinstance(err, procfs.AccessDenied) else "unreadable"
