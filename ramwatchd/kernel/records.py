"""The ring buffer's records, mirrored from bpf/ramwatchd.h and decoded into
the typed events of events.py. The one place that knows the byte layout.

Each layout is written once, as ctypes fields (names as in the event types);
decoding unpacks with the equivalent struct format, which costs a fraction of
ctypes' per-field access on the hot path of a busy capture.
"""
import ctypes
import dataclasses
import operator
import struct

from . import cuda, events

_u32, _u64, _s64 = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int64
PY_FRAMES = 32     # bpf/ramwatchd.h
NATIVE_FRAMES = 16


def _chars(n):
    """A NUL-terminated string of at most n bytes."""
    return ctypes.c_char * n


def _bytes(n):
    """Raw bytes, kept as bytes rather than decoded as text."""
    return ctypes.c_ubyte * n


HEAD = [("ts_ns", _u64), ("tgid", _u32), ("tid", _u32), ("kind", _u32), ("pad", _u32), ("comm", _chars(16))]

# enum event_kind -> (the payload after the head, the event type it decodes to).
# Payload fields carry the event type's field names; "pad" is skipped.
LAYOUTS = {
    1: ([("addr", _u64), ("length", _u64), ("prot", _u64), ("flags", _u64), ("fd", _s64), ("ret", _s64)],
        events.Mmap),
    2: ([("addr", _u64), ("length", _u64), ("ret", _s64)], events.Munmap),
    3: ([("old_addr", _u64), ("old_length", _u64), ("new_length", _u64), ("flags", _u64), ("ret", _s64)],
        events.Mremap),
    4: ([("requested", _u64), ("ret", _s64)], events.Brk),
    5: ([("addr", _u64), ("length", _u64), ("advice", _u64), ("ret", _s64)], events.Madvise),
    6: ([("shmid", _s64), ("addr", _u64), ("shmflg", _u64), ("ret", _s64)], events.Shmat),
    7: ([("addr", _u64), ("ret", _s64)], events.Shmdt),
    8: ([("flags", _u64), ("ret", _s64), ("name", _chars(64))], events.MemfdCreate),
    9: ([("child", _u32), ("pad", _u32), ("child_boot_ns", _u64)], events.Fork),
    10: ([("old_pid", _u32), ("pad", _u32), ("filename", _chars(128))], events.Exec),
    11: ([("peak", _u64), ("peak_ns", _u64), ("peak_rss", _u64 * 4)], events.Exit),
    12: ([("renamed", _u32), ("pad", _u32), ("newcomm", _chars(16))], events.Rename),
    13: ([("victim", _u32), ("pad", _u32), ("anon", _u64), ("file", _u64), ("shmem", _u64),
          ("victim_comm", _chars(16))], events.OomVictim),
    14: ([("rss", _u64 * 4), ("known", _u32), ("pad", _u32)], events.RssStep),
    15: ([("name", _chars(64))], events.Mark),
    16: ([("addr", _u64), ("size", _u64), ("flags", _u64), ("caller", _u64), ("result", _s64),
          ("call", _u32), ("symbol", _u32)], events.CudaCall),
    17: ([("fd", _u32), ("pad", _u32), ("length", _u64), ("data", _bytes(512))], events.Output),
    18: ([("fault_addr", _u64), ("native_depth", _u32), ("depth", _u32), ("status", _u32),
          ("pad", _u32), ("native", _u64 * NATIVE_FRAMES), ("frames", _u64 * (2 * PY_FRAMES))], events.Stack),
}

_CODES = {_u32: "I", _u64: "Q", _s64: "q", ctypes.c_int32: "i"}


def _code(ctype):
    if issubclass(ctype, ctypes.Array):
        if ctype._type_ in (ctypes.c_char, ctypes.c_ubyte):
            return f"{ctype._length_}s"
        return f"{ctype._length_}{_CODES[ctype._type_]}"
    return _CODES[ctype]


class UnknownRecord(Exception):
    """A record of a kind or size this side does not know: the two sides disagree."""


class _Decoder:
    """One kind's layout: its struct format, and for each field of its event
    type, in the order the type takes them, how to read it from the values
    the format unpacks. Worked out once: a busy capture decodes thousands of
    records a second."""

    def __init__(self, payload, event_type):
        fields = HEAD + payload
        self.layout = type(event_type.__name__ + "Record", (ctypes.Structure,), {"_fields_": fields})
        self.format = struct.Struct("@" + "".join(_code(t) for _, t in fields))
        if self.format.size != ctypes.sizeof(self.layout):
            raise UnknownRecord(f"{event_type.__name__}: struct and ctypes layouts differ")
        self.event_type = event_type
        slots, at = {}, 0          # field name -> (its first value's index, its ctype)
        for name, ctype in fields:
            slots["pid" if name == "tgid" else name] = (at, ctype)
            at += _values_taken(ctype)
        self.getters = [_getter(event_type, f.name, slots)
                        for f in dataclasses.fields(event_type) if f.init and not f.kw_only]

    def decode(self, data):
        values = self.format.unpack_from(data)
        return self.event_type(*[get(values) for get in self.getters])


def _values_taken(ctype):
    if issubclass(ctype, ctypes.Array) and ctype._type_ not in (ctypes.c_char, ctypes.c_ubyte):
        return ctype._length_
    return 1


_ENUMS = {(events.Stack, "status"): events.StackStatus, (events.CudaCall, "call"): events.CudaCallKind,
          (events.CudaCall, "symbol"): cuda.SYMBOLS.__getitem__}


def _getter(event_type, name, slots):
    """How to read field `name` of event_type from a record's values."""
    at, ctype = slots[name]
    if event_type is events.Stack and name == "frames":     # (code, instruction) pairs, depth of them
        depth = slots["depth"][0]
        return lambda v: tuple(zip(v[at:at + 2 * v[depth]:2], v[at + 1:at + 2 * v[depth]:2]))
    if event_type is events.Stack and name == "native":
        depth = slots["native_depth"][0]
        return lambda v: v[at:at + min(v[depth], NATIVE_FRAMES)]
    if event_type is events.Output and name == "data":      # what was written, `length` bytes of it
        length = slots["length"][0]
        return lambda v: v[at][:v[length]]
    convert = _ENUMS.get((event_type, name))
    if convert is not None:
        return lambda v: convert(v[at])
    if issubclass(ctype, ctypes.Array) and ctype._type_ is ctypes.c_char:
        return lambda v: v[at].split(b"\0", 1)[0].decode(errors="replace")
    if _values_taken(ctype) > 1:
        return lambda v: v[at:at + ctype._length_]
    return operator.itemgetter(at)


_DECODERS = {kind: _Decoder(payload, event_type) for kind, (payload, event_type) in LAYOUTS.items()}
_KIND = struct.Struct("@QIII")   # ts_ns, tgid, tid, kind


def decode(data):
    """A ring-buffer record (its bytes) -> its typed event."""
    size = len(data)
    kind = _KIND.unpack_from(data)[3]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnknownRecord(f"unknown record kind {kind}")
    if size != decoder.format.size:
        raise UnknownRecord(f"record kind {kind} ({decoder.event_type.__name__}) is {size} bytes, "
                            f"{decoder.format.size} here: bpf/ramwatchd.h and records.py disagree")
    return decoder.decode(data)
