"""The node's own account of memory outside any one process: meminfo, cgroups,
/dev/shm and the page cache of a file."""
import ctypes
import os
import resource

from .procfs import PROC

PAGE_BYTES = resource.getpagesize()
CGROUP_ROOT = "/sys/fs/cgroup"
_libc = ctypes.CDLL(None, use_errno=True)


def meminfo():
    """/proc/meminfo in bytes."""
    out = {}
    with open(f"{PROC}/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = int(value.split()[0]) << 10
    return out


def cgroup_memory(path):
    """(anon, file, shmem) bytes charged to a cgroup, from memory.stat, or None."""
    for stat_file, keys in ((f"{CGROUP_ROOT}{path}/memory.stat", ("anon", "file", "shmem")),
                            (f"{CGROUP_ROOT}/memory{path}/memory.stat", ("rss", "cache", "shmem"))):
        try:
            with open(stat_file) as f:
                fields = dict(line.split() for line in f)
        except OSError:
            continue
        return tuple(int(fields.get(k, 0)) for k in keys)
    return None


def shm_objects(root="/dev/shm"):
    """{(major, minor, inode): (name, resident bytes)} of the files in /dev/shm."""
    out = {}
    try:
        entries = os.scandir(root)
    except OSError:
        return out
    with entries:
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.is_file(follow_symlinks=False):
                out[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = (e.name, st.st_blocks * 512)
    return out


_CACHESTAT = 451   # the same number on every architecture (Linux 6.5+)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


def page_cache_bytes(path):
    """Bytes of the file now in the page cache (cachestat(2)), or None if the
    file is gone or the kernel lacks cachestat."""
    try:
        fd = os.open(path.removesuffix(" (deleted)"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = _Cachestat()
        rc = _libc.syscall(_CACHESTAT, fd, ctypes.byref(_CachestatRange(0, 0)), ctypes.byref(stat), 0)
        return stat.nr_cache * PAGE_BYTES if rc == 0 else None
    finally:
        os.close(fd)
