"""One capture: runs the kernel side and the tracker for one process tree (an
existing pid, optionally with its children, or a command it starts itself),
and turns the tracker's news into the timeline and what the summary needs.
"""
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field

from ...kernel import cuda
from ...kernel.events import Mark, Output
from ...kernel.probes import ProbeOptions, Probes
from ...ledger import procfs
from ...ledger.classes import Classifier
from ...ledger.node import page_cache_bytes
from ...ledger.process import (ATTACHED, FORKED, CallsShed, DriverProbed, Ended, Execed, Looked, OomKill,
                               PinnedCall, RegionEnded, Renamed, SpikeSeen, StacksUnreadable, Started)
from ...ledger.rss import DEFAULT_MAX_HOLD_S, DEFAULT_MIN_RISE, SpikeRule
from ...ledger.tracker import Clock, LookPolicy, Tracker
from ...units import fmt_bytes, fmt_seconds
from ...views.timeline import Entry
from .output import PipeMatcher, Writers
from .phases import PhaseLines, Phases
from .program import Program, TargetError
from .timeline import Timeline

POLL_MS = 100         # a quiet step: each wait costs ~0.1 ms of CPU to wake from, on a VM
MIN_STEP_S = 0.02      # events that come faster are taken in batches, this often
LOOK_SHARE = 0.01      # of one core: the CPU looks at smaps may take in all
LOOK_BURST_S = 0.1     # and at once: a look at a server with a thousand mappings
HOUSEKEEPING_S = 0.5
CAPTURE_NICE = -5
FILES_INTERVAL_S = 0.5   # files that filled the page cache are named while they may still be open
FILE_NAMING_S = 5.0      # a file closed and unmapped before it was named stays unnamed
ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class CaptureOptions:
    children: bool = False
    duration: float = None
    min_change: int = 8 << 20        # smaller moves of one object stay off the timeline
    refresh_interval: float = 0.25   # a process's smaps is read no more often than this
    spike_min_rise: int = DEFAULT_MIN_RISE
    spike_max_hold_s: float = DEFAULT_MAX_HOLD_S
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    classifier: Classifier = field(default_factory=Classifier)
    phase_patterns: tuple = ()       # --phase: the lines that mark phases (default: all but noise)
    show_output: bool = True         # `run`: the program's lines on the timeline, not passed through


def check_pid(pid):
    """Raise TargetError unless pid is a user-space process we can trace."""
    try:
        handle = procfs.ProcDir(pid)
    except procfs.AccessDenied as err:
        raise TargetError(f"{err}: ramwatchd needs root (or CAP_SYS_PTRACE) in the process's namespace") from None
    except procfs.ProcessError:
        raise TargetError(f"no process with pid {pid}") from None
    try:
        stat = handle.stat()
        status = procfs.parse_status(handle.read("status"), pid)
        if stat.kernel_thread:
            raise TargetError(f"pid {pid} ({stat.comm}) is a kernel thread: it has no user memory to trace")
        if status.tgid != pid:
            raise TargetError(f"pid {pid} is a thread of process {status.tgid}: pass --pid {status.tgid}")
        if stat.zombie:
            raise TargetError(f"pid {pid} ({stat.comm}) has exited and awaits its parent: nothing to trace")
        handle.smaps()
    except procfs.AccessDenied as err:
        raise TargetError(f"{err}: ramwatchd needs root (or CAP_SYS_PTRACE) in the process's namespace") from None
    except procfs.ProcessError:
        raise TargetError(f"process {pid} exited before it could be attached") from None
    finally:
        handle.close()


def _own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ahead_of_the_program():
    """A measure must land while the memory it measures is still there: on a
    busy node, a capture at the program's priority waits behind it and sees a
    weights file mapped for half a second at half its size, or not at all. It
    uses a few % of a core, so the program loses little to it. (Root only.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CAPTURE_NICE)
    except OSError:
        pass


class Capture:
    def __init__(self, options: CaptureOptions, sink=lambda entry: None):
        self.options = options
        self.probes = Probes(options.probe)
        self.clock = Clock()
        self.tracker = Tracker(self.probes, self.clock, options.classifier,
                               LookPolicy(min_interval=options.refresh_interval),
                               SpikeRule(options.spike_min_rise, options.spike_max_hold_s),
                               stacks=options.probe.stacks)
        self.timeline = Timeline(sink)
        self.phases = Phases(self._parent_key)
        self.phase_lines = PhaseLines(options.phase_patterns)
        self.writers = Writers()
        self.pipe = PipeMatcher()
        self.output_targets = set()  # where the program's stdout and stderr go
        self.oom = []
        self.mappings = []           # large ranges that ended, with their peaks
        self.drivers_probed = []     # (t, path, symbols)
        self.file_paths = {}         # (dev, ino) as stat() gives them -> path
        self.page_cache_filled = {}  # (dev, ino) -> (added, removed) bytes
        self.kernel_stats = {}
        self.shed = [0, 0]           # mm calls counted in the kernel, and their bytes
        self._files_read = -1e9
        self._files_unnamed = {}     # (dev, ino) of files to show, not yet named -> since
        self._look_budget, self._budget_at = LOOK_BURST_S, 0.0
        self.target = {}
        self.program = None
        self.exit_code = None
        self.ended_because = ""
        self.started_wall = time.time()
        self.own_cpu_s = 0.0         # ramwatchd's own CPU from the start of run() to its end
        self.run_started = 0.0
        self.failure = None          # an internal error that ended the capture
        self._stop = False

    def now(self):
        return self.clock.now()

    # ---- targets -----------------------------------------------------------

    def attach_pid(self, pid):
        """Trace pid (and with options.children its descendants) from now on;
        their memory so far becomes their baseline."""
        check_pid(pid)
        self.target = {"pid": pid, "children": self.options.children}
        try:
            p, news = self.tracker.attach(pid, self.now())
        except procfs.ProcessError:
            raise TargetError(f"process {pid} exited before it could be attached") from None
        self.output_targets = {self.tracker.output_target(p, fd) for fd in (1, 2)} - {None}
        try:
            if p.handle is not None:
                self._probe_drivers(p.handle.environ())
        except procfs.ProcessError:
            pass
        self._apply(news)
        if self.options.children:
            self._attach_descendants(p)

    def _attach_descendants(self, root):
        todo = [root]
        while todo:
            parent = todo.pop()
            try:
                kids = sorted(parent.handle.children()) if parent.handle else []
            except procfs.ProcessError:
                continue
            for kid in kids:
                try:
                    p, news = self.tracker.attach(kid, self.now())
                except procfs.ProcessError:
                    continue     # gone already
                self._apply(news)
                todo.append(p)

    def start_command(self, argv):
        """Start argv behind a gate, trace it, then open the gate so it execs:
        the program is seen from its first instruction."""
        self._probe_drivers(os.environ)
        self.program = Program(argv, os.environ, read_output=self.options.show_output)
        self.output_targets = self.program.output_targets()
        self.target = {"command": list(argv), "children": True}
        self.probes.trace(self.program.pid)
        self.tracker.adopt(self.program.pid, self.now(), origin=FORKED)
        self.program.go(self.clock)

    def _probe_drivers(self, environ):
        for path in cuda.driver_paths(environ):
            symbols = self.probes.attach_cuda(path)
            if symbols:
                self._driver_probed(None, path, symbols)

    # ---- the loop ----------------------------------------------------------

    def run(self):
        """Collect until --duration, a signal (Ctrl-C, SIGTERM, SIGHUP), or every
        traced process has exited. What was collected is finished whatever ends it."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in ENDING_SIGNALS}
        _ahead_of_the_program()
        last_housekeeping = 0.0
        cpu_at_start, self.run_started = _own_cpu(), self.now()
        try:
            while not self._stop:
                self._step()
                now = self.now()
                if now - last_housekeeping >= HOUSEKEEPING_S:
                    self._housekeeping(now)
                    last_housekeeping = now
                self._check_end(now)
        except Exception as err:   # a defect of ours: keep what was collected, and say so
            self.failure = "".join(traceback.format_exception_only(type(err), err)).strip()
            self.ended_because = f"stopped by an internal error ({self.failure})"
            raise
        finally:
            try:
                self._finish()
            finally:
                self.own_cpu_s = _own_cpu() - cpu_at_start
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum, _frame):
        self.ended_because = self.ended_because or {
            signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
            signal.SIGHUP: "hung up (SIGHUP)"}[signum]
        self._stop = True

    def _step(self):
        started = time.monotonic()
        self._take_events(POLL_MS)
        now = self.now()
        self._apply(self.tracker.catch_up(now))
        if self.options.probe.stacks:
            self._apply(self.tracker.find_pythons(now))
        self._take_lines(now)
        self._look_due(now)
        self._apply(self.tracker.spikes(now))
        self.timeline.flush(now)
        time.sleep(max(0.0, MIN_STEP_S - (time.monotonic() - started)))

    def _look_due(self, now):
        """Look at the processes due, within the capture's CPU budget for looks:
        a server's processes each have a thousand mappings, and reading their
        smaps is most of what a capture costs."""
        self._look_budget = min(LOOK_BURST_S, self._look_budget + (now - self._budget_at) * LOOK_SHARE)
        self._budget_at = now
        if self._look_budget <= 0:
            return       # asking who is due costs a read of kernel maps: not while no look may run
        due = self.tracker.due(now)
        if due:
            self.tracker.collect_faults(now)
        for p in due:
            if self._look_budget <= 0:
                return
            spent = time.thread_time()
            self._look(p, now)
            self._look_budget -= time.thread_time() - spent

    def _look(self, p, now, last=False):
        snap, news = self.tracker.read(p, now)
        self._apply(news)
        if snap is not None:
            # A call that ended while smaps was read is still in the ring
            # buffer: taken now, it explains what the look saw.
            self._take_events(0)
            self._apply(self.tracker.settle(p, snap, self.options.min_change, retry_torn=not last))

    def _take_events(self, timeout_ms):
        events = self.probes.poll(timeout_ms)
        self._apply(self.tracker.on_events(events))
        self._take_phases(events)

    def _check_end(self, now):
        if self.options.duration is not None and now >= self.options.duration:
            self.ended_because = self.ended_because or f"--duration {self.options.duration:g} s reached"
            self._stop = True
        elif not self.tracker.alive:
            self.ended_because = self.ended_because or "every traced process exited"
            self._stop = True

    def _finish(self):
        """Last looks, then stop the program of `run` and what it started: they
        do not outlive the capture."""
        self._take_events(0)
        now = self.now()
        self.tracker.collect_faults(float("inf"))
        for p in list(self.tracker.alive.values()):
            p.dirty = True
            self._look(p, now, last=True)
        self._housekeeping(now, final=True)
        if self.program is not None:
            # Processes that left the program's session are ended one by one.
            for p in list(self.tracker.alive.values()):
                if p.pid != self.program.pid:
                    self.tracker.signal(p, signal.SIGTERM)
            self.exit_code = self.program.end(exited=self.program.pid not in self.tracker.alive)
        self._take_lines(self.now(), final=True)
        self._apply(self.tracker.spikes(float("inf")))
        self.tracker.close()
        self.timeline.flush(self.now(), final=True)

    # ---- what the kernel and the tracker said --------------------------------

    def _take_phases(self, events):
        """Marks, and the lines each process printed: the phases they name."""
        for ev in events:
            kind = type(ev)
            if kind is Mark:
                self._on_phase(self.clock.of_kernel(ev.ts_ns), ev.pid, ev.name.strip(), "mark")
            elif kind is Output:
                for line in self.writers.feed(ev, self.clock.of_kernel(ev.ts_ns)):
                    self._on_line(line, ev.fd)
        for line, fd in self.writers.flush(self.now(), final=self._stop):
            self._on_line(line, fd)

    def _on_line(self, line, fd):
        p = self.tracker.find(line.pid)
        if p is None or self.tracker.output_target(p, fd) not in self.output_targets:
            return       # written where the program's output does not go: to a parent's pipe, say
        self.pipe.kernel_line(line)
        name = self.phase_lines.name(line.pid, line.text)
        if name:
            self._on_phase(line.t, line.pid, name, "output")
            if self.program is None:     # --pid: the program's own output is elsewhere
                self._show_line(line)

    def _take_lines(self, now, final=False):
        """The lines of `run`'s program, from its pipe: all of them are shown."""
        if self.program is None:
            return
        for read_t, text in self.program.take_lines():
            if text.strip():
                self.pipe.pipe_line(read_t, text)
        for line in self.pipe.take(now, self.program.pid, final):
            self._show_line(line)

    def _show_line(self, line):
        p = self.tracker.find(line.pid)
        self._emit(Entry(line.t, line.pid, p.comm if p else "?", "output", line.text), p)

    def _on_phase(self, t, pid, name, source):
        if not name:
            return
        p = self.tracker.find(pid)
        self.phases.add(t, p.key if p else (pid, None), pid, name, source)
        if p is not None:
            self.timeline.keep(p)
        if source == "mark":
            self._emit(Entry(t, pid, p.comm if p else "?", "mark", name), p)

    def _parent_key(self, key):
        p = self.tracker.processes.get(key)
        return p.parent.key if p is not None and p.parent is not None else None

    def _emit(self, entry, process=None, when=None):
        """Put entry on the timeline, in the phase its process was in at `when`
        (by default, the entry's own time)."""
        if process is not None:
            phase = self.phases.at(process.key, entry.t if when is None else when)
            if phase is not None:
                entry.phase, entry.phase_t = phase["name"], phase["t"]
        self.timeline.add(entry, process)

    def _apply(self, news):
        for item in news:
            handler = self._news_handlers.get(type(item))
            if handler is not None:
                handler(self, item)

    def _started(self, item):
        p = item.process
        if p.origin == FORKED and p.ppid:
            self._emit(Entry(p.first_seen, p.pid, p.comm, "fork", f"child of {p.ppid}"), p)

    def _execed(self, item):
        p = item.process
        self._emit(Entry(p.image_started, p.pid, p.comm, "exec", item.filename), p)

    def _renamed(self, item):
        p = item.process
        t = p.renames[-1][0] if p.renames else self.now()
        if item.old_comm != p.comm:
            text = f"{item.old_comm} -> {p.comm}"
        else:
            text = f"command line now: {p.cmdline[:100]}"
        self._emit(Entry(t, p.pid, p.comm, "rename", text), p)

    def _ended(self, item):
        p = item.process
        peak = p.rss.peak
        text = {"exited": "", "gone": "gone (its exit was not seen)", "denied": "no longer readable",
                "unreadable": "no longer readable"}.get(p.ended_how, p.ended_how)
        text = text or (f"peak {fmt_bytes(peak.bytes)}" if peak else "")
        entry = Entry(p.exited_at, p.pid, p.comm, "exit", text)
        self.timeline.ended(p, entry)

    def _looked(self, item):
        p, snap = item.process, item.snapshot
        for ch in item.changes:
            # The change happened before this look: it belongs to the phase of
            # the call that made it, else of the kernel's last report of movement.
            when = ch.caused_at if ch.caused_at is not None else (p.moved_at or snap.t)
            self._emit(Entry(snap.t, p.pid, p.comm, "grow" if ch.delta > 0 else "release",
                             cls=ch.cls, name=ch.name, delta=ch.delta, rss_after=snap.total,
                             cause=ch.cause), p, when)
        if not snap.reconciled:
            self._emit(Entry(snap.t, p.pid, p.comm, "drift",
                             f"classes sum to {fmt_bytes(snap.total)} but VmRSS is "
                             f"{fmt_bytes(snap.vm_rss)} (off by {fmt_bytes(snap.drift, True)})"), p)

    def _region_ended(self, item):
        """A large range ended: its life and its resident bytes at their highest,
        which looks at smaps may never have caught."""
        p, r = item.process, item.region
        if r.peak < self.options.min_change:
            return    # reserved, hardly touched: a thread stack, an arena's reserve
        cache = page_cache_bytes(r.path) if r.path else None
        site = r.call.stack
        mapping = {"pid": p.pid, "class": r.cls, "name": r.name, "start": r.start, "size": r.size,
                   "t": r.t, "ended": r.ended_at, "peak": r.peak, "peak_t": r.peak_t,
                   "page_cache": cache, "call": r.call.describe(), "seen_by_look": r.seen_by_look,
                   "site": site.frames() if site else []}
        if site and site.python:
            mapping["call"] += f" at {site.name()}"
        self.mappings.append(mapping)
        text = (f"{fmt_bytes(r.size)} mapped for {fmt_seconds(r.ended_at - r.t)}, resident at most "
                f"{fmt_bytes(r.peak)}" + (f", page cache {fmt_bytes(cache)}" if cache is not None else ""))
        self._emit(Entry(r.ended_at, p.pid, p.comm, "mapping", text, cls=r.cls, name=r.name,
                         delta=r.peak, cause=mapping["call"]), p, r.t)

    def _stacks_unreadable(self, item):
        p = item.process
        self._emit(Entry(self.now(), p.pid, p.comm, "python",
                         f"Python stacks not readable ({item.reason}): native frames only"), p)

    def _spike(self, item):
        p, s = item.process, item.spike
        self._emit(Entry(s.fall_t, p.pid, p.comm, "spike",
                         f"rose {fmt_bytes(s.size)} ({s.member}) and fell back "
                         f"{s.hold_s * 1000:.0f} ms after its peak",
                         delta=s.size, rss_after=s.peak), p)

    def _pinned(self, item):
        p, call = item.process, item.call
        where = f" at {call.addr:#x}" if call.starts_range else ""
        allocated = item.pinned is not None and call.call == 0
        self._emit(Entry(self.clock.of_kernel(call.ts_ns), p.pid, p.comm, "pinned",
                         f"{call.describe()}{where}, called from {item.caller}",
                         cls="cuda_pinned" if allocated else "", delta=call.size if allocated else 0), p)

    def _driver(self, item):
        self._driver_probed(item.process, item.path, item.symbols)

    def _driver_probed(self, p, path, symbols):
        t = self.now()
        self.drivers_probed.append((t, path, symbols))
        self._emit(Entry(t, p.pid if p else 0, p.comm if p else "-", "cuda",
                         f"probing {len(symbols)} host-memory entry points of {path}"), p)

    def _shed(self, item):
        self.shed[0] += item.calls
        self.shed[1] += item.bytes
        p = item.process
        self._emit(Entry(self.now(), p.pid, p.comm, "shed",
                         f"{item.calls:,} mm calls ({fmt_bytes(item.bytes)}) came faster than "
                         f"{self.options.probe.max_calls_per_s:,}/s: counted, not shown one by one"), p)

    def _oom(self, item):
        ev, p = item.event, item.victim
        self.oom.append({"t": self.clock.of_kernel(ev.ts_ns), "pid": ev.victim, "comm": ev.victim_comm,
                         "anon": ev.anon, "file": ev.file, "shmem": ev.shmem,
                         "traced": p is not None and p.key in self.tracker.processes})
        self._emit(Entry(self.oom[-1]["t"], ev.victim, ev.victim_comm, "oom",
                         f"OOM killer chose pid {ev.victim} ({ev.victim_comm}): anon {fmt_bytes(ev.anon)}, "
                         f"file {fmt_bytes(ev.file)}, shmem {fmt_bytes(ev.shmem)}"))

    _news_handlers = {Started: _started, Execed: _execed, Renamed: _renamed, Ended: _ended,
                      Looked: _looked, SpikeSeen: _spike, PinnedCall: _pinned, DriverProbed: _driver,
                      CallsShed: _shed, OomKill: _oom, RegionEnded: _region_ended,
                      StacksUnreadable: _stacks_unreadable}

    # ---- periodic ----------------------------------------------------------

    def _housekeeping(self, now, final=False):
        self._apply(self.tracker.verify(now))
        self._apply(self.tracker.collect_shed())
        if self.options.probe.stacks:
            self.tracker.name_sites()
        if final or now - self._files_read >= FILES_INTERVAL_S:
            self._files_read = now
            for key in self.probes.files_to_name() - self.file_paths.keys():
                self._files_unnamed.setdefault(key, now)
            self._name_files(now)
        if final:
            self.page_cache_filled = self.probes.page_cache()
        stats = self.probes.stats()
        lost = stats["events_lost"] - self.kernel_stats.get("events_lost", 0)
        if lost > 0:
            self._emit(Entry(now, 0, "-", "lost", f"{lost} kernel events dropped: the ring buffer was full"))
        for name in ("children_not_followed", "fault_regions_full", "files_full", "inflight_full"):
            if stats[name] > self.kernel_stats.get(name, 0):
                self._emit(Entry(now, 0, "-", "lost", f"kernel map full: {name.replace('_', ' ')}"))
        self.kernel_stats = stats

    def _name_files(self, now):
        """Name the files the page cache grew for: from mappings, else open
        fds, read while the file may still be open."""
        self._files_unnamed = {key: since for key, since in self._files_unnamed.items()
                               if key not in self.file_paths and now - since < FILE_NAMING_S}
        if not self._files_unnamed:
            return
        for p in self.tracker.processes.values():
            if p.latest is not None:
                for obj in p.latest.objects.values():
                    if obj.inode:
                        self.file_paths.setdefault((os.makedev(*obj.dev), obj.inode), obj.name)
            if p.alive and p.handle is not None:
                for key, path in p.handle.open_files().items():
                    self.file_paths.setdefault(key, path)

    def close(self):
        """Detach the kernel side: ~60 ms a tracepoint, so after the summary."""
        problems = self.probes.close()
        if problems:
            print(f"ramwatchd: detaching the BPF programs: {'; '.join(problems)} "
                  "(the kernel releases them as ramwatchd exits)", file=sys.stderr)

    # ---- the result --------------------------------------------------------

    def result(self):
        """Everything the capture saw, as plain data: what --json saves and report reads."""
        from .result import build_result
        return build_result(self)
