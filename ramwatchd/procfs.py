"""The kernel's own account of a process, read from /proc: the truth the ledger
reconciles against. Every reader raises ProcessGone when the process has exited."""
import ctypes
import os
import resource
from dataclasses import dataclass

PROC = "/proc"
PAGE_BYTES = resource.getpagesize()
_libc = ctypes.CDLL(None, use_errno=True)


class ProcessGone(Exception):
    """The process exited (or never existed) while we were reading it."""


class ProcessHidden(ProcessGone):
    """The process exists but its /proc files may not be read (another user
    namespace, a hardened /proc): for ramwatchd it might as well be gone."""


@dataclass
class Vma:
    """One line of /proc/PID/smaps: a mapping and what of it is resident."""
    start: int
    end: int
    perms: str
    offset: int
    dev: tuple       # (major, minor)
    inode: int
    path: str        # "" for anonymous, "[heap]", "/dev/shm/x", "/x (deleted)"...
    rss: int = 0
    pss: int = 0
    anonymous: int = 0
    swap: int = 0

    @property
    def size(self):
        return self.end - self.start

    @property
    def shared(self):
        return self.perms[3] == "s"

    @property
    def file_path(self):
        """The path without the kernel's ' (deleted)' suffix."""
        return self.path[:-10] if self.path.endswith(" (deleted)") else self.path


# smaps fields we keep, in bytes, and the Vma attribute each fills.
_FIELDS = {b"Rss:": "rss", b"Pss:": "pss", b"Anonymous:": "anonymous", b"Swap:": "swap"}


def _read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(path) from None
    except PermissionError:
        raise ProcessHidden(path) from None


def read_smaps(pid):
    """All mappings of pid with their resident bytes, in address order."""
    vmas = []
    for line in _read(f"{PROC}/{pid}/smaps").splitlines():
        head = line.split(None, 1)[0] if line else b""
        if head in _FIELDS:
            setattr(vmas[-1], _FIELDS[head], int(line.split()[1]) << 10)
        elif b"-" in head and not head.endswith(b":"):
            vmas.append(_parse_header(line))
    return vmas


def read_maps(pid):
    """[(start, end, path)] from /proc/PID/maps: the layout, without smaps' cost."""
    out = []
    for line in _read(f"{PROC}/{pid}/maps").splitlines():
        parts = line.split(None, 5)
        start, end = parts[0].split(b"-")
        out.append((int(start, 16), int(end, 16),
                    parts[5].decode(errors="replace") if len(parts) > 5 else ""))
    return out


def _parse_header(line):
    parts = line.split(None, 5)
    start, end = parts[0].split(b"-")
    major, minor = parts[3].split(b":")
    path = parts[5].decode(errors="replace") if len(parts) > 5 else ""
    return Vma(int(start, 16), int(end, 16), parts[1].decode(), int(parts[2], 16),
               (int(major, 16), int(minor, 16)), int(parts[4]), path.rstrip("\n"))


@dataclass
class Status:
    """The lines of /proc/PID/status ramwatchd needs, in bytes."""
    name: str
    ppid: int
    tgid: int
    vm_rss: int = 0
    rss_anon: int = 0
    rss_file: int = 0
    rss_shmem: int = 0
    vm_swap: int = 0
    vm_hwm: int = 0
    is_kernel_thread: bool = False

    @property
    def rss_members(self):
        """(file, anon, swap, shmem), the order of the kernel's rss_stat members."""
        return (self.rss_file, self.rss_anon, self.vm_swap, self.rss_shmem)


_STATUS_BYTES = {"VmRSS": "vm_rss", "RssAnon": "rss_anon", "RssFile": "rss_file",
                 "RssShmem": "rss_shmem", "VmSwap": "vm_swap", "VmHWM": "vm_hwm"}


def read_status(pid):
    fields = {}
    for line in _read(f"{PROC}/{pid}/status", "r").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    st = Status(name=fields.get("Name", "?"), ppid=int(fields.get("PPid", 0)),
                tgid=int(fields.get("Tgid", pid)))
    for key, attr in _STATUS_BYTES.items():
        if key in fields:
            setattr(st, attr, int(fields[key].split()[0]) << 10)
    # Kernel threads have no mm, so status carries no Vm* lines at all.
    st.is_kernel_thread = "VmRSS" not in fields
    return st


def read_cmdline(pid):
    raw = _read(f"{PROC}/{pid}/cmdline")
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)


PF_EXITING = 0x4


def is_exiting(pid):
    """True once the process has begun to exit: its mappings are being torn down."""
    raw = _read(f"{PROC}/{pid}/stat")
    fields = raw[raw.rindex(b")") + 2:].split()
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)


def read_environ(pid):
    raw = _read(f"{PROC}/{pid}/environ")
    return dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw.split(b"\0") if b"=" in kv)


def read_fault_counts(pid):
    """(minor, major) page faults of the whole process so far, from /proc/PID/stat."""
    raw = _read(f"{PROC}/{pid}/stat")
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[7]), int(fields[9])


def children_of(pid):
    """Direct children of every thread of pid."""
    kids = set()
    try:
        tasks = os.listdir(f"{PROC}/{pid}/task")
    except FileNotFoundError:
        raise ProcessGone(pid) from None
    for tid in tasks:
        try:
            kids.update(int(c) for c in _read(f"{PROC}/{pid}/task/{tid}/children").split())
        except ProcessGone:
            continue
    return kids


def descendants_of(pid):
    """Every living descendant of pid, parents before children."""
    out, todo = [], [pid]
    while todo:
        try:
            kids = sorted(children_of(todo.pop()))
        except ProcessGone:
            continue
        out.extend(kids)
        todo.extend(kids)
    return out


_CACHESTAT = 451   # the same number on every architecture (Linux 6.5+)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


def page_cache_bytes(path):
    """Bytes of the file now in the page cache (cachestat(2)), or None if the
    file is gone or the kernel lacks cachestat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = _Cachestat()
        rc = _libc.syscall(_CACHESTAT, fd, ctypes.byref(_CachestatRange(0, 0)), ctypes.byref(stat), 0)
        return stat.nr_cache * PAGE_BYTES if rc == 0 else None
    finally:
        os.close(fd)


def open_files(pid):
    """{(dev, inode): path} of the regular files pid has open."""
    out = {}
    try:
        fds = os.listdir(f"{PROC}/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return out
    for fd in fds:
        try:
            path = os.readlink(f"{PROC}/{pid}/fd/{fd}")
            st = os.stat(f"{PROC}/{pid}/fd/{fd}")
        except OSError:
            continue
        if path.startswith("/"):
            out[(st.st_dev, st.st_ino)] = path
    return out


# ---- for the node-wide daemon -------------------------------------------------

def list_pids():
    return [int(d) for d in os.listdir(PROC) if d.isdigit()]


def read_exe(pid):
    try:
        return os.readlink(f"{PROC}/{pid}/exe")
    except FileNotFoundError:
        raise ProcessGone(pid) from None
    except OSError:
        return ""


def read_cgroup(pid):
    """The process's memory cgroup path: the v2 unified one, else v1's memory."""
    unified = ""
    for line in _read(f"{PROC}/{pid}/cgroup", "r").splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            unified = path
        elif "memory" in controllers.split(","):
            return path
    return unified


CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_memory(path):
    """(anon, file, shmem) bytes charged to a cgroup, from memory.stat, or None."""
    for stat_file, keys in ((f"{CGROUP_ROOT}{path}/memory.stat", ("anon", "file", "shmem")),
                            (f"{CGROUP_ROOT}/memory{path}/memory.stat", ("rss", "cache", "shmem"))):
        try:
            with open(stat_file) as f:
                fields = dict(line.split() for line in f)
        except OSError:
            continue
        return tuple(int(fields.get(k, 0)) for k in keys)
    return None


def node_meminfo():
    """/proc/meminfo in bytes."""
    out = {}
    for line in _read(f"{PROC}/meminfo", "r").splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0]) << 10
    return out


def shm_objects(root="/dev/shm"):
    """{(dev, inode): (name, resident bytes)} of the files in /dev/shm."""
    out = {}
    try:
        entries = os.scandir(root)
    except OSError:
        return out
    with entries:
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.is_file(follow_symlinks=False):
                out[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = (e.name, st.st_blocks * 512)
    return out
