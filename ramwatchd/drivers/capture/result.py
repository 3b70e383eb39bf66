"""The saved form of a capture: plain data that --json writes and `report` reads.

Building it once and rendering only from it keeps the live summary and a later
`ramwatchd report FILE.json` identical.
"""
import os
import platform
import tempfile
import time
from dataclasses import asdict

from ... import __version__
from ...ledger.classes import CLASSES, FILE_OTHER, FILE_WEIGHTS
from ...ledger.node import page_cache_bytes
from ...views.capture_format import VERSION as FORMAT
OBJECTS_SAVED = 48       # per look: the largest objects
SHORT_LIVED_SAVED = 1000


def _snapshot(snap):
    if snap is None:
        return None
    return {"t": snap.t, "vm_rss": snap.vm_rss, "classes": snap.classes, "pss": snap.pss,
            "rss_anon": snap.status.rss_anon, "rss_file": snap.status.rss_file,
            "rss_shmem": snap.status.rss_shmem, "vm_hwm": snap.status.vm_hwm, "drift": snap.drift,
            "reconciled": snap.reconciled}


def _objects(snap):
    objs = sorted(snap.objects.values(), key=lambda o: -o.rss) if snap else []
    return [{"class": o.cls, "name": o.name, "rss": o.rss, "pss": o.pss, "mapped": o.mapped,
             "dev": list(o.dev), "inode": o.inode, "pinned": o.pinned}
            for o in objs if o.rss][:OBJECTS_SAVED]


def _pinned(snap):
    """The CUDA pinned ranges live at a look, each with what holds it."""
    return [{"start": r.start, "requested": r.requested, "mapped": mapped, "resident": resident,
             "how": r.how, "classes": classes, "symbol": r.symbol, "caller": r.caller,
             "flags": r.flags, "t": r.t} for r, mapped, resident, classes in (snap.pinned if snap else [])]


def _peak(peak, vm_hwm):
    if peak is None:
        return None
    return {"bytes": peak.bytes, "t": peak.t, "file": peak.members[0], "anon": peak.members[1],
            "shmem": peak.members[3], "vm_hwm": vm_hwm}


SITES_SAVED = 20


def _sites(p, tracker):
    """The code behind p's growth: its largest sites, with the bytes they held
    at p's last look and at their highest (all a process that exited shows)."""
    now, highest = p.sites.now, p.sites.highest
    ranked = (now if p.exited_at is None else highest).most_common(SITES_SAVED)
    return [{"bytes": now.get(site, 0), "highest": highest.get(site, 0),
             "python": site.frames(), "native": tracker.native_names(p, site)}
            for site, _ in ranked]


def _process(p, tracker):
    return {
        "pid": p.pid, "start": p.start, "ppid": p.ppid, "comm": p.comm, "cmdline": p.cmdline,
        "origin": p.origin, "first_seen": p.first_seen, "exited_at": p.exited_at, "ended": p.ended_how,
        "execs": [{"t": t, "filename": f} for t, f in p.execs],
        "renames": [{"t": t, "old": old, "new": new} for t, old, new in p.renames],
        "baseline": _snapshot(p.baseline), "latest": _snapshot(p.latest), "largest": _snapshot(p.largest),
        "objects_latest": _objects(p.latest), "objects_largest": _objects(p.largest),
        "peak": _peak(p.rss.peak, p.vm_hwm),
        "faults": {"minor": p.faults[0], "major": p.faults[1]},
        "pinned_latest": _pinned(p.latest),
        "pinned_largest": _pinned(p.largest),
        "sampled_faults_by_class": p.fault_classes,
        "calls_shed": {"calls": p.shed[0], "bytes": p.shed[1]},
        "sites": _sites(p, tracker),
        "history": [{"t": t, "vm_rss": rss, "classes": classes} for t, rss, classes in p.history],
        "reconciliation": p.reconciliation,
        "rss_steps": [[t, total] for t, total, _ in p.rss.points],
    }


def _short_lived(processes):
    return [{"pid": p.pid, "ppid": p.ppid, "comm": p.comm, "first_seen": p.first_seen,
             "exited_at": p.exited_at, "execs": [f for _, f in p.execs]} for p in processes[:SHORT_LIVED_SAVED]]


def _files(cap, processes):
    """Each mapped file worth showing, with what is resident and what is cached."""
    files = {}
    for p in processes:
        for snap in (p.largest, p.latest):
            for o in (snap.objects.values() if snap else ()):
                if o.cls not in (FILE_WEIGHTS, FILE_OTHER) or not o.inode:
                    continue
                f = files.setdefault((os.makedev(*o.dev), o.inode), {
                    "path": o.name, "class": o.cls, "resident": 0, "mapped": o.mapped})
                f["resident"] = max(f["resident"], o.rss)
    for key, (added, removed) in cap.page_cache_filled.items():
        if key not in files:
            path = cap.file_paths.get(key)
            if path is None:
                continue   # filled by a file no traced process maps or holds open
            weights = cap.options.classifier.is_weights(path)
            files[key] = {"path": path, "class": FILE_WEIGHTS if weights else FILE_OTHER,
                          "resident": 0, "mapped": 0}
        files[key]["filled"], files[key]["evicted"] = added, removed
    for f in files.values():
        f["page_cache"] = page_cache_bytes(f["path"])
    return sorted(files.values(), key=lambda f: -max(f["resident"], f.get("page_cache") or 0))


def _shared(processes):
    """Shared objects (shm, files) mapped by more than one traced process: counted once."""
    seen = {}
    for p in processes:
        if p.latest is None:
            continue
        for o in p.latest.objects.values():
            if o.cls.startswith("shm") and o.inode:
                s = seen.setdefault((tuple(o.dev), o.inode), {
                    "name": o.name, "class": o.cls, "pids": [], "rss_max": 0, "pss_sum": 0})
                s["pids"].append(p.pid)
                s["rss_max"] = max(s["rss_max"], o.rss)
                s["pss_sum"] += o.pss
    return [s for s in seen.values() if len(s["pids"]) > 1]


def build_result(cap):
    folded = {id(p) for p in cap.timeline.short_lived}
    processes = [p for p in cap.tracker.processes.values() if id(p) not in folded]
    rule = cap.tracker.spike_rule
    spikes = [dict(asdict(s), pid=p.pid) for p in processes for s in p.rss.all_spikes(rule)]
    opts = cap.options
    return {
        "format": FORMAT, "ramwatchd": __version__,
        "host": platform.node(), "kernel": platform.release(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(cap.started_wall)),
        "duration_s": cap.now(), "ended_because": cap.ended_because,
        "target": cap.target, "exit_code": cap.exit_code,
        "classes": list(CLASSES),
        "options": {"exact_rss": opts.probe.exact_rss,
                    "rss_step_bytes": opts.probe.rss_step_bytes,
                    "min_syscall_bytes": opts.probe.min_syscall_bytes,
                    "max_calls_per_s": opts.probe.max_calls_per_s,
                    "fault_sample_period": opts.probe.fault_sample_period,
                    "min_change": opts.min_change,
                    "spike_min_rise": opts.spike_min_rise,
                    "spike_max_hold_s": opts.spike_max_hold_s,
                    "weight_patterns": list(opts.classifier.weight_patterns),
                    "stacks": opts.probe.stacks},
        "processes": [_process(p, cap.tracker) for p in processes],
        "short_lived": {"count": len(cap.timeline.short_lived),
                        "processes": _short_lived(cap.timeline.short_lived)},
        "timeline": [asdict(e) for e in cap.timeline.entries],
        "phases": cap.phases.phases,
        "spikes": spikes,
        "files": _files(cap, processes),
        "shared": _shared(processes),
        "oom": cap.oom,
        "mappings": cap.mappings,
        "calls_shed": {"calls": cap.shed[0], "bytes": cap.shed[1]},
        "own_cpu_s": cap.own_cpu_s,
        "run_s": cap.now() - cap.run_started,
        "kernel_stats": cap.kernel_stats,
    }


class SaveTo:
    """A file a capture is saved to, made ready before the capture starts, so
    that a path that cannot be written is refused then rather than after it.
    The content goes to a temporary file beside the target, readable by its
    owner only (a capture holds full command lines, secrets included), and is
    renamed over the target once complete: a reader never sees half of it.
    Raises OSError for a path that cannot be written."""

    def __init__(self, path):
        self.path = path
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory", path)
        folder, name = os.path.split(os.path.abspath(path))
        fd, self.temp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1] or ".tmp",
                                         dir=folder)
        os.close(fd)

    def write(self, text):
        with open(self.temp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.commit()

    def commit(self):
        """The temporary file, complete (written by write() or by whoever was
        given its path), becomes the target."""
        os.replace(self.temp, self.path)
        self.temp = None

    def discard(self):
        """Remove the temporary file of a capture that will not be saved."""
        if self.temp is not None:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            self.temp = None
