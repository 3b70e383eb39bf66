"""The events ring buffer, read where the kernel writes it.

libbpf hands each record to a callback; through bcc and ctypes that is three
Python calls and a copy per record, a good part of what a busy capture
spends. This reads the buffer's pages in place instead, as libbpf's ringbuf.c
does in C: the consumer position page (ours to write), then the producer
position page and the data pages, mapped twice in a row so a record that
wraps reads as one piece. Each record is an 8-byte header (its length, a busy
bit while the kernel is still writing it, a discard bit) and the record,
padded to 8 bytes.

The kernel publishes a record with release stores, and libbpf reads it with
acquire loads. Python cannot issue those, but on x86-64 every load is an
acquire and every store a release, so plain aligned 8-byte accesses are
enough there; elsewhere RingReader.usable() says no and the caller keeps
libbpf's callbacks.
"""
import ctypes
import mmap
import platform
import select

_BUSY, _DISCARD = 1 << 31, 1 << 30
_HEADER = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class RingReader:
    """The records of one BPF ring buffer map (its fd and size in bytes)."""

    @staticmethod
    def usable():
        return platform.machine() in ("x86_64", "AMD64")

    def __init__(self, map_fd, size):
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._maps = []
        consumer = self._map(map_fd, page, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        producer = self._map(map_fd, page + 2 * size, mmap.PROT_READ, page)
        self._consumer = ctypes.c_uint64.from_address(consumer)
        self._producer = ctypes.c_uint64.from_address(producer)
        self._data = producer + page
        self._wait = select.epoll()
        self._wait.register(map_fd, select.EPOLLIN)

    def _map(self, fd, length, prot, offset):
        address = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
        if address in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), "mmap of the ring buffer failed")
        self._maps.append((address, length))
        return address

    def read(self, timeout_ms):
        """The records there now (bytes each); waits up to timeout_ms for one
        if there are none."""
        if self._consumer.value == self._producer.value and timeout_ms > 0:
            self._wait.poll(timeout_ms / 1000)
        out = []
        consumer, producer = self._consumer.value, self._producer.value
        while consumer < producer:
            at = self._data + (consumer & self._mask)
            header = ctypes.c_uint32.from_address(at).value
            if header & _BUSY:
                break        # still being written: the next read takes it
            length = header & ~(_BUSY | _DISCARD)
            if not header & _DISCARD:
                out.append(ctypes.string_at(at + _HEADER, length))
            consumer += (length + _HEADER + 7) & ~7
            self._consumer.value = consumer
        return out

    def close(self):
        self._wait.close()
        for address, length in self._maps:
            _libc.munmap(address, length)
        self._maps = []
