"""The saved form of a capture (`-o FILE`, `--json FILE`): every field, what it
means, and the check `report` and `diff` make before they read a file.

A file is a JSON object whose "format" is VERSION. Within a version, fields may
be added (readers ignore what they do not know) but none is removed, renamed or
given another meaning: that takes a new version, and a reader refuses versions
it does not know rather than guess. Fields marked "?" may be absent.

Times are seconds since the capture began; sizes are bytes. Classes are those
of the README's table ("anon_heap", "anon", ... "device").
"""

VERSION = 3

NUMBER, TEXT, FLAG = "a number", "a string", "true or false"


class Maybe:
    """spec, or null."""

    def __init__(self, spec):
        self.spec = spec


class Table:
    """An object whose keys are names (classes, counters), each value a spec."""

    def __init__(self, spec):
        self.spec = spec


# In a spec: a dict is an object with those keys, [spec] a list of items
# like spec, (spec, spec) a list of exactly those items.

LOOK = {                                # one reading of a process's smaps and status
    "t": NUMBER,
    "vm_rss": NUMBER,                   # the kernel's VmRSS, read around the look
    "classes": Table(NUMBER),           # resident bytes by class: they add up to vm_rss
    "pss": Table(NUMBER),               # proportional bytes by class: shared pages divided
    "rss_anon": NUMBER, "rss_file": NUMBER, "rss_shmem": NUMBER,   # status's counters
    "vm_hwm": NUMBER,                   # the kernel's high-water mark of RSS
    "drift": NUMBER,                    # classes minus VmRSS
    "reconciled": FLAG,                 # whether drift is within max(1 %, 4 MiB)
}

MAPPED_OBJECT = {                       # a mapping (or the mappings of one file) at a look
    "class": TEXT, "name": TEXT,
    "rss": NUMBER, "pss": NUMBER, "mapped": NUMBER,
    "dev": [NUMBER], "inode": NUMBER,   # (major, minor) and inode; 0 for anonymous memory
    "pinned": NUMBER,                   # resident bytes registered with the CUDA driver
}

PINNED_RANGE = {                        # host memory the CUDA driver allocated or registered
    "start": NUMBER, "requested": NUMBER,   # what was asked of the driver
    "mapped": NUMBER, "resident": NUMBER,   # the mappings holding it
    "how": TEXT,                        # "allocated" or "registered"
    "classes": [TEXT], "symbol": TEXT, "caller": TEXT, "flags": NUMBER, "t": NUMBER,
}

FRAME = (TEXT, TEXT, Maybe(NUMBER))     # Python frame: file, function, line

SITE = {                                # code behind a process's growth
    "bytes": NUMBER,                    # resident at the process's last look
    "highest": NUMBER,                  # at their highest
    "python": [FRAME],                  # innermost first
    "native": [TEXT],                   # "function [library]", innermost first
}

PROCESS = {
    "pid": NUMBER, "start": NUMBER,     # identity: pid and start time (clock ticks since boot)
    "ppid": Maybe(NUMBER), "comm": TEXT, "cmdline": TEXT,
    "origin": TEXT,                     # how it came to be traced: forked, attached...
    "first_seen": NUMBER, "exited_at": Maybe(NUMBER),
    "ended": Maybe(TEXT),               # exited, gone, denied, unreadable; "" while it lived
    "execs": [{"t": NUMBER, "filename": TEXT}],
    "renames": [{"t": NUMBER, "old": TEXT, "new": TEXT}],
    "baseline": Maybe(LOOK),            # --pid: the first look, memory from before the capture
    "latest": Maybe(LOOK),              # the last look (before it exited)
    "largest": Maybe(LOOK),             # the look with the most resident memory
    "objects_latest": [MAPPED_OBJECT], "objects_largest": [MAPPED_OBJECT],   # the largest ones
    "peak": Maybe({                     # highest RSS from the kernel's counters
        "bytes": NUMBER, "t": NUMBER, "file": NUMBER, "anon": NUMBER, "shmem": NUMBER,
        "vm_hwm": Maybe(NUMBER)}),
    "faults": {"minor": NUMBER, "major": NUMBER},
    "pinned_latest": [PINNED_RANGE], "pinned_largest": [PINNED_RANGE],
    "sampled_faults_by_class": Table(NUMBER),   # faults, sampled and scaled, by class hit
    "calls_shed": {"calls": NUMBER, "bytes": NUMBER},   # mm calls counted, not sent one by one
    "sites?": [SITE],                   # largest first
    "history": [{"t": NUMBER, "vm_rss": NUMBER, "classes": Table(NUMBER)}],   # every look
    "reconciliation": {"samples": NUMBER, "failed": NUMBER, "worst_drift": NUMBER},
    "rss_steps": [(NUMBER, NUMBER)],    # (t, RSS) each time the counters were read
}

TIMELINE_ENTRY = {
    "t": NUMBER, "pid": NUMBER, "comm": TEXT,
    "kind": TEXT,                       # grow, release, mapping, spike, fork, exec, output...
    "text": TEXT, "cls": TEXT, "name": TEXT,
    "delta": NUMBER,                    # grow, release: the change; mapping: its resident peak
    "rss_after": NUMBER, "cause": Maybe(TEXT),
    "phase": TEXT, "phase_t": Maybe(NUMBER),   # the phase its process was in, and its start
}

CAPTURE = {
    "format": NUMBER,                   # VERSION
    "ramwatchd": TEXT,                  # the version that wrote it
    "host": TEXT, "kernel": TEXT,
    "started": TEXT,                    # local time, ISO 8601
    "duration_s": NUMBER, "ended_because": TEXT,
    "target": {"pid?": NUMBER, "command?": [TEXT], "children": FLAG},
    "exit_code": Maybe(NUMBER),         # run: the program's, when it ended on its own
    "classes": [TEXT],                  # every class, in the README's order
    "options": {
        "exact_rss": FLAG, "rss_step_bytes": NUMBER, "min_syscall_bytes": NUMBER,
        "max_calls_per_s?": NUMBER, "fault_sample_period": NUMBER, "min_change": NUMBER,
        "spike_min_rise": NUMBER, "spike_max_hold_s": NUMBER, "weight_patterns": [TEXT],
        "stacks?": FLAG},
    "processes": [PROCESS],             # the traced processes, root first
    "short_lived": {                    # folded on the timeline: came and went within a second
        "count": NUMBER,
        "processes": [{"pid": NUMBER, "ppid": Maybe(NUMBER), "comm": TEXT, "first_seen": NUMBER,
                       "exited_at": Maybe(NUMBER), "execs": [TEXT]}]},
    "timeline": [TIMELINE_ENTRY],
    "phases": [{"t": NUMBER, "pid": NUMBER, "name": TEXT,
                "source": TEXT}],       # "output" (a line the process printed) or "mark"
    "spikes": [{"rise_t": NUMBER, "peak_t": NUMBER, "fall_t": NUMBER, "base": NUMBER,
                "peak": NUMBER, "size": NUMBER, "member": TEXT, "pid": NUMBER}],
    "files": [{"path": TEXT, "class": TEXT,
               "resident": NUMBER, "mapped": NUMBER,     # in the processes, at their highest
               "page_cache": Maybe(NUMBER),               # cachestat(2) at the end
               "filled?": NUMBER, "evicted?": NUMBER}],   # page cache while traced
    "shared": [{"name": TEXT, "class": TEXT, "pids": [NUMBER], "rss_max": NUMBER,
                "pss_sum": NUMBER}],    # objects mapped by several processes
    "oom": [{"t": NUMBER, "pid": NUMBER, "comm": TEXT, "anon": NUMBER, "file": NUMBER,
             "shmem": NUMBER, "traced": FLAG}],
    "mappings": [{                      # large ranges that ended, with their resident peak
        "pid": NUMBER, "class": TEXT, "name": TEXT, "start": NUMBER, "size": NUMBER,
        "t": NUMBER, "ended": Maybe(NUMBER), "peak": NUMBER, "peak_t": Maybe(NUMBER),
        "page_cache": Maybe(NUMBER), "call": TEXT, "seen_by_look": FLAG, "site": [FRAME]}],
    "calls_shed": {"calls": NUMBER, "bytes": NUMBER},
    "own_cpu_s": NUMBER, "run_s": NUMBER,   # ramwatchd's own CPU, over the time it ran
    "kernel_stats": Table(NUMBER),      # what the kernel side could not record
}


def problem(data, spec=CAPTURE, where=""):
    """The first way data departs from spec, as 'where: what is wrong', or None."""
    if isinstance(spec, Maybe):
        return None if data is None else problem(data, spec.spec, where)
    if isinstance(spec, str):
        return None if _is(data, spec) else f"{where or 'the file'}: {_found(data)}, not {spec}"
    if isinstance(spec, (dict, Table)):
        if not isinstance(data, dict):
            return f"{where or 'the file'}: {_found(data)}, not an object"
        return _object(data, spec, where)
    if not isinstance(data, list):
        return f"{where}: {_found(data)}, not a list"
    if isinstance(spec, tuple) and len(data) != len(spec):
        return f"{where}: {len(data)} items, not {len(spec)}"
    items = zip(data, spec) if isinstance(spec, tuple) else ((item, spec[0]) for item in data)
    for i, (item, item_spec) in enumerate(items):
        found = problem(item, item_spec, f"{where}[{i}]")
        if found:
            return found
    return None


def _object(data, spec, where):
    prefix = f"{where}." if where else ""
    if isinstance(spec, Table):
        fields = [(key, spec.spec) for key in data]
    else:
        fields = [(key.rstrip("?"), value) for key, value in spec.items()]
        missing = [key for key in spec if not key.endswith("?") and key not in data]
        if missing:
            return f"{prefix}{missing[0]}: missing"
    for key, value_spec in fields:
        if key in data:
            found = problem(data[key], value_spec, prefix + key)
            if found:
                return found
    return None


def _is(value, kind):
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == TEXT:
        return isinstance(value, str)
    return isinstance(value, bool)


def _found(value):
    for kind, name in ((bool, "true/false"), (dict, "an object"), (list, "a list"), (str, "a string"),
                       ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__
