"""Programs whose allocations are known: the demo, the tests and the benchmarks.

    python -m ramwatchd.workloads STEP [STEP ...]
    python -m ramwatchd.workloads --demo

Each step prints one line before it acts, so `ramwatchd run` shows it as a phase.
Steps (sizes take units: 256M, 1G):
    anon:SIZE             mmap private anonymous memory and touch every page
    malloc:SIZE           malloc it in 64 KiB blocks (glibc serves those from brk: [heap])
    shared:SIZE           mmap MAP_SHARED|MAP_ANONYMOUS and touch it (shm_anon, not pinned)
    weights:PATH:SIZE:F   create PATH of SIZE if missing, mmap it read-only, touch fraction F
    shm:NAME:SIZE         create /dev/shm/NAME, mmap it shared and touch it
    attach:NAME           mmap an existing /dev/shm/NAME and touch it
    spike:SIZE:MS         allocate SIZE, hold it MS milliseconds, unmap it
    dontneed              madvise(MADV_DONTNEED) the last anon region
    unmap                 munmap the last anon region
    fork:STEP,STEP..      fork a child that runs those steps (comma-separated) and exits
    spawn:STEP,STEP..     start a new python process that runs those steps
    threads:N:SIZE        start N threads that each map and touch SIZE, and keep it
    mark:NAME             mark a phase with ramwatchd.mark()
    churn:SIZE:S          for S seconds, map SIZE, touch it and unmap it, again and again
    sleep:S               sleep S seconds
    wait                  wait for children
    ready:PATH            create PATH (tests wait for it) and go on
    await:PATH            wait until PATH exists (tests create it)
    tag:NAME              nothing: a word in the command line to match the process by
    run:CMD ARGS          run a command (fork and exec) and wait for it
    load:LIB              load the CUDA driver library LIB (a name or a path)
    pin:LIB:SIZE          cuMemHostAlloc(SIZE) from the CUDA driver library LIB
    register:LIB:NAME:SIZE  create /dev/shm/NAME, map it and cuMemHostRegister_v2 it
    unpin:LIB             cuMemFreeHost the last pinned allocation
"""
import ctypes
import mmap
import os
import subprocess
import sys
import threading
import time

from .. import mark
from ..units import parse_bytes

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
# glibc's M_MMAP_THRESHOLD: keep 64 KiB blocks on the brk heap whatever the tuning.
_libc.mallopt(-3, 128 << 10)

MADV_HUGEPAGE, MADV_POPULATE_WRITE = 14, 23


def say(line):
    """One line in one write: processes sharing stdout do not interleave it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def touch(region, fraction=1.0, write=True):
    """Fault in the first `fraction` of region, one access per page."""
    end = int(len(region) * fraction) // PAGE * PAGE
    if write:
        for off in range(0, end, PAGE):
            region[off] = 1
    else:
        view = memoryview(region)
        total = 0
        for off in range(0, end, PAGE):
            total += view[off]
        view.release()
    return end


class Workload:
    def __init__(self, who=""):
        self.who = who      # "child PID: " in a forked child, so its phases differ from its parent's
        self.anon = []      # regions, last last
        self.keep = []      # anything that must stay mapped
        self.children = []
        self.pinned = []    # addresses from cuMemHostAlloc
        self.drivers = {}   # CUDA driver libraries loaded, by name

    def run(self, steps):
        for step in steps:
            name, _, arg = step.partition(":")
            say(f"{self.who}step {step}")
            getattr(self, "do_" + name)(arg)

    def do_anon(self, arg):
        m = mmap.mmap(-1, parse_bytes(arg), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        touch(m)
        self.anon.append(m)

    def do_malloc(self, arg):
        block = 64 << 10
        for _ in range(parse_bytes(arg) // block):
            p = _libc.malloc(block)
            _libc.memset(p, 1, block)

    def do_shared(self, arg):
        m = mmap.mmap(-1, parse_bytes(arg), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        touch(m)
        self.keep.append(m)

    def do_weights(self, arg):
        path, size, fraction = arg.rsplit(":", 2)
        size = parse_bytes(size)
        if not os.path.exists(path) or os.path.getsize(path) != size:
            with open(path, "wb") as f:
                for _ in range(size // (1 << 20)):
                    f.write(os.urandom(1 << 20))
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        m.madvise(mmap.MADV_RANDOM)   # fault in only what is touched: no readahead
        touch(m, float(fraction), write=False)
        self.keep.append(m)

    def _shm(self, name, size=None):
        path = f"/dev/shm/{name}"
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if size else 0), 0o600)
        if size:
            os.ftruncate(fd, size)
        m = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED)
        os.close(fd)
        touch(m)
        self.keep.append(m)

    def do_shm(self, arg):
        name, size = arg.split(":")
        self._shm(name, parse_bytes(size))

    def do_attach(self, arg):
        self._shm(arg)

    def do_spike(self, arg):
        size, ms = arg.split(":")
        m = mmap.mmap(-1, parse_bytes(size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # Huge pages and an in-kernel populate make the rise take milliseconds,
        # so the whole spike is short, as a transient buffer's would be.
        m.madvise(MADV_HUGEPAGE)
        m.madvise(MADV_POPULATE_WRITE)
        time.sleep(float(ms) / 1000)
        m.close()

    def do_dontneed(self, _):
        self.anon[-1].madvise(mmap.MADV_DONTNEED)

    def do_unmap(self, _):
        self.anon.pop().close()

    def do_fork(self, arg):
        pid = os.fork()
        if pid == 0:
            try:
                Workload(f"child {os.getpid()}: ").run(arg.split(","))
            finally:
                os._exit(0)
        self.children.append(pid)

    def do_spawn(self, arg):
        proc = subprocess.Popen([sys.executable, "-m", "ramwatchd.workloads"] + arg.split(","))
        self.children.append(proc)

    def do_threads(self, arg):
        count, size = arg.split(":")
        def allocate():
            m = mmap.mmap(-1, parse_bytes(size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            touch(m)
            self.keep.append(m)
        threads = [threading.Thread(target=allocate) for _ in range(int(count))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def do_mark(self, arg):
        mark(arg)

    def do_churn(self, arg):
        size, seconds = arg.split(":")
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end:
            m = mmap.mmap(-1, parse_bytes(size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            touch(m)
            m.close()
            time.sleep(0.05)

    def do_sleep(self, arg):
        time.sleep(float(arg))

    def do_wait(self, _):
        for child in self.children:
            child.wait() if isinstance(child, subprocess.Popen) else os.waitpid(child, 0)
        self.children = []

    def _cuda(self, lib):
        if lib in self.drivers:
            return self.drivers[lib]
        driver = self.drivers[lib] = ctypes.CDLL(lib)
        driver.cuMemHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        driver.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        driver.cuMemFreeHost.argtypes = [ctypes.c_void_p]
        return driver

    def do_load(self, lib):
        self._cuda(lib)

    def do_pin(self, arg):
        lib, size = arg.rsplit(":", 1)
        ptr = ctypes.c_void_p()
        if self._cuda(lib).cuMemHostAlloc(ctypes.byref(ptr), parse_bytes(size), 0):
            raise SystemExit(f"cuMemHostAlloc of {size} failed")
        self.pinned.append(ptr.value)

    def do_register(self, arg):
        lib, name, size = arg.rsplit(":", 2)
        self._shm(name, parse_bytes(size))
        region = self.keep[-1]
        addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
        if self._cuda(lib).cuMemHostRegister_v2(addr, len(region), 0):
            raise SystemExit("cuMemHostRegister_v2 failed")

    def do_unpin(self, lib):
        self._cuda(lib).cuMemFreeHost(self.pinned.pop())

    def do_tag(self, _):
        pass

    def do_run(self, arg):
        subprocess.run(arg.split(), check=True)

    def do_await(self, arg):
        while not os.path.exists(arg):
            time.sleep(0.01)

    def do_ready(self, arg):
        with open(arg, "w"):
            pass


DEMO = ["mark:start", "malloc:96M", "anon:256M", "shared:64M",
        "weights:/tmp/ramwatchd-demo.safetensors:256M:0.5", "shm:ramwatchd-demo:64M",
        "fork:anon:128M,sleep:0.3", "wait", "spike:512M:50", "sleep:0.3", "dontneed", "sleep:0.2"]


def main(argv):
    if argv == ["--demo"]:
        print("ramwatchd demo: a heap, anonymous and shared memory, a lazily mapped weights file,"
              " a /dev/shm region, a child, a spike and a release", flush=True)
        try:
            Workload().run(DEMO)
        finally:
            if os.path.exists("/dev/shm/ramwatchd-demo"):
                os.unlink("/dev/shm/ramwatchd-demo")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    Workload().run(argv)
    return 0
