"""Where a capture's cost on page faults goes: the kernel's price for running
any program on a fault, and what ramwatchd's own program adds to it.

One C process touches --size of fresh anonymous memory in 4 KiB pages per
round, on command. Between rounds this script changes what runs on
exceptions:page_fault_user, the only program a capture puts on the fault path:

  off       nothing attached
  empty     a program that returns at once: the floor for any per-fault hook
  untraced  ramwatchd's capture programs, the workload not traced: what every
            other process on the node pays while a capture runs
  traced    ramwatchd's capture programs, the workload traced

Each cycle runs every state once, in a random order. A state's figure is its
median ns per fault against the median of `off`.

Run as root:  .venv/bin/python bench/fault_path.py [--rounds 100] [--json FILE]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BenchError, add_cpu_option, build_c, check_cpu, leave_cpu, on_cpu, size
from ramwatchd.probes import ProbeError, ProbeOptions, Probes, import_bcc

STATES = ("off", "empty", "untraced", "traced")
TRACEPOINT = b"page_fault_user"
PROGRAM = b"raw_tracepoint__page_fault_user"   # bcc's name for RAW_TRACEPOINT_PROBE(page_fault_user)

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t size = strtoull(argv[1], NULL, 10), page = sysconf(_SC_PAGESIZE);
	char cmd;
	printf("ready\n");
	fflush(stdout);
	while (read(0, &cmd, 1) == 1) {
		char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED || madvise(p, size, MADV_NOHUGEPAGE)) {   /* 4 KiB faults only */
			perror("fault loop");
			return 1;
		}
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (size_t i = 0; i < size; i += page)
			((volatile char *)p)[i] = 1;
		clock_gettime(CLOCK_MONOTONIC, &b);
		munmap(p, size);
		printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (size / page));
		fflush(stdout);
	}
	return 0;
}
"""


class FaultLoop:
    """The C workload, pinned to one CPU; round() returns its ns per fault."""

    def __init__(self, exe, size, cpu):
        self.proc = subprocess.Popen([exe, str(size)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, preexec_fn=on_cpu(cpu))
        if self.proc.stdout.readline() != b"ready\n":
            raise BenchError("the fault loop failed to start")
        self.pid = self.proc.pid

    def round(self):
        self.proc.stdin.write(b"t")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the fault loop exited {self.proc.wait()}")
        return float(line)

    def close(self):
        self.proc.kill()
        self.proc.wait()


class FaultPath:
    """What is attached to page_fault_user, switched between rounds."""

    def __init__(self, pid):
        self.pid = pid
        self.capture = Probes(ProbeOptions())   # what `ramwatchd --pid` loads
        self.empty = import_bcc().BPF(text="RAW_TRACEPOINT_PROBE(page_fault_user) { return 0; }")
        self.empty.detach_raw_tracepoint(tp=TRACEPOINT)
        self.attached = self.capture.bpf

    def set(self, state):
        want = {"off": None, "empty": self.empty}.get(state, self.capture.bpf)
        if want is not self.attached:
            if self.attached is not None:
                self.attached.detach_raw_tracepoint(tp=TRACEPOINT)
            if want is not None:
                want.attach_raw_tracepoint(tp=TRACEPOINT, fn_name=PROGRAM)
            self.attached = want
        if state == "traced":
            self.capture.trace(self.pid, (0, 0, 0, 0))
        else:
            self.capture.untrace(self.pid)

    def drain(self):
        """Keep the ring buffer and the fault map from filling, as a capture does."""
        self.capture.poll(0)
        self.capture.drain_fault_samples()


def measure(args):
    if os.geteuid() != 0:
        raise BenchError("must run as root (it loads BPF programs)")
    leave_cpu(args.cpu)
    with tempfile.TemporaryDirectory(prefix="ramwatchd-bench-") as workdir:
        loop = FaultLoop(build_c(LOOP_C, Path(workdir), "loop", args.loop), args.size, args.cpu)
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
    off = statistics.median(ns["off"])
    return {state: {"ns_per_fault": values, "median_ns": statistics.median(values),
                    "added_ns": statistics.median(values) - off,
                    "slowdown_pct": 100 * (statistics.median(values) / off - 1)}
            for state, values in ns.items()}


def report(results):
    print(f"{'state':10} {'ns/fault':>9} {'added':>9} {'slowdown':>9}")
    for state, r in results.items():
        print(f"{state:10} {r['median_ns']:9.1f} {r['added_ns']:+8.1f}  {r['slowdown_pct']:+7.2f} %")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=100, help="cycles through the four states (default 100)")
    p.add_argument("--size", type=size, default=256 << 20, help="memory touched per round (default 256MiB)")
    add_cpu_option(p)
    p.add_argument("--loop", metavar="EXE", help="a fault loop already built from this file's C text, "
                   "for a machine without gcc")
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
