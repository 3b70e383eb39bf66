"""Where a capture's cost on page faults goes: the kernel's price for running
any program on a fault, and what ramwatchd's own program adds to it.

One C process (common.py's fault workload) touches --size of fresh anonymous
memory in 4 KiB pages per round, on command. Between rounds this script changes what runs on
exceptions:page_fault_user, the only program a capture puts on the fault path:

  off        nothing attached
  empty      a program that returns at once: the floor for any per-fault hook
  untraced   ramwatchd's capture programs, the workload not traced: what every
             other process on the node pays while a capture runs
  traced     ramwatchd's capture programs, the workload traced
  stacks     the same with call sites on (a capture's default): one sampled
             fault in 64 x 64 sends its stacks
  exact-rss  the programs of a capture with --exact-rss, the workload traced:
             kmem:rss_stat as a classic tracepoint joins page_fault_user

Each cycle runs every state once, in a random order. A state's figure is the
median over cycles of its ns per fault against `off` in the same cycle: on a
host whose speed drifts (±15 % over a minute on our GPU machine), comparing
rounds a fraction of a second apart keeps the drift out. The ratio of the
medians is printed beside it.

Run as root:  .venv/bin/python bench/fault_path.py [--rounds 100] [--json FILE]
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from common import (BenchError, TimedLoop, add_cpu_option, add_touch_option, check_cpu, fault_loop,
                    leave_cpu)
from ramwatchd.kernel.probes import ProbeError, ProbeOptions, Probes, import_bcc
from ramwatchd.units import size_arg

STATES = ("off", "empty", "untraced", "traced", "stacks", "exact-rss")
# (raw or not, tracepoint, bcc's name for the program on it)
PAGE_FAULT = (True, b"page_fault_user", b"raw_tracepoint__page_fault_user")
RSS_STAT = (False, b"kmem:rss_stat", b"tracepoint__kmem__rss_stat")

class FaultLoop(TimedLoop):
    """The C workload, pinned to one CPU; round() returns its ns per fault."""

    def __init__(self, exe, size, cpu):
        super().__init__([exe, str(size)], cpu, "the fault loop")
        self.pages = size // os.sysconf("SC_PAGESIZE")

    def round(self):
        return self.seconds() * 1e9 / self.pages


class FaultPath:
    """What runs on the fault path, switched between rounds. Every program set
    stays loaded; only its programs on the fault path come and go."""

    def __init__(self, pid):
        self.pid = pid
        self.capture = Probes(ProbeOptions())                # what `ramwatchd --pid --no-stacks` loads
        self.stacks = Probes(ProbeOptions(stacks=True))      # ... without --no-stacks
        self.exact = Probes(ProbeOptions(exact_rss=True))    # ... with --exact-rss
        empty = import_bcc().BPF(text="RAW_TRACEPOINT_PROBE(page_fault_user) { return 0; }")
        self.hooks = {"off": [], "empty": [(empty, PAGE_FAULT)],
                      "capture": [(self.capture.bpf, PAGE_FAULT)],
                      "stacks": [(self.stacks.bpf, PAGE_FAULT)],
                      "exact": [(self.exact.bpf, PAGE_FAULT), (self.exact.bpf, RSS_STAT)]}
        for name in ("empty", "capture", "stacks", "exact"):
            switch(self.hooks[name], on=False)
        self.attached = "off"

    def set(self, state):
        want, traced = {"off": ("off", None), "empty": ("empty", None), "untraced": ("capture", None),
                        "traced": ("capture", self.capture), "stacks": ("stacks", self.stacks),
                        "exact-rss": ("exact", self.exact)}[state]
        if want != self.attached:
            switch(self.hooks[self.attached], on=False)
            switch(self.hooks[want], on=True)
            self.attached = want
        for probes in (self.capture, self.stacks, self.exact):
            if probes is traced:
                probes.trace(self.pid)
            else:
                probes.untrace(self.pid)

    def drain(self):
        """Keep the ring buffers and the fault maps from filling, as a capture does."""
        for probes in (self.capture, self.stacks, self.exact):
            probes.poll(0)
            probes.drain_fault_samples()


def switch(hooks, on):
    for bpf, (raw, tracepoint, program) in hooks:
        if raw and on:
            bpf.attach_raw_tracepoint(tp=tracepoint, fn_name=program)
        elif raw:
            bpf.detach_raw_tracepoint(tp=tracepoint)
        elif on:
            bpf.attach_tracepoint(tp=tracepoint, fn_name=program)
        else:
            bpf.detach_tracepoint(tp=tracepoint)


def measure(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (it loads BPF programs)")
    leave_cpu(args.cpu)
    with tempfile.TemporaryDirectory(prefix="ramwatchd-bench-") as workdir:
        loop = FaultLoop(fault_loop(Path(workdir), args.touch), args.size, args.cpu)
        try:
            path = FaultPath(loop.pid)
            ns = {state: [] for state in STATES}
            for cycle in range(args.rounds):
                for state in random.sample(STATES, len(STATES)):
                    path.set(state)
                    ns[state].append(loop.round())
                path.drain()
                if (cycle + 1) % 10 == 0:
                    print(f"[{cycle + 1}/{args.rounds} cycles]", file=sys.stderr, flush=True)
        finally:
            loop.close()
    return ns


def summarise(ns):
    off = ns["off"]
    out = {}
    for state, values in ns.items():
        out[state] = {
            "ns_per_fault": values, "median_ns": statistics.median(values),
            "added_ns": statistics.median(v - o for v, o in zip(values, off)),
            "slowdown_pct": 100 * statistics.median(v / o - 1 for v, o in zip(values, off)),
            "ratio_of_medians_pct": 100 * (statistics.median(values) / statistics.median(off) - 1)}
    return out


def report(results):
    print(f"{'state':10} {'ns/fault':>9} {'added':>8} {'slowdown':>9}   ratio of medians")
    for state, r in results.items():
        print(f"{state:10} {r['median_ns']:9.1f} {r['added_ns']:+8.1f} {r['slowdown_pct']:+8.2f} %   "
              f"{r['ratio_of_medians_pct']:+.2f} %")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=100, help="cycles through the states (default 100)")
    p.add_argument("--size", type=size_arg, default=256 << 20, help="memory touched per round (default 256MiB)")
    add_cpu_option(p)
    add_touch_option(p)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    check_cpu(p, args)
    return args


def main():
    args = parse_args()
    try:
        results = summarise(measure(args))
    except (BenchError, ProbeError, OSError) as err:
        print(f"fault_path: {err}", file=sys.stderr)
        return 1
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {"rounds": args.rounds, "size": args.size, "cpu": args.cpu},
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
