"""What the kernel tells: one type per kind of event, each with its own fields.

records.py decodes the ring buffer's records into these; nothing past the
kernel stage sees a raw record.
"""
import enum
import mmap
from dataclasses import dataclass, field

from ..units import fmt_bytes


@dataclass(frozen=True, slots=True)
class Event:
    ts_ns: int      # CLOCK_MONOTONIC
    pid: int        # the process that was running (its tgid)
    tid: int
    comm: str


# ---- mm syscalls ---------------------------------------------------------------

_PROT = [(mmap.PROT_READ, "R"), (mmap.PROT_WRITE, "W"), (mmap.PROT_EXEC, "X")]
_MAP = [(0x01, "SHARED"), (0x02, "PRIVATE"), (0x10, "FIXED"), (0x20, "ANON"),
        (0x4000, "NORESERVE"), (0x8000, "POPULATE"), (0x40000, "HUGETLB"), (0x100000, "FIXED_NOREPLACE")]
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20
MADVICE = {0: "NORMAL", 1: "RANDOM", 2: "SEQUENTIAL", 3: "WILLNEED", 4: "DONTNEED", 8: "FREE",
           9: "REMOVE", 10: "DONTFORK", 11: "DOFORK", 12: "MERGEABLE", 13: "UNMERGEABLE",
           14: "HUGEPAGE", 15: "NOHUGEPAGE", 16: "DONTDUMP", 17: "DODUMP", 18: "WIPEONFORK",
           19: "KEEPONFORK", 20: "COLD", 21: "PAGEOUT", 22: "POPULATE_READ", 23: "POPULATE_WRITE",
           24: "DONTNEED_LOCKED", 25: "COLLAPSE"}


def prot_names(prot):
    return "".join(name if prot & bit else "-" for bit, name in _PROT)


def map_names(flags):
    return "|".join(name for bit, name in _MAP if flags & bit) or hex(flags)


# An mm call under this size comes with its stack with the chance size /
# STACK_SAMPLE_BYTES (bpf/mm_calls.bpf.c): a stack that came stands for that
# many bytes of such calls.
STACK_SAMPLE_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class MmCall(Event):
    """An mm syscall, sent at its exit with its result; with --stacks, the
    Stack the kernel sent with it (paired by the tracker)."""
    ret: int
    stack: object = field(default=None, kw_only=True)

    @property
    def failed(self):
        return -4095 <= self.ret < 0

    @property
    def span(self):
        """The address range (start, end) the call acted on, or None."""
        return None

    @property
    def size(self):
        """Bytes the call acted on: what orders causes by weight."""
        return 0

    @property
    def releases(self):
        """Whether it gives memory back (a look during it sees it half done)."""
        return False

    def describe(self):
        return self.what() + (f" failed ({self.ret})" if self.failed else "")

    def what(self):
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Mmap(MmCall):
    addr: int
    length: int
    prot: int
    flags: int
    fd: int

    @property
    def span(self):
        return None if self.failed else (self.ret, self.ret + self.length)

    @property
    def size(self):
        return self.length

    @property
    def anonymous(self):
        return bool(self.flags & MAP_ANONYMOUS)

    def what(self):
        source = "anonymous" if self.anonymous else f"fd {self.fd}"
        return f"mmap {fmt_bytes(self.length)} {prot_names(self.prot)} {map_names(self.flags)} {source}"


@dataclass(frozen=True, slots=True)
class Munmap(MmCall):
    addr: int
    length: int

    @property
    def span(self):
        return self.addr, self.addr + self.length

    @property
    def size(self):
        return self.length

    @property
    def releases(self):
        return True

    def what(self):
        return f"munmap {fmt_bytes(self.length)}"


@dataclass(frozen=True, slots=True)
class Mremap(MmCall):
    old_addr: int
    old_length: int
    new_length: int
    flags: int

    @property
    def span(self):
        return None if self.failed else (self.ret, self.ret + self.new_length)

    @property
    def size(self):
        return max(self.old_length, self.new_length)

    @property
    def releases(self):
        return True

    def what(self):
        return f"mremap {fmt_bytes(self.old_length)} -> {fmt_bytes(self.new_length)}"


@dataclass(frozen=True, slots=True)
class Brk(MmCall):
    requested: int

    def what(self):
        return "brk"


@dataclass(frozen=True, slots=True)
class Madvise(MmCall):
    addr: int
    length: int
    advice: int

    @property
    def span(self):
        return self.addr, self.addr + self.length

    @property
    def size(self):
        return self.length

    @property
    def releases(self):
        return True

    def what(self):
        return f"madvise {MADVICE.get(self.advice, self.advice)} {fmt_bytes(self.length)}"


@dataclass(frozen=True, slots=True)
class Shmat(MmCall):
    shmid: int
    addr: int
    shmflg: int

    def what(self):
        return f"shmat id {self.shmid}"


@dataclass(frozen=True, slots=True)
class Shmdt(MmCall):
    addr: int

    def what(self):
        return "shmdt"


@dataclass(frozen=True, slots=True)
class MemfdCreate(MmCall):
    flags: int
    name: str

    def what(self):
        return f"memfd_create {self.name!r}"


# ---- the process tree ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fork(Event):
    """pid forked child; the kernel traces it from before its first instruction."""
    child: int
    child_boot_ns: int     # CLOCK_BOOTTIME at the fork: the child's start time


@dataclass(frozen=True, slots=True)
class Exec(Event):
    """pid exec'd filename; comm is already the new program's."""
    old_pid: int
    filename: str


@dataclass(frozen=True, slots=True)
class Exit(Event):
    """pid exited. With --exact-rss, the peak the kernel kept (else 0)."""
    peak: int
    peak_ns: int
    peak_rss: tuple        # (file, anon, swap, shmem) at the peak


@dataclass(frozen=True, slots=True)
class Rename(Event):
    """Process `renamed` took the name newcomm (prctl or /proc/PID/comm)."""
    renamed: int
    newcomm: str


@dataclass(frozen=True, slots=True)
class OomVictim(Event):
    victim: int
    victim_comm: str
    anon: int
    file: int
    shmem: int


# ---- RSS, marks, CUDA ----------------------------------------------------------

FILE, ANON, SWAP, SHMEM = range(4)        # rss_stat's members
RESIDENT_MEMBERS = (1 << FILE) | (1 << ANON) | (1 << SHMEM)


@dataclass(frozen=True, slots=True)
class RssStep(Event):
    """pid's RSS moved. rss[m] is exact where bit m of known is set (only with
    --exact-rss); the other members must be read from /proc."""
    rss: tuple
    known: int

    @property
    def exact(self):
        return self.known & RESIDENT_MEMBERS == RESIDENT_MEMBERS


@dataclass(frozen=True, slots=True)
class Output(Event):
    """pid wrote `length` bytes to fd 1 or 2; data is their start."""
    fd: int
    length: int
    data: bytes

    @property
    def whole(self):
        return len(self.data) >= self.length


class StackStatus(enum.IntEnum):
    OK = 0
    NO_PYTHON = 1        # no interpreter known for the process
    NO_THREAD = 2        # the thread is not one of the interpreter's (a C thread)
    UNREADABLE = 3       # the interpreter's memory could not be read
    DEEPER = 4           # more frames than were kept


@dataclass(frozen=True, slots=True)
class Stack(Event):
    """The stacks of thread `tid`: behind the mm call it sends next
    (fault_addr 0), or behind a sampled page fault at fault_addr."""
    fault_addr: int
    native: tuple        # return addresses, innermost first (NATIVE_FRAMES at most)
    status: StackStatus
    frames: tuple        # ((code object, instruction address), ...), innermost first


@dataclass(frozen=True, slots=True)
class Mark(Event):
    """madvise(name, 0, MADV_NORMAL): the program named a phase."""
    name: str


class CudaCallKind(enum.IntEnum):
    ALLOC = 0
    REGISTER = 1
    UNREGISTER = 2
    FREE = 3


@dataclass(frozen=True, slots=True)
class CudaCall(Event):
    """A return from one of the CUDA driver's host-memory entry points."""
    call: CudaCallKind
    symbol: str
    addr: int          # allocations: the address the driver returned
    size: int
    flags: int
    caller: int        # return address: the library that called the driver
    result: int        # CUresult

    @property
    def failed(self):
        return self.result != 0

    @property
    def starts_range(self):
        return self.call in (CudaCallKind.ALLOC, CudaCallKind.REGISTER)

    def describe(self):
        if self.starts_range:
            what = f"{self.symbol} {fmt_bytes(self.size)}" + (f" flags {self.flags:#x}" if self.flags else "")
        else:
            what = f"{self.symbol} {self.addr:#x}"
        return what + (f" failed ({self.result})" if self.failed else "")
