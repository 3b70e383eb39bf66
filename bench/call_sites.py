"""What reading the stacks behind mm calls costs the program that makes them.

A Python process (CALLER below) maps a 2 MiB buffer, writes one byte in it and
unmaps it, --calls times a round, from --depth Python frames deep (a server's
allocations are 20-40 frames down). Between its rounds this script traces it
with one of two capture programs, both loaded throughout:

  off        traced by neither
  calls      a capture's programs without stacks (--no-stacks): each call sent
  stacks     a capture's programs: each call sent with its native stack and
             its Python frames, read from the interpreter's memory

Each cycle runs every state once, in a random order; a state's figure is the
median over cycles of its time per call against `calls` in the same cycle
(stacks: the verdict, budget 3 %) and against `off`. The events are drained
between rounds, as a capture drains them.

Run as root:  .venv/bin/python bench/call_sites.py [--rounds 60] [--json FILE]
"""
import argparse
import json
import os
import random
import statistics
import sys

from common import BenchError, TimedLoop, add_cpu_option, check_cpu, leave_cpu
from ramwatchd.kernel.probes import ProbeError, ProbeOptions, Probes
from ramwatchd.ledger import procfs, python

STATES = ("off", "calls", "stacks")
BUDGET = 0.03

# For each byte read from stdin: --calls times, map 2 MiB, write a byte, unmap;
# print the seconds that took.
CALLER = r"""
import mmap, sys, time
calls, depth = int(sys.argv[1]), int(sys.argv[2])

def rounds(level):
    if level < depth:
        return rounds(level + 1)
    print("ready", flush=True)
    while sys.stdin.buffer.read(1):
        started = time.perf_counter()
        for _ in range(calls):
            buffer = mmap.mmap(-1, 2 << 20)
            buffer[0] = 1
            buffer.close()
        print(time.perf_counter() - started, flush=True)

rounds(0)
"""


class Caller(TimedLoop):
    def __init__(self, calls, depth, cpu):
        super().__init__([sys.executable, "-c", CALLER, str(calls), str(depth)], cpu, "the caller")
        self.calls = calls

    def round(self):
        """Microseconds per call (a map, a write, an unmap)."""
        return self.seconds() * 1e6 / self.calls


class Captures:
    """The two capture programs; set() traces the caller by one, or neither."""

    def __init__(self, pid):
        self.pid = pid
        options = dict(follow_children=False, min_syscall_bytes=1 << 20)
        self.probes = {"calls": Probes(ProbeOptions(**options)),
                       "stacks": Probes(ProbeOptions(**options, stacks=True))}
        interp = python.find_interpreter(procfs.ProcDir(pid))
        self.probes["stacks"].set_python(pid, interp.kernel_layout())

    def set(self, state):
        for name, probes in self.probes.items():
            if name == state:
                probes.trace(self.pid)
            else:
                probes.untrace(self.pid)

    def drain(self):
        """Events read and decoded, as a capture reads them; returns how many."""
        return sum(len(probes.poll(0)) for probes in self.probes.values())

    def close(self):
        for probes in self.probes.values():
            probes.close()


def measure(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (it loads BPF programs)")
    leave_cpu(args.cpu)
    caller = Caller(args.calls, args.depth, args.cpu)
    try:
        captures = Captures(caller.pid)
        try:
            us = {state: [] for state in STATES}
            events = {state: 0 for state in STATES}
            for cycle in range(args.rounds):
                for state in random.sample(STATES, len(STATES)):
                    captures.set(state)
                    us[state].append(caller.round())
                    events[state] += captures.drain()
                if (cycle + 1) % 10 == 0:
                    print(f"[{cycle + 1}/{args.rounds} cycles]", file=sys.stderr, flush=True)
        finally:
            captures.close()
    finally:
        caller.close()
    return us, events


def summarise(us, events, rounds, calls):
    out = {}
    for state, values in us.items():
        out[state] = {"us_per_call": values, "median_us": statistics.median(values),
                      "events_per_call": events[state] / (rounds * calls)}
        for base in ("off", "calls"):
            out[state][f"vs_{base}_pct"] = 100 * statistics.median(
                v / b - 1 for v, b in zip(values, us[base]))
    return out


def report(results):
    print(f"{'state':8} {'us/call':>8} {'vs off':>8} {'vs calls':>9} {'events/call':>12}")
    for state, r in results.items():
        print(f"{state:8} {r['median_us']:8.2f} {r['vs_off_pct']:+7.2f} % {r['vs_calls_pct']:+8.2f} % "
              f"{r['events_per_call']:12.2f}")
    verdict = results["stacks"]["vs_calls_pct"]
    print(f"stacks cost {verdict:+.2f} % a call over a capture without them "
          f"({'within' if verdict <= 100 * BUDGET else 'OVER'} the {BUDGET:.0%} budget)")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30, help="cycles through the states (default 30)")
    p.add_argument("--calls", type=int, default=25000, help="map-write-unmap calls a round, about a second's worth (default 25000)")
    p.add_argument("--depth", type=int, default=30, help="Python frames below the calls (default 30)")
    add_cpu_option(p)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    for name in ("rounds", "calls", "depth"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    check_cpu(p, args)
    return args


def main():
    args = parse_args()
    try:
        us, events = measure(args)
    except (BenchError, ProbeError, python.Unsupported, procfs.ProcessError, OSError) as err:
        print(f"call_sites: {err}", file=sys.stderr)
        return 1
    results = summarise(us, events, args.rounds, args.calls)
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {"rounds": args.rounds, "calls": args.calls, "depth": args.depth,
                                  "cpu": args.cpu}, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
