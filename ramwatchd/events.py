"""Stage 2: records from the kernel's ring buffer, decoded into named events.

The C side is bpf/ramwatchd.h; Event mirrors `struct event` field for field.
"""
import ctypes
import enum
import mmap
from dataclasses import dataclass

from .units import fmt_bytes


class Kind(enum.IntEnum):
    MMAP = 1
    MUNMAP = 2
    MREMAP = 3
    BRK = 4
    MADVISE = 5
    SHMAT = 6
    SHMDT = 7
    MEMFD_CREATE = 8
    FORK = 9
    EXEC = 10
    EXIT = 11
    OOM_VICTIM = 12
    RSS_STEP = 13
    MARK = 14
    CUDA_ALLOC = 15
    CUDA_REGISTER = 16
    CUDA_UNREGISTER = 17
    CUDA_FREE = 18


CUDA_CALLS = {Kind.CUDA_ALLOC, Kind.CUDA_REGISTER, Kind.CUDA_UNREGISTER, Kind.CUDA_FREE}
# The driver's entry points, in the order of bpf/ramwatchd.h; an event's fd is the index.
CUDA_SYMBOLS = ("cuMemHostAlloc", "cuMemAllocHost", "cuMemAllocHost_v2", "cuMemHostRegister",
                "cuMemHostRegister_v2", "cuMemHostUnregister", "cuMemFreeHost")
MM_SYSCALLS = {Kind.MMAP, Kind.MUNMAP, Kind.MREMAP, Kind.BRK, Kind.MADVISE, Kind.SHMAT,
               Kind.SHMDT, Kind.MEMFD_CREATE}
FILE, ANON, _SWAP, SHMEM = range(4)  # rss_stat members (swap is not resident)


class Event(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("fd", ctypes.c_int32),
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("prot", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("ret", ctypes.c_int64),
        ("rss", ctypes.c_uint64 * 4),
        ("comm", ctypes.c_char * 16),
        ("name", ctypes.c_char * 64),
    ]


_PROT = [(mmap.PROT_READ, "R"), (mmap.PROT_WRITE, "W"), (mmap.PROT_EXEC, "X")]
_MAP = [(0x01, "SHARED"), (0x02, "PRIVATE"), (0x10, "FIXED"), (0x20, "ANON"),
        (0x4000, "NORESERVE"), (0x8000, "POPULATE"), (0x40000, "HUGETLB"), (0x100000, "FIXED_NOREPLACE")]
MADVICE = {0: "NORMAL", 1: "RANDOM", 2: "SEQUENTIAL", 3: "WILLNEED", 4: "DONTNEED", 8: "FREE",
           9: "REMOVE", 10: "DONTFORK", 11: "DOFORK", 12: "MERGEABLE", 13: "UNMERGEABLE",
           14: "HUGEPAGE", 15: "NOHUGEPAGE", 16: "DONTDUMP", 17: "DODUMP", 18: "WIPEONFORK",
           19: "KEEPONFORK", 20: "COLD", 21: "PAGEOUT", 22: "POPULATE_READ", 23: "POPULATE_WRITE",
           24: "DONTNEED_LOCKED", 25: "COLLAPSE"}
MAP_ANONYMOUS = 0x20


def prot_names(prot):
    return "".join(name if prot & bit else "-" for bit, name in _PROT)


def map_names(flags):
    return "|".join(name for bit, name in _MAP if flags & bit) or hex(flags)


@dataclass
class MemEvent:
    """One decoded kernel event. Field meaning by kind is in bpf/ramwatchd.bpf.c."""
    kind: Kind
    ts_ns: int
    pid: int
    tid: int
    comm: str
    addr: int = 0
    length: int = 0
    prot: int = 0
    flags: int = 0
    fd: int = -1
    ret: int = 0
    rss: tuple = (0, 0, 0, 0)
    name: str = ""

    @property
    def failed(self):
        if self.kind in CUDA_CALLS:
            return self.ret != 0   # a CUresult
        return self.kind in MM_SYSCALLS and -4095 <= self.ret < 0

    @property
    def caller(self):
        """For a CUDA call: the return address in the library that made it."""
        return self.prot if self.kind in CUDA_CALLS else 0

    @property
    def symbol(self):
        return CUDA_SYMBOLS[self.fd] if self.kind in CUDA_CALLS else ""

    @property
    def rss_total(self):
        return self.rss[FILE] + self.rss[ANON] + self.rss[SHMEM]

    @property
    def span(self):
        """The address range (start, end) this syscall acted on, if any."""
        if self.kind == Kind.MMAP and not self.failed:
            return self.ret, self.ret + self.length
        if self.kind in (Kind.MUNMAP, Kind.MADVISE):
            return self.addr, self.addr + self.length
        if self.kind == Kind.MREMAP and not self.failed:
            return self.ret, self.ret + self.length
        return None

    def describe(self):
        """A short, human description of a syscall event."""
        k = self.kind
        if k == Kind.MMAP:
            src = "anonymous" if self.flags & MAP_ANONYMOUS else f"fd {self.fd}"
            what = f"mmap {fmt_bytes(self.length)} {prot_names(self.prot)} {map_names(self.flags)} {src}"
        elif k == Kind.MUNMAP:
            what = f"munmap {fmt_bytes(self.length)}"
        elif k == Kind.MREMAP:
            what = f"mremap {fmt_bytes(self.prot)} -> {fmt_bytes(self.length)}"
        elif k == Kind.BRK:
            what = "brk"
        elif k == Kind.MADVISE:
            what = f"madvise {MADVICE.get(self.flags, self.flags)} {fmt_bytes(self.length)}"
        elif k == Kind.SHMAT:
            what = f"shmat id {self.fd}"
        elif k == Kind.SHMDT:
            what = "shmdt"
        elif k == Kind.MEMFD_CREATE:
            what = f"memfd_create {self.name!r}"
        elif k in (Kind.CUDA_ALLOC, Kind.CUDA_REGISTER):
            what = f"{self.symbol} {fmt_bytes(self.length)}" + (f" flags {self.flags:#x}" if self.flags else "")
        elif k in (Kind.CUDA_UNREGISTER, Kind.CUDA_FREE):
            what = f"{self.symbol} {self.addr:#x}"
        else:
            what = k.name.lower()
        return what + (f" failed ({self.ret})" if self.failed else "")



def decode(raw):
    """Ring-buffer bytes (a ctypes pointer from bcc) -> MemEvent."""
    e = ctypes.cast(raw, ctypes.POINTER(Event)).contents
    return MemEvent(
        kind=Kind(e.kind), ts_ns=e.ts_ns, pid=e.tgid, tid=e.tid,
        comm=e.comm.decode(errors="replace"), addr=e.addr, length=e.len, prot=e.prot,
        flags=e.flags, fd=e.fd, ret=e.ret, rss=tuple(e.rss),
        name=e.name.decode(errors="replace"))
