"""Native return addresses named from the files they run in: 'function
[library]'. A file's function table is read once and shared by every process
that maps it (a server's processes share one libtorch), where a per-process
symbolizer reads every library again for each pid."""
import ctypes
import ctypes.util
import os

from .elf import ElfError, ElfFile

_FILES_KEPT = 64
DEBUG_FILES = "/usr/lib/debug/.build-id"
_files = {}      # (device, inode, mtime) -> _Functions, or None for a file that is not ELF


class _Functions:
    """One file's functions, sorted by address, and its loadable segments.
    Where the distro ships the file's symbols apart (Debian's -dbg packages,
    found by build id), those name the functions the file itself does not
    export (the loader's, libc's internal ones)."""

    def __init__(self, elf, debug=None):
        self.loads = elf.loads()
        self.functions = (debug or elf).functions()

    def close(self):
        self.functions.close()

    def at(self, offset):
        """The name of the function holding the byte at this file offset, or None."""
        vaddr = next((offset - start + vaddr for start, vaddr, size in self.loads
                      if start <= offset < start + size), None)
        raw = self.functions.at(vaddr) if vaddr is not None else None
        return _demangle(raw) if raw is not None else None


def name(handle, file_maps, addr):
    """'function [library]' for a return address in the process, by its
    file_maps ([(start, end, offset, path)], procfs.ProcDir.file_maps());
    '[unknown] [library]' where the file has no symbol there, None outside
    every mapped file."""
    mapping = next((m for m in file_maps if m[0] <= addr < m[1]), None)
    if mapping is None:
        return None
    start, _, offset, path = mapping
    functions = _functions_of(handle, path)
    function = functions.at(addr - start + offset) if functions else None
    return f"{function or '[unknown]'} [{os.path.basename(path)}]"


def _functions_of(handle, path):
    """The file's _Functions, read through /proc/PID/root (a container's
    copy); None where it cannot be read."""
    fd = _open(handle, path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in _files:
            if len(_files) >= _FILES_KEPT:
                forget_files()
            try:
                elf = ElfFile(fd)
                _files[key] = _with_debug_file(handle, elf)
            except (ElfError, OSError):
                _files[key] = None
        return _files[key]
    finally:
        os.close(fd)


def forget_files():
    """Close the function tables read so far (each holds its file open)."""
    for functions in _files.values():
        if functions is not None:
            functions.close()
    _files.clear()


def _with_debug_file(handle, elf):
    build_id = elf.build_id()
    fd = _open(handle, f"{DEBUG_FILES}/{build_id[:2]}/{build_id[2:]}.debug") if build_id else None
    if fd is None:
        return _Functions(elf)
    try:
        return _Functions(elf, ElfFile(fd))
    except (ElfError, OSError):
        return _Functions(elf)
    finally:
        os.close(fd)


def _open(handle, path):
    try:
        return os.open("root" + path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=handle.fd)
    except (OSError, TypeError):   # TypeError: the handle was closed (fd None)
        return None


def _libstdcxx():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
        libc = ctypes.CDLL(None)
    except OSError:
        return None, None
    lib.__cxa_demangle.restype = ctypes.c_void_p
    lib.__cxa_demangle.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.POINTER(ctypes.c_int)]
    libc.free.argtypes = [ctypes.c_void_p]
    return lib, libc


_cxx, _libc = _libstdcxx()


def _demangle(raw):
    """A C++ name as a person writes it (libstdc++'s own demangler), else as is."""
    text = raw.decode(errors="replace")
    if not raw.startswith(b"_Z") or _cxx is None:
        return text
    status = ctypes.c_int()
    out = _cxx.__cxa_demangle(raw, None, None, ctypes.byref(status))
    if not out or status.value != 0:
        return text
    try:
        return ctypes.string_at(out).decode(errors="replace")
    finally:
        _libc.free(out)

