"""The kernel's own account of a process, read from /proc: the truth the ledger
reconciles against.

A process is reached through a ProcDir: its /proc/PID directory, held open.
Every read goes through that descriptor, so it reads this process or fails,
even after the pid has been given to another one. OSError is translated in one
place (ProcDir.read) into what happened: NoSuchProcess, AccessDenied, or,
where a process has exited but not been reaped, ZombieProcess.
"""
import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass

PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PF_EXITING = 0x4
PF_KTHREAD = 0x00200000


class ProcessError(Exception):
    """A process's /proc could not be read; the subclass says why."""

    def __init__(self, pid, what):
        super().__init__(f"pid {pid}: {what}")
        self.pid = pid


class NoSuchProcess(ProcessError):
    """The process exited (or never existed); its pid may be another's by now."""


class AccessDenied(ProcessError):
    """The process exists but its /proc may not be read (another user
    namespace, a hardened /proc, missing CAP_SYS_PTRACE)."""


class ZombieProcess(ProcessError):
    """The process exited and awaits its parent: it has no memory left to read."""


_GONE = {errno.ENOENT, errno.ESRCH}
_DENIED = {errno.EACCES, errno.EPERM}


def _translate(err, pid, name):
    if err.errno in _GONE:
        return NoSuchProcess(pid, f"gone (reading {name})")
    if err.errno in _DENIED:
        return AccessDenied(pid, f"not allowed to read {name}")
    return ProcessError(pid, f"reading {name}: {err.strerror}")


@dataclass
class Stat:
    """The fields of /proc/PID/stat ramwatchd uses."""
    comm: str
    state: str
    ppid: int
    flags: int
    minflt: int
    majflt: int
    start: int             # start time, in clock ticks since boot: with the pid, the identity
    layout: tuple          # (start_code, start_stack, arg_start): changes at every exec

    @property
    def zombie(self):
        return self.state in ("Z", "X")

    @property
    def exiting(self):
        return self.zombie or bool(self.flags & PF_EXITING)

    @property
    def kernel_thread(self):
        return bool(self.flags & PF_KTHREAD)


def parse_stat(raw):
    comm_end = raw.rindex(b")")
    comm = raw[raw.index(b"(") + 1:comm_end].decode(errors="replace")
    f = raw[comm_end + 2:].split()
    # f[0] is field 3 (state) of proc(5); field n is f[n - 3].
    return Stat(comm=comm, state=f[0].decode(), ppid=int(f[1]), flags=int(f[6]), minflt=int(f[7]),
                majflt=int(f[9]), start=int(f[19]), layout=(int(f[23]), int(f[25]), int(f[45])))


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
    has_mm: bool = True     # kernel threads and zombies have no Vm* lines

    @property
    def rss_members(self):
        """(file, anon, swap, shmem), the order of the kernel's rss_stat members."""
        return (self.rss_file, self.rss_anon, self.vm_swap, self.rss_shmem)


_STATUS_BYTES = {b"VmRSS": "vm_rss", b"RssAnon": "rss_anon", b"RssFile": "rss_file",
                 b"RssShmem": "rss_shmem", b"VmSwap": "vm_swap", b"VmHWM": "vm_hwm"}


def parse_status(raw, pid):
    """A Status from the text of /proc/PID/status: read a hundred times a
    second during a fill, so each field is found by a jump, not a loop over
    its sixty lines."""
    raw = b"\n" + raw
    name, ppid, tgid = (_status_field(raw, key) for key in (b"Name", b"PPid", b"Tgid"))
    st = Status(name="?" if name is None else name.strip().decode(errors="replace"),
                ppid=int(ppid or 0), tgid=pid if tgid is None else int(tgid), has_mm=False)
    for key, attr in _STATUS_BYTES.items():
        value = _status_field(raw, key)
        if value is not None:
            setattr(st, attr, int(value.split()[0]) << 10)
            st.has_mm = True
    return st


def _status_field(raw, key):
    start = raw.find(b"\n" + key + b":")
    if start < 0:
        return None
    start += len(key) + 2
    return raw[start:raw.find(b"\n", start)]


@dataclass
class Vma:
    """One mapping of /proc/PID/smaps and what of it is resident."""
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


def parse_smaps(raw):
    """Every mapping of an smaps text, with the fields ramwatchd keeps.

    A record is its header line, one line a field, and VmFlags last. A look
    at a server with a thousand mappings parses ~20,000 lines: bytes.find
    jumps from field to field in C where a loop over lines would not."""
    headers = _smaps_headers(raw)
    fields = [_smaps_values(raw, name) for name in (b"\nRss:", b"\nPss:", b"\nAnonymous:", b"\nSwap:")]
    if any(len(values) != len(headers) for values in fields):
        raise ValueError("smaps: a field missing from some mapping")
    return [_vma(header, *values) for header, *values in zip(headers, *fields)]


def _smaps_headers(raw):
    out, pos = [], 0
    while pos < len(raw):
        out.append(raw[pos:raw.find(b"\n", pos)])
        flags = raw.find(b"\nVmFlags:", pos)
        if flags < 0:
            break
        pos = raw.find(b"\n", flags + 1) + 1
        if pos == 0:
            break
    return out


def _smaps_values(raw, name):
    """The kB values of one field, in bytes, mapping by mapping."""
    out, i = [], raw.find(name)
    while i >= 0:
        end = raw.find(b" kB", i)
        out.append(int(raw[i + len(name):end]) << 10)
        i = raw.find(name, end)
    return out


def _vma(header, rss, pss, anonymous, swap):
    parts = header.split(None, 5)
    start, end = parts[0].split(b"-")
    major, minor = parts[3].split(b":")
    path = parts[5].decode(errors="replace") if len(parts) > 5 else ""
    return Vma(int(start, 16), int(end, 16), parts[1].decode(), int(parts[2], 16),
               (int(major, 16), int(minor, 16)), int(parts[4]), path, rss, pss, anonymous, swap)


class ProcDir:
    """The /proc directory of one process, held open for the process's life.

    Opening checks the process's start time against `start` where one is
    known (a fork seen by the kernel): a pid already reused is NoSuchProcess."""

    def __init__(self, pid, start=None, root=PROC):
        self.pid = pid
        try:
            self.fd = os.open(f"{root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise _translate(err, pid, f"{root}/{pid}") from None
        try:
            stat = self.stat()
            if start is not None and abs(stat.start - start) > 1:   # one tick of rounding
                raise NoSuchProcess(pid, "gone (its pid belongs to a newer process)")
        except ProcessError:
            self.close()
            raise
        self.start = stat.start

    def read(self, name):
        """The bytes of /proc/PID/name: the one place /proc is read for a process."""
        if self.fd is None:
            raise NoSuchProcess(self.pid, f"gone (reading {name})")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as err:
            raise _translate(err, self.pid, name) from None

    def stat(self):
        return parse_stat(self.read("stat"))

    def status(self):
        """Status of a process that has memory. One that has exited (a zombie)
        or is exiting (its memory already torn down) raises ZombieProcess."""
        st = parse_status(self.read("status"), self.pid)
        if not st.has_mm and not self.stat().kernel_thread:
            raise ZombieProcess(self.pid, "exited, not yet reaped")
        return st

    def smaps(self):
        """All mappings with their resident bytes, in address order."""
        return parse_smaps(self.read("smaps"))

    def maps(self):
        """[(start, end, path)]: the layout, without smaps' page-table walk."""
        out = []
        for line in self.read("maps").splitlines():
            parts = line.split(None, 5)
            start, end = parts[0].split(b"-")
            out.append((int(start, 16), int(end, 16),
                        parts[5].decode(errors="replace") if len(parts) > 5 else ""))
        return out

    def file_maps(self):
        """[(start, end, file offset, path)] of the mappings of files."""
        out = []
        for line in self.read("maps").splitlines():
            parts = line.split(None, 5)
            if len(parts) > 5 and parts[4] != b"0" and parts[5].startswith(b"/"):
                start, end = parts[0].split(b"-")
                out.append((int(start, 16), int(end, 16), int(parts[2], 16),
                            parts[5].decode(errors="replace")))
        return out

    def cmdline(self):
        raw = self.read("cmdline")
        return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)

    def environ(self):
        raw = self.read("environ")
        return dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw.split(b"\0") if b"=" in kv)

    def map_file(self, start, end):
        """The path of the file mapped exactly at [start, end), or None."""
        try:
            return os.readlink(f"map_files/{start:x}-{end:x}", dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise _translate(err, self.pid, "map_files") from None
            return None

    def fd_target(self, fd):
        """The (device, inode) of what the process's file descriptor fd is (a
        terminal, a pipe, a file), or None if it is not open or cannot be read."""
        try:
            st = os.stat(f"fd/{fd}", dir_fd=self.fd)
            return st.st_dev, st.st_ino
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise _translate(err, self.pid, f"fd/{fd}") from None
            return None

    def exe(self):
        """The executable's path; "" where the link cannot be read (a kernel
        thread, a zombie: ENOENT for both, or not allowed). Whether the process
        is gone is for the other reads to say."""
        try:
            return os.readlink("exe", dir_fd=self.fd)
        except OSError:
            return ""

    def cgroup(self):
        """The memory cgroup path: the v2 unified one, else v1's memory."""
        unified = ""
        for line in self.read("cgroup").decode(errors="replace").splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0":
                unified = path
            elif "memory" in controllers.split(","):
                return path
        return unified

    def children(self):
        """Direct children of every thread."""
        try:
            task_dir = os.open("task", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.fd)
            try:
                tasks = os.listdir(task_dir)
            finally:
                os.close(task_dir)
        except OSError as err:
            raise _translate(err, self.pid, "task") from None
        kids = set()
        for tid in tasks:
            try:
                kids.update(int(c) for c in self.read(f"task/{tid}/children").split())
            except NoSuchProcess:
                continue    # a thread that exited meanwhile
        return kids

    def open_files(self):
        """{(dev, inode): path} of the regular files the process has open."""
        out = {}
        try:
            fd_dir = os.open("fd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.fd)
        except OSError:
            return out
        try:
            for fd in os.listdir(fd_dir):
                try:
                    path = os.readlink(fd, dir_fd=fd_dir)
                    st = os.stat(fd, dir_fd=fd_dir)
                except OSError:
                    continue
                if path.startswith("/"):
                    out[(st.st_dev, st.st_ino)] = path
        finally:
            os.close(fd_dir)
        return out

    def resident(self, start, end):
        """Bytes of [start, end) present in the process's page tables: what its
        RSS counts there. PAGEMAP_SCAN (Linux 6.7+) walks only that range, where
        smaps walks every mapping. None where the kernel lacks it."""
        try:
            fd = os.open("pagemap", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as err:
            raise _translate(err, self.pid, "pagemap") from None
        try:
            return _scan_present(fd, start, end)
        except OSError as err:
            if err.errno in (errno.ENOTTY, errno.EINVAL):
                return None
            raise _translate(err, self.pid, "pagemap") from None
        finally:
            os.close(fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _ScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_ScanArg) << 16) | (ord("f") << 8) | 16   # _IOWR('f', 16, ...)
PAGE_IS_PRESENT, PAGE_IS_PFNZERO = 1 << 3, 1 << 5
_SCAN_VEC = 512


def _scan_present(fd, start, end):
    """Present pages of [start, end), less the shared zero page (mapped by a
    read fault on anonymous memory, and not counted in RSS)."""
    vec = (_PageRegion * _SCAN_VEC)()
    total = 0
    while start < end:
        arg = _ScanArg(ctypes.sizeof(_ScanArg), 0, start, end, 0, ctypes.addressof(vec), _SCAN_VEC, 0,
                       PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_PFNZERO, 0, PAGE_IS_PRESENT)
        found = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        total += sum(vec[i].end - vec[i].start for i in range(found))
        if arg.walk_end <= start:
            break
        start = arg.walk_end
    return total


def list_pids(root=PROC):
    return [int(d) for d in os.listdir(root) if d.isdigit()]


def boot_ns_to_ticks(ns):
    """A CLOCK_BOOTTIME time (the kernel's fork record) in /proc's start-time unit."""
    return ns * CLOCK_TICKS // 1_000_000_000
