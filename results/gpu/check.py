"""What the GPU proof must show, checked against the files run.sh wrote.

    python3 results/gpu/check.py DIR      # DIR: run.sh's $OUT, or results/gpu

Prints one line per claim, PASS or FAIL with the figures, and exits 1 if any
failed. Sizes of call sites are held to 5 % (resident bytes, not requested);
pinned ranges are exact (the driver's own arguments).
"""
import json
import os
import re
import sys

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
failed = []


def check(ok, text):
    print(("PASS  " if ok else "FAIL  ") + text)
    if not ok:
        failed.append(text)
    return ok


def info(text):
    print("INFO  " + text)


def near(value, want, tolerance=0.05):
    return abs(value - want) <= tolerance * want


def mib(n):
    return f"{n / MiB:.1f} MiB"


def marked_lines(name):
    """NAME -> number of the line in results/gpu/<name> that ends with '# site: NAME'."""
    out = {}
    with open(os.path.join(HERE, name)) as f:
        for number, text in enumerate(f, 1):
            found = re.search(r"# site: (\w+)$", text.rstrip())
            if found:
                out[found.group(1)] = number
    return out


def held_sites(p):
    """[(site, bytes)]: at the last look, or at their highest for an exited process."""
    key = "bytes" if p["exited_at"] is None else "highest"
    return [(s, s[key]) for s in p.get("sites", [])]


def sites_at(p, filename, line):
    """The sites whose innermost frame in `filename` (by basename) is at `line`."""
    out = []
    for site, n in held_sites(p):
        ours = [f for f in site["python"] if os.path.basename(f[0]) == filename]
        if ours and ours[0][2] == line:
            out.append((site, n))
    return out


def native_names(sites):
    return sorted({name for site, _ in sites for name in site["native"]})


def driver_block(p, filename, line, size, what):
    """The driver's pinned block is credited to `line`: the sites there whose
    native frames hold cuMemHostAlloc hold `size`. What else the line holds
    (other mappings made in the same call) is shown beside it."""
    found = sites_at(p, filename, line)
    block = [(s, n) for s, n in found if any(f.startswith("cuMemHostAlloc ") for f in s["native"])]
    n = sum(n for _, n in block)
    total = sum(n for _, n in found)
    check(near(n, size), f"{what}: {filename}:{line} holds the driver's block, {mib(n)} under cuMemHostAlloc "
          f"(want {mib(size)}); the line holds {mib(total)} in all")
    if block:
        frames = [f for f in block[0][0]["native"] if not f.startswith(("0x", "[unknown]"))]
        info(f"  native frames of that site, innermost first: {' <- '.join(frames[:8])}")
    return found


def phase_has(entry, words):
    return words in (entry.get("phase") or "")


def reconciled(result, what):
    samples = sum(p["reconciliation"]["samples"] for p in result["processes"])
    bad = sum(p["reconciliation"]["failed"] for p in result["processes"])
    check(samples > 0 and bad == 0, f"{what}: every look reconciled with VmRSS ({samples - bad}/{samples})")


def kernel_clean(result, what):
    lost = {k: v for k, v in result["kernel_stats"].items() if v and k != "calls_shed"}
    check(not lost, f"{what}: the kernel side dropped nothing ({lost or 'none'})")


# ---- 1-2: pinned_proof.py -----------------------------------------------------

def load(out, name):
    """(the capture NAME, the one used for what does not need call sites): a
    capture stopped by an internal error is replaced by NAME-nostacks."""
    result = json.load(open(os.path.join(out, name + ".json")))
    text = open(os.path.join(out, name + ".txt")).read()
    if "internal error" not in result["ended_because"]:
        return result, text, result, text
    check(False, f"{name}: the capture {result['ended_because']}")
    alt = os.path.join(out, name + "-nostacks.json")
    if not os.path.exists(alt):
        return result, text, result, text
    info(f"{name}: what does not need call sites is checked on {name}-nostacks (ramwatchd run --no-stacks)")
    return result, text, json.load(open(alt)), open(alt[:-5] + ".txt").read()


def proof(out):
    print("\n== 1. pinned_proof.py: four kinds of host memory")
    with_stacks, stacks_text, result, text = load(out, "pinned_proof")
    lines = marked_lines("pinned_proof.py")
    p = next(p for p in result["processes"] if "pinned_proof.py" in p["cmdline"])
    info(f"pid {p['pid']}; capture ended: {result['ended_because']}")
    check(result["exit_code"] == 0, f"the program exited with {result['exit_code']}")
    ranges = p["pinned_largest"]
    for r in ranges:
        info(f"pinned range {r['symbol']} {r['how']} at {r['start']:#x}: requested {mib(r['requested'])}, "
             f"mapped {mib(r['mapped'])}, resident {mib(r['resident'])}, class {'+'.join(r['classes'])}, "
             f"flags {r['flags']:#x}, called from {r['caller']}")
    torch_pin = [r for r in ranges if r["symbol"] == "cuMemHostAlloc" and r["requested"] == 512 * MiB]
    check(len(torch_pin) == 1 and torch_pin[0]["classes"] == ["cuda_pinned"]
          and torch_pin[0]["how"] == "allocated" and "libcudart" in torch_pin[0]["caller"],
          "torch pin_memory of 300 MiB: one cuMemHostAlloc of 512 MiB from libcudart, class cuda_pinned")
    printed = re.search(r"torch: pinned tensor at (0x[0-9a-f]+)", text)
    check(torch_pin and printed and int(printed.group(1), 16) == torch_pin[0]["start"],
          f"  at the address torch's tensor has ({printed.group(1) if printed else '?'})")
    registered = [r for r in ranges if r["how"] == "registered"]
    check(len(registered) == 1 and registered[0]["requested"] == 256 * MiB
          and registered[0]["mapped"] == 256 * MiB and registered[0]["classes"] == ["shm_posix"]
          and registered[0]["symbol"] == "cuMemHostRegister_v2",
          "cudaHostRegister of the /dev/shm region: cuMemHostRegister_v2 256 MiB, class shm_posix")
    shm = [o for o in p["objects_largest"] if o["name"] == "/dev/shm/ramwatchd-gpu-proof"]
    check(len(shm) == 1 and shm[0]["class"] == "shm_posix" and shm[0]["pinned"] == 256 * MiB
          and shm[0]["rss"] == 256 * MiB,
          f"  the region is shm_posix and pinned: {shm and {k: shm[0][k] for k in ('class', 'rss', 'pinned')}}")
    cupy_pin = [r for r in ranges if r["symbol"] == "cuMemHostAlloc" and r["requested"] == 128 * MiB]
    check(len(cupy_pin) == 1 and cupy_pin[0]["flags"] == 1 and cupy_pin[0]["classes"] == ["cuda_pinned"],
          "cupy's pinned block: cuMemHostAlloc 128 MiB, flags 0x1 (portable), class cuda_pinned")
    largest = p["largest"]["classes"]
    check(near(largest["cuda_pinned"], 640 * MiB, 0.01),
          f"class cuda_pinned at the largest look: {mib(largest['cuda_pinned'])} (512 + 128 MiB)")
    plain_line = f"pinned_proof.py:{lines['plain_mmap']}"
    plain = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "shm_anon" and plain_line in e["cause"]]
    check(plain and near(sum(e["delta"] for e in plain), 64 * MiB)
          and not any("shm_anon" in r["classes"] for r in ranges) and largest["shm_anon"] >= 64 * MiB,
          f"mmap.mmap(-1, 64 MiB) ({plain_line}) grew shm_anon by {mib(sum(e['delta'] for e in plain))}, "
          f"and no pinned range is shm_anon")
    for e in plain:
        info(f"  that growth is in the phase '{e['phase']}'")
    in_phase = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "cuda_pinned"
                and phase_has(e, "pin_memory 300 MiB")]
    check(near(sum(e["delta"] for e in in_phase), 512 * MiB, 0.01),
          f"the phase 'torch pin_memory 300 MiB' grew cuda_pinned by {mib(sum(e['delta'] for e in in_phase))}")
    reconciled(result, "pinned_proof")
    kernel_clean(result, "pinned_proof")

    print(f"\n== 2. call sites on Python {python_version(out)}")
    if with_stacks is result:
        sites(result, text, p, lines)
    else:
        check(False, "call sites: the capture with stacks did not finish (above)")


def sites(result, text, p, lines):
    said = [e["text"] for e in result["timeline"] if e["kind"] == "python"]
    check(not said, f"the interpreter's stacks were readable ({said or 'no complaint on the timeline'})")
    want = {"torch_pin": 512 * MiB, "shm_map": 256 * MiB, "cupy_pin": 128 * MiB, "plain_mmap": 64 * MiB}
    driver_block(p, "pinned_proof.py", lines["torch_pin"], 512 * MiB, "torch pin_memory")
    driver_block(p, "pinned_proof.py", lines["cupy_pin"], 128 * MiB, "cupy alloc_pinned_memory")
    for name in ("shm_map", "plain_mmap"):
        found = sites_at(p, "pinned_proof.py", lines[name])
        n = sum(n for _, n in found)
        check(near(n, want[name]), f"pinned_proof.py:{lines[name]} ({name}) holds {mib(n)}, want {mib(want[name])}")
    pin_line = f"pinned_proof.py:{lines['torch_pin']}"
    alloc = [e for e in result["timeline"] if e["kind"] == "pinned" and e["text"].startswith("cuMemHostAlloc 512.0 MiB")]
    grew = [e for e in result["timeline"] if e["kind"] == "grow" and e["cls"] == "cuda_pinned"
            and phase_has(e, "pin_memory 300 MiB")]
    check(len(alloc) == 1, f"the timeline names the driver entry point: {alloc[0]['text'] if alloc else 'none'}")
    check(grew and all(pin_line in e["cause"] for e in grew),
          f"the cuda_pinned growth names the Python line {pin_line}: "
          f"{'; '.join(e['cause'] for e in grew) or 'no growth entry'}")
    section = text.split("growth by call site")[1].split("\n== ")[0] if "growth by call site" in text else ""
    rows = [row.strip() for row in section.splitlines() if "pinned_proof.py:" in row]
    shown = [name for name in want if f"pinned_proof.py:{lines[name]} " in section]
    check({"torch_pin", "shm_map", "cupy_pin"} <= set(shown),
          f"the summary's 'growth by call site' shows the lines of the three largest: {shown}")
    for row in rows:
        info("  " + re.sub(r"\s{2,}", "  ", row))


def python_version(out):
    try:
        found = re.search(r"python (\S+)", open(os.path.join(out, "environment.txt")).read())
        return found.group(1) if found else "?"
    except OSError:
        return "?"


# ---- 3: the process tree ----------------------------------------------------

def tree(out):
    print("\n== 3. pinned_tree.py: a parent and two spawned workers sharing a /dev/shm region")
    with_stacks, _, result, text = load(out, "pinned_tree")
    lines = marked_lines("pinned_tree.py")
    check(result["ended_because"].startswith("--duration"),
          f"the capture ended while the tree held its memory: {result['ended_because']}")
    said = {int(m.group(1)): (int(m.group(2)), int(m.group(3), 16), int(m.group(4), 16))
            for m in re.finditer(r"tp-worker-(\d): pid (\d+) pinned \d+ MiB at (0x[0-9a-f]+), "
                                 r"registered \d+ MiB at (0x[0-9a-f]+) \(error 0\)", text)}
    check(sorted(said) == [0, 1], f"both workers pinned and registered without error ({sorted(said)})")
    by_pid = {p["pid"]: p for p in result["processes"]}
    parent = next((p for p in result["processes"] if p["cmdline"].startswith("python3 results/gpu/pinned_tree.py")
                   or p["cmdline"].endswith("results/gpu/pinned_tree.py")), None)
    check(parent is not None, f"the parent was captured (pid {parent and parent['pid']})")
    workers = {rank: by_pid.get(pid) for rank, (pid, _, _) in said.items()}
    check(len(workers) == 2 and all(workers.values()), "both workers were followed: "
          + ", ".join(f"tp-worker-{rank} pid {said[rank][0]}" for rank in sorted(said)))
    if not (parent and len(workers) == 2 and all(workers.values())):
        return result, {}
    for rank, w in sorted(workers.items()):
        check(w["comm"] == f"tp-worker-{rank}" and "multiprocessing" in w["cmdline"]
              and w["ppid"] == parent["pid"],
              f"tp-worker-{rank}: a child of the parent, started by spawn "
              f"({w['cmdline'][:70]}...), renamed {[(r['old'], r['new']) for r in w['renames']]}")
    check(not parent["pinned_largest"], f"the parent has no pinned range ({len(parent['pinned_largest'])})")
    expected = {}
    for rank, w in sorted(workers.items()):
        pid, pinned_at, registered_at = said[rank]
        ranges = w["pinned_largest"]
        for r in ranges:
            info(f"tp-worker-{rank} pid {pid}: {r['symbol']} {r['how']} at {r['start']:#x}: requested "
                 f"{mib(r['requested'])}, mapped {mib(r['mapped'])}, resident {mib(r['resident'])}, "
                 f"class {'+'.join(r['classes'])}, called from {r['caller']}")
        alloc = [r for r in ranges if r["how"] == "allocated"]
        reg = [r for r in ranges if r["how"] == "registered"]
        size = 128 * MiB if rank == 0 else 256 * MiB
        check(len(alloc) == 1 and alloc[0]["start"] == pinned_at and alloc[0]["requested"] == size
              and alloc[0]["classes"] == ["cuda_pinned"],
              f"tp-worker-{rank}: its own allocation, {mib(size)} at {pinned_at:#x} (the tensor's address), cuda_pinned")
        check(len(reg) == 1 and reg[0]["start"] == registered_at and reg[0]["requested"] == 256 * MiB
              and reg[0]["classes"] == ["shm_posix"],
              f"tp-worker-{rank}: its own registration, 256 MiB at {registered_at:#x}, shm_posix")
        expected[f"tp-worker-{rank}"] = ranges
    others = {r["start"] for r in workers[0]["pinned_largest"]} & {r["start"] for r in workers[1]["pinned_largest"]}
    info(f"addresses the two workers' tables have in common: {sorted(map(hex, others)) or 'none'}")
    shared = [s for s in result["shared"] if s["name"] == "/dev/shm/ramwatchd-gpu-tree"]
    pids = {parent["pid"], workers[0]["pid"], workers[1]["pid"]}
    check(len(shared) == 1 and set(shared[0]["pids"]) == pids and shared[0]["rss_max"] == 256 * MiB
          and near(shared[0]["pss_sum"], 256 * MiB, 0.02),
          f"the region is one shared object: {shared and {k: shared[0][k] for k in ('pids', 'rss_max', 'pss_sum')}}")
    latest = [p["latest"] for p in result["processes"] if p.get("latest")]
    rss = sum(s["classes"]["shm_posix"] for s in latest)
    pss = sum(s["pss"]["shm_posix"] for s in latest)
    check(near(pss, 256 * MiB, 0.02), f"shm_posix over the tree: {mib(rss)} resident in 3 processes, "
          f"{mib(pss)} counted once (PSS)")
    reconciled(result, "pinned_tree")
    kernel_clean(result, "pinned_tree")
    if with_stacks is not result:
        check(False, "call sites in the tree: the capture with stacks did not finish (above)")
        return result, expected
    standin = any(f"StandIn.pin" in " ".join(map(str, f)) for w in workers.values()
                  for s in w["sites"] for f in s["python"])
    for rank, w in sorted(workers.items()):
        size = 128 * MiB if rank == 0 else 256 * MiB
        pin = lines["standin_pin" if standin else "pin"]
        driver_block(w, "pinned_tree.py", pin, size, f"tp-worker-{rank} pin_memory")
        found = sites_at(w, "pinned_tree.py", lines["worker_map"])
        n = sum(n for _, n in found)
        check(near(n, 256 * MiB), f"tp-worker-{rank}: pinned_tree.py:{lines['worker_map']} (worker_map) "
              f"holds {mib(n)}, want 256.0 MiB")
        held = sum(s["bytes"] for s in w["sites"])
        check(held <= w["latest"]["vm_rss"], f"tp-worker-{rank}: its {len(w['sites'])} largest sites hold "
              f"{mib(held)}, no more than its VmRSS {mib(w['latest']['vm_rss'])}")
    found = sites_at(parent, "pinned_tree.py", lines["parent_map"])
    check(near(sum(n for _, n in found), 256 * MiB),
          f"parent: pinned_tree.py:{lines['parent_map']} (parent_map) holds {mib(sum(n for _, n in found))}")
    return result, expected


# ---- 4: the daemon ----------------------------------------------------------

def daemon(out, expected):
    print("\n== 4. the daemon while the tree ran")
    scrapes = [json.loads(line) for line in open(os.path.join(out, "metrics_series.jsonl"))]
    check(len(scrapes) >= 20, f"{len(scrapes)} scrapes, {scrapes[-1]['t'] - scrapes[0]['t']:.0f} s of them"
          if scrapes else "no scrape")
    if not scrapes or not expected:
        return

    def pinned(scrape):
        out = {}
        for name, labels, value in scrape["samples"]:
            if name.startswith("ramwatchd_cuda_pinned_"):
                kind = name.rsplit("_", 2)[1]            # requested or mapped
                out[(labels["group"], labels["how"], kind)] = int(value)
        return out

    want = {}
    for group, ranges in expected.items():
        for r in ranges:
            for kind in ("requested", "mapped"):
                want[(group, r["how"], kind)] = want.get((group, r["how"], kind), 0) + r[kind]
    holding = [s for s in scrapes if {"tp-worker-0", "tp-worker-1"} <= {k[0] for k in pinned(s)}]
    check(holding, f"{len(holding)} scrapes had both workers' pinned series")
    if not holding:
        return
    t0 = scrapes[0]["t"]
    last = holding[-1]
    got = pinned(last)
    print(f"      at {last['t'] - t0:.0f} s (the last scrape while the workers held their memory):")
    for key in sorted(want):
        group, how, kind = key
        check(got.get(key) == want[key], f"ramwatchd_cuda_pinned_{kind}_bytes{{group=\"{group}\",how=\"{how}\"}} "
              f"= {mib(got.get(key, 0))}; capture: {mib(want[key])}")
    extra = {k: v for k, v in got.items() if k not in want}
    check(not extra, f"no other tree group has pinned series ({extra or 'none'})")
    matching = [s for s in holding if all(pinned(s).get(k) == v for k, v in want.items())]
    info(f"scrapes matching the capture: {len(matching)} of the {len(holding)} with both workers, "
         f"from {matching[0]['t'] - t0:.0f} s to {matching[-1]['t'] - t0:.0f} s" if matching else "none matched")
    processes = {labels["group"]: int(v) for name, labels, v in last["samples"] if name == "ramwatchd_processes"}
    check(all(processes.get(g) == 1 for g in ("tp-worker-0", "tp-worker-1", "tree-parent")),
          f"ramwatchd_processes per group: {processes}")
    shm = {labels["name"]: int(v) for name, labels, v in last["samples"] if name == "ramwatchd_shm_object_bytes"}
    users = {labels["name"]: int(v) for name, labels, v in last["samples"]
             if name == "ramwatchd_shm_object_processes"}
    name = "ramwatchd-gpu-tree"
    check(shm.get(name) == 256 * MiB and users.get(name) == 3,
          f"ramwatchd_shm_object_bytes{{name=\"{name}\"}} = {mib(shm.get(name, 0))}, "
          f"ramwatchd_shm_object_processes = {users.get(name)}: the region once, with its 3 processes")
    resident = {(labels["group"], labels["class"]): v for n, labels, v in last["samples"]
                if n == "ramwatchd_resident_bytes" and labels["class"] in ("cuda_pinned", "shm_posix")}
    info("ramwatchd_resident_bytes: " + ", ".join(f"{g}/{c} {mib(v)}" for (g, c), v in sorted(resident.items())))
    for s in (last, scrapes[-1]):
        count = {labels["group"]: int(v) for name, labels, v in s["samples"]
                 if name == "ramwatchd_processes" and labels["group"].startswith("tp-worker")}
        info(f"at {s['t'] - t0:.0f} s: ramwatchd_processes of the worker groups {count or 'none'}")
    after = pinned(scrapes[-1])
    check(not any(k[0].startswith("tp-worker") for k in after),
          f"after the tree exited ({scrapes[-1]['t'] - t0:.0f} s) its groups are gone from the scrape")


def guarded(step, *args):
    """A section that cannot be checked (a file missing, a capture cut short)
    fails with the reason, and the others are still checked."""
    try:
        return step(*args)
    except Exception as err:      # noqa: BLE001 - reported as a failed claim
        check(False, f"{step.__name__}: could not be checked: {type(err).__name__}: {err}")
        return None


def main(out):
    guarded(proof, out)
    _, expected = guarded(tree, out) or (None, {})
    guarded(daemon, out, expected)
    print(f"\n{len(failed)} failed" if failed else "\nall passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else HERE))
