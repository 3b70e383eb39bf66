"""One capture: drives probes -> events -> ledger and records what the views show.

A Capture traces a set of processes (an existing pid, optionally with its
children, or a command it starts itself), turns kernel events into refreshes of
the ledger, and keeps a timeline of what grew, where, and why.
"""
import bisect
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from . import procfs
from .classes import Classifier
from .events import CUDA_CALLS, MAP_ANONYMOUS, MM_SYSCALLS, Kind
from .ledger import Ledger
from .probes import ProbeOptions, Probes, cuda_driver_paths, kernel_dev_to_userspace
from .result import build_result
from .spikes import DEFAULT_MAX_HOLD_S, DEFAULT_MIN_RISE, find_spikes
from .units import fmt_bytes

POLL_MS = 50
HOUSEKEEPING_S = 0.5
SPIKE_LOOKBACK = 512    # RSS steps searched for a spike when RSS falls
# An output line takes the time of the kernel's last write to stdout/stderr if
# that came at most this long before ramwatchd read the line.
OUTPUT_WRITE_WINDOW_S = 1.0


class TargetError(Exception):
    """The pid or command to capture cannot be used; the message says why."""


@dataclass
class CaptureOptions:
    children: bool = False
    duration: float = None
    min_change: int = 8 << 20        # smaller moves of one object stay off the timeline
    refresh_interval: float = 0.25
    spike_min_rise: int = DEFAULT_MIN_RISE
    spike_max_hold_s: float = DEFAULT_MAX_HOLD_S
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    classifier: Classifier = field(default_factory=Classifier)


@dataclass
class Entry:
    """One line of the timeline."""
    t: float
    pid: int
    comm: str
    kind: str          # grow, release, phase, mark, fork, exec, exit, spike, oom, drift, lost
    text: str = ""
    cls: str = ""
    name: str = ""
    delta: int = 0
    rss_after: int = 0
    cause: str = ""
    phase: str = None   # None: the phase current when it is emitted


def check_pid(pid):
    """Raise TargetError unless pid is a user-space process we can trace."""
    try:
        status = procfs.read_status(pid)
        procfs.read_smaps(pid)
    except procfs.ProcessHidden as err:
        raise TargetError(f"not allowed to read {err}: ramwatchd needs root "
                          "(or CAP_SYS_PTRACE) in the process's namespace") from None
    except procfs.ProcessGone:
        raise TargetError(f"no process with pid {pid}") from None
    if status.is_kernel_thread:
        raise TargetError(f"pid {pid} ({status.name}) is a kernel thread: it has no user memory to trace")
    if status.tgid != pid:
        raise TargetError(f"pid {pid} is a thread of process {status.tgid}: pass --pid {status.tgid}")
    return status


def check_command(argv):
    if shutil.which(argv[0]) is None:
        raise TargetError(f"command not found: {argv[0]}")


class Capture:
    def __init__(self, options: CaptureOptions, sink=lambda entry: None):
        self.options = options
        self.sink = sink
        self.ledger = Ledger(options.classifier, min_interval=options.refresh_interval)
        self.entries = []
        self.phases = []
        self.phase_times = []       # the phases' t, for bisect
        self.oom = []
        self.rss_series = {}        # pid -> [(t, total, members)]
        self.syscalls = {}          # pid -> [MemEvent] since its last refresh
        self.fault_samples = {}     # pid -> {region_start: estimated faults}
        self.fault_classes = {}     # pid -> {class: estimated faults}
        self.moved_at = {}          # pid -> when the kernel last saw its memory move
        self.cuda_pids = set()      # pids whose CUDA driver library is probed
        self.file_paths = {}        # (dev, ino) as stat() gives them -> path
        self.page_cache_filled = {}  # (kernel dev, ino) -> (added, removed) bytes
        self.kernel_stats = {}
        self.spike_rule = {"min_rise": options.spike_min_rise, "max_hold_s": options.spike_max_hold_s}
        self.spikes_seen = set()
        self._fell = set()          # pids whose RSS fell in the last batch of events
        self.phase = ""
        self.target = {}
        self.exit_code = None
        self.ended_because = ""
        self._stop = False
        self.child = None
        self._lines = queue.Queue()
        self.probes = Probes(options.probe)
        self.t0 = time.monotonic()
        self.started_wall = time.time()

    # ---- clock -------------------------------------------------------------

    def now(self):
        return time.monotonic() - self.t0

    def kernel_t(self, ts_ns):
        return ts_ns / 1e9 - self.t0

    # ---- targets -----------------------------------------------------------

    def attach(self, pid, snapshot=True):
        """Trace pid from now on; its memory so far becomes its baseline."""
        status = procfs.read_status(pid)
        self.probes.trace(pid, status.rss_members)
        t = self.now()
        rec = self.ledger.add(pid, t)
        self._add_rss_point(pid, t, status.vm_rss, status.rss_members)
        if snapshot:
            self.ledger.refresh(rec, t, self.options.min_change)
        self._find_cuda(pid)
        return rec

    def probe_cuda_drivers(self, environ):
        for path in cuda_driver_paths(environ):
            probed = self.probes.attach_cuda(path)
            if probed:
                self._emit(Entry(self.now(), 0, "-", "cuda",
                                 f"probing {len(probed)} host-memory entry points of {path}"))

    def attach_pid(self, pid):
        check_pid(pid)
        try:
            self.probe_cuda_drivers(procfs.read_environ(pid))
        except procfs.ProcessGone:
            pass
        self.target = {"pid": pid, "children": self.options.children}
        pids = [pid] + (procfs.descendants_of(pid) if self.options.children else [])
        for p in pids:
            try:
                self.attach(p)
            except procfs.ProcessGone:
                if p == pid:
                    raise TargetError(f"process {pid} exited before it could be attached") from None

    def start_command(self, argv):
        """Start argv behind a gate, trace it, then open the gate so it execs.

        The gate is a shell waiting to read one byte on fd 3; tracing starts
        before the exec, so the program is seen from its first instruction."""
        check_command(argv)
        self.probe_cuda_drivers(os.environ)
        gate_r, gate_w = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", 'read -r _ <&3; exec 3<&-; exec "$@"', "ramwatchd-gate"] + list(argv),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, pass_fds=(3,), preexec_fn=lambda: os.dup2(gate_r, 3))
        finally:
            os.close(gate_r)
        self.target = {"command": list(argv), "children": True}
        # No snapshot of the gate itself: the first one follows the exec.
        self.attach(proc.pid, snapshot=False)
        os.write(gate_w, b"g\n")
        os.close(gate_w)
        self.child = proc
        self._reader = threading.Thread(target=self._read_output, args=(proc,), daemon=True)
        self._reader.start()
        return proc

    def _read_output(self, proc):
        """Queue each line with its time and writer: those of the last write to
        stdout or stderr the kernel saw, which sent it; else (a write the kernel
        did not see, such as writev) the moment it was read and the program."""
        for raw in proc.stdout:
            t, pid = self.now(), proc.pid
            write = self.probes.last_output_write()
            if write and t - OUTPUT_WRITE_WINDOW_S <= self.kernel_t(write[0]) <= t:
                t, pid = self.kernel_t(write[0]), write[1]
            self._lines.put((t, pid, raw.decode(errors="replace").rstrip("\n")))
        self._lines.put(None)

    # ---- the loop ----------------------------------------------------------

    def run(self):
        """Collect until --duration, Ctrl-C, or every traced process has exited."""
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        last_housekeeping = 0.0
        try:
            while not self._stop:
                for ev in self.probes.poll(POLL_MS):
                    self._on_event(ev)
                self._check_spikes()
                self._drain_output()
                now = self.now()
                self._refresh_due(now)
                if now - last_housekeeping >= HOUSEKEEPING_S:
                    self._housekeeping(now)
                    last_housekeeping = now
                self._check_end(now)
        finally:
            signal.signal(signal.SIGINT, previous)
        self._finish()

    def _on_sigint(self, *_):
        self.ended_because = "interrupted"
        self._stop = True

    def _check_end(self, now):
        if self.options.duration is not None and now >= self.options.duration:
            self.ended_because = self.ended_because or f"--duration {self.options.duration:g} s reached"
            self._stop = True
        elif not any(r.alive for r in self.ledger.processes.values()):
            self.ended_because = self.ended_because or "every traced process exited"
            self._stop = True

    def _finish(self):
        for ev in self.probes.poll(0):
            self._on_event(ev)
        now = self.now()
        for rec in list(self.ledger.processes.values()):
            if rec.alive:
                rec.dirty = True
                self._refresh(rec, now)
        self._housekeeping(now)
        self.probes.close()
        if self.child is not None:
            self._end_child()
            self._reader.join(timeout=2)
            self._drain_output()

    def _end_child(self):
        """The program of `run`, and what it started, do not outlive the capture.
        Its exit code is kept only when it ended on its own."""
        ended_by_us = self.child.poll() is None
        for rec in self.ledger.processes.values():
            if rec.alive and rec.pid != self.child.pid:
                _signal(rec.pid, signal.SIGTERM)
        if ended_by_us:
            self.child.terminate()
        try:
            code = self.child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.child.kill()
            code = self.child.wait()
        self.exit_code = None if ended_by_us else code

    # ---- events ------------------------------------------------------------

    def _emit(self, entry):
        if entry.phase is None:
            entry.phase = self.phase
        self.entries.append(entry)
        self.sink(entry)

    def _phase_at(self, t):
        i = bisect.bisect_right(self.phase_times, t) - 1
        return self.phases[i]["name"] if i >= 0 else ""

    def _comm(self, pid):
        rec = self.ledger.processes.get(pid)
        return rec.comm if rec else "?"

    def _on_event(self, ev):
        t = self.kernel_t(ev.ts_ns)
        if ev.kind in MM_SYSCALLS or ev.kind == Kind.RSS_STEP:
            self.moved_at[ev.pid] = t
        if ev.kind in MM_SYSCALLS:
            if not ev.failed:
                self.syscalls.setdefault(ev.pid, []).append(ev)
                self._read_rss(ev.pid)   # the call just changed the mappings
                if ev.kind == Kind.MMAP and not ev.flags & MAP_ANONYMOUS:
                    self._find_cuda(ev.pid)   # a library being loaded may be the driver
        elif ev.kind in CUDA_CALLS:
            self._on_cuda(ev, t)
        elif ev.kind == Kind.RSS_STEP:
            self._on_rss_step(ev, t)
        elif ev.kind == Kind.FORK:
            self._on_fork(ev.ret, t)
        elif ev.kind == Kind.EXEC:
            self.cuda_pids.discard(ev.pid)
            self._find_cuda(ev.pid)
            self.ledger.refresh_comm(ev.pid)
            self.ledger.mark_dirty(ev.pid)
            self._emit(Entry(t, ev.pid, self._comm(ev.pid), "exec", ev.name))
        elif ev.kind == Kind.EXIT:
            self._on_exit(ev.pid, t, peak=(ev.addr, self.kernel_t(ev.length), ev.rss))
        elif ev.kind == Kind.MARK:
            self._on_phase(t, ev.pid, ev.name, "mark")
        elif ev.kind == Kind.OOM_VICTIM:
            self._on_oom(ev, t)

    def _check_spikes(self):
        """Report each spike once, after the batch of events that holds its fall."""
        for pid in self._fell:
            self._report_spikes(pid, self.rss_series[pid][-SPIKE_LOOKBACK:])
        self._fell.clear()

    def _report_spikes(self, pid, series):
        for spike in find_spikes(pid, series, **self.spike_rule):
            if (pid, spike.peak_t) not in self.spikes_seen:
                self.spikes_seen.add((pid, spike.peak_t))
                self._emit(Entry(spike.fall_t, pid, self._comm(pid), "spike",
                                 f"rose {fmt_bytes(spike.size)} ({spike.member}) and fell back "
                                 f"{spike.hold_s * 1000:.0f} ms after its peak",
                                 delta=spike.size, rss_after=spike.peak))

    def _on_rss_step(self, ev, t):
        """The kernel saw the RSS move. Without EXACT_RSS the event carries no
        sizes: read the kernel's counters now, which is when they are true."""
        if any(ev.rss):
            self._add_rss_point(ev.pid, t, ev.rss_total, ev.rss)
            self.ledger.mark_dirty(ev.pid)
        else:
            self._read_rss(ev.pid)

    def _read_rss(self, pid):
        try:
            status = procfs.read_status(pid)
        except procfs.ProcessGone:
            return
        self._add_rss_point(pid, self.now(), status.vm_rss, status.rss_members)
        self.ledger.mark_dirty(pid)

    def _add_rss_point(self, pid, t, total, rss):
        series = self.rss_series.setdefault(pid, [])
        if series and total < series[-1][1]:
            self._fell.add(pid)
        series.append((t, total, rss))
        rec = self.ledger.processes.get(pid)
        if rec is not None and (rec.peak is None or total > rec.peak[0]):
            rec.peak = (total, t, rss)

    def _on_fork(self, child, t):
        try:
            status = procfs.read_status(child)
        except procfs.ProcessGone:
            return   # gone already; its exit event follows
        self.probes.trace(child, status.rss_members)
        rec = self.ledger.add(child, t)
        self._add_rss_point(child, t, status.vm_rss, status.rss_members)
        self._emit(Entry(t, child, rec.comm, "fork", f"child of {status.ppid}"))

    def _on_exit(self, pid, t, peak=None):
        rec = self.ledger.processes.get(pid)
        if rec is None or not rec.alive:
            return
        rec.exited_at = t
        rec.pinned.ranges.clear()   # the driver's ranges die with the process
        if peak and peak[0] >= rec.peak[0]:
            rec.peak = peak
        self.probes.untrace(pid)
        self._emit(Entry(t, pid, rec.comm, "exit",
                         f"peak {fmt_bytes(rec.peak[0])}" if rec.peak else ""))

    def _find_cuda(self, pid):
        """Probe the CUDA driver library pid maps, if it maps one not probed yet.
        Through /proc/PID/root, a container's own copy is reached too."""
        if pid in self.cuda_pids:
            return
        try:
            paths = {path for _, _, path in procfs.read_maps(pid)
                     if os.path.basename(path).startswith("libcuda.so")}
        except procfs.ProcessGone:
            return
        for path in paths:
            self.cuda_pids.add(pid)
            probed = self.probes.attach_cuda(f"/proc/{pid}/root{path}")
            if probed:
                self._emit(Entry(self.now(), pid, self._comm(pid), "cuda",
                                 f"probing {len(probed)} host-memory entry points of {path}"))

    def _on_cuda(self, ev, t):
        rec = self.ledger.processes.get(ev.pid)
        if rec is None:
            return
        caller = self._library_at(ev.pid, ev.caller)
        pinned = rec.pinned.apply(ev, caller, t)
        where = f" at {ev.addr:#x}" if ev.kind in (Kind.CUDA_ALLOC, Kind.CUDA_REGISTER) else ""
        self._emit(Entry(t, ev.pid, rec.comm, "pinned", f"{ev.describe()}{where}, called from {caller}",
                         cls="cuda_pinned" if ev.kind == Kind.CUDA_ALLOC else "",
                         delta=ev.length if pinned is not None and ev.kind == Kind.CUDA_ALLOC else 0))
        self.ledger.mark_dirty(ev.pid)

    def _library_at(self, pid, addr):
        try:
            for start, end, path in procfs.read_maps(pid):
                if start <= addr < end:
                    return os.path.basename(path) or "anonymous code"
        except procfs.ProcessGone:
            pass
        return "?"

    def _on_phase(self, t, pid, name, source):
        name = name.strip()
        if not name:
            return
        # Marks come with the events and lines through a pipe: keep them in time order.
        i = bisect.bisect_right(self.phase_times, t)
        self.phase_times.insert(i, t)
        self.phases.insert(i, {"t": t, "pid": pid, "name": name[:120], "source": source})
        self.phase = self.phases[-1]["name"]
        self._emit(Entry(t, pid, self._comm(pid), "mark" if source == "mark" else "phase", name))

    def _on_oom(self, ev, t):
        victim = {"t": t, "pid": ev.ret, "comm": ev.name, "anon": ev.rss[1], "file": ev.rss[0],
                  "shmem": ev.rss[3], "traced": ev.ret in self.ledger.processes}
        self.oom.append(victim)
        self._emit(Entry(t, ev.ret, ev.name, "oom",
                         f"OOM killer chose pid {ev.ret} ({ev.name}): anon {fmt_bytes(victim['anon'])}, "
                         f"file {fmt_bytes(victim['file'])}, shmem {fmt_bytes(victim['shmem'])}"))

    def _drain_output(self):
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._on_phase(*item, "output")

    # ---- refreshing the ledger ---------------------------------------------

    def _refresh_due(self, now):
        due = list(self.ledger.due(now))
        held = self.probes.allocating_cuda() if due else set()
        for rec in due:
            if rec.pid not in held:
                self._refresh(rec, now)

    def _refresh(self, rec, now):
        for (pid, region), n in self.probes.drain_fault_samples().items():
            per_pid = self.fault_samples.setdefault(pid, {})
            per_pid[region] = per_pid.get(region, 0) + n
        try:
            changes = self.ledger.refresh(rec, now, self.options.min_change)
        except procfs.ProcessGone:
            self._on_exit(rec.pid, now)
            return
        # Syscalls that finished while we looked explain what we saw, and lines
        # written meanwhile start the phases they fall in: take them in.
        for ev in self.probes.poll(0):
            self._on_event(ev)
        self._drain_output()
        calls = self.syscalls.pop(rec.pid, [])
        faults = self._attribute_faults(rec)
        moved_at = self.moved_at.get(rec.pid, now)
        for ch in changes:
            cause, caused_at = _cause(ch, calls, faults.get((ch.cls, ch.name), 0))
            # The change happened before this look: name the phase of the call
            # that made it, else of the kernel's last report of movement.
            phase = self._phase_at(self.kernel_t(caused_at) if caused_at else moved_at)
            self._emit(Entry(now, rec.pid, rec.comm, "grow" if ch.delta > 0 else "release",
                             cls=ch.cls, name=ch.name, delta=ch.delta,
                             rss_after=rec.latest.total, cause=cause, phase=phase))
        snap = rec.latest
        if not snap.reconciled:
            self._emit(Entry(now, rec.pid, rec.comm, "drift",
                             f"classes sum to {fmt_bytes(snap.total)} but VmRSS is "
                             f"{fmt_bytes(snap.vm_rss)} (off by {fmt_bytes(snap.drift, True)})"))

    def _attribute_faults(self, rec):
        """Give the fault samples of rec's regions to the objects that hold them."""
        by_object = {}
        per_class = self.fault_classes.setdefault(rec.pid, {})
        for region, n in self.fault_samples.pop(rec.pid, {}).items():
            obj = rec.latest.object_at(region)
            if obj is not None:
                key = (obj.cls, obj.name)
                by_object[key] = by_object.get(key, 0) + n
                per_class[obj.cls] = per_class.get(obj.cls, 0) + n
        return by_object

    # ---- periodic ----------------------------------------------------------

    def _housekeeping(self, now):
        for rec in self.ledger.processes.values():
            if not rec.alive:
                continue
            state = self.probes.rss_state(rec.pid)
            if state is not None and state[0] >= rec.peak[0]:
                peak, peak_ns, peak_rss = state
                rec.peak = (peak, self.kernel_t(peak_ns), peak_rss)
            if not os.path.exists(f"/proc/{rec.pid}"):
                self._on_exit(rec.pid, now)
        self.page_cache_filled = self.probes.page_cache()
        self._resolve_files()
        stats = self.probes.stats()
        lost = stats["events_lost"] - self.kernel_stats.get("events_lost", 0)
        if lost > 0:
            self._emit(Entry(now, 0, "-", "lost", f"{lost} kernel events dropped: the ring buffer was full"))
        for name in ("children_not_followed", "fault_regions_full", "files_full", "inflight_full"):
            if stats[name] > self.kernel_stats.get(name, 0):
                self._emit(Entry(now, 0, "-", "lost", f"kernel map full: {name.replace('_', ' ')}"))
        self.kernel_stats = stats

    def _resolve_files(self):
        """Name the files the page cache grew for: from mappings, else open fds."""
        if all((kernel_dev_to_userspace(dev), ino) in self.file_paths
               for dev, ino in self.page_cache_filled):
            return
        for rec in self.ledger.processes.values():
            if rec.latest is not None:
                for obj in rec.latest.objects.values():
                    if obj.inode:
                        self.file_paths.setdefault((os.makedev(*obj.dev), obj.inode), obj.name)
            if rec.alive:
                for key, path in procfs.open_files(rec.pid).items():
                    self.file_paths.setdefault(key, path)

    # ---- the result --------------------------------------------------------

    def result(self):
        """Everything the capture saw, as plain data: what --json saves and report reads."""
        return build_result(self)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _cause(change, calls, faults):
    """Which syscalls touched the object's mappings, and the faults seen in them;
    and when the largest (then earliest) of those calls was made (kernel ns), or None."""
    hits, first = {}, None   # calls sorted: the first hit is the largest
    for ev in sorted(calls, key=lambda ev: (-ev.length, ev.ts_ns)):
        span = ev.span
        if (change.cls == "anon_heap" and ev.kind == Kind.BRK) or (
                span is not None and any(s < span[1] and span[0] < e for s, e in change.ranges)):
            what = ev.describe()
            hits[what] = hits.get(what, 0) + 1
            if first is None:
                first = ev.ts_ns
    parts = [what if n == 1 else f"{what} x{n}" for what, n in hits.items()]
    if len(parts) > 3:
        parts = parts[:2] + [f"{len(parts) - 2} more kinds of call"]
    if faults:
        parts.append(f"~{faults:,} faults")
    return "; ".join(parts), first
