"""Allocate from lines whose numbers the test reads from this file (each ends
with a `# site: NAME` comment), then hold everything until stdin closes.

    python known_sites.py WEIGHTS_FILE SHM_NAME

numpy   48 MiB  np.ones                      (glibc maps it, numpy fills it)
bytes   40 MiB  bytearray                    (zeroed, so every page is touched)
weights the whole file, mmap'd here, read below (faults credited to the mmap)
shm     24 MiB  /dev/shm segment mapped here, written below
thread  32 MiB  np.ones from a second thread
child   36 MiB  bytearray in a forked child
fixed   84 MiB  mapped MAP_FIXED inside a 608 MiB PROT_NONE reservation, as the
                CUDA driver places a pinned block (the reservation holds nothing)
"""
import ctypes
import mmap
import os
import sys
import threading

import numpy as np

MiB = 1 << 20
held = []


def read_every_page(view):
    return sum(view[off] for off in range(0, len(view), mmap.PAGESIZE))


def map_weights(path):
    with open(path, "rb") as f:
        weights = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)  # site: weights
    read_every_page(weights)
    return weights


def map_shm(name):
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 24 * MiB)
    segment = mmap.mmap(fd, 24 * MiB)  # site: shm
    os.close(fd)
    segment[:] = b"\1" * len(segment)
    return segment


def reserve_and_place():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    anonymous, fixed = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, 0x10   # PROT_NONE is 0
    base = libc.mmap(None, 608 * MiB, 0, anonymous, -1, 0)  # site: reserved
    writable = mmap.PROT_READ | mmap.PROT_WRITE
    block = libc.mmap(base + 512 * MiB, 84 * MiB, writable, anonymous | fixed, -1, 0)  # site: fixed
    ctypes.memset(block, 1, 84 * MiB)


def in_a_thread():
    held.append(np.ones(32 * MiB, dtype=np.uint8))  # site: thread


def main():
    weights_path, shm_name = sys.argv[1:3]
    held.append(np.ones(48 * MiB, dtype=np.uint8))  # site: numpy
    held.append(bytearray(40 * MiB))  # site: bytes
    held.append(map_weights(weights_path))
    held.append(map_shm(shm_name))
    reserve_and_place()
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    child = os.fork()
    if child == 0:
        kept = bytearray(36 * MiB)  # site: child
        print(f"child {os.getpid()} ready", flush=True)
        sys.stdin.read()
        del kept
        os._exit(0)
    print("ready", flush=True)
    sys.stdin.read()
    os.waitpid(child, 0)
    os.unlink(f"/dev/shm/{shm_name}")


if __name__ == "__main__":
    main()
