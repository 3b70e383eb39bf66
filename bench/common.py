"""What the benchmarks share: command-line sizes, C workloads, and a CPU of
the workload's own, so that the scheduler moving it around stays out of the
figures. The kernel side of a capture runs in the workload's own context, so
pinning hides none of its cost."""
import argparse
import os
import shutil
import subprocess

from ramwatchd.units import parse_bytes


class BenchError(Exception):
    """The measurement could not be made; the message says why."""


def size(text):
    """argparse type: '1GiB', '256M', '4096'."""
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


def build_c(source, workdir, name, prebuilt=None):
    """Compile source with gcc into workdir/name, or take prebuilt (an
    executable built from the same text, for a machine without gcc)."""
    if prebuilt:
        return prebuilt
    if not shutil.which("gcc"):
        raise BenchError(f"gcc not found: it builds the {name} workload "
                         "(or pass one built elsewhere from this script's C text)")
    src, exe = workdir / f"{name}.c", workdir / name
    src.write_text(source)
    cc = subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        raise BenchError(f"gcc failed: {cc.stderr.strip()}")
    return str(exe)
