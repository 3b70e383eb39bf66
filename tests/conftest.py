"""Shared helpers: every capture test runs the real ramwatchd on the real kernel
against a real workload process (ramwatchd.workloads) whose allocations are known.

A workload holds each state a test checks through looks for 1 s (`sleep:1`):
a look's interval is 20 x its cost, and on a loaded machine that passes 0.3 s.
The program's exit ends the capture, so its last state must be held too."""
import json
import subprocess
import sys
import time

from pathlib import Path

import pytest

MiB = 1 << 20
RAMWATCHD = [sys.executable, "-m", "ramwatchd"]
WORKLOAD = [sys.executable, "-m", "ramwatchd.workloads"]


def run_ramwatchd(args, timeout=120, **kw):
    return subprocess.run(RAMWATCHD + args, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def capture(tmp_path):
    """capture(steps, *options) -> (result dict, completed process) for `ramwatchd run`."""
    def go(steps, *options):
        out = tmp_path / "capture.json"
        proc = run_ramwatchd(["run", "--quiet", "--json", str(out), *options, "--", *WORKLOAD, *steps])
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(out.read_text()), proc
    return go


@pytest.fixture(scope="session")
def driver_dir(tmp_path_factory):
    """A folder holding libcuda.so.1 built from tests/cuda_standin: the CUDA
    driver's host-memory entry points, without a GPU."""
    folder = tmp_path_factory.mktemp("driver")
    source = Path(__file__).parent / "cuda_standin" / "libcuda.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(folder / "libcuda.so.1"), str(source)],
                   check=True)
    return folder


@pytest.fixture
def workload(tmp_path):
    """Start a workload in the background; returns (Popen, ready_file) once it is ready."""
    started = []

    def go(steps):
        ready = tmp_path / f"ready{len(started)}"
        proc = subprocess.Popen(WORKLOAD + [s.replace("READY", str(ready)) for s in steps],
                                stdout=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "workload never got ready"
            time.sleep(0.02)
        return proc
    yield go
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def process(result, pid=None):
    """The root process of a capture, or the one with this pid."""
    procs = result["processes"]
    return procs[0] if pid is None else next(p for p in procs if p["pid"] == pid)


def growth(proc, cls):
    """How far a class rose above its first look, at its highest look."""
    first = proc["history"][0]["classes"][cls]
    return max(h["classes"][cls] for h in proc["history"]) - first


def assert_near(actual, expected, rel=0.05, what=""):
    assert abs(actual - expected) <= rel * expected, \
        f"{what}: {actual / MiB:.1f} MiB, expected {expected / MiB:.1f} MiB within {rel:.0%}"


def assert_reconciled(result):
    """At every look, the classes of every process add up to its VmRSS."""
    for p in result["processes"]:
        check = p["reconciliation"]
        assert check["samples"] > 0, f"pid {p['pid']} was never looked at"
        assert check["failed"] == 0, f"pid {p['pid']}: {check}"
