"""What the benchmarks share: C workloads, command-line options, and a CPU of
the workload's own, so that the scheduler moving it around stays out of the
figures. The kernel side of a capture runs in the workload's own context, so
pinning hides none of its cost."""
import os
import shutil
import subprocess

# The fault workload of both benchmarks. For each byte read from stdin: map
# SIZE bytes of fresh private anonymous memory, touch one byte per 4 KiB page,
# unmap it, and print the seconds the touching took. C, not Python: a Python
# loop of 262144 writes costs about as much as the faults themselves and would
# dilute the overhead, and memset would write every byte instead of one per page.
FAULT_LOOP_C = r"""
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
		printf("%.9f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
		fflush(stdout);
	}
	return 0;
}
"""


class BenchError(Exception):
    """The measurement could not be made; the message says why."""


class TimedLoop:
    """A workload process pinned to one CPU that runs one timed round each
    time it reads a byte, and prints the round's seconds."""

    def __init__(self, argv, cpu, what):
        self.what = what
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=on_cpu(cpu))
        if self.proc.stdout.readline() != b"ready\n":
            raise BenchError(f"{what} failed to start")
        self.pid = self.proc.pid

    def seconds(self):
        self.proc.stdin.write(b"t")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.what} exited {self.proc.wait()}")
        return float(line)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def add_cpu_option(parser):
    parser.add_argument("--cpu", type=int, default=os.cpu_count() - 1,
                        help="the CPU the workload runs on, alone; ramwatchd and this script run "
                        "on the others (default: the last, %(default)s; -1: anywhere)")


def check_cpu(parser, args):
    """args.cpu becomes None where pinning is off or impossible."""
    usable = os.sched_getaffinity(0)
    if args.cpu == -1 or len(usable) < 2:
        args.cpu = None
    elif args.cpu not in usable:
        parser.error(f"--cpu {args.cpu} is not one of this process's CPUs {sorted(usable)}")


def leave_cpu(cpu):
    """Keep this process, and what it starts from now on, off the workload's CPU."""
    if cpu is not None:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {cpu})


def on_cpu(cpu):
    """A preexec_fn that puts the child on cpu alone (None: anywhere)."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def fault_loop(workdir, prebuilt=None):
    """The fault workload's executable: built with gcc into workdir, or
    prebuilt (built elsewhere from FAULT_LOOP_C, for a machine without gcc)."""
    if prebuilt:
        return prebuilt
    if not shutil.which("gcc"):
        raise BenchError("gcc not found: it builds the fault workload "
                         "(or pass --touch with one built elsewhere from bench/common.py's C text)")
    src, exe = workdir / "touch.c", workdir / "touch"
    src.write_text(FAULT_LOOP_C)
    cc = subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        raise BenchError(f"gcc failed: {cc.stderr.strip()}")
    return str(exe)


def add_touch_option(parser):
    parser.add_argument("--touch", metavar="EXE", help="the fault workload already built from "
                        "bench/common.py's C text, for a machine without gcc")
