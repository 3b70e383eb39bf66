"""The saved form of a capture: plain data that --json writes and `report` reads.

Building it once and rendering only from it keeps the live summary and a later
`ramwatchd report FILE.json` identical.
"""
import os
import platform
import time
from dataclasses import asdict

from . import __version__, procfs
from .classes import CLASSES, FILE_OTHER, FILE_WEIGHTS
from .probes import kernel_dev_to_userspace
from .spikes import find_spikes

FORMAT = 1
OBJECTS_SAVED = 48   # per look: the largest objects, for report and the daemon


def _snapshot(snap):
    if snap is None:
        return None
    return {"t": snap.t, "vm_rss": snap.vm_rss, "classes": snap.classes, "pss": snap.pss,
            "rss_anon": snap.status.rss_anon, "rss_file": snap.status.rss_file,
            "rss_shmem": snap.status.rss_shmem, "vm_hwm": snap.status.vm_hwm, "drift": snap.drift, "reconciled": snap.reconciled}


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


def _process(rec, cap):
    return {
        "pid": rec.pid, "ppid": rec.ppid, "comm": rec.comm, "cmdline": rec.cmdline,
        "first_seen": rec.first_seen, "exited_at": rec.exited_at,
        "baseline": _snapshot(rec.baseline), "latest": _snapshot(rec.latest),
        "largest": _snapshot(rec.largest),
        "objects_latest": _objects(rec.latest), "objects_largest": _objects(rec.largest),
        "peak": ({"bytes": rec.peak[0], "t": rec.peak[1],
                  "file": rec.peak[2][0], "anon": rec.peak[2][1], "shmem": rec.peak[2][3]}
                 if rec.peak else None),
        "faults": {"minor": rec.faults[0], "major": rec.faults[1]},
        "pinned_latest": _pinned(rec.latest),
        "pinned_largest": _pinned(rec.largest),
        "sampled_faults_by_class": cap.fault_classes.get(rec.pid, {}),
        "history": [{"t": t, "vm_rss": rss, "classes": classes} for t, rss, classes in rec.history],
        "reconciliation": rec.reconciliation,
        "rss_steps": [[t, total] for t, total, _ in cap.rss_series.get(rec.pid, [])],
    }


def _files(cap):
    """Each mapped file worth showing, with what is resident and what is cached."""
    files = {}
    for rec in cap.ledger.processes.values():
        for snap in (rec.largest, rec.latest):
            for o in (snap.objects.values() if snap else ()):
                if o.cls not in (FILE_WEIGHTS, FILE_OTHER) or not o.inode:
                    continue
                f = files.setdefault((os.makedev(*o.dev), o.inode), {
                    "path": o.name, "class": o.cls, "resident": 0, "mapped": o.mapped})
                f["resident"] = max(f["resident"], o.rss)
    for (dev, ino), (added, removed) in cap.page_cache_filled.items():
        key = (kernel_dev_to_userspace(dev), ino)
        if key not in files:
            path = cap.file_paths.get(key)
            if path is None:
                continue   # filled by a file no traced process maps or holds open
            weights = cap.options.classifier.is_weights(path)
            files[key] = {"path": path, "class": "file_weights" if weights else "file_other",
                          "resident": 0, "mapped": 0}
        files[key]["filled"], files[key]["evicted"] = added, removed
    for f in files.values():
        f["page_cache"] = procfs.page_cache_bytes(f["path"].removesuffix(" (deleted)"))
    return sorted(files.values(), key=lambda f: -max(f["resident"], f.get("page_cache") or 0))


def _shared(cap):
    """Shared objects (shm, files) mapped by more than one traced process: counted once."""
    seen = {}
    for rec in cap.ledger.processes.values():
        if rec.latest is None:
            continue
        for o in rec.latest.objects.values():
            if o.cls.startswith("shm") and o.inode:
                s = seen.setdefault((tuple(o.dev), o.inode), {
                    "name": o.name, "class": o.cls, "pids": [], "rss_max": 0, "pss_sum": 0})
                s["pids"].append(rec.pid)
                s["rss_max"] = max(s["rss_max"], o.rss)
                s["pss_sum"] += o.pss
    return [s for s in seen.values() if len(s["pids"]) > 1]


def build_result(cap):
    spikes = []
    for pid, series in cap.rss_series.items():
        spikes += [asdict(s) for s in find_spikes(pid, series, **cap.spike_rule)]
    return {
        "format": FORMAT, "ramwatchd": __version__,
        "host": platform.node(), "kernel": platform.release(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(cap.started_wall)),
        "duration_s": cap.now(), "ended_because": cap.ended_because,
        "target": cap.target, "exit_code": cap.exit_code,
        "classes": list(CLASSES),
        "options": {"exact_rss": cap.options.probe.exact_rss,
                    "rss_step_bytes": cap.options.probe.rss_step_bytes,
                    "min_syscall_bytes": cap.options.probe.min_syscall_bytes,
                    "fault_sample_period": cap.options.probe.fault_sample_period,
                    "min_change": cap.options.min_change,
                    "spike_min_rise": cap.options.spike_min_rise,
                    "spike_max_hold_s": cap.options.spike_max_hold_s,
                    "weight_patterns": list(cap.options.classifier.weight_patterns)},
        "processes": [_process(r, cap) for r in cap.ledger.processes.values()],
        "timeline": [asdict(e) for e in cap.entries],
        "phases": cap.phases,
        "spikes": spikes,
        "files": _files(cap),
        "shared": _shared(cap),
        "oom": cap.oom,
        "kernel_stats": cap.kernel_stats,
    }
