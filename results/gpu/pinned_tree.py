"""A process tree shaped like vLLM's tensor-parallel workers; run under `ramwatchd run`.

The parent creates one 256 MiB /dev/shm region and fills it, then starts two
workers with multiprocessing spawn (a fresh interpreter each, as vLLM starts
its workers). Each worker names itself tp-worker-RANK (prctl, as
setproctitle does), pins a tensor of its own size with torch (100 MiB and
200 MiB, which torch's caching host allocator rounds up to 128 and 256 MiB
driver allocations), maps the shared region and registers it with
cudaHostRegister, prints the addresses it got, and holds everything for
HOLD_S seconds (default 45) so that a daemon can be scraped meanwhile. run.sh
ends it sooner, with the capture (`ramwatchd run --duration`), so that the
capture's last look sees every process holding what it made; on SIGTERM the
parent still removes the region.

Each line that makes memory ends with '# site: NAME' (check.py reads the marks).

Without a GPU, RAMWATCHD_CUDA_STANDIN=/path/to/libcuda.so.1 (built from
tests/cuda_standin/libcuda.c) makes the workers call that library's
cuMemHostAlloc and cuMemHostRegister_v2 through ctypes instead of torch, with
torch's rounding: a dry run of the same tree and checks.
"""
import ctypes
import mmap
import multiprocessing
import os
import signal
import sys
import time

MiB = 1 << 20
SHM = "/dev/shm/ramwatchd-gpu-tree"
REGION = 256 * MiB
TENSOR = {0: 100 * MiB, 1: 200 * MiB}
HOLD_S = float(os.environ.get("HOLD_S", "45"))
STANDIN = os.environ.get("RAMWATCHD_CUDA_STANDIN")
PR_SET_NAME = 15


def name_myself(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


class Torch:
    """Pinned memory as an engine makes it: torch's caching host allocator
    and cudaHostRegister through torch's cudart binding."""

    def __init__(self):
        import torch
        torch.cuda.init()
        self.torch = torch

    def pin(self, size):
        tensor = self.torch.empty(size, dtype=self.torch.uint8, pin_memory=True)  # site: pin
        return tensor, tensor.data_ptr()

    def register(self, region):
        view = self.torch.frombuffer(region, dtype=self.torch.uint8)
        err = self.torch.cuda.cudart().cudaHostRegister(view.data_ptr(), len(region), 0)  # site: register
        return view, view.data_ptr(), int(err)


class StandIn:
    """The same calls on the stand-in driver: no GPU needed."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)

    def pin(self, size):
        rounded = 1 << (size - 1).bit_length()          # what torch asks of the driver
        p = ctypes.c_void_p()
        self.lib.cuMemHostAlloc(ctypes.byref(p), ctypes.c_size_t(rounded), 0)  # site: standin_pin
        return p, p.value

    def register(self, region):
        view = (ctypes.c_char * len(region)).from_buffer(region)
        address = ctypes.addressof(view)
        err = self.lib.cuMemHostRegister_v2(ctypes.c_void_p(address), ctypes.c_size_t(len(region)), 0)  # site: standin_register
        return view, address, err


def worker(rank):
    name_myself(f"tp-worker-{rank}")
    cuda = StandIn(STANDIN) if STANDIN else Torch()
    tensor, pinned_at = cuda.pin(TENSOR[rank])
    fd = os.open(SHM, os.O_RDWR)
    region = mmap.mmap(fd, REGION, mmap.MAP_SHARED)  # site: worker_map
    view, registered_at, err = cuda.register(region)
    print(f"tp-worker-{rank}: pid {os.getpid()} pinned {TENSOR[rank] // MiB} MiB at {pinned_at:#x}, "
          f"registered {REGION // MiB} MiB at {registered_at:#x} (error {err})", flush=True)
    time.sleep(HOLD_S)
    print(f"tp-worker-{rank}: done", flush=True)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))   # then `finally` unlinks
    fd = os.open(SHM, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, REGION)
        region = mmap.mmap(fd, REGION, mmap.MAP_SHARED)  # site: parent_map
        chunk = b"\1" * (16 * MiB)
        for offset in range(0, REGION, len(chunk)):
            region[offset:offset + len(chunk)] = chunk
        print(f"parent: pid {os.getpid()} filled {REGION // MiB} MiB of {SHM}; spawning 2 workers", flush=True)
        spawn = multiprocessing.get_context("spawn")
        workers = [spawn.Process(target=worker, args=(rank,), name=f"tp-worker-{rank}") for rank in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(f"parent: workers exited with {[w.exitcode for w in workers]}", flush=True)
        return 0 if all(w.exitcode == 0 for w in workers) else 1
    finally:
        os.unlink(SHM)


if __name__ == "__main__":
    sys.exit(main())
