"""One watched process, as the tracker knows it, and the news the tracker
reports about processes to the drivers.

A Process is one life: (pid, start time). A pid reused by a newer process is
another Process, which inherits nothing from the old one.
"""
from dataclasses import dataclass, field

from .pinned import PinnedTable
from .regions import Regions
from .rss import RssSeries
from .sites import SiteBook

ATTACHED, FORKED, DISCOVERED = "attached", "forked", "discovered"


@dataclass(eq=False)
class Process:
    pid: int
    start: int                 # start time in clock ticks since boot: with pid, the identity
    ppid: int
    parent: object             # the parent's Process if it is tracked, else None
    comm: str
    cmdline: str
    first_seen: float
    origin: str                # ATTACHED (there when a capture began), FORKED, DISCOVERED
    exe: str = ""
    names_read: bool = True    # cmdline and exe are its current program's
    cgroup: str = ""
    exited_at: float = None
    vanished_at: float = None  # when a read found it gone, before its exit event came
    ended_how: str = ""        # exited (the kernel said so), gone (found missing), denied, unreadable
    image_started: float = 0.0 # when its program started: first seen, or its last exec
    execs: list = field(default_factory=list)        # (t, filename)
    renames: list = field(default_factory=list)      # (t, old comm, new comm)
    rss: RssSeries = field(default_factory=RssSeries)
    vm_hwm: int = 0            # the kernel's own high-water mark of its RSS, as last read
    # looks at smaps
    baseline: object = None    # the first look, for a process there at attach
    latest: object = None      # the last look; None again after an exec
    largest: object = None     # the look with the most resident bytes
    history: list = field(default_factory=list)      # (t, vm_rss, classes) per look
    looks: int = 0
    read_costs: list = field(default_factory=list)   # seconds the last few looks took
    reconciliation: dict = field(default_factory=lambda: {"samples": 0, "failed": 0, "worst_drift": 0})
    # when to look
    dirty: bool = True
    moved_at: float = None     # the kernel's last report that its memory moved
    last_read: float = -1e9
    last_status: float = -1e9
    settle_at: float = None
    torn_looks: int = 0        # looks in a row a call ran through that a look catches half done
    half_done_ns: int = 0      # when the last such call ended (a release, a CUDA allocation)
    # why it changed
    calls: list = field(default_factory=list)        # mm calls since the last look
    shed: list = field(default_factory=lambda: [0, 0])   # calls, bytes counted in the kernel
    faults_at_start: tuple = None                    # (minor, major) at the first look
    faults: tuple = (0, 0)                           # since then
    pending_faults: dict = field(default_factory=dict)   # region -> sampled faults, since the last look
    fault_classes: dict = field(default_factory=dict)    # class -> sampled faults, attributed
    pinned: PinnedTable = field(default_factory=PinnedTable)
    regions: Regions = field(default_factory=Regions)   # the ranges its mm calls made
    rss_at_measure: int = -1   # its RSS when its large ranges were last measured
    output_targets: dict = field(default_factory=dict)   # fd -> what it writes to (1 and 2)
    python: object = None      # its python.Interpreter, once found (with --stacks)
    python_tries: int = 0
    python_decided_at: float = None   # when it was found, or refused
    python_asked_at: float = -1e9
    sites: SiteBook = field(default_factory=SiteBook)   # the code behind its growth
    driver_checked: bool = False   # its maps were searched for the CUDA driver since its exec
    maps_searched_at: float = -1e9
    watched: bool = True           # the daemon looks only at processes in a group
    handle: object = None          # its procfs.ProcDir while it is open

    @property
    def key(self):
        return (self.pid, self.start)

    @property
    def alive(self):
        return self.exited_at is None

    @property
    def name(self):
        return f"{self.comm} ({self.pid})"


# ---- news: what the tracker tells the drivers ---------------------------------

@dataclass
class Started:
    process: Process


@dataclass
class Execed:
    process: Process
    filename: str


@dataclass
class Renamed:
    """comm or cmdline changed: prctl(PR_SET_NAME), or an argv rewrite."""
    process: Process
    old_comm: str
    old_cmdline: str


@dataclass
class Ended:
    process: Process


@dataclass
class Change:
    """One mapped object whose resident bytes moved between two looks."""
    cls: str
    name: str
    delta: int
    rss_after: int
    cause: str          # the calls and faults that explain it, or ""
    caused_at: float    # when the largest such call was made, or None


@dataclass
class Looked:
    process: Process
    snapshot: object
    changes: list       # [Change]: empty on a process's first look, and after an exec


@dataclass
class RegionEnded:
    """A large range its mm calls made was unmapped (or the process execd or
    exited): its life and its resident bytes at their highest."""
    process: Process
    region: object      # regions.Region


@dataclass
class StacksUnreadable:
    """The process runs a Python whose stacks cannot be read: native frames only."""
    process: Process
    reason: str


@dataclass
class SpikeSeen:
    process: Process
    spike: object


@dataclass
class PinnedCall:
    process: Process
    call: object        # kernel.events.CudaCall
    caller: str         # the library that called the driver
    pinned: object      # the PinnedRange made or ended, or None


@dataclass
class DriverProbed:
    process: Process    # the process that mapped it, or None (found before the start)
    path: str
    symbols: list


@dataclass
class CallsShed:
    process: Process
    calls: int
    bytes: int


@dataclass
class OomKill:
    victim: Process     # None if not watched
    event: object       # kernel.events.OomVictim
