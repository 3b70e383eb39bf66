"""Memory regressions, caught two ways: what changed between two captures of the
same program (`ramwatchd diff A.json B.json`: two versions, two configs), and
whether one capture kept within a budget (`--max-rss`, `--max-class`).

Captures are compared by what stays the same from run to run, never by pid:
- a process by its role: its name and its ancestors' names, and its place among
  siblings of the same name (the second `python` its parent started);
- a phase by the role that named it and its name with numbers set aside (pids,
  sizes, counts), and its place among phases of that name;
- a call site by its Python functions, without line numbers, so that a version
  that moved its code still lines up.
"""
import re

from ..units import fmt_bytes
from .report import _section, _table, _where, native_of_interest

SITES_SHOWN = 20
BEFORE_ANY_PHASE = "(before any phase)"


def render_diff(a, b, names=("A", "B"), min_change=1 << 20):
    """The differences from capture a to capture b, as text; changes smaller
    than min_change bytes are left out."""
    roles_a, roles_b = roles(a), roles(b)
    out = [_section("ramwatchd diff")]
    out += [f"  {name}: {_describe(result)}" for name, result in zip(names, (a, b))]
    matched = len(roles_a.keys() & roles_b.keys())
    out.append(f"  {matched} process{'' if matched == 1 else 'es'} matched by name; changes "
               f"under {fmt_bytes(min_change)} are not shown")
    out += _by_process(roles_a, roles_b, names, min_change)
    out += _by_class(a, b, names, min_change)
    out += _by_phase(a, b, roles_a, roles_b, names, min_change)
    out += _by_site(roles_a, roles_b, names, min_change)
    return "\n".join(out) + "\n"


def _describe(result):
    target = result["target"]
    what = " ".join(target["command"]) if "command" in target else f"pid {target.get('pid')}"
    return (f"{what[:80]} ({result['duration_s']:.1f} s, {result['started']} on {result['host']}, "
            f"ramwatchd {result['ramwatchd']})")


# ---- roles -------------------------------------------------------------------

class Role:
    """A process of a capture as another capture of the same program would
    have it: its names from the root down, and which one of that name."""

    def __init__(self, path, nth, process):
        self.path, self.nth, self.process = path, nth, process

    @property
    def key(self):
        return self.path, self.nth

    @property
    def label(self):
        return " > ".join(self.path) + (f" #{self.nth}" if self.nth > 1 else "")


def roles(result):
    """{role key: Role} for every process of a capture."""
    by_pid = {}
    for p in result["processes"]:
        by_pid.setdefault(p["pid"], []).append(p)

    def parent(p):
        # A pid can be reused within a capture: the parent is the one there when p began.
        earlier = [q for q in by_pid.get(p["ppid"], ()) if q["first_seen"] <= p["first_seen"] and q is not p]
        return earlier[-1] if earlier else None

    def path(p):
        names, seen = [], set()
        while p is not None and id(p) not in seen:
            seen.add(id(p))
            names.append(p["comm"])
            p = parent(p)
        return tuple(reversed(names))

    out, count = {}, {}
    for p in sorted(result["processes"], key=lambda p: p["first_seen"]):
        key = path(p)
        count[key] = count.get(key, 0) + 1
        role = Role(key, count[key], p)
        out[role.key] = role
    return out


def _pid_roles(roles_of):
    """pid -> Role: for the phases, which name only the pid of who wrote them."""
    return {role.process["pid"]: role for role in roles_of.values()}


def peak_rss(p):
    """A process's highest RSS: of the kernel's counters as read, and its VmHWM."""
    peak = p["peak"]
    if peak:
        return max(peak["bytes"], peak["vm_hwm"] or 0)
    return (p["largest"] or {}).get("vm_rss", 0)


# ---- the sections --------------------------------------------------------------

def _matched(keys_a, keys_b):
    """Keys in b's order, then those only a has."""
    return list(keys_b) + [k for k in keys_a if k not in keys_b]


def _change(x, y):
    if x is None:
        return "new"
    if y is None:
        return "gone"
    return fmt_bytes(y - x, signed=True)


def _size(n):
    return "-" if n is None else fmt_bytes(n)


def _by_process(roles_a, roles_b, names, min_change):
    rows = []
    for key in _matched(roles_a, roles_b):
        ra, rb = roles_a.get(key), roles_b.get(key)
        pa, pb = (peak_rss(r.process) if r else None for r in (ra, rb))
        classes = _class_changes(ra, rb, min_change)
        if pa is not None and pb is not None and abs(pb - pa) < min_change and not classes:
            continue
        rows.append([(rb or ra).label[-60:], _size(pa), _size(pb), _change(pa, pb), classes])
    out = [_section("by process (peak RSS; classes at each one's largest look)")]
    if not rows:
        return out + ["  no process changed"]
    return out + [_table(rows, ["process", f"{names[0]} peak", f"{names[1]} peak", "change", "classes"],
                         left={0, 4})]


def _class_changes(ra, rb, min_change):
    """'anon +32.0 MiB, file_code -4.0 MiB': the classes of a role's largest
    look that moved most."""
    if ra is None or rb is None:
        return ""
    ca, cb = ((r.process["largest"] or {}).get("classes", {}) for r in (ra, rb))
    moved = [(c, cb.get(c, 0) - ca.get(c, 0)) for c in {**ca, **cb}]
    moved = sorted((m for m in moved if abs(m[1]) >= min_change), key=lambda m: -abs(m[1]))
    return ", ".join(f"{c} {fmt_bytes(d, signed=True)}" for c, d in moved[:4])


def _class_totals(result):
    """PSS by class over all processes, each at its largest look: shared pages once."""
    totals = dict.fromkeys(result["classes"], 0)
    for p in result["processes"]:
        for c, v in (p["largest"] or {}).get("pss", {}).items():
            totals[c] = totals.get(c, 0) + v
    return totals


def _by_class(a, b, names, min_change):
    ta, tb = _class_totals(a), _class_totals(b)
    rows = [[c, fmt_bytes(ta.get(c, 0)), fmt_bytes(tb.get(c, 0)), fmt_bytes(tb.get(c, 0) - ta.get(c, 0), True)]
            for c in _matched(ta, tb) if abs(tb.get(c, 0) - ta.get(c, 0)) >= min_change]
    rows.append(["all", fmt_bytes(sum(ta.values())), fmt_bytes(sum(tb.values())),
                 fmt_bytes(sum(tb.values()) - sum(ta.values()), True)])
    return [_section("by class (PSS of all processes, each at its largest look: shared pages once)"),
            _table(rows, ["class", names[0], names[1], "change"], left={0})]


def _normal(name):
    """A phase's name with its numbers set aside: 'child 4121: loaded 64M' and
    'child 977: loaded 96M' are the same phase of two runs."""
    return re.sub(r"\d+(?:\.\d+)?", "#", name)


def phase_growth(result, roles_of):
    """{(role label, name with numbers set aside, nth): (name, change, came and went)},
    in time order: what grew and was released in each phase, and the large
    mappings that lived and ended within it."""
    writers = {(ph["t"], ph["name"]): ph["pid"] for ph in result["phases"]}
    pid_roles = _pid_roles(roles_of)
    totals = {}
    for e in result["timeline"]:
        if e["kind"] in ("grow", "release", "mapping"):
            row = totals.setdefault((e["phase_t"], e["phase"] or BEFORE_ANY_PHASE), [0, 0])
            row[e["kind"] == "mapping"] += e["delta"]
    out, count = {}, {}
    for (t, name), (delta, came_and_went) in sorted(totals.items(), key=lambda kv: (kv[0][0] is not None,
                                                                                   kv[0][0] or 0)):
        writer = pid_roles.get(writers.get((t, name)))
        base = (writer.label if writer else "", _normal(name))
        count[base] = count.get(base, 0) + 1
        out[base + (count[base],)] = (name, delta, came_and_went)
    return out


def _by_phase(a, b, roles_a, roles_b, names, min_change):
    ga, gb = phase_growth(a, roles_a), phase_growth(b, roles_b)
    rows = []
    for key in _matched(ga, gb):
        (na, da, wa), (nb, db, wb) = (g.get(key, (None, None, None)) for g in (ga, gb))
        if da is not None and db is not None and abs(db - da) < min_change and abs(wb - wa) < min_change:
            continue
        name = nb if na is None or na == nb else (na if nb is None else f"{na} -> {nb}")
        rows.append([name[:70], key[0][-40:], _grown(da), _grown(db), _change(da, db),
                     _came_and_went(wa, wb, min_change)])
    out = [_section("by phase (what each phase grew, released and held briefly)")]
    if not rows:
        return out + ["  no phase changed"]
    return out + [_table(rows, ["phase", "named by", names[0], names[1], "change", "came and went"],
                         left={0, 1, 5})]


def _grown(n):
    return "-" if n is None else fmt_bytes(n, signed=True)


def _came_and_went(wa, wb, min_change):
    if wa is None or wb is None or abs(wb - wa) < min_change:
        return ""
    return f"{fmt_bytes(wa)} -> {fmt_bytes(wb)}"


def _sites(p):
    """{site key: (bytes, (site, caller))}: a process's growth by call site
    and its caller, as the summary names them, held at its last look (an
    exited process's, at their highest); keyed without line numbers."""
    held = "bytes" if p["exited_at"] is None else "highest"
    out = {}
    for s in p.get("sites") or ():
        python = [tuple(f) for f in s["python"]]
        label = _where(python) if python else (native_of_interest(s["native"]) or "(unknown)", "")
        key = tuple(_LINE.sub(" ", part) for part in label)
        out[key] = (out.get(key, (0,))[0] + s[held], label)
    return out


_LINE = re.compile(r":(?:\d+|\?) ")    # 'workloads/__init__.py:92 Workload.do_anon'


def _by_site(roles_a, roles_b, names, min_change):
    rows = []
    for key in _matched(roles_a, roles_b):
        ra, rb = roles_a.get(key), roles_b.get(key)
        sa, sb = (_sites(r.process) if r else {} for r in (ra, rb))
        label = (rb or ra).label[-30:]
        for site in _matched(sa, sb):
            xa, xb = sa.get(site, (0, None))[0], sb.get(site, (0, None))[0]
            if abs(xb - xa) >= min_change:
                where, caller = (sb.get(site) or sa[site])[1]
                rows.append((abs(xb - xa), [label, where[:60], caller[:50], fmt_bytes(xa), fmt_bytes(xb),
                                            fmt_bytes(xb - xa, True)]))
    out = [_section("by call site (held at the last look; by an exited process, at their highest)")]
    if not rows:
        return out + ["  no call site changed" + ("" if _any_sites(roles_a, roles_b) else
                                                 " (the captures have no call sites: --no-stacks)")]
    rows = [r for _, r in sorted(rows, key=lambda r: -r[0])[:SITES_SHOWN]]
    return out + [_table(rows, ["process", "site", "called from", names[0], names[1], "change"],
                         left={0, 1, 2})]


def _any_sites(*role_sets):
    return any(r.process.get("sites") for roles_of in role_sets for r in roles_of.values())


# ---- budgets -------------------------------------------------------------------

def over_budget(result, max_rss=None, max_class=()):
    """[(process, what it passed)], empty when every process kept within the
    budget: max_rss bytes against each one's peak RSS, max_class [(class,
    bytes)] against the most of that class a look at it found."""
    found = []
    for p in result["processes"]:
        who = f"pid {p['pid']} ({p['comm']})"
        peak = peak_rss(p)
        if max_rss is not None and peak > max_rss:
            found.append((p, f"{who} peaked at {fmt_bytes(peak)}, above --max-rss {fmt_bytes(max_rss)}"))
        for cls, limit in max_class:
            held, t = _class_peak(p, cls)
            if held > limit:
                found.append((p, f"{who} held {fmt_bytes(held)} of {cls} at {t:.2f}s, above "
                                 f"--max-class {cls}={fmt_bytes(limit)}"))
    return found


def _class_peak(p, cls):
    """(bytes, when): the most of a class any look at p found."""
    return max(((h["classes"].get(cls, 0), h["t"]) for h in p["history"]), default=(0, 0.0))


def render_budget(result, breaches, max_rss=None, max_class=()):
    """The budget section of the summary: the verdict on over_budget()'s
    findings, and for each process that passed it, where its memory was."""
    asked = ([f"--max-rss {fmt_bytes(max_rss)}"] if max_rss is not None else []) + \
            [f"--max-class {c}={fmt_bytes(v)}" for c, v in max_class]
    out = [_section(f"budget ({', '.join(asked)}; each process)")]
    if not breaches:
        highest = max(result["processes"], key=peak_rss, default=None)
        return out + ["  within budget" + (f": the highest peak was {fmt_bytes(peak_rss(highest))}, "
                                           f"pid {highest['pid']} ({highest['comm']})" if highest else "")]
    out += [f"  OVER: {line}" for _, line in breaches]
    for p in {id(p): p for p, _ in breaches}.values():
        out += _breakdown(result, p)
    return out


def _breakdown(result, p):
    """Where a process's memory was when it was largest, and which code holds it."""
    out = [f"\n  pid {p['pid']} ({p['comm']}):"]
    peak = p["peak"]
    if peak:
        phase = phase_at(result, p, peak["t"])
        out.append(f"    peak {fmt_bytes(peak_rss(p))} at {peak['t']:.2f}s"
                   + (f", in phase '{phase}'" if phase else "")
                   + f": anon {fmt_bytes(peak['anon'])}, file {fmt_bytes(peak['file'])}, "
                     f"shmem {fmt_bytes(peak['shmem'])}")
    largest = p["largest"]
    if largest:
        classes = sorted(largest["classes"].items(), key=lambda kv: -kv[1])
        out.append(f"    at its largest look ({largest['t']:.2f}s): "
                   + ", ".join(f"{c} {fmt_bytes(v)}" for c, v in classes if v >= 1 << 20))
    sites = sorted(_sites(p).values(), key=lambda s: -s[0])[:5]
    for held, (where, caller) in sites:
        if held >= 1 << 20:
            out.append(f"    {fmt_bytes(held):>10}  {where}" + (f"  <- {caller}" if caller else ""))
    return out


def phase_at(result, p, t):
    """The phase p was in at t: the last one it named by then, else its parent's."""
    ancestry, by_pid = [], {q["pid"]: q for q in result["processes"]}
    while p is not None and p["pid"] not in ancestry:
        ancestry.append(p["pid"])
        p = by_pid.get(p["ppid"])
    for pid in ancestry:
        named = [ph for ph in result["phases"] if ph["pid"] == pid and ph["t"] <= t]
        if named:
            return named[-1]["name"]
    return None
