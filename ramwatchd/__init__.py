"""ramwatchd: where a process's host RAM went, class by class, seen from the kernel."""
import ctypes

__version__ = "0.1.0"

_libc = None


def mark(phase):
    """Name the phase the calling program enters, e.g. mark("loading weights").

    It is madvise(name, 0, MADV_NORMAL): a no-op for the kernel that ramwatchd's
    probe reads as a phase mark. Without ramwatchd it costs one syscall. A program
    that does not import ramwatchd can make the same call itself:
        ctypes.CDLL(None).madvise(b"loading weights", 0, 0)
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    _libc.madvise(ctypes.c_char_p(phase.encode()[:63]), ctypes.c_size_t(0), 0)
