"""Stage 4 (summary view): what a finished capture found, rendered from its saved
form, so a live capture and `ramwatchd report FILE.json` print the same thing."""
import json

from .. import __version__
from ..units import fmt_bytes, fmt_seconds
from . import capture_format
from .timeline import format_entry


class ReportError(Exception):
    """A file that is not a capture this ramwatchd reads; the message says why."""


def load(path):
    """The capture saved at path, checked against its format before any view reads it."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except IsADirectoryError:
        raise ReportError(f"{path} is a directory, not a saved capture") from None
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    except (ValueError, RecursionError) as err:    # not UTF-8, not JSON, or nested past reason
        raise ReportError(f"{path} is not a ramwatchd capture: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ramwatchd"), str) or "format" not in data:
        raise ReportError(f"{path} is not a ramwatchd capture: JSON without its 'format' and "
                          f"'ramwatchd' fields")
    version = data["format"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ReportError(f"{path} is not a ramwatchd capture: its 'format' is {version!r}, "
                          f"not a version number")
    if version != capture_format.VERSION:
        age = "a later" if version > capture_format.VERSION else "an earlier"
        raise ReportError(f"{path} is capture format {version!r}, written by {age} ramwatchd "
                          f"({data['ramwatchd']}); this one ({__version__}) reads format "
                          f"{capture_format.VERSION} only")
    wrong = capture_format.problem(data)
    if wrong:
        raise ReportError(f"{path} is not a complete capture of format {version}: {wrong}")
    return data


def _table(rows, header, left=(0, 1)):
    """Columns in `left` aligned left, the others (figures) right."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        return "  " + "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header)] + [line(r) for r in rows])


def _used_classes(result, key):
    used = set()
    for p in result["processes"]:
        snap = p.get(key)
        if snap:
            used |= {c for c, v in snap["classes"].items() if v >= 1 << 20}
    return [c for c in result["classes"] if c in used]


def _class_table(result, key):
    classes = _used_classes(result, key)
    rows = []
    for p in result["processes"]:
        snap = p.get(key)
        if not snap:
            continue
        state = "exited" if p["exited_at"] is not None else ""
        check = "ok" if snap["reconciled"] else f"off {fmt_bytes(snap['drift'], True)}"
        rows.append([str(p["pid"]), p["comm"][:15] + (f" ({state})" if state else "")]
                    + [fmt_bytes(snap["classes"][c]) for c in classes]
                    + [fmt_bytes(sum(snap["classes"].values())), fmt_bytes(snap["vm_rss"]), check])
    if len(rows) > 1:
        snaps = [p[key] for p in result["processes"] if p.get(key)]
        rows.append(["", "all (PSS: shared once)"]
                    + [fmt_bytes(sum(s["pss"][c] for s in snaps)) for c in classes]
                    + [fmt_bytes(sum(sum(s["pss"].values()) for s in snaps)), "", ""])
    return _table(rows, ["pid", "comm"] + classes + ["classes", "VmRSS", "vs VmRSS"])


def _section(title):
    return f"\n== {title} " + "=" * max(0, 70 - len(title))


def render_summary(result):
    out = [_section("ramwatchd summary")]
    target = result["target"]
    what = " ".join(target["command"]) if "command" in target else f"pid {target.get('pid')}"
    out.append(f"  captured {what} for {fmt_seconds(result['duration_s'])}; "
               f"ended: {result['ended_because'] or 'stopped'}"
               + (f"; exit code {result['exit_code']}" if result.get("exit_code") is not None else ""))
    if "pid" in target:
        out += [_section("baseline at attach (memory that existed before the capture)"),
                _class_table(result, "baseline")]
    out += [_section("by process and class (last look; exited processes: before they exited)"),
            _class_table(result, "latest")]
    out += _top_mappings(result) + _pinned(result) + _peaks(result) + _spikes(result) + _phases(result)
    out += _sites(result)
    out += _shared(result) + _why_top(result) + _health(result)
    return "\n".join(out) + "\n"


def _top_mappings(result):
    objs = []
    for p in result["processes"]:
        objs += [dict(o, pid=p["pid"]) for o in p["objects_largest"]]
    objs.sort(key=lambda o: -o["rss"])
    cache = {f["path"]: f for f in result["files"]}
    rows = []
    for o in objs[:10]:
        f = cache.get(o["name"])
        pc = f.get("page_cache") if f else None
        rows.append([o["class"], o["name"][-60:], str(o["pid"]), fmt_bytes(o["rss"]), fmt_bytes(o["mapped"]),
                     fmt_bytes(pc) if pc is not None else "-"])
    out = [_section("top mappings (at each process's largest look)")]
    out.append(_table(rows, ["class", "mapping", "pid", "resident", "mapped", "page cache"]) if rows else "  none")
    weights = [f for f in result["files"] if f["class"] == "file_weights"]
    if weights:
        out.append("\n  weights files: resident in the processes vs in the page cache (filled while traced)")
        out.append(_table([[f["path"][-60:], "", fmt_bytes(f["resident"]),
                            fmt_bytes(f["page_cache"]) if f.get("page_cache") is not None else "-",
                            fmt_bytes(f.get("filled", 0))] for f in weights],
                          ["file", "", "resident", "page cache", "filled"]))
    return out


def _pinned(result):
    rows, totals = [], []
    for p in result["processes"]:
        ranges = p.get("pinned_largest") or []
        for r in ranges:
            rows.append([str(p["pid"]), r["how"], r["symbol"], fmt_bytes(r["requested"]), fmt_bytes(r["mapped"]),
                         fmt_bytes(r["resident"]), "+".join(r["classes"]) + " (pinned)", r["caller"]])
        for how in ("allocated", "registered"):
            mine = [r for r in ranges if r["how"] == how]
            if mine:
                totals.append(f"  pid {p['pid']}: {how} {fmt_bytes(sum(r['requested'] for r in mine))} "
                              f"requested, {fmt_bytes(sum(r['mapped'] for r in mine))} mapped "
                              f"in {len(mine)} range(s)")
    if not rows:
        return []
    return [_section("CUDA pinned host memory (at each process's largest look)"),
            _table(rows, ["pid", "how", "call", "requested", "mapped", "resident", "class", "called from"])] + totals


def _peaks(result):
    rows = []
    for p in result["processes"]:
        peak = p.get("peak")
        if not peak:
            continue
        largest, latest = p.get("largest"), p.get("latest") or {}
        where = ""
        if largest:
            top = sorted(largest["classes"].items(), key=lambda kv: -kv[1])[:3]
            where = ", ".join(f"{c} {fmt_bytes(v)}" for c, v in top if v)
        rows.append([str(p["pid"]), p["comm"][:15], fmt_bytes(peak["bytes"]), f"{peak['t']:.2f}s",
                     f"anon {fmt_bytes(peak['anon'])} file {fmt_bytes(peak['file'])} shmem {fmt_bytes(peak['shmem'])}",
                     fmt_bytes(peak.get("vm_hwm") or latest.get("vm_hwm", 0)), where])
    how = ("exact, kept in the kernel" if result["options"].get("exact_rss")
           else "the kernel's counters, read each time they moved")
    return [_section(f"peak RSS ({how})"),
            _table(rows, ["pid", "comm", "peak", "at", "counters at peak", "VmHWM",
                          "largest look: top classes"]) if rows else "  none",
            "  VmHWM is the kernel's own high-water mark since the program started, as last read."]


def _spikes(result):
    opts = result["options"]
    out = [_section(f"transient spikes (rise >= {fmt_bytes(opts['spike_min_rise'])}, "
                    f"back within {opts['spike_max_hold_s'] * 1000:.0f} ms)")]
    if not result["spikes"]:
        return out + ["  none"]
    for s in result["spikes"]:
        out.append(f"  pid {s['pid']}: +{fmt_bytes(s['size'])} {s['member']} at {s['peak_t']:.2f}s, "
                   f"held {s['fall_t'] - s['peak_t']:.3f} s at the peak (rss {fmt_bytes(s['peak'])})")
    return out


def _phases(result):
    """Every phase something grew, was released, or came and went in (a large
    mapping that lived between two looks), in time order, with the processes
    whose changes fell in it (a process that names no phase of its own is in
    its parent's)."""
    rows = {}
    for e in result["timeline"]:
        if e["kind"] not in ("grow", "release", "mapping"):
            continue
        key = (e.get("phase_t") is not None, e.get("phase_t") or 0.0, e["phase"] or "(before any phase)")
        row = rows.setdefault(key, {"delta": 0, "came_and_went": 0, "pids": []})
        row["came_and_went" if e["kind"] == "mapping" else "delta"] += e["delta"]
        if e["pid"] not in row["pids"]:
            row["pids"].append(e["pid"])
    if not rows:
        return []
    writers = {(p["t"], p["name"]): p["pid"] for p in result["phases"]}
    table = [[f"{t:.2f}s" if named else "", str(writers.get((t, name), "")), name[:70],
              ",".join(map(str, row["pids"])), fmt_bytes(row["delta"], True),
              fmt_bytes(row["came_and_went"]) if row["came_and_went"] else ""]
             for (named, t, name), row in sorted(rows.items())]
    return [_section("growth by phase (in time order; phases are the lines each process printed, and marks)"),
            _table(table, ["began", "named by", "phase", "pids", "change", "came and went"])]


SITES_SHOWN = 6   # a process's largest sites in the summary


def _sites(result):
    """What code holds each process's growth, folded by Python stack (a
    site's native frames vary with the path C took)."""
    if not result["options"].get("stacks"):
        return []
    rows = []
    for p in result["processes"]:
        held = _held_by_python_stack(p)
        total = sum(n for n, _ in held.values())
        for (where, caller), (n, native) in sorted(held.items(), key=lambda kv: -kv[1][0])[:SITES_SHOWN]:
            if n < result["options"]["min_change"] / 4:
                continue
            rows.append([str(p["pid"]), p["comm"][:15] + (" (exited)" if p["exited_at"] is not None else ""),
                         fmt_bytes(n), f"{n / total:.0%}", where, caller, native[:60]])
    if not rows:
        return []
    return [_section("growth by call site (held at the last look; by an exited process, at their highest)"),
            _table(rows, ["pid", "comm", "resident", "share", "site", "called from", "native"],
                   left={0, 1, 4, 5, 6})]


def _where(python):
    """(site, its caller) as a person reads them: the innermost frame outside
    the import machinery (a library loaded by an import is the import's)."""
    frames = [tuple(f) for f in python]
    own = [f for f in frames if not f[0].startswith("<frozen importlib")]
    if not own:
        return ("(no Python frame)" if not frames else _frame(frames[0])), ""
    where = _frame(own[0]) + (" (import)" if own[0] is not frames[0] else "")
    return where, _frame(own[1]) if len(own) > 1 else ""


def _held_by_python_stack(p):
    """(site, its caller) as _where gives them -> (bytes held, the native
    frame of interest of its largest native variant): stacks that differ only
    further out, or in the path C took, are one row."""
    key = "bytes" if p["exited_at"] is None else "highest"
    held = {}
    for s in sorted(p.get("sites", []), key=lambda s: -s[key]):
        where = _where(s["python"])
        before, native = held.get(where, (0, short_native(native_of_interest(s["native"]))))
        held[where] = (before + s[key], native)
    return held


# Libraries whose frames say how memory was asked for, not who asked.
_PLUMBING = ("[libc.so", "[ld-linux", "[libpython", "[python", "[libpthread", "[libstdc++")


def short_native(name):
    """'function [library]' with a C++ name cut to its scopes: no
    parameters, template arguments or return type, which are longer than
    the rest of the row ('at::MapAllocator::MapAllocator [libtorch_cpu.so]')."""
    function, bracket, library = name.rpartition(" [")
    if not bracket or "(" not in function:
        return name
    kept, depth = [], 0
    for ch in function:
        if ch in "(<":
            depth += 1
        elif ch in ")>" and depth:
            depth -= 1
        elif depth == 0:
            kept.append(ch)
    words = "".join(kept).strip().split(" ")
    scopes = " ".join(words[-2:]) if len(words) > 1 and words[-2].endswith("operator") else words[-1]
    return f"{scopes or function} [{library}"


def native_of_interest(native):
    """The nearest named native frame outside libc, the loader and the
    interpreter (a libtorch or numpy function, a program's own), else the
    nearest named one ('malloc [libc.so.6]')."""
    named = [n for n in native if not n.startswith("0x") and not n.startswith("[unknown]")]
    return next((n for n in named if not any(lib in n for lib in _PLUMBING)), named[0] if named else "")


def _frame(frame):
    filename, function, line = frame
    parts = filename.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{line if line is not None else '?'} {function}"


def folded_stacks(result):
    """'comm (pid);outermost frame;...;innermost frame bytes' per site: the
    folded form flamegraph.pl, speedscope and Grafana's flame graph read."""
    for p in result["processes"]:
        key = "bytes" if p["exited_at"] is None else "highest"
        for s in p.get("sites", []):
            if not s[key]:
                continue
            frames = [_frame(f) for f in reversed(s["python"])] or list(reversed(s["native"])) or ["(unknown)"]
            frames = [f.replace(";", ",") for f in frames]
            yield ";".join([f"{p['comm']} ({p['pid']})"] + frames) + f" {s[key]}"


def _shared(result):
    if not result["shared"]:
        return []
    rows = [[s["class"], s["name"][-50:], ",".join(map(str, s["pids"])), fmt_bytes(s["rss_max"]),
             fmt_bytes(s["pss_sum"])] for s in result["shared"]]
    return [_section("shared by several processes (counted once in 'all')"),
            _table(rows, ["class", "object", "pids", "resident", "PSS sum"])]


def _why_top(result):
    main = result["processes"][0] if result["processes"] else None
    snap = main and (main.get("latest") or main.get("baseline"))
    if not snap:
        return []
    unmapped = sum(max(0, (f.get("page_cache") or 0) - f["resident"]) for f in result["files"])
    return [_section("why top shows something else"),
            f"  top's RES is VmRSS = RssAnon + RssFile + RssShmem; for pid {main['pid']}: "
            f"{fmt_bytes(snap['rss_anon'])} + {fmt_bytes(snap['rss_file'])} + {fmt_bytes(snap['rss_shmem'])} "
            f"= {fmt_bytes(snap['vm_rss'])}.",
            "  A log that counts only the heap, or only what was allocated after it started, misses the",
            "  file pages (libraries, mmap'd weights), shared memory and the baseline before it.",
            "  Page cache that no process maps is not RSS at all: lazily mmap'd weights count only the",
            f"  pages touched so far. Files above hold {fmt_bytes(unmapped)} of page cache beyond what is mapped."]


def _health(result):
    out = [_section("checks")]
    samples = sum(p["reconciliation"]["samples"] for p in result["processes"])
    failed = sum(p["reconciliation"]["failed"] for p in result["processes"])
    worst = max((abs(p["reconciliation"]["worst_drift"]) for p in result["processes"]), default=0)
    out.append(f"  classes vs VmRSS: {samples - failed}/{samples} looks within max(1%, 4 MiB); "
               f"worst difference {fmt_bytes(worst)}")
    if result.get("run_s"):
        share = result["own_cpu_s"] / result["run_s"]
        out.append(f"  ramwatchd's own CPU: {result['own_cpu_s']:.2f} s in {fmt_seconds(result['run_s'])} "
                   f"({share:.1%} of one core)")
    stats = dict(result["kernel_stats"])
    shed = stats.pop("calls_shed", 0)
    lost = {k: v for k, v in stats.items() if v}
    out.append("  kernel side: nothing dropped" if not lost else
               "  kernel side dropped: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in lost.items()))
    if shed:
        limit = result["options"].get("max_calls_per_s")
        out.append(f"  mm calls counted in the kernel, not shown one by one (past {limit:,} a second a process): "
                   f"{shed:,}")
    for o in result["oom"]:
        out.append(f"  OOM victim: pid {o['pid']} ({o['comm']}) at {o['t']:.2f}s"
                   + (" — a traced process" if o["traced"] else ""))
    return out


def render_timeline(result):
    return "\n".join(format_entry(e) for e in result["timeline"])
