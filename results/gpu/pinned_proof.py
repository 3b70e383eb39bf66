"""CUDA pinned host memory, three ways, on a real GPU; run under `ramwatchd run`.

1. torch pin_memory of 300 MiB: torch's caching host allocator asks the driver
   for 512 MiB (it rounds each block up to a power of two).
2. a 256 MiB /dev/shm region, mmap'd and registered with cudaHostRegister, as
   vLLM's shared KV offload region is.
3. cupy's pinned memory pool: 128 MiB.
4. for contrast, 64 MiB of shared anonymous memory that CUDA never sees.

Each line that makes memory ends with '# site: NAME'; check.py finds the
lines by those marks and looks for each one in the capture's call sites.
"""
import mmap
import os
import time

import cupy
import torch

import ramwatchd

MiB = 1 << 20
SHM = "/dev/shm/ramwatchd-gpu-proof"

torch.cuda.init()
ramwatchd.mark("torch pin_memory 300 MiB")
print("torch: pin_memory 300 MiB", flush=True)
pinned = torch.empty(300 * MiB, dtype=torch.uint8, pin_memory=True)  # site: torch_pin
print(f"torch: pinned tensor at {pinned.data_ptr():#x}", flush=True)
time.sleep(1)

ramwatchd.mark("cudaHostRegister 256 MiB /dev/shm")
print("torch: cudaHostRegister of a 256 MiB /dev/shm mapping", flush=True)
fd = os.open(SHM, os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(fd, 256 * MiB)
region = mmap.mmap(fd, 256 * MiB, mmap.MAP_SHARED)  # site: shm_map
view = torch.frombuffer(region, dtype=torch.uint8)
err = torch.cuda.cudart().cudaHostRegister(view.data_ptr(), 256 * MiB, 0)  # site: shm_register
print(f"cudaHostRegister returned {err} for {view.data_ptr():#x}", flush=True)
time.sleep(1)

ramwatchd.mark("cupy pinned 128 MiB")
print("cupy: alloc_pinned_memory 128 MiB", flush=True)
cupy_block = cupy.cuda.alloc_pinned_memory(128 * MiB)  # site: cupy_pin
print(f"cupy: pinned block at {cupy_block.ptr:#x}", flush=True)
time.sleep(1)

ramwatchd.mark("shared anonymous 64 MiB, not CUDA")
print("mmap.mmap(-1, 64 MiB): shared anonymous, not pinned", flush=True)
plain = mmap.mmap(-1, 64 * MiB)  # site: plain_mmap
plain.write(b"\1" * (64 * MiB))
time.sleep(1.5)
os.unlink(SHM)
print("done", flush=True)
