"""The node-wide daemon: every process on the node, grouped as the config says,
classified and kept current for the Prometheus exporter.

The same stages as a capture (probes -> events -> ledger); exporter.py is its
view. The kernel tells which processes changed; only those are read again, at
most every collection.smaps_min_interval each and collection.smaps_per_second in
all. Scrapes read the aggregates kept here and never touch /proc/PID/smaps.
"""
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from . import config as configuration
from . import procfs
from .classes import (CLASSES, FILE_WEIGHTS, SHM_ANON, SHM_POSIX, SHM_SYSV, Classifier)
from .events import CUDA_CALLS, Kind
from .ledger import Ledger
from .probes import ProbeOptions, Probes, cuda_driver_paths

log = logging.getLogger("ramwatchd")

POLL_MS = 200
STATUS_MIN_INTERVAL_S = 1.0   # VmRSS of one process is read at most this often
FAULTS_INTERVAL_S = 1.0       # fault samples are drained and attributed this often
OTHER = "other"               # where processes go once max_groups is reached
# Objects whose sharing moves other processes' PSS (libraries would wake everyone).
SHARED_CLASSES = {SHM_POSIX, SHM_SYSV, SHM_ANON, FILE_WEIGHTS}


@dataclass
class Member:
    """A process as the daemon sees it: its group and its last VmRSS."""
    pid: int
    group: str
    cgroup: str
    rss: int = 0
    last_status: float = 0.0


@dataclass
class SharedObject:
    """A shared object (a /dev/shm file, a weights file...) and who maps it."""
    name: str
    cls: str
    mappers: dict = field(default_factory=dict)   # pid -> its resident bytes of it


@dataclass
class NodeState:
    """What the node tier reads: memory, cgroups, /dev/shm and weights in the page cache."""
    meminfo: dict = field(default_factory=dict)
    cgroups: dict = field(default_factory=dict)      # path -> (anon, file, shmem)
    shm: list = field(default_factory=list)          # (name, bytes, mapping processes)
    page_cache: dict = field(default_factory=dict)   # path -> bytes cached
    shm_orphaned: int = 0                            # /dev/shm bytes no process maps


class Daemon:
    def __init__(self, config):
        self.config = config
        self.probes = Probes(ProbeOptions(trace_all=True, follow_children=False,
                                          mm_syscalls=False, page_cache_fills=False))
        self.ledger = Ledger(Classifier(config.weights), keep_history=False,
                             min_interval=config.collection.smaps_min_interval_s)
        self.lock = threading.Lock()
        self.members = {}
        self.groups_seen = set()
        self.group_rss = Counter()            # group -> sum of its members' VmRSS
        self.group_peaks = {}                 # group -> highest such sum seen
        self.faults = Counter()               # (group, class) -> estimated faults
        self.oom_kills = Counter()            # group -> OOM victims
        self.cut = Counter()                  # limit -> series cut by it
        self.durations = {}                   # tier -> seconds its last run took
        self.smaps_reads = 0
        self.faults_unattributed = 0
        self.hidden = set()                   # pids whose /proc we may not read
        self.shared = {}                      # (major, minor, inode) -> SharedObject
        self.cuda_inodes = set()              # driver libraries seen mapped
        self.node = NodeState()
        self._tokens = 0.0
        self._last = {"tokens": time.monotonic(), "faults": 0.0, "discovery": -1e9, "node": -1e9}
        self._stop = threading.Event()
        self._reload_requested = False

    # ---- control -----------------------------------------------------------

    def install_signals(self, config_path):
        self.config_path = config_path
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload_requested", True))
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())

    def stop(self):
        self._stop.set()

    def reload(self):
        """SIGHUP: read the config again; a bad one keeps the old and says why."""
        self._reload_requested = False
        if not getattr(self, "config_path", None):
            log.info("reload: no --config was given; nothing to reload")
            return
        try:
            new = configuration.load(self.config_path)
        except configuration.ConfigError as err:
            log.error("reload failed, keeping the old config: %s", err)
            return
        if (new.address, new.port, new.web) != (self.config.address, self.config.port, self.config.web):
            log.warning("reload: listen and web settings change only on restart")
        with self.lock:
            self.config = new
            self.ledger.classifier = Classifier(new.weights)
            self.ledger.min_interval = new.collection.smaps_min_interval_s
            self.groups_seen.clear()
            for m in self.members.values():
                self._move(m, self._group_of(m.pid, m.cgroup) or OTHER)
                self.ledger.mark_dirty(m.pid)
        log.info("reloaded %s", self.config_path)

    # ---- the loop ----------------------------------------------------------

    def run(self):
        with self.lock:
            for path in cuda_driver_paths(os.environ):
                self.probes.attach_cuda(path)
            self._tier("discovery", self.discover)
        while not self._stop.is_set():
            events = self.probes.poll(POLL_MS)
            now = time.monotonic()
            with self.lock:
                for ev in events:
                    self.on_event(ev, now)
                self._refresh_due(now)
                self._periodic(now)
            if self._reload_requested:
                self.reload()
        self.probes.close()

    def _periodic(self, now):
        col = self.config.collection
        if now - self._last["faults"] >= FAULTS_INTERVAL_S:
            self._last["faults"] = now
            self._tier("faults", self.attribute_faults)
        if now - self._last["discovery"] >= col.discovery_interval_s:
            self._last["discovery"] = now
            self._tier("discovery", self.discover)
        if now - self._last["node"] >= col.node_interval_s:
            self._last["node"] = now
            self._tier("node", self.read_node)

    def _tier(self, name, work):
        started = time.monotonic()
        work()
        self.durations[name] = time.monotonic() - started

    # ---- processes ---------------------------------------------------------

    def on_event(self, ev, now):
        if ev.kind == Kind.EXIT:
            self.forget(ev.pid)
        elif ev.kind == Kind.OOM_VICTIM:
            member = self.members.get(ev.ret)
            self.oom_kills[member.group if member else OTHER] += 1
        elif ev.kind in CUDA_CALLS:
            if self.members.get(ev.pid) or self.add(ev.pid):
                self.ledger.processes[ev.pid].pinned.apply(ev, "", now)
                self.ledger.mark_dirty(ev.pid)
        elif ev.kind in (Kind.RSS_STEP, Kind.EXEC):
            member = self.members.get(ev.pid) or self.add(ev.pid)
            if member is None:
                return
            if ev.kind == Kind.EXEC:
                self.ledger.refresh_comm(ev.pid)
                self._move(member, self._group_of(ev.pid, member.cgroup) or OTHER)
            self.ledger.mark_dirty(ev.pid)
            if now - member.last_status >= STATUS_MIN_INTERVAL_S:
                self._read_rss(member, now)

    def add(self, pid):
        """Start watching pid; None for kernel threads, processes already gone and
        those whose /proc may not be read."""
        if pid in self.hidden:
            return None
        try:
            status = procfs.read_status(pid)
            if status.is_kernel_thread or status.tgid != pid:
                return None
            cgroup = procfs.read_cgroup(pid)
            group = self._group_of(pid, cgroup)
            if group is None:
                return None
            self.ledger.add(pid, time.monotonic())
        except procfs.ProcessGone:
            return None
        member = Member(pid, group, cgroup, last_status=time.monotonic())
        self.members[pid] = member
        self._set_rss(member, status.vm_rss)
        return member

    def forget(self, pid):
        member = self.members.pop(pid, None)
        if member is not None:
            self._set_rss(member, 0)
        self.ledger.processes.pop(pid, None)
        for key in list(self.shared):
            self._unmap(key, pid)

    def _set_rss(self, member, rss):
        """Keep the group's VmRSS sum, and its peak, as one member's changes."""
        self.group_rss[member.group] += rss - member.rss
        member.rss = rss
        total = self.group_rss[member.group]
        if total > self.group_peaks.get(member.group, 0):
            self.group_peaks[member.group] = total
        if total <= 0 and not any(m.group == member.group for m in self.members.values()):
            del self.group_rss[member.group]   # the group is gone: its series go too
            self.group_peaks.pop(member.group, None)

    def _move(self, member, group):
        if group != member.group:
            rss = member.rss
            self._set_rss(member, 0)
            member.group = group
            self._set_rss(member, rss)

    def _group_of(self, pid, cgroup):
        """The group pid falls in, or None if no group matches it."""
        rec = self.ledger.processes.get(pid)
        try:
            comm = rec.comm if rec else procfs.read_status(pid).name
            cmdline = rec.cmdline if rec else procfs.read_cmdline(pid)
            exe = procfs.read_exe(pid)
        except procfs.ProcessGone:
            return None
        for g in self.config.groups:
            captures = []
            for pattern, text in ((g.comm, comm), (g.exe, exe), (g.cmdline, cmdline), (g.cgroup, cgroup)):
                if pattern is None:
                    continue
                m = pattern.search(text)
                if m is None:
                    break
                captures += [c or "" for c in m.groups()]
            else:
                name = configuration.group_name(g.name, captures, comm=comm,
                                                exe=os.path.basename(exe), cgroup=cgroup)
                return self._within_limit(name)
        return None

    def _within_limit(self, name):
        if name not in self.groups_seen:
            if len(self.groups_seen) >= self.config.limits.max_groups:
                self.cut["groups"] += 1
                return OTHER
            self.groups_seen.add(name)
        return name

    def _read_rss(self, member, now):
        try:
            self._set_rss(member, procfs.read_status(member.pid).vm_rss)
        except procfs.ProcessGone:
            self.forget(member.pid)
            return
        member.last_status = now

    def _refresh_due(self, now):
        """Read smaps of the processes that changed, within the node-wide budget."""
        rate = self.config.collection.smaps_per_second
        self._tokens = min(rate, self._tokens + (now - self._last["tokens"]) * rate)
        self._last["tokens"] = now
        due = list(self.ledger.due(now))
        held = self.probes.allocating_cuda() if due else set()
        for rec in due:
            if rec.pid in held:
                continue
            if self._tokens < 1:
                return
            self._tokens -= 1
            try:
                self.ledger.refresh(rec, now)
                self.smaps_reads += 1
            except procfs.ProcessHidden:
                self.forget(rec.pid)
                self.hidden.add(rec.pid)
                continue
            except procfs.ProcessGone:
                self.forget(rec.pid)
                continue
            member = self.members.get(rec.pid)
            if member is not None:
                self._set_rss(member, rec.latest.vm_rss)
                member.last_status = now
            self._share_news(rec)
            self._find_cuda(rec)

    def _find_cuda(self, rec):
        """A process that maps a CUDA driver library not probed yet (a container's
        own copy, say): probe it, through /proc/PID/root."""
        for obj in rec.latest.objects.values():
            if os.path.basename(obj.name).startswith("libcuda.so") and obj.inode not in self.cuda_inodes:
                self.cuda_inodes.add(obj.inode)
                if self.probes.attach_cuda(f"/proc/{rec.pid}/root{obj.name}"):
                    log.info("probing the CUDA driver at %s (pid %d)", obj.name, rec.pid)

    def _share_news(self, rec):
        """When one process's share of a shared object changes, so do the PSS
        figures of the others that map it: look at them again too."""
        seen = set()
        for obj in rec.latest.objects.values():
            if obj.cls not in SHARED_CLASSES or not obj.inode:
                continue
            key = (*obj.dev, obj.inode)
            seen.add(key)
            shared = self.shared.setdefault(key, SharedObject(obj.name, obj.cls))
            if shared.mappers.get(rec.pid) != obj.rss:
                shared.mappers[rec.pid] = obj.rss
                for other in shared.mappers:
                    if other != rec.pid:
                        self.ledger.mark_dirty(other)
        for key in list(self.shared):
            if key not in seen:
                self._unmap(key, rec.pid)

    def _unmap(self, key, pid):
        """pid no longer maps the shared object at key: the others' share grew."""
        shared = self.shared[key]
        if shared.mappers.pop(pid, None) is None:
            return
        for other in shared.mappers:
            self.ledger.mark_dirty(other)
        if not shared.mappers:
            del self.shared[key]

    # ---- tiers -------------------------------------------------------------

    def discover(self):
        """Watch processes BPF has not shown yet; drop those whose exit was missed."""
        alive = set(procfs.list_pids())
        for pid in list(self.members):
            if pid not in alive:
                self.forget(pid)
        self.hidden &= alive
        for pid in alive - set(self.members):
            self.add(pid)

    def attribute_faults(self):
        """Sampled faults -> the class of the mapping they fell in, per group."""
        for (pid, region), n in self.probes.drain_fault_samples().items():
            member, rec = self.members.get(pid), self.ledger.processes.get(pid)
            hit = rec.latest.object_at(region) if rec and rec.latest else None
            if member is None or hit is None:
                self.faults_unattributed += n   # before the process's first look
                continue
            self.faults[(member.group, hit.cls)] += n

    def read_node(self):
        self.node.meminfo = procfs.node_meminfo()
        self.node.cgroups = self._cgroups()
        self.node.shm = self._shm()
        self.node.page_cache = self._page_cache()

    def _cgroups(self):
        paths = sorted({m.cgroup for m in self.members.values()})
        limit = self.config.limits.max_cgroups
        self.cut["cgroups"] += max(0, len(paths) - limit)
        out = {}
        for path in paths[:limit]:
            charged = procfs.cgroup_memory(path)
            if charged is not None:
                out[path or "/"] = charged
        return out

    def _shm(self):
        objects = sorted(procfs.shm_objects().items(), key=lambda kv: -kv[1][1])
        limit = self.config.limits.max_shm_objects
        self.cut["shm_objects"] += max(0, len(objects) - limit)
        # Orphans are summed over all objects, shown or not.
        self.node.shm_orphaned = sum(size for key, (_, size) in objects if key not in self.shared)
        return [(name, size, len(self.shared[key].mappers) if key in self.shared else 0)
                for key, (name, size) in objects[:limit]]

    def _page_cache(self):
        files = sorted((o for o in self.shared.values() if o.cls == FILE_WEIGHTS),
                       key=lambda o: -max(o.mappers.values()))
        limit = self.config.limits.max_files
        self.cut["files"] += max(0, len(files) - limit)
        out = {}
        for name in (o.name for o in files[:limit]):
            cached = procfs.page_cache_bytes(name.removesuffix(" (deleted)"))
            if cached is not None:
                out[name] = cached
        return out

    # ---- what the exporter reads -------------------------------------------

    def aggregate(self):
        """Per (group, class): resident and proportional bytes; per group: processes;
        per (group, how): CUDA pinned bytes requested and mapped.
        Called by the exporter at scrape time, under self.lock."""
        resident, proportional, processes = Counter(), Counter(), Counter()
        requested, mapped = Counter(), Counter()
        for m in self.members.values():
            processes[m.group] += 1
            rec = self.ledger.processes.get(m.pid)
            if rec is None or rec.latest is None:
                continue
            for cls in CLASSES:
                resident[(m.group, cls)] += rec.latest.classes[cls]
                proportional[(m.group, cls)] += rec.latest.pss[cls]
            for r, held, _, _ in rec.latest.pinned:
                requested[(m.group, r.how)] += r.requested
                mapped[(m.group, r.how)] += held
        return resident, proportional, processes, requested, mapped

    def top_mappings(self):
        """The largest mapped objects by resident bytes, per (group, class, name),
        at most limits.max_mappings of them. Under self.lock."""
        sizes = Counter()
        for m in self.members.values():
            rec = self.ledger.processes.get(m.pid)
            for obj in (rec.latest.objects.values() if rec and rec.latest else ()):
                if obj.rss:
                    sizes[(m.group, obj.cls, obj.name)] += obj.rss
        limit = self.config.limits.max_mappings
        self.cut["mappings"] += max(0, len(sizes) - limit)
        return dict(sizes.most_common(limit))
