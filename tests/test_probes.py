"""The kernel side on its own: what the BPF programs count for real processes."""
import mmap
import time
from pathlib import Path

from conftest import MiB
from ramwatchd.kernel.events import RssStep
from ramwatchd.kernel.probes import TRACED_SLOTS, ProbeOptions, Probes

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())


def free_pid_pair():
    """Two unused pids that share one slot: pid and pid + TRACED_SLOTS, both
    below pid_max (32768 by default, so the pair must start low)."""
    for pid in range(1000, PID_MAX - TRACED_SLOTS - 1):
        if not any(Path(f"/proc/{p}").exists() for p in (pid, pid + TRACED_SLOTS)):
            return pid, pid + TRACED_SLOTS
    raise AssertionError("no two free pids share a slot")


def start_on_pids(workload, steps, pids):
    """Start one workload per pid, each on its pid: the kernel gives the next
    process ns_last_pid + 1, unless another process forks in between (then
    retry on a fresh pair)."""
    for _ in range(5):
        procs = []
        for pid, step in zip(pids, steps):
            NS_LAST_PID.write_text(str(pid - 1))
            procs.append(workload(step))
        if [proc.pid for proc in procs] == list(pids):
            return procs
        for proc in procs:
            proc.kill()
            proc.wait()
        pids = free_pid_pair()
    raise AssertionError(f"could not start processes on pids {pids}")


def test_a_process_whose_slot_is_taken_is_still_traced(workload, tmp_path):
    # Two traced processes whose tgids share one slot of the array: the second
    # lives in the hash, and its faults must count as fully as the first's.
    probes = Probes(ProbeOptions())
    go, size = tmp_path / "go", 64 * MiB

    def steps(name):   # ready, then on go touch size bytes, say so, and hold them
        return ["ready:READY", f"await:{go}", f"anon:{size}", f"ready:{tmp_path / name}", "sleep:30"]

    first, second = start_on_pids(workload, [steps("first"), steps("second")], free_pid_pair())
    for proc in (first, second):
        probes.trace(proc.pid)

    go.touch()
    deadline = time.monotonic() + 30
    while not ((tmp_path / "first").exists() and (tmp_path / "second").exists()):
        assert time.monotonic() < deadline, "workloads never finished touching"
        time.sleep(0.05)
    steps_seen = {ev.pid for ev in probes.poll(100) if type(ev) is RssStep}
    faults = {}
    for (pid, _region), n in probes.drain_fault_samples().items():
        faults[pid] = faults.get(pid, 0) + n
    probes.close()

    pages = size // mmap.PAGESIZE
    for proc in (first, second):
        assert proc.pid in steps_seen, f"no RSS step for pid {proc.pid}"
        assert faults.get(proc.pid, 0) >= 0.95 * pages, (proc.pid, faults, pages)
