"""The kernel probes: compiles bpf/ramwatchd.bpf.c with bcc, attaches the
programs the options select, and exposes what they collect: typed events, and
the aggregates kept in the kernel (fault samples per region, page cache per
file, calls shed per process, what could not be recorded).
"""
import atexit
import ctypes
import os
import re
import threading
import resource
from dataclasses import dataclass
from pathlib import Path

from . import cuda, records
from .events import STACK_SAMPLE_BYTES
from .ringbuf import RingReader

TRACEFS = Path("/sys/kernel/tracing")
TRACED_SLOTS = 16384
LARGE_CALL_BYTES = 64 << 20    # mm calls this large have a rate budget of their own
NAMED_FILE_BYTES = 1 << 20     # files that filled less page cache go unnamed and unshown
_RELEASING = {2, 3, 5}         # EV_MUNMAP, EV_MREMAP, EV_MADVISE in bpf/ramwatchd.h
MAX_EVENTS_PER_POLL = 20000    # one poll's share, so that looks and lines keep their pace
STAT_NAMES = ("events_lost", "children_not_followed", "fault_regions_full", "files_full",
              "inflight_full", "calls_shed")
MM_SYSCALLS = ("mmap", "munmap", "mremap", "brk", "madvise", "shmat", "shmdt", "memfd_create")


class ProbeError(Exception):
    """The kernel side could not be set up; the message says why and what to do."""


def bpf_source_dir():
    """bpf/ beside the package in a checkout, or ramwatchd/bpf in an installed copy."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "bpf", here / "bpf"):
        if (candidate / "ramwatchd.bpf.c").is_file():
            return candidate
    raise ProbeError(f"BPF sources not found next to {here} (expected bpf/ramwatchd.bpf.c)")


def program_text(src):
    """ramwatchd.bpf.c with its concern files (#include "*.bpf.c" and "*.bpf.h")
    inlined: bcc rewrites map calls, and gives tracepoint programs their typed
    `args`, only in the main file."""
    def inline(match):
        return (src / match.group(1)).read_text()
    return re.sub(r'^#include "([\w.]+\.bpf\.[ch])"$', inline,
                  (src / "ramwatchd.bpf.c").read_text(), flags=re.M)


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise ProbeError("bcc is not importable: install Debian's python3-bpfcc "
                         "(apt-get install python3-bpfcc) and run deploy/setup.sh; "
                         "PyPI's 'bcc' is a different package") from None
    return bcc


def tracepoint_format(group, name):
    try:
        return (TRACEFS / "events" / group / name / "format").read_text()
    except OSError:
        return ""


@dataclass
class ProbeOptions:
    follow_children: bool = True
    trace_all: bool = False            # every process on the node (the daemon)
    mm_syscalls: bool = True           # mmap, munmap, brk, madvise... events (captures)
    page_cache_fills: bool = True      # page cache filled per file (captures)
    program_output: bool = True        # the start of writes to stdout/stderr (captures)
    exact_rss: bool = False            # sizes from kmem:rss_stat itself: exact, costlier
    rss_step_bytes: int = 16 << 20     # exact_rss: a step when RSS moves this much
    rss_step_changes: int = 4096       # otherwise: after this many counter changes
    rss_step_ms: int = 20              #   or this long after the last step
    min_syscall_bytes: int = 1 << 20
    max_calls_per_s: int = 1000        # per process; the rest are counted, not sent
    max_writes_per_s: int = 200        # per process; the rest are not sent
    fault_sample_period: int = 64
    fault_region_shift: int = 21       # faults are counted per 2 MiB of address space
    stacks: bool = False               # the stacks behind mm calls and sampled faults (captures)
    fault_stack_period: int = 64       # one sampled fault in this many sends its stacks

    @property
    def faults_from_perf(self):
        """exceptions:page_fault_user is x86 only; elsewhere a perf event samples."""
        return not tracepoint_format("exceptions", "page_fault_user")

    @property
    def rss_from_faults(self):
        """With the mm syscalls traced, faults are the only other way RSS moves."""
        return self.mm_syscalls and not self.exact_rss and not self.faults_from_perf

    def constants(self):
        exit_format = tracepoint_format("sched", "sched_process_exit")
        return [f"-DTRACE_ALL={int(self.trace_all)}",
                f"-DRSS_FROM_FAULTS={int(self.rss_from_faults)}",
                f"-DRSS_STEP_BYTES={self.rss_step_bytes}LL",
                f"-DRSS_STEP_CHANGES={self.rss_step_changes}",
                f"-DRSS_STEP_NS={self.rss_step_ms * 1000000}ULL",
                f"-DMIN_SYSCALL_BYTES={self.min_syscall_bytes}UL",
                f"-DMAX_CALLS_PER_S={self.max_calls_per_s}",
                f"-DLARGE_CALL_BYTES={LARGE_CALL_BYTES}UL",
                f"-DNAMED_FILE_BYTES={NAMED_FILE_BYTES}UL",
                f"-DMAX_WRITES_PER_S={self.max_writes_per_s}",
                f"-DFAULT_SAMPLE_PERIOD={self.fault_sample_period}",
                f"-DSTACKS={int(self.stacks)}",
                f"-DSTACK_SAMPLE_BYTES={STACK_SAMPLE_BYTES}UL",
                f"-DFAULT_STACK_PERIOD={self.fault_stack_period}",
                f"-DFAULT_REGION_SHIFT={self.fault_region_shift}",
                f"-DPAGE_BYTES={resource.getpagesize()}",
                f"-DTRACED_SLOTS={TRACED_SLOTS}"] + (
                    ["-DHAVE_EXIT_GROUP_DEAD"] if "group_dead" in exit_format else [])

    def tracepoints(self):
        """The classic tracepoints to attach, as 'group:name'."""
        tps = ["sched:sched_process_exec", "sched:sched_process_exit", "task:task_rename",
               "oom:mark_victim"]
        if self.follow_children:
            tps.append("task:task_newtask")
        if self.exact_rss:
            tps.append("kmem:rss_stat")
        if self.mm_syscalls:
            tps += [f"syscalls:sys_{side}_{name}" for name in MM_SYSCALLS for side in ("enter", "exit")]
        if self.program_output:
            tps.append("syscalls:sys_enter_write")
        if self.page_cache_fills:
            tps += ["filemap:mm_filemap_add_to_page_cache", "filemap:mm_filemap_delete_from_page_cache"]
        return tps

    def raw_tracepoints(self):
        raw = []
        if not self.exact_rss and not self.rss_from_faults:
            raw.append("rss_stat")
        if not self.faults_from_perf:
            raw.append("page_fault_user")
        if self.rss_from_faults:
            raw.append("page_fault_kernel")
        return raw


def _manual_bpf(bcc):
    """bcc's BPF, attaching nothing by itself: the options choose what runs."""
    class ManualBPF(bcc.BPF):
        def _trace_autoload(self):
            pass
    return ManualBPF


class Probes:
    """The attached BPF programs of one capture or daemon."""

    def __init__(self, options: ProbeOptions):
        bcc = import_bcc()
        src = bpf_source_dir()
        self.options = options
        try:
            self.bpf = _manual_bpf(bcc)(text=program_text(src), cflags=options.constants() + [f"-I{src}"])
            self._attach(bcc)
        except Exception as err:  # bcc raises bare Exception for load and attach errors
            raise ProbeError(f"could not load the BPF programs: {err} "
                             "(run 'ramwatchd doctor' to see which prerequisite is missing)") from None
        self._decode_errors = 0
        self._records = []
        events = self.bpf["events"]
        self._ring = RingReader(events.map_fd, events.max_entries) if RingReader.usable() else None
        if self._ring is None:
            events.open_ring_buffer(self._on_record)
        self._traced = self.bpf["traced"]
        self._slots = self.bpf["slots"]
        self._cuda_files = set()   # (dev, inode) of driver libraries already probed

    def _attach(self, bcc):
        for tp in self.options.tracepoints():
            fn = "tracepoint__" + tp.replace(":", "__")
            if tp.encode() not in self.bpf.tracepoint_fds:
                self.bpf.attach_tracepoint(tp=tp, fn_name=fn)
        for tp in self.options.raw_tracepoints():
            if tp.encode() not in self.bpf.raw_tracepoint_fds:
                self.bpf.attach_raw_tracepoint(tp=tp, fn_name="raw_tracepoint__" + tp)
        if self.options.faults_from_perf:
            self.bpf.attach_perf_event(
                ev_type=bcc.PerfType.SOFTWARE, ev_config=bcc.PerfSWConfig.PAGE_FAULTS,
                fn_name=b"on_fault_sample", sample_period=self.options.fault_sample_period)

    def _on_record(self, _ctx, data, size):
        # Where the ring is not read in place, bcc calls this once a record, through ctypes.
        self._records.append(ctypes.string_at(data, size))

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for kernel events; return those that arrived."""
        if self._ring is not None:
            raw = self._ring.read(timeout_ms)
        else:
            self.bpf.ring_buffer_poll(timeout_ms)
            self.bpf.ring_buffer_consume()   # records sent without a wakeup
            raw, self._records = self._records, []
        out = []
        for record in raw:
            try:
                out.append(records.decode(record))
            except records.UnknownRecord:
                self._decode_errors += 1
        return out

    # ---- which processes are traced -----------------------------------------

    def trace(self, pid):
        """Trace pid from now on, with fresh state (a child the kernel already
        added at fork keeps its own)."""
        if self._state(pid) is None:
            state = self._traced.Leaf()
            state.tgid = pid
            self._place(pid, state)

    def untrace(self, pid):
        if self.options.exact_rss:
            try:
                del self.bpf["rss_seeds"][self.bpf["rss_seeds"].Key(pid)]
            except KeyError:
                pass
        key = self._slot_key(pid)
        slot = self._slots[key]
        if slot.tgid == pid:
            slot.tgid = 0
            self._slots[key] = slot
        self._delete(pid)

    def seed_rss(self, pid, members):
        """--exact-rss: offer the kernel the members (file, anon, swap, shmem)
        read from /proc; at the process's next counter change it takes those
        it has not seen change yet, and keeps them from there."""
        seeds = self.bpf["rss_seeds"]
        seed = seeds.Leaf()
        for m, value in enumerate(members):
            seed.rss[m] = value
        seed.known = (1 << len(members)) - 1
        try:
            seeds[seeds.Key(pid)] = seed
        except Exception:   # bcc: the map is full; the kernel learns the members from their changes
            pass

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

    # ---- stacks ----------------------------------------------------------------

    def set_python(self, pid, layout):
        """Give the kernel where pid's interpreter is (a dict of struct
        py_layout's fields), or forget it (None)."""
        table = self.bpf["py_layouts"]
        key = table.Key(pid)
        if layout is None:
            try:
                del table[key]
            except KeyError:
                pass
            return
        leaf = table.Leaf()
        for name, value in layout.items():
            setattr(leaf, name, value)
        table[key] = leaf

    # ---- what the kernel aggregated ------------------------------------------

    def drain_fault_samples(self):
        """{(pid, region_start): estimated faults} since the last drain: the
        samples scaled by the sample period."""
        table = self.bpf["fault_samples"]
        shift, period = self.options.fault_region_shift, self.options.fault_sample_period
        return {(key.tgid, key.region << shift): count * period
                for key, count in table.items_lookup_and_delete_batch()}

    def drain_shed_calls(self):
        """{pid: (calls, bytes)} of mm calls counted in the kernel instead of
        sent, since the last drain."""
        if not self.options.mm_syscalls:
            return {}
        return {int(getattr(key, "value", key)): (v.calls, v.bytes)
                for key, v in self.bpf["shed"].items_lookup_and_delete_batch()}

    def page_cache(self):
        """{(dev, ino): (added, removed)} bytes, cumulative, of the files that
        filled NAMED_FILE_BYTES or more; dev as stat() gives it."""
        if not self.options.page_cache_fills:
            return {}
        return {(kernel_dev_to_userspace(k.dev), k.ino): (v.added, v.removed)
                for k, v in self.bpf["files"].items_lookup_batch() if v.named}

    def files_to_name(self):
        """{(dev, ino)} of the files that have filled NAMED_FILE_BYTES since the
        last call: few, where page_cache() reads thousands of entries."""
        if not self.options.page_cache_fills:
            return set()
        return {(kernel_dev_to_userspace(k.dev), k.ino)
                for k, _ in self.bpf["files_named"].items_lookup_and_delete_batch()}

    def stats(self):
        table = self.bpf["stats"]
        out = {name: sum(table[ctypes.c_int(i)]) for i, name in enumerate(STAT_NAMES)}
        out["records_undecoded"] = self._decode_errors
        return out

    def programs_attached(self):
        b = self.bpf
        return (len(b.tracepoint_fds) + len(b.raw_tracepoint_fds) + len(b.uprobe_fds)
                + sum(len(fds) for fds in b.open_perf_events.values()) // max(1, os.cpu_count()))

    # ---- the CUDA driver -----------------------------------------------------

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
        for symbol in cuda.SYMBOLS:
            try:
                self.bpf.attach_uprobe(name=path, sym=symbol, fn_name=f"{symbol}_enter")
                self.bpf.attach_uretprobe(name=path, sym=symbol, fn_name="cuda_return")
            except Exception:   # bcc: this driver version lacks the symbol
                continue
            probed.append(symbol)
        return probed

    def busy(self):
        """tgids a look would catch half-way: inside an munmap, mremap or
        madvise (the mapping already gone from smaps, the counters still
        falling) or inside a CUDA allocation (the new mapping there before the
        call returns, and looking like plain shared memory)."""
        out = set()
        if self.options.mm_syscalls:
            out |= {call.head.tgid for call in self.bpf["inflight"].values() if call.head.kind in _RELEASING}
        if self._cuda_files:
            out |= {entry.tgid for entry in self.bpf["cuda_inflight"].values() if entry.call == 0}
        return out

    def close(self):
        """Detach everything; returns what could not be detached cleanly, each
        in a line (the kernel releases it anyway as this process exits). Each
        detach waits for the kernel's RCU grace periods (~60 ms a tracepoint):
        done all at once, not one by one."""
        problems = []

        def detach(undo, attached, name):
            try:
                undo(name)
            except Exception as err:   # bcc raises bare Exception; its descriptor is closed
                problems.append(f"{name.decode()}: {err}")
                attached.pop(name, None)
        b = self.bpf
        detaching = [threading.Thread(target=detach, args=(b.detach_tracepoint, b.tracepoint_fds, tp))
                     for tp in list(b.tracepoint_fds)]
        detaching += [threading.Thread(target=detach, args=(b.detach_raw_tracepoint, b.raw_tracepoint_fds, tp))
                      for tp in list(b.raw_tracepoint_fds)]
        for thread in detaching:
            thread.start()
        for thread in detaching:
            thread.join()
        if self._ring is not None:
            self._ring.close()
        try:
            b.cleanup()
        except Exception as err:
            problems.append(str(err))
        atexit.unregister(b.cleanup)   # done, or not to be retried at exit
        return problems


def kernel_dev_to_userspace(dev):
    """The kernel's dev_t (major << 20 | minor) -> os.makedev form used by stat()."""
    return os.makedev(dev >> 20, dev & ((1 << 20) - 1))
