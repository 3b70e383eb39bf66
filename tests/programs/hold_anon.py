"""Map SIZE MiB of private anonymous memory, touch every page, hold it for
HOLD seconds, unmap it, and linger a moment after.

    python hold_anon.py SIZE_MIB HOLD_S
"""
import mmap
import sys
import time

size = int(sys.argv[1]) << 20
region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, size, mmap.PAGESIZE):
    region[off] = 1
print(f"holding {size >> 20} MiB", flush=True)
time.sleep(float(sys.argv[2]))
region.close()
print("released", flush=True)
time.sleep(1.0)
