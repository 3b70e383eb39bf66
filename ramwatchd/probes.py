"""Stage 1: the kernel probes. Compiles bpf/ramwatchd.bpf.c with bcc, attaches it,
and exposes what it collects: the event stream, per-process RSS state kept in the
kernel, sampled fault counts per address region, and page cache per file.
"""
import ctypes
import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import events

TRACEFS = Path("/sys/kernel/tracing")
STAT_NAMES = ("events_lost", "children_not_followed", "fault_regions_full", "files_full",
              "inflight_full")


class ProbeError(Exception):
    """The kernel side could not be set up; the message says why and what to do."""


def bpf_source_dir():
    """bpf/ beside the package in a checkout, or ramwatchd/bpf in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "bpf", here / "bpf"):
        if (candidate / "ramwatchd.bpf.c").is_file():
            return candidate
    raise ProbeError(f"BPF sources not found next to {here} (expected bpf/ramwatchd.bpf.c)")


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise ProbeError("bcc is not importable: install Debian's python3-bpfcc "
                         "(apt-get install python3-bpfcc) and run deploy/setup.sh; "
                         "PyPI's 'bcc' is a different package") from None
    return bcc


TRACED_SLOTS = 16384


@dataclass
class ProbeOptions:
    follow_children: bool = True
    trace_all: bool = False            # every process on the node (the daemon)
    mm_syscalls: bool = True           # mmap, munmap, brk, madvise... events (captures)
    page_cache_fills: bool = True      # page cache filled per file (captures)
    output_writes: bool = False        # time the writes to stdout/stderr (`run`)
    exact_rss: bool = False            # sizes from kmem:rss_stat itself: exact, costlier
    rss_from_faults: bool = True       # faults (with mm syscalls) say when RSS moves
    rss_step_bytes: int = 16 << 20     # exact_rss: report RSS when it moves this much
    rss_step_changes: int = 4096       # otherwise: after this many counter changes
    rss_step_ms: int = 20              #   or this long after the last report
    min_syscall_bytes: int = 1 << 20
    fault_sample_period: int = 64
    fault_region_shift: int = 21       # faults are counted per 2 MiB of address space

    def cflags(self):
        flags = [f"-DRSS_STEP_BYTES={self.rss_step_bytes}LL",
                 f"-DRSS_STEP_CHANGES={self.rss_step_changes}",
                 f"-DRSS_STEP_NS={self.rss_step_ms * 1000000}ULL",
                 f"-DMIN_SYSCALL_BYTES={self.min_syscall_bytes}UL",
                 f"-DFAULT_SAMPLE_PERIOD={self.fault_sample_period}",
                 f"-DFAULT_REGION_SHIFT={self.fault_region_shift}",
                 f"-DPAGE_BYTES={resource.getpagesize()}",
                 f"-DTRACED_SLOTS={TRACED_SLOTS}"]
        for wanted, flag in ((self.follow_children, "FOLLOW_CHILDREN"), (self.trace_all, "TRACE_ALL"),
                             (self.mm_syscalls, "MM_SYSCALLS"), (self.page_cache_fills, "PAGE_CACHE_FILLS"),
                             (self.output_writes, "OUTPUT_WRITES")):
            if wanted:
                flags.append(f"-D{flag}")
        if self.exact_rss:
            flags.append("-DEXACT_RSS")
        elif self.rss_from_faults and self.mm_syscalls and not self.faults_from_perf:
            flags.append("-DRSS_FROM_FAULTS")
        if self.faults_from_perf:
            flags.append("-DFAULTS_FROM_PERF")
        if "group_dead" in _tracepoint_format("sched", "sched_process_exit"):
            flags.append("-DHAVE_EXIT_GROUP_DEAD")
        return flags

    @property
    def faults_from_perf(self):
        """exceptions:page_fault_user is x86 only; elsewhere a perf event samples."""
        return not _tracepoint_format("exceptions", "page_fault_user")


def _tracepoint_format(group, name):
    try:
        return (TRACEFS / "events" / group / name / "format").read_text()
    except OSError:
        return ""


class Probes:
    """The attached BPF programs of one capture or daemon."""

    def __init__(self, options: ProbeOptions):
        bcc = import_bcc()
        src = bpf_source_dir()
        try:
            self.bpf = bcc.BPF(src_file=str(src / "ramwatchd.bpf.c"),
                               cflags=options.cflags() + [f"-I{src}"])
            if options.faults_from_perf:
                self.bpf.attach_perf_event(
                    ev_type=bcc.PerfType.SOFTWARE, ev_config=bcc.PerfSWConfig.PAGE_FAULTS,
                    fn_name=b"on_fault_sample", sample_period=options.fault_sample_period)
        except Exception as err:  # bcc raises bare Exception for load and attach errors
            raise ProbeError(f"could not load the BPF programs: {err} "
                             "(run 'ramwatchd doctor' to see which prerequisite is missing)") from None
        self.options = options
        self._pending = []
        self.bpf["events"].open_ring_buffer(self._on_record)
        self._traced = self.bpf["traced"]
        self._slots = self.bpf["slots"]
        self._cuda_files = set()   # (dev, inode) of driver libraries already probed

    def _on_record(self, _ctx, data, _size):
        self._pending.append(events.decode(data))

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for kernel events; return those that arrived."""
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()   # records sent without a wakeup
        out, self._pending = self._pending, []
        return out

    def trace(self, pid, rss_now):
        """Trace pid from now on. rss_now = (file, anon, swap, shmem) bytes seeds
        the counters the kernel has not reported yet (EXACT_RSS keeps them
        exact from here on). A child the kernel added at fork keeps its state."""
        state = self._state(pid) or self._traced.Leaf()
        state.tgid = pid
        for member, value in enumerate(rss_now):
            if state.rss[member] == 0:
                state.rss[member] = value
        if state.peak == 0:
            state.peak = state.last_step = rss_now[0] + rss_now[1] + rss_now[3]
            state.peak_ns = time.monotonic_ns()
            for member, value in enumerate(rss_now):
                state.peak_rss[member] = value
        self._place(pid, state)

    def _slot_key(self, pid):
        return self._slots.Key(pid & (TRACED_SLOTS - 1))

    def _state(self, pid):
        slot = self._slots[self._slot_key(pid)]
        if slot.tgid == pid:
            return slot
        try:
            return self._traced[self._traced.Key(pid)]
        except KeyError:
            return None

    def _place(self, pid, state):
        """Into pid's slot if it is free (the fast path), else the hash."""
        key = self._slot_key(pid)
        if self._slots[key].tgid in (0, pid):
            self._slots[key] = state
            self._delete(pid)
        else:
            self._traced[self._traced.Key(pid)] = state
            used = self.bpf["hash_used"]
            used[used.Key(0)] = used.Leaf(1)   # from now on the kernel looks there too

    def _delete(self, pid):
        try:
            del self._traced[self._traced.Key(pid)]
        except KeyError:
            pass

    def untrace(self, pid):
        key = self._slot_key(pid)
        slot = self._slots[key]
        if slot.tgid == pid:
            slot.tgid = 0
            self._slots[key] = slot
        self._delete(pid)

    def last_output_write(self):
        """(monotonic ns, tgid) of the last write to stdout or stderr by a
        traced process, or None (before any, or without output_writes)."""
        if not self.options.output_writes:
            return None
        w = self.bpf["last_output"][0]
        return (w.ts_ns, w.tgid) if w.ts_ns else None

    def rss_state(self, pid):
        """EXACT_RSS: (peak, peak_ns, rss per member at the peak), or None."""
        s = self._state(pid)
        if s is None or not self.options.exact_rss:
            return None
        return s.peak, s.peak_ns, tuple(s.peak_rss)

    def drain_fault_samples(self):
        """{(pid, region_start): sampled faults} since the last drain, scaled to
        estimated faults by the sample period."""
        table = self.bpf["fault_samples"]
        shift, period = self.options.fault_region_shift, self.options.fault_sample_period
        out = {}
        for key, count in table.items_lookup_and_delete_batch():
            out[(key.tgid, key.region << shift)] = count * period
        return out

    def attach_cuda(self, path):
        """uprobes on the CUDA driver's host-memory entry points in the library at
        path (reachable from here: /proc/PID/root/... for a container's copy).
        Each file is probed once; returns the symbols newly probed."""
        try:
            st = os.stat(path)
        except OSError:
            return []
        if (st.st_dev, st.st_ino) in self._cuda_files:
            return []
        self._cuda_files.add((st.st_dev, st.st_ino))
        probed = []
        for symbol in events.CUDA_SYMBOLS:
            try:
                self.bpf.attach_uprobe(name=path, sym=symbol, fn_name=f"{symbol}_enter")
                self.bpf.attach_uretprobe(name=path, sym=symbol, fn_name="cuda_return")
            except Exception:   # bcc: this driver version lacks the symbol
                continue
            probed.append(symbol)
        return probed

    def allocating_cuda(self):
        """tgids inside a CUDA allocation call right now. Their new mapping exists
        before the call returns and says what it is: a look then would call it
        plain shared memory."""
        if not self._cuda_files:
            return set()
        return {call.tgid for call in self.bpf["cuda_inflight"].values()
                if call.kind == events.Kind.CUDA_ALLOC}

    def programs_attached(self):
        b = self.bpf
        return (len(b.tracepoint_fds) + len(b.raw_tracepoint_fds) + len(b.uprobe_fds)
                + sum(len(fds) for fds in b.open_perf_events.values()) // max(1, os.cpu_count()))

    def page_cache(self):
        """{(dev, ino): (added, removed)} bytes, cumulative for the capture."""
        if not self.options.page_cache_fills:
            return {}
        return {(k.dev, k.ino): (v.added, v.removed) for k, v in self.bpf["files"].items()}

    def stats(self):
        table = self.bpf["stats"]
        return {name: sum(table[ctypes.c_int(i)]) for i, name in enumerate(STAT_NAMES)}

    def close(self):
        self.bpf.cleanup()


def cuda_driver_paths(environ):
    """Where a program with this environment would find libcuda.so.1: its
    LD_LIBRARY_PATH, then the linker cache. Probing these before the program
    starts catches its first pinned allocation, however early."""
    dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = [os.path.join(d, "libcuda.so.1") for d in dirs]
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        cache = ""
    found += [line.split("=>")[-1].strip() for line in cache.splitlines() if "libcuda.so" in line]
    return sorted({os.path.realpath(p) for p in found if os.path.isfile(p)})


def kernel_dev_to_userspace(dev):
    """The kernel's dev_t (major << 20 | minor) -> os.makedev form used by stat()."""
    return os.makedev(dev >> 20, dev & ((1 << 20) - 1))
