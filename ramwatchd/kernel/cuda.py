"""The CUDA driver's host-memory entry points, and where a program finds the driver."""
import os
import subprocess

# In the order of bpf/ramwatchd.h's CU_MEM_* enum: a CUDA record's symbol is an index here.
SYMBOLS = ("cuMemHostAlloc", "cuMemAllocHost", "cuMemAllocHost_v2", "cuMemHostRegister",
           "cuMemHostRegister_v2", "cuMemHostUnregister", "cuMemFreeHost")


def is_driver(path):
    """A mapped file that is the CUDA driver library (libcuda.so.1, libcuda.so.580.159...)."""
    return "libcuda.so" in path and os.path.basename(path).startswith("libcuda.so")


def driver_paths(environ):
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
