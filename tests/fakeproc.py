"""A fake /proc for the process tracker's tests: one directory per process in
a temporary folder, with the files the tracker reads (stat, status, smaps,
maps, cmdline, environ, cgroup, exe, pagemap, task/TID/children) in the
kernel's own formats, and a kernel and a clock the tests control.

The tracker reads a process only through a directory fd held open
(procfs.ProcDir), so removing a process's folder makes every later read
through that fd fail with ENOENT, as for a real process that exited and was
reaped (a real one answers ESRCH: both mean gone). A new folder under the
same pid with another start time is a reused pid.
"""
import os
import shutil
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

from ramwatchd.ledger import procfs
from ramwatchd.ledger.tracker import Clock

KiB, MiB = 1 << 10, 1 << 20

# stat's flags (field 9), copied from a real /proc
USER_FLAGS = 0x00400000          # a running user process: PF_RANDOMIZE
ZOMBIE_FLAGS = 0x0040804c        # a real zombie's: PF_EXITING among them, no PF_KTHREAD
KTHREAD_FLAGS = 0x00208040       # kthreadd's: PF_KTHREAD (0x00200000) among them


@dataclass
class Mapping:
    """One mapping of the fake process and what of it is resident."""
    start: int
    size: int
    path: str = ""          # "" anonymous, "[heap]", "/usr/lib/libc.so.6"...
    perms: str = "rw-p"
    rss: int = 0
    inode: int = 0

    @property
    def end(self):
        return self.start + self.size

    @property
    def member(self):
        """The status counter its resident pages count in."""
        shmem = ("/dev/shm/", "/dev/zero", "/memfd:", "/SYSV")
        if self.perms[3] == "s" and (not self.path or self.path.startswith(shmem)):
            return "shmem"
        if not self.path or self.path.startswith("["):
            return "anon"
        return "file"


EXE = "/usr/bin/python3.11"


def python_mappings(anon=100 * MiB, heap=6 * MiB):
    """A small Python process: its executable, heap, an anonymous region, libc, stack."""
    return [
        Mapping(0x555555554000, 0x1000, EXE, "r--p", 4 * KiB, 1001),
        Mapping(0x555555555000, 0x200000, EXE, "r-xp", 1536 * KiB, 1001),
        Mapping(0x555556000000, 0x800000, "[heap]", "rw-p", heap),
        Mapping(0x7f0000000000, 512 * MiB, "", "rw-p", anon),
        Mapping(0x7f2000000000, 0x1c0000, "/usr/lib/x86_64-linux-gnu/libc.so.6", "r-xp", 1 * MiB, 2002),
        Mapping(0x7ffd00000000, 0x21000, "[stack]", "rw-p", 32 * KiB),
    ]


def shell_mappings():
    """What a small program exec'd in its place maps."""
    return [
        Mapping(0x560000000000, 0x1000, "/usr/bin/bash", "r--p", 4 * KiB, 3003),
        Mapping(0x560000001000, 0x100000, "/usr/bin/bash", "r-xp", 900 * KiB, 3003),
        Mapping(0x560001000000, 0x400000, "[heap]", "rw-p", 2 * MiB),
        Mapping(0x7ffc00000000, 0x21000, "[stack]", "rw-p", 24 * KiB),
    ]


LIBCUDA = Mapping(0x7f3000000000, 0x2000000, "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06", "r-xp",
                  4 * MiB, 4004)


class FakeProcess:
    """One process's folder, rewritten whole whenever the process changes."""

    def __init__(self, root, pid, start, comm="python3", argv=("python3", "serve.py"), ppid=1,
                 mappings=None, exe=EXE, cgroup="/system.slice/vllm.service", state="S",
                 flags=USER_FLAGS, layout=None):
        self.root, self.pid, self.start = root, pid, start
        self.comm, self.argv, self.ppid, self.exe, self.cgroup = comm, list(argv), ppid, exe, cgroup
        self.state, self.flags = state, flags
        self.mappings = python_mappings() if mappings is None else mappings
        # (start_code, start_stack, arg_start): what changes at every exec
        self.layout = layout or (0x555555555000, 0x7ffd0001f000 + pid % 64 * 16, 0x7ffd0001fa00)
        self.minflt, self.majflt = 21_000, 12
        self.has_mm = True
        self.hwm = 0
        self.rss_values = set()      # every VmRSS its status has shown
        self.dir = os.path.join(root, str(pid))
        self.write()

    # ---- what the process does --------------------------------------------------

    @property
    def vm_rss(self):
        return sum(m.rss for m in self.mappings)

    def set_anon(self, rss):
        """Its anonymous region now holds rss bytes (smaps and status agree)."""
        anon = next(m for m in self.mappings if m.path == "" and m.perms == "rw-p")
        anon.rss = rss
        self.minflt += 100
        self.write()

    def map(self, mapping):
        self.mappings = sorted(self.mappings + [replace(mapping)], key=lambda m: m.start)
        self.write()

    def rename(self, comm):
        """prctl(PR_SET_NAME): comm changes, argv does not."""
        self.comm = comm
        self.write()

    def exec(self, exe="/usr/bin/bash", argv=("bash", "-c", "true"), mappings=None, same_layout=False):
        """execve: a new image, the same pid and start time. Its layout
        (start_code, start_stack, arg_start) is new, unless same_layout: a
        program exec'ing its own binary without ASLR lands where it was."""
        self.exe, self.argv = exe, list(argv)
        self.comm = os.path.basename(exe)[:15]
        self.mappings = shell_mappings() if mappings is None else mappings
        if not same_layout:
            self.layout = (0x560000001000, 0x7ffc0001f000, 0x7ffc0001fc00)
        self.minflt, self.majflt, self.hwm = 150, 0, 0
        self.write()

    def exiting(self):
        """In do_exit between exit_mm and exit_notify: PF_EXITING, no mm any
        more, not a zombie yet."""
        self.flags |= procfs.PF_EXITING
        self.state = "R"
        self._lose_mm()

    def zombie(self):
        """Exited, not yet reaped: stat says Z, status has no Vm*/Rss* lines,
        smaps, maps and cmdline are empty, environ and exe cannot be read
        (a real zombie answers ESRCH and ENOENT)."""
        self.state, self.flags = "Z", ZOMBIE_FLAGS
        self._lose_mm()
        os.unlink(os.path.join(self.dir, "environ"))

    def _lose_mm(self):
        self.has_mm = False
        self.mappings, self.argv = [], []
        self.layout = (0, 0, 0)
        self.write()
        os.unlink(os.path.join(self.dir, "exe"))

    def vanish(self):
        """Exited and reaped: the folder is gone."""
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- its files ----------------------------------------------------------------

    def write(self):
        os.makedirs(os.path.join(self.dir, "task", str(self.pid)), exist_ok=True)
        self.hwm = max(self.hwm, self.vm_rss)
        if self.has_mm:
            self.rss_values.add(self.vm_rss)
        files = {"stat": self.stat_line(), "status": self.status_text(), "smaps": self.smaps_text(),
                 "maps": self.maps_text(), "cmdline": "".join(a + "\0" for a in self.argv),
                 "environ": "" if not self.has_mm else "PATH=/usr/bin:/bin\0HOME=/root\0LANG=C.UTF-8\0",
                 "cgroup": f"0::{self.cgroup}\n", f"task/{self.pid}/children": "",
                 # a regular file: PAGEMAP_SCAN answers ENOTTY, as on a kernel without it
                 "pagemap": ""}
        for name, text in files.items():
            path = os.path.join(self.dir, name)
            with open(path + ".new", "w") as f:
                f.write(text)
            os.replace(path + ".new", path)     # a reader sees the old file or the new one
        link = os.path.join(self.dir, "exe")
        if os.path.lexists(link):
            os.unlink(link)
        if self.exe:                 # a kernel thread's cannot be read
            os.symlink(self.exe, link)

    def stat_line(self):
        """proc(5)'s 52 fields; comm in parentheses, start time field 22."""
        start_code, start_stack, arg_start = self.layout
        mm = self.has_mm
        f = [self.pid, f"({self.comm})", self.state, self.ppid, self.pid, self.pid, 0, -1, self.flags,
             self.minflt, 0, self.majflt, 0, 12, 4, 0, 0, 20, 0, 1, 0, self.start,
             sum(m.size for m in self.mappings), self.vm_rss // 4096, 18446744073709551615,
             start_code, start_code + 0x1c000 if mm else 0, start_stack, 0, 0, 0, 0, 0, 0, 0, 0, 0,
             17, 0, 0, 0, 0, 0, 0,
             start_code + 0x3c000 if mm else 0, start_code + 0x3d000 if mm else 0,
             0x555556000000 if mm else 0, arg_start, arg_start + 20 if mm else 0,
             arg_start + 20 if mm else 0, arg_start + 200 if mm else 0, 0]
        assert len(f) == 52
        return " ".join(str(x) for x in f) + "\n"

    def status_text(self):
        state = {"S": "S (sleeping)", "R": "R (running)", "Z": "Z (zombie)"}[self.state]
        lines = [f"Name:\t{self.comm}", "Umask:\t0022", f"State:\t{state}", f"Tgid:\t{self.pid}",
                 "Ngid:\t0", f"Pid:\t{self.pid}", f"PPid:\t{self.ppid}", "TracerPid:\t0",
                 "Uid:\t0\t0\t0\t0", "Gid:\t0\t0\t0\t0", "FDSize:\t64", "Groups:\t ",
                 f"NStgid:\t{self.pid}", f"NSpid:\t{self.pid}", f"NSpgid:\t{self.pid}",
                 f"NSsid:\t{self.pid}", f"Kthread:\t{int(bool(self.flags & procfs.PF_KTHREAD))}"]
        if self.has_mm:
            member = {"anon": 0, "file": 0, "shmem": 0}
            for m in self.mappings:
                member[m.member] += m.rss
            size = sum(m.size for m in self.mappings)
            kb = lambda n: f"{n >> 10:8d} kB"
            lines += [f"VmPeak:\t{kb(size)}", f"VmSize:\t{kb(size)}", f"VmLck:\t{kb(0)}", f"VmPin:\t{kb(0)}",
                      f"VmHWM:\t{kb(self.hwm)}", f"VmRSS:\t{kb(self.vm_rss)}",
                      f"RssAnon:\t{kb(member['anon'])}", f"RssFile:\t{kb(member['file'])}",
                      f"RssShmem:\t{kb(member['shmem'])}", f"VmData:\t{kb(size // 2)}",
                      f"VmStk:\t{kb(132 * KiB)}", f"VmExe:\t{kb(2 * MiB)}", f"VmLib:\t{kb(4 * MiB)}",
                      f"VmPTE:\t{kb(48 * KiB)}", f"VmSwap:\t{kb(0)}", f"HugetlbPages:\t{kb(0)}",
                      "CoreDumping:\t0", "THP_enabled:\t1"]
        lines += ["Threads:\t1", "SigQ:\t0/96363", "SigPnd:\t0000000000000000",
                  "ShdPnd:\t0000000000000000", "SigBlk:\t0000000000000000",
                  "SigIgn:\t0000000001001000", "SigCgt:\t0000000000000002",
                  "Cpus_allowed_list:\t0-1", "voluntary_ctxt_switches:\t10",
                  "nonvoluntary_ctxt_switches:\t1"]
        return "\n".join(lines) + "\n"

    def _header(self, m):
        dev = "fe:00" if m.inode else "00:00"
        head = f"{m.start:08x}-{m.end:08x} {m.perms} 00000000 {dev} {m.inode}"
        return f"{head:<73}{m.path}" if m.path else head

    def maps_text(self):
        return "".join(self._header(m) + "\n" for m in self.mappings)

    def smaps_text(self):
        out = []
        for m in self.mappings:
            private = m.perms[3] == "p"
            anon = m.rss if m.member == "anon" else 0
            pss = m.rss if private else m.rss // 2
            kb = lambda n: f"{n >> 10:>8} kB"
            out.append(self._header(m) + "\n" + "".join(f"{k + ':':<16}{v}\n" for k, v in [
                ("Size", kb(m.size)), ("KernelPageSize", kb(4096)), ("MMUPageSize", kb(4096)),
                ("Rss", kb(m.rss)), ("Pss", kb(pss)), ("Pss_Dirty", kb(anon)),
                ("Shared_Clean", kb(0 if private else m.rss)), ("Shared_Dirty", kb(0)),
                ("Private_Clean", kb(m.rss - anon if private else 0)),
                ("Private_Dirty", kb(anon if private else 0)), ("Referenced", kb(m.rss)),
                ("Anonymous", kb(anon)), ("KSM", kb(0)), ("LazyFree", kb(0)), ("AnonHugePages", kb(0)),
                ("ShmemPmdMapped", kb(0)), ("FilePmdMapped", kb(0)), ("Shared_Hugetlb", kb(0)),
                ("Private_Hugetlb", kb(0)), ("Swap", kb(0)), ("SwapPss", kb(0)), ("Locked", kb(0)),
                ("THPeligible", "       0"), ("ProtectionKey", "       0")])
                + "VmFlags: rd wr mr mw me ac \n")
        return "".join(out)


class FakeProc:
    """The fake /proc: its root folder and the processes in it."""

    def __init__(self, root):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)

    def spawn(self, pid, start, **kw):
        """A new process at pid; whatever had pid before is gone (a reused pid)."""
        shutil.rmtree(os.path.join(self.root, str(pid)), ignore_errors=True)
        return FakeProcess(self.root, pid, start, **kw)

    def kernel_thread(self, pid, start, comm="kworker/0:1"):
        p = FakeProcess(self.root, pid, start, comm=comm, argv=(), ppid=2, mappings=[],
                        flags=KTHREAD_FLAGS, exe="")
        p.has_mm = False
        p.layout = (0, 0, 0)
        p.write()
        return p


class FakeKernel:
    """What the tracker asks of kernel.probes.Probes, recorded."""

    def __init__(self, exact_rss=False):
        self.options = SimpleNamespace(exact_rss=exact_rss)
        self.calls = []              # (name, argument) in order
        self.cuda_symbols = ["cuMemHostAlloc", "cuMemFreeHost", "cuMemHostRegister_v2"]
        self.allocating = set()      # what busy() answers

    def trace(self, pid):
        self.calls.append(("trace", pid))

    def untrace(self, pid):
        self.calls.append(("untrace", pid))

    def seed_rss(self, pid, members):
        self.calls.append(("seed_rss", pid))

    def drain_fault_samples(self):
        return {}

    def drain_shed_calls(self):
        return {}

    def attach_cuda(self, path):
        self.calls.append(("attach_cuda", path))
        return list(self.cuda_symbols)

    def busy(self):
        """tgids half-way through a call a look would catch half done."""
        return set(self.allocating)

    def called(self, name, arg=None):
        return [a for n, a in self.calls if n == name and (arg is None or a == arg)]


class FakeClock(Clock):
    """Time only the test moves. t is seconds since the start; the kernel's
    CLOCK_MONOTONIC is base_ns + t, so events carry realistic timestamps."""

    def __init__(self):
        self.base_ns = time.monotonic_ns()
        super().__init__(t0=self.base_ns / 1e9)
        self.t = 0.0

    def now(self):
        return self.t

    def ns(self, t=None):
        """CLOCK_MONOTONIC at t (default: now), as the kernel stamps events."""
        return self.base_ns + round((self.t if t is None else t) * 1e9)

    def of_kernel(self, ts_ns):
        return (ts_ns - self.base_ns) / 1e9

    def monotonic_ns(self):
        return self.ns()


def boot_ns_of(start_ticks):
    """A CLOCK_BOOTTIME at fork (events.Fork.child_boot_ns) that /proc shows as start_ticks."""
    return start_ticks * 1_000_000_000 // procfs.CLOCK_TICKS + 1234

