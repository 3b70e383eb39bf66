"""How much does a ramwatchd capture slow down the program it traces?

Two workloads, each run alternately without and with `ramwatchd --pid` attached
(base, traced, base, traced, ...), timed inside the workload process itself:

  faults   first touch of a private anonymous mapping, one write per 4 KiB page
  weights  a cold read() of a file, 16 MiB at a time, as a model loader does

The verdict is the ratio of the traced runs' median to the base runs' median.

Three things keep the machine's own noise out of that ratio:
  - Each run repeats its workload: an untimed round, then --rounds timed ones,
    and the run's figure is their median (see "Free page reporting" below).
  - The workload runs alone on one CPU (--cpu), as a busy inference process
    has its cores; ramwatchd and this script run on the others (common.py).
  - The weights file is read from an ext4 file system on a RAM block device
    (zram): as cold as a disk for the page cache, but without a disk's
    variance (from pair to pair, -40 % to +40 % on our machines), which hides
    a 2 % effect. It is also the worst case: the faster the read, the larger
    the capture's share. --dir reads from a real disk instead.

Run as root:  .venv/bin/python bench/overhead.py [--pairs 15] [--json FILE]
Budgets are reported, not asserted: exit 0 whenever the measurement succeeded.
"""
import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (BenchError, add_cpu_option, add_touch_option, check_cpu, fault_loop, leave_cpu,
                    on_cpu)
from ramwatchd.units import size_arg

BUDGET_PCT = {"faults": 5.0, "weights": 2.0}
CHUNK = 16 << 20
# Every run, base or traced, says "go" this long after its workload is ready, so
# both follow the same timeline and differ only by the capture.
GO_DELAY_S = 3.0
ATTACH_TIMEOUT_S = 60     # bcc compiles for 1-2 s; far more means it is stuck
RUN_TIMEOUT_S = 300
EXIT_TIMEOUT_S = 60       # ramwatchd polls for the exit every 50 ms and then summarises

# Free page reporting: on a VM, RAM left free for ~2 s goes back to the host
# (virtio-balloon) and costs a host fault when used again. Measured here, a cold
# 1 GiB read takes 0.6 s right after the eviction but 2 s after 3 s idle, and
# first touches vary 2x. That is the host's cost, not the capture's, and it would
# swamp the difference we look for. So every run repeats its workload: an
# untimed round first, then --rounds timed ones, each taking memory that the
# round before it just freed; the run's figure is the median of its rounds.


# ---- the weights workload (this file, run as a child) -----------------------

def read_workload(path, rounds):
    """Per round: drop path from the page cache, then read it, 16 MiB per
    read(), timing only the reads. The file was written with fsync, so the
    eviction drops every page."""
    buf = bytearray(b"\1") * CHUNK   # written now, so the timed reads take no faults on it
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        print("ready", flush=True)
        for _ in range(int(rounds)):
            if sys.stdin.buffer.read(1) != b"g":
                sys.exit(1)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            f.seek(0)
            t0 = time.perf_counter()
            while f.readinto(view):
                pass
            print(f"{time.perf_counter() - t0:.9f}", flush=True)


# ---- setup ------------------------------------------------------------------

def find_ramwatchd():
    beside = Path(sys.executable).parent / "ramwatchd"
    found = str(beside) if beside.is_file() else shutil.which("ramwatchd")
    if not found:
        raise BenchError(f"ramwatchd not found beside {sys.executable} nor on PATH")
    return found


def fs_type(path):
    """The file system type of path, from the longest mount point above it."""
    path = os.path.realpath(path)
    best = ("", "")
    with open("/proc/mounts") as f:
        for line in f:
            mnt, fstype = line.split()[1:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
                best = (mnt, fstype)
    return best[1]


def make_weights_file(path, size):
    """size bytes of incompressible data: one 16 MiB random block repeated."""
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for off in range(0, size, CHUNK):
            f.write(block[:size - off])
        f.flush()
        os.fsync(f.fileno())


class RamDisk:
    """An ext4 file system on a fresh zram device, mounted under workdir;
    undone in full on exit, whatever happened.

    zram, not a loop device over tmpfs: zram copies the data in the reader's
    own context, where a loop device hands every read to a kworker on some
    other CPU. On a VM, waking that CPU from idle costs more than the read, and
    less when ramwatchd happens to keep it awake: traced reads came out 10 %
    faster than the base. Random data does not compress, so zram stores it as
    is and a read is a copy."""

    CONTROL = Path("/sys/class/zram-control")

    def __init__(self, workdir, file_size):
        self.mount = workdir / "weights"
        self.size = file_size
        self.index = None

    def __enter__(self):
        try:
            if not self.CONTROL.is_dir():
                run_tool("modprobe", "zram", "num_devices=0")
            self.index = (self.CONTROL / "hot_add").read_text().strip()
            device = f"/dev/zram{self.index}"
            # Room for ext4's own metadata too; zram only stores what is written.
            Path(f"/sys/block/zram{self.index}/disksize").write_text(str(self.size + self.size // 8 + (128 << 20)))
            run_tool("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", device)
            self.mount.mkdir()
            run_tool("mount", device, str(self.mount))
        except OSError as err:
            self.__exit__()
            raise BenchError(f"could not set up a zram device ({err}): pass --dir to read from a disk") from None
        except BaseException:
            self.__exit__()
            raise
        return self.mount

    def __exit__(self, *_):
        if self.mount.is_mount():
            run_tool("umount", str(self.mount))
        if self.index is not None:
            (self.CONTROL / "hot_remove").write_text(self.index)


def run_tool(*argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise BenchError(f"{argv[0]} not found: the RAM-backed file system needs it (or pass --dir)") from None
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


# ---- one run ----------------------------------------------------------------

def start_capture(ramwatchd, pid, log):
    """Start ramwatchd on pid and return once it says it is tracing.
    It inherits this script's CPUs: all but the workload's."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
    # --duration is only a safety net: the capture ends when pid exits.
    proc = subprocess.Popen([ramwatchd, "--pid", str(pid), "--duration", "3600", "--quiet"],
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    out.close(), err.close()
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(l.startswith("ramwatchd: tracing pid") for l in Path(f"{log}.err").read_text().splitlines()):
            return proc
        if proc.poll() is not None:
            raise BenchError(f"ramwatchd exited {proc.returncode} before tracing: {tail(log)}")
        time.sleep(0.02)
    proc.kill()
    raise BenchError(f"ramwatchd did not attach within {ATTACH_TIMEOUT_S} s: {tail(log)}")


def tail(log):
    text = Path(f"{log}.err").read_text() + Path(f"{log}.out").read_text()
    return " | ".join(text.strip().splitlines()[-3:]) or "(no output)"


def run_once(argv, ramwatchd, log, args):
    """Start the workload on its CPU, attach (or not), say go for each round;
    return the median of its timed rounds in seconds, and how long ramwatchd
    took to attach."""
    work = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=on_cpu(args.cpu))
    cap = None
    try:
        if work.stdout.readline() != b"ready\n":
            raise BenchError(f"workload {argv[0]} failed to start (exit {work.wait()})")
        ready = time.monotonic()
        if ramwatchd:
            cap = start_capture(ramwatchd, work.pid, log)
        attach_s = time.monotonic() - ready
        if attach_s > args.go_delay - 0.5:   # keep it steady for 0.5 s before go
            raise BenchError(f"ramwatchd took {attach_s:.1f} s to attach: raise --go-delay "
                             f"above {attach_s + 0.5:.1f} s so both runs of a pair wait alike")
        time.sleep(ready + args.go_delay - time.monotonic())
        out, _ = work.communicate(b"g" * (1 + args.rounds), timeout=RUN_TIMEOUT_S)
        if work.returncode != 0:
            raise BenchError(f"workload {argv[0]} exited {work.returncode}")
        if cap:
            rc = cap.wait(timeout=EXIT_TIMEOUT_S)
            if rc != 0:
                raise BenchError(f"ramwatchd exited {rc}: {tail(log)}")
        untimed, *timed = map(float, out.split())
        return statistics.median(timed), attach_s
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"timed out after {err.timeout} s: {' '.join(err.cmd)}") from None
    finally:
        for p in (work, cap):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def measure(name, argv, ramwatchd, args, workdir):
    """Warm-up pair (discarded), then args.pairs interleaved base/traced pairs."""
    times = {"base": [], "traced": []}
    total = 2 * (args.pairs + 1)
    for i in range(total):
        mode = "traced" if i % 2 else "base"
        t, attach_s = run_once(argv, ramwatchd if mode == "traced" else None, workdir / f"{name}-{i}", args)
        warmup = i < 2
        if not warmup:
            times[mode].append(t)
        print(f"[{name} {i + 1}/{total}] {mode:6} {t:.4f} s"
              + (f" (attached in {attach_s:.1f} s)" if mode == "traced" else "")
              + (" (warm-up, discarded)" if warmup else ""), file=sys.stderr, flush=True)
    return times


# ---- figures ----------------------------------------------------------------

def summarise(name, times):
    base, traced = times["base"], times["traced"]
    slowdown = statistics.median(traced) / statistics.median(base) - 1
    pairs = sorted(t / b - 1 for b, t in zip(base, traced))
    return {"base_s": base, "traced_s": traced,
            "median_base_s": statistics.median(base), "median_traced_s": statistics.median(traced),
            "slowdown_pct": 100 * slowdown, "median_pair_slowdown_pct": 100 * statistics.median(pairs),
            "pair_slowdown_range_pct": [100 * pairs[0], 100 * pairs[-1]],
            "budget_pct": BUDGET_PCT[name], "within_budget": 100 * slowdown <= BUDGET_PCT[name]}


def report(results):
    for name, r in results.items():
        print(f"{name}:")
        print("  base   " + " ".join(f"{t:.4f}" for t in r["base_s"]))
        print("  traced " + " ".join(f"{t:.4f}" for t in r["traced_s"]))
        print(f"  median base {r['median_base_s']:.4f} s, traced {r['median_traced_s']:.4f} s: "
              f"slowdown {r['slowdown_pct']:+.2f} % (median of pair ratios {r['median_pair_slowdown_pct']:+.2f} %)")
        # The spread says how far this machine's noise lets the verdict be trusted.
        low, high = r["pair_slowdown_range_pct"]
        print(f"  pairs range from {low:+.2f} % to {high:+.2f} %")
    for name, r in results.items():
        verdict = "within budget" if r["within_budget"] else "OVER BUDGET"
        print(f"verdict {name}: {r['slowdown_pct']:+.2f} % vs budget {r['budget_pct']:g} %: {verdict}")


# ---- main -------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=15, help="base/traced pairs per workload (default 15)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per run, after an untimed one; "
                   "a run's figure is their median (default 5)")
    p.add_argument("--fault-size", type=size_arg, default=1 << 30, help="anonymous memory to touch (default 1GiB)")
    p.add_argument("--file-size", type=size_arg, default=1 << 30, help="weights file to read (default 1GiB)")
    p.add_argument("--dir", help="read the weights file from a disk, in this directory (not tmpfs), "
                   "instead of the RAM-backed file system")
    add_cpu_option(p)
    p.add_argument("--go-delay", type=float, default=GO_DELAY_S, metavar="S",
                   help=f"seconds from workload ready to go, in every run (default {GO_DELAY_S:g})")
    add_touch_option(p)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    if args.pairs < 1 or args.rounds < 1:
        p.error("--pairs and --rounds must be at least 1")
    check_cpu(p, args)
    return args


def bench(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (ramwatchd loads BPF programs)")
    ramwatchd = find_ramwatchd()
    if args.dir and fs_type(args.dir) == "tmpfs":
        raise BenchError(f"{args.dir} is tmpfs: a cold read needs a disk")
    if args.dir and shutil.disk_usage(args.dir).free < args.file_size + (1 << 30):
        raise BenchError(f"not enough free space in {args.dir} for a {args.file_size}-byte file")
    leave_cpu(args.cpu)   # ramwatchd inherits it
    workdir = Path(tempfile.mkdtemp(prefix="ramwatchd-bench-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            where = Path(args.dir) if args.dir else stack.enter_context(RamDisk(workdir, args.file_size))
            weights = where / f"ramwatchd-bench-{os.getpid()}.safetensors"  # a name ramwatchd counts as weights
            stack.callback(weights.unlink, missing_ok=True)
            print(f"building the fault workload and a {args.file_size >> 20} MiB file in {where} ...",
                  file=sys.stderr, flush=True)
            touch = fault_loop(workdir, args.touch)
            make_weights_file(weights, args.file_size)
            results = {
                "faults": measure("faults", [touch, str(args.fault_size)], ramwatchd, args, workdir),
                "weights": measure("weights", [sys.executable, __file__, "_read", str(weights), str(1 + args.rounds)],
                                   ramwatchd, args, workdir),
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {name: summarise(name, times) for name, times in results.items()}


def main():
    if sys.argv[1:2] == ["_read"]:
        return read_workload(*sys.argv[2:4])
    args = parse_args()
    try:
        results = bench(args)
        report(results)
        if args.json:
            config = {"pairs": args.pairs, "fault_size": args.fault_size, "file_size": args.file_size,
                      "go_delay_s": args.go_delay, "warmup_pairs": 1,
                      "rounds_per_run": args.rounds, "untimed_rounds_per_run": 1, "workload_cpu": args.cpu,
                      "weights_on": args.dir or "ext4 on zram"}
            with open(args.json, "w") as f:
                json.dump({"config": config, "results": results}, f, indent=1)
    except (BenchError, OSError) as err:
        print(f"overhead: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
