"""The node-wide daemon: every process on the node, grouped as the config says,
classified and kept current for the Prometheus exporter.

The kernel side traces every process; the tracker owns their lives; this
driver keeps what is the daemon's own: the groups, the budget of smaps reads,
the node tier and the aggregates the exporter reads. Only processes the
kernel said changed are looked at, at most every collection.smaps_min_interval
each and collection.smaps_per_second in all. Scrapes read the aggregates kept
here and never touch /proc/PID/smaps.
"""
import logging
import os
import signal
import threading
import time
from collections import Counter

from ...kernel import cuda
from ...kernel.probes import ProbeOptions, Probes
from ...ledger.classes import CLASSES, Classifier
from ...ledger.process import Ended, Execed, Looked, OomKill, Renamed, Started
from ...ledger.tracker import Clock, LookPolicy, Tracker
from . import config as configuration
from .groups import Groups
from .node import NodeTier

log = logging.getLogger("ramwatchd")

POLL_MS = 200
EVENTS_PER_LOCK = 256
STATUS_INTERVAL_S = 1.0       # a process's VmRSS is read on movement at most this often


def look_policy(config):
    return LookPolicy(min_interval=config.collection.smaps_min_interval_s, rss_interval=STATUS_INTERVAL_S)


class Daemon:
    def __init__(self, config):
        self.config = config
        self.probes = Probes(ProbeOptions(trace_all=True, follow_children=False,
                                          mm_syscalls=False, page_cache_fills=False))
        self.clock = Clock()
        self.tracker = Tracker(self.probes, self.clock, Classifier(config.weights), look_policy(config),
                               keep_history=False, adopt_unknown=True, details=True)
        self.groups = Groups(config)
        self.node = NodeTier(config)
        self.lock = threading.Lock()
        self.durations = {}                   # tier -> seconds its last run took
        self.smaps_reads = 0
        self._tokens = 0.0
        self._last = {"tokens": 0.0, "discovery": -1e9, "node": -1e9}
        self._stop = threading.Event()
        self._reload_requested = False
        self.config_path = None

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
        if not self.config_path:
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
            self.tracker.classifier = Classifier(new.weights)
            self.tracker.policy = look_policy(new)
            self.node.config = new
            self.groups.reload(new, list(self.tracker.alive.values()))
            for p in self.tracker.alive.values():
                self.tracker.touch(p)
        log.info("reloaded %s", self.config_path)

    # ---- the loop ----------------------------------------------------------

    def run(self):
        with self.lock:
            for path in cuda.driver_paths(os.environ):
                self.probes.attach_cuda(path)
            self._tier("discovery", self._discover)
        # The lock is held for one piece of work at a time, so that a scrape
        # waits at most for one batch of events or one look.
        while not self._stop.is_set():
            events = self.probes.poll(POLL_MS)
            for i in range(0, len(events), EVENTS_PER_LOCK):
                with self.lock:
                    self._apply(self.tracker.on_events(events[i:i + EVENTS_PER_LOCK]))
            self._look_due(self.clock.now())
            with self.lock:
                now = self.clock.now()
                self._periodic(now)
                self.groups.update_peaks()
                self.groups.drop_emptied(scraped=False)
            if self._reload_requested:
                self.reload()
        self.tracker.close()
        self.probes.close()

    def _periodic(self, now):
        col = self.config.collection
        if now - self._last["discovery"] >= col.discovery_interval_s:
            self._last["discovery"] = now
            self._tier("discovery", self._discover)
        if now - self._last["node"] >= col.node_interval_s:
            self._last["node"] = now
            self._tier("node", lambda: self.node.read(self.groups, self.tracker))

    def _tier(self, name, work):
        started = time.monotonic()
        work()
        self.durations[name] = time.monotonic() - started

    def _discover(self):
        self._apply(self.tracker.discover(self.clock.now()))

    def _look_due(self, now):
        """Look at the processes that changed, within the node-wide budget."""
        rate = self.config.collection.smaps_per_second
        self._tokens = min(rate, self._tokens + (now - self._last["tokens"]) * rate)
        self._last["tokens"] = now
        with self.lock:
            due = self.tracker.due(now)
            if due:
                self.tracker.collect_faults(now)
        for p in due:
            if self._tokens < 1:
                return
            self._tokens -= 1
            with self.lock:
                if p.alive:
                    self.smaps_reads += 1
                    self._apply(self.tracker.look(p, now))

    # ---- what the tracker said -----------------------------------------------

    def _apply(self, news):
        for item in news:
            kind = type(item)
            if kind is Started:
                self.groups.assign(item.process)
            elif kind is Execed:
                self.tracker.read_names(item.process)    # its new program's command line
                self.groups.assign(item.process)
            elif kind is Renamed:
                self.groups.assign(item.process)
            elif kind is Ended:
                self.groups.leave(item.process)
                self.node.unmap_all(item.process, self.tracker)
                self.tracker.forget(item.process)
            elif kind is Looked:
                self.node.share_news(item.process, self.tracker)
            elif kind is OomKill and item.victim is not None:
                if self.groups.group_of(item.victim) is None:
                    self.groups.assign(item.victim)
                group = self.groups.group_of(item.victim)
                if group is not None:
                    group.oom_kills += 1

    # ---- what the exporter reads (under self.lock) -----------------------------

    def aggregate(self):
        """Per (group, class): resident and proportional bytes; per group:
        processes; per (group, how): CUDA pinned bytes requested and mapped."""
        resident, proportional, processes = Counter(), Counter(), Counter()
        requested, mapped = Counter(), Counter()
        for group in self.groups.live():
            processes[group.name] = len(group.members)
            for p in group.members:
                if p.latest is None:
                    continue
                for cls in CLASSES:
                    resident[(group.name, cls)] += p.latest.classes[cls]
                    proportional[(group.name, cls)] += p.latest.pss[cls]
                for r, held, _, _ in p.latest.pinned:
                    requested[(group.name, r.how)] += r.requested
                    mapped[(group.name, r.how)] += held
        return resident, proportional, processes, requested, mapped

    def top_mappings(self):
        """The largest mapped objects by resident bytes, per (group, class, name),
        at most limits.max_mappings of them."""
        sizes = Counter()
        for group in self.groups.live():
            for p in group.members:
                for obj in (p.latest.objects.values() if p.latest else ()):
                    if obj.rss:
                        sizes[(group.name, obj.cls, obj.name)] += obj.rss
        limit = self.config.limits.max_mappings
        self.node.cut["mappings"] += max(0, len(sizes) - limit)
        return dict(sizes.most_common(limit))

    def unreadable(self):
        return sum(1 for _, why in self.tracker.ignored.values() if why in ("denied", "unreadable"))
