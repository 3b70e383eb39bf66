"""An inference engine's start-up, shaped like vLLM's, with no vLLM: what the
tests and the benchmarks capture when they need a real server's process tree.

    python -m ramwatchd.workloads.engine --weights PATH [--weights-size 256M] [--kv 1G]

A launcher starts an engine by multiprocessing spawn; the engine starts a
worker the same way. With --imports, each first spends that long growing its
heap in small steps, as importing torch and vLLM does. Both rename themselves after start (comm by prctl,
command line by rewriting argv, as setproctitle does), share a /dev/shm
segment, and fork short helpers (uname, sh -c lscpu) while they start. The
worker grows ~1,000 mappings, maps the weights file for a moment while it
copies the weights into anonymous memory, then maps a KV cache with one mmap.
Each process logs like vLLM: "(EngineCore pid=N) INFO MM-DD hh:mm:ss
[engine.py:L] message", the prefix in a write of its own.
"""
import argparse
import ctypes
import mmap
import multiprocessing
import os
import subprocess
import sys
import time

from ..units import parse_bytes
from . import touch

PR_SET_NAME = 15
SEGMENT = "ramwatchd-engine-psm"
SMALL_MAPPINGS = 1000


def log(role, message):
    stream = sys.stdout
    stream.write(f"({role} pid={os.getpid()}) ")      # vLLM writes its prefix apart
    stream.write(f"INFO {time.strftime('%m-%d %H:%M:%S')} [engine.py:{sys._getframe(1).f_lineno}] {message}\n")
    stream.flush()


def rename(title):
    """comm by prctl, and the command line by writing over argv's memory."""
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])     # proc(5) fields 48 and 49
    title = title.encode()[:arg_end - arg_start - 1]
    ctypes.memmove(arg_start, title + b"\0" * (arg_end - arg_start - len(title)), arg_end - arg_start)


def helpers():
    """What start-up code runs to learn about the machine: gone in milliseconds."""
    subprocess.run(["uname", "-p"], stdout=subprocess.DEVNULL)
    subprocess.run(["sh", "-c", "lscpu > /dev/null"])


def segment(create):
    fd = os.open(f"/dev/shm/{SEGMENT}", os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    if create:
        os.ftruncate(fd, 16 << 20)
    region = mmap.mmap(fd, 16 << 20, flags=mmap.MAP_SHARED)
    os.close(fd)
    touch(region)
    return region


def small_mappings(n):
    """n private mappings of 1 MiB, every other one read-only so that the
    kernel cannot merge them: a model's ~1,000 mappings."""
    out = []
    for i in range(n):
        m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        touch(m)
        if i % 2:
            ctypes.CDLL(None).mprotect(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m))),
                                       1 << 20, mmap.PROT_READ)
        out.append(m)
    return out


def load_weights(path, size):
    """Map the weights file, copy it into anonymous memory, unmap it."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    tensors = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    step = 4 << 20
    for off in range(0, size, step):
        tensors[off:off + step] = mapped[off:off + step]
    time.sleep(0.3)           # vLLM's loader keeps the file mapped while it builds the model
    mapped.close()
    return tensors


def imports(seconds):
    """What importing torch and vLLM looks like from the kernel, for `seconds`:
    the heap grows by brk in small steps, and libraries' pages fault in."""
    if seconds <= 0:
        return []
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    blocks, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):                       # 4 MiB of 64 KiB blocks, from the heap
            block = libc.malloc(64 << 10)
            ctypes.memset(block, 1, 64 << 10)
            blocks.append(block)
        time.sleep(0.05)
    return blocks


def worker(args):
    rename("VLLM::Worker")
    shared = segment(create=False)
    imported = imports(args.imports)
    helpers()
    log("Worker", "Starting to load model")
    keep = small_mappings(SMALL_MAPPINGS)
    started = time.monotonic()
    weights = load_weights(args.weights, args.weights_size)
    log("Worker", f"Loading weights took {time.monotonic() - started:.2f} seconds")
    kv = mmap.mmap(-1, args.kv, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(kv, 0.8)
    log("Worker", f"KV cache allocated: {args.kv >> 20} MiB")
    time.sleep(args.serve)
    kv.close()
    log("Worker", "KV cache released")
    del keep, weights, shared, imported


def engine(args):
    rename("VLLM::EngineCore")
    shared = segment(create=True)
    imported = imports(args.imports)
    helpers()
    log("EngineCore", "Initializing a V1 LLM engine")
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=(args,))
    proc.start()
    proc.join()
    log("EngineCore", "Engine core shut down")
    del shared, imported
    os.unlink(f"/dev/shm/{SEGMENT}")


def make_weights(path, size):
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ramwatchd.workloads.engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the weights file (made if missing)")
    p.add_argument("--weights-size", type=parse_bytes, default="256M")
    p.add_argument("--kv", type=parse_bytes, default="1G", help="the KV cache's size")
    p.add_argument("--serve", type=float, default=1.0, help="seconds the engine serves before it stops")
    p.add_argument("--imports", type=float, default=0.0,
                   help="seconds each of the engine and the worker spends importing, as vLLM does for "
                        "~15 s (default 0: straight to work)")
    args = p.parse_args(argv)
    make_weights(args.weights, args.weights_size)
    log("MainProcess", "Starting the engine")
    proc = multiprocessing.get_context("spawn").Process(target=engine, args=(args,))
    proc.start()
    proc.join()
    log("MainProcess", "Done")
    return proc.exitcode


if __name__ == "__main__":      # spawned processes import this module again
    sys.exit(main())
