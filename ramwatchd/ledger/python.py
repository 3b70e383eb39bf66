"""The Python stack of a thread of a CPython 3.11-3.13 process, read from its
memory: what py-spy does, written so that a BPF program can do the same walk at
a memory syscall and leave the naming of the frames to user space.

The walk (walk_stack; the BPF side repeats it with bpf_probe_read_user):

    _PyRuntime.interpreters.head                 -> PyInterpreterState, ->next ... NULL
                                                    (newest first: the main one is last)
      .threads.head                              -> PyThreadState, ->next ... NULL (newest first)
        the one whose native_thread_id is the thread's id (the kernel's tid)
        its current frame: tstate->cframe->current_frame (3.11, 3.12)
                           tstate->current_frame         (3.13)
          -> _PyInterpreterFrame, ->previous ... NULL, innermost first:
             (f_code / f_executable, prev_instr / instr_ptr) of each frame,
             less the shims that CPython pushes where C calls into Python
             (owner == FRAME_OWNED_BY_CSTACK, 3.12+)

No thread-local storage is needed: the thread list is global. read_frame then
reads the code object of a (code object, instruction) pair: a Frame, whose file,
function and line (from the code object's co_linetable) it names when asked.

find_interpreter locates _PyRuntime through the symbol tables of libpython or
of the executable, and reads Py_Version from the process. The offsets of the
fields followed come from a table for 3.11 and 3.12, and from the process
itself for 3.13, which publishes them (_Py_DebugOffsets) at the start of
_PyRuntime for debuggers.
"""
import bisect
import errno
import os
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from . import procfs
from .elf import ElfError, ElfFile

# Bounds of the walk, for the BPF side to mirror: interpreters (a process with
# subinterpreters), thread states per interpreter.
MAX_INTERPRETERS = 8
MAX_THREADS = 256

_LIBPYTHON = re.compile(r"libpython\d")
_PYTHON_EXE = re.compile(r"python\d(\.\d+)?$")
_NEEDED = ("_PyRuntime", "PyCode_Type")
_VERSION = "Py_Version"         # PY_VERSION_HEX as an unsigned long, exported since 3.11
_MAX_NAME = 4096                # longer str objects are garbage, not names
_MAX_LINETABLE = 1 << 20
_FRAMES_KEPT = 1 << 16         # (code, instruction) pairs whose Frame is kept
_ONE_READ = 512                 # bytes read at a str or bytes object: its header and, mostly, its data


class Unsupported(Exception):
    """The process runs no Python whose stacks can be read; str() is the
    one-line reason."""


class NotYet(Unsupported):
    """No Python to read now: the process is no Python, or not yet (in its
    exec, before its loader maps libpython, or before it dlopens one)."""


@dataclass(frozen=True)
class Offsets:
    """Byte offsets of the fields a stack walk reads, in the structs of one
    CPython version (and two constants, marked)."""
    runtime_interpreters_head: int   # _PyRuntimeState.interpreters.head
    interp_next: int                 # PyInterpreterState.next
    interp_threads_head: int         # PyInterpreterState.threads.head
    tstate_next: int                 # PyThreadState.next
    tstate_native_thread_id: int     # PyThreadState.native_thread_id
    tstate_cframe: int               # PyThreadState.cframe (3.11, 3.12); -1 where there is none (3.13)
    current_frame: int               # current_frame in that _PyCFrame, or (3.13) in the PyThreadState
    frame_previous: int              # _PyInterpreterFrame.previous
    frame_code: int                  # _PyInterpreterFrame.f_code (f_executable in 3.13)
    frame_instr: int                 # _PyInterpreterFrame.prev_instr (instr_ptr in 3.13)
    frame_owner: int                 # _PyInterpreterFrame.owner, a char
    owned_by_cstack: int             # constant: FRAME_OWNED_BY_CSTACK, the owner of a shim
                                     # frame to skip; -1 in 3.11, which has none
    code_filename: int               # PyCodeObject.co_filename
    code_name: int                   # PyCodeObject.co_qualname ("Class.method")
    code_firstlineno: int            # PyCodeObject.co_firstlineno, an int
    code_linetable: int              # PyCodeObject.co_linetable, a bytes
    code_adaptive: int               # PyCodeObject.co_code_adaptive: the instructions, inline
    object_type: int                 # PyObject.ob_type
    var_size: int                    # PyVarObject.ob_size: a bytes' length, a code's code units
    bytes_data: int                  # PyBytesObject.ob_sval
    unicode_length: int              # PyASCIIObject.length, in characters
    unicode_state: int               # PyASCIIObject.state, the bit field read by _read_str
    unicode_ascii_data: int          # sizeof(PyASCIIObject): where a compact ASCII str's data starts
    unicode_compact_data: int        # sizeof(PyCompactUnicodeObject): the same for other compact strs


# What 3.11 and 3.12 share (Include/object.h, Include/cpython/bytesobject.h,
# Include/cpython/unicodeobject.h): ob_type after ob_refcnt; ob_size after both;
# a bytes' ob_sval after ob_size and ob_shash; a str's length, hash, then state.
_OBJECTS = dict(object_type=8, var_size=16, bytes_data=32, unicode_length=16, unicode_state=32)

# offsetof() and sizeof() compiled against each version's own headers
# (Include/internal/pycore_{runtime,interp,frame}.h, Include/cpython/{pystate,code}.h,
# installed with CPython 3.11.7 and 3.12.1); LP64, so the same on x86_64 and aarch64.
_OFFSETS = {
    (3, 11): Offsets(
        **_OBJECTS,
        runtime_interpreters_head=40,   # five ints, _finalizing, then interpreters {mutex, head}
        interp_next=0,
        interp_threads_head=16,         # threads {next_unique_id, head}
        tstate_next=8,                  # after prev
        tstate_native_thread_id=160,
        tstate_cframe=56,
        current_frame=8,                # after int use_tracing
        frame_previous=48,              # after f_func f_globals f_builtins f_locals f_code frame_obj
        frame_code=32,
        frame_instr=56,                 # prev_instr
        frame_owner=69,                 # after int stacktop, bool is_entry
        owned_by_cstack=-1,             # owners are THREAD, GENERATOR, FRAME_OBJECT only
        code_filename=112, code_name=128, code_firstlineno=72, code_linetable=136, code_adaptive=184,
        unicode_ascii_data=48,          # PyASCIIObject still has wstr in 3.11
        unicode_compact_data=72,        # + utf8_length, utf8, wstr_length
    ),
    (3, 12): Offsets(
        **_OBJECTS,
        runtime_interpreters_head=40,
        interp_next=0,
        interp_threads_head=72,         # after id, id_refcount, ..., monitoring versions
        tstate_next=8,
        tstate_native_thread_id=144,
        tstate_cframe=56,
        current_frame=0,                # use_tracing is gone
        frame_previous=8,               # f_code moved first, previous second
        frame_code=0,
        frame_instr=56,                 # prev_instr
        frame_owner=70,                 # after int stacktop, uint16_t return_offset
        owned_by_cstack=3,              # FRAME_OWNED_BY_CSTACK
        code_filename=112, code_name=128, code_firstlineno=68, code_linetable=136, code_adaptive=192,
        unicode_ascii_data=40,          # wstr removed (PEP 623)
        unicode_compact_data=56,        # + utf8_length, utf8
    ),
}

# _Py_DebugOffsets of 3.13 (Include/internal/pycore_runtime.h at v3.13.0): the
# cookie "xdebugpy", then uint64_t fields in this order, in these groups (the
# gc group, last, is not needed). 3.14 inserts fields (interpreter_state.threads_main
# ...) and turns f_executable into a tagged _PyStackRef, so it is not read as 3.13.
_DEBUG_COOKIE = b"xdebugpy"
_DEBUG_OFFSETS_3_13 = (
    "head: version free_threaded",
    "runtime_state: size finalizing interpreters_head",
    "interpreter_state: size id next threads_head gc imports_modules sysdict builtins ceval_gil"
    " gil_runtime_state gil_runtime_state_enabled gil_runtime_state_locked gil_runtime_state_holder",
    "thread_state: size prev next interp current_frame thread_id native_thread_id datastack_chunk status",
    "interpreter_frame: size previous executable instr_ptr localsplus owner",
    "code_object: size filename name qualname linetable firstlineno argcount localsplusnames"
    " localspluskinds co_code_adaptive",
    "pyobject: size ob_type",
    "type_object: size tp_name tp_repr tp_flags",
    "tuple_object: size ob_item ob_size",
    "list_object: size ob_item ob_size",
    "dict_object: size ma_keys ma_values",
    "float_object: size ob_fval",
    "long_object: size lv_tag ob_digit",
    "bytes_object: size ob_size ob_sval",
    "unicode_object: size state length asciiobject_size",
)
_FRAME_OWNED_BY_CSTACK_3_13 = 3    # Include/internal/pycore_frame.h; not among the debug offsets
_UTF8_FIELDS = 16                  # PyCompactUnicodeObject adds utf8_length and utf8 to PyASCIIObject (3.12+)


@dataclass
class Interpreter:
    """The CPython of one process. Its cache of code objects is that process's."""
    version: tuple                  # (major, minor, micro), from Py_Version
    runtime: int                    # address of _PyRuntime in the process
    code_type: int                  # address of PyCode_Type: the ob_type of every code object
    offsets: Offsets
    path: str                       # the file holding _PyRuntime, as the process names it
    codes: dict = field(default_factory=dict, repr=False, compare=False)   # address -> _Code
    frames: dict = field(default_factory=dict, repr=False, compare=False)  # (code, instruction) -> Frame

    def kernel_layout(self):
        """The kernel's struct py_layout for this interpreter (bpf/ramwatchd.h)."""
        off = self.offsets
        return {"runtime": self.runtime, "runtime_interpreters_head": off.runtime_interpreters_head,
                "interp_threads_head": off.interp_threads_head, "tstate_next": off.tstate_next,
                "tstate_native_thread_id": off.tstate_native_thread_id, "tstate_cframe": off.tstate_cframe,
                "current_frame": off.current_frame, "frame_previous": off.frame_previous,
                "frame_code": off.frame_code, "frame_instr": off.frame_instr}


class Site(NamedTuple):
    filename: str
    function: str                   # co_qualname: "Class.method", "<module>"
    line: int                       # None for an instruction with no line (an artificial one)


def find_interpreter(handle):
    """The Interpreter of the process of a procfs.ProcDir. Raises Unsupported
    where it runs no Python this module reads (none, stripped, before 3.11, 3.14
    on, free-threaded), and procfs's errors where the process is gone (a zombie:
    ZombieProcess) or may not be read.

    The answer holds from the moment libpython is mapped: a process read in
    its exec, before its loader maps libpython, or before it dlopens one (a
    program embedding Python as a plugin) is refused too, and may be asked again."""
    path, symbols = _interpreter_symbols(handle)
    name = os.path.basename(path)
    if _VERSION not in symbols:
        raise Unsupported(f"{name}: Python before 3.11 (no Py_Version symbol)")
    with _Memory(handle) as mem:
        hexversion = mem.u64(symbols[_VERSION])
        if hexversion is None:
            raise NotYet(f"{name}: Py_Version unreadable")
        version = (hexversion >> 24, hexversion >> 16 & 0xFF, hexversion >> 8 & 0xFF)
        offsets = _offsets(mem, version, hexversion, symbols["_PyRuntime"])
    return Interpreter(version, symbols["_PyRuntime"], symbols["PyCode_Type"], offsets, path)


def walk_stack(handle, interp, native_tid, max_frames=32):
    """[(code object address, instruction address)] of the Python frames of
    the thread `native_tid` (its id in the kernel), innermost first, at most
    max_frames; [] for a thread that runs no Python code now; None where no
    thread state has that id (a thread that never ran Python, or Python not
    initialized yet)."""
    off = interp.offsets
    with _Memory(handle) as mem:
        tstate = _thread_state(mem, interp, native_tid)
        if tstate is None:
            return None
        frames = []
        # A shim frame sits below each Python frame at most, hence twice as many links.
        for frame in _linked(mem, _current_frame(mem, off, tstate), off.frame_previous, 2 * max_frames):
            if mem.byte(frame + off.frame_owner) == off.owned_by_cstack:
                continue
            frames.append((mem.u64(frame + off.frame_code), mem.u64(frame + off.frame_instr)))
            if len(frames) == max_frames:
                break
        return frames


def read_frame(handle, interp, code_addr, instr_addr):
    """The Frame of the instruction at instr_addr in the code object at
    code_addr, or None where that code object is gone (its memory unmapped,
    freed, or holding something else now)."""
    return read_frames(handle, interp, [(code_addr, instr_addr)])[0]


def read_frames(handle, interp, frames):
    """read_frame of each (code, instruction) of a stack: the process's
    memory is opened once, and only for code objects not read before."""
    out, mem = [], None
    try:
        for code_addr, instr_addr in frames:
            # A loop's stacks repeat: a frame seen before costs a lookup, while its code is current.
            frame = interp.frames.get((code_addr, instr_addr))
            if frame is not None and interp.codes.get(code_addr) is frame.code:
                out.append(frame)
                continue
            if not code_addr or not instr_addr:
                out.append(None)
                continue
            index = (instr_addr - code_addr - interp.offsets.code_adaptive) // 2   # _Py_CODEUNIT: 2 bytes
            code = interp.codes.get(code_addr)
            # An instruction outside a cached code object: the address holds another one now.
            if code is None or not code.holds(index):
                mem = mem or _Memory(handle)
                code = _read_code(mem, interp, code_addr)
                if code is not None and code.holds(index):
                    interp.codes[code_addr] = code
                else:
                    code = None
            frame = code and Frame(code, index)
            if frame is not None:
                if len(interp.frames) >= _FRAMES_KEPT:
                    interp.frames.clear()
                interp.frames[code_addr, instr_addr] = frame
            out.append(frame)
    finally:
        if mem is not None:
            mem.close()
    return out


class Frame:
    """A Python frame as the kernel saw it: a code object, and the code unit
    it was at. Its line is worked out when it is asked for: most frames are
    never shown, and a module's line table has thousands of entries."""
    __slots__ = ("code", "index")

    def __init__(self, code, index):
        self.code, self.index = code, index

    def __eq__(self, other):
        return isinstance(other, Frame) and self.code is other.code and self.index == other.index

    def __hash__(self):
        return hash((id(self.code), self.index))

    @property
    def function(self):
        return self.code.function

    def site(self):
        return Site(self.code.filename, self.code.function, self.code.line_at(self.index))


def line_of(linetable, firstlineno, index):
    """The line of the instruction at code unit `index` by a co_linetable, the
    location table of PEP 657 (CPython's Objects/locations.md), found as
    _PyCode_CheckLineNumber finds it; None for an instruction with no line."""
    return line_in(line_table(linetable, firstlineno), firstlineno, index)


def line_table(linetable, firstlineno):
    """(ends, lines): entry i covers the code units up to ends[i], on
    lines[i] (None: no location). Read once per code object: a module's
    table has thousands of entries.

    Each entry covers 1-8 code units and starts with a byte with its top bit
    set: bits 3-6 its kind, bits 0-2 its length less one. Kinds 13 (no
    columns) and 14 (long) move the line by a signed varint after that byte,
    10-12 by kind - 10, the short forms 0-9 not at all; 15 means no location."""
    ends, lines = [], []
    line, end, pos, size = firstlineno, 0, 0, len(linetable)
    while pos < size:
        kind, units = linetable[pos] >> 3 & 15, (linetable[pos] & 7) + 1
        if kind in (13, 14):
            line += _signed_varint(linetable, pos + 1)
        elif 10 <= kind <= 12:
            line += kind - 10
        end += units
        ends.append(end)
        lines.append(None if kind == 15 else line)
        pos += 1
        while pos < size and not linetable[pos] & 0x80:
            pos += 1
    return ends, lines


def line_in(table, firstlineno, index):
    """The line of code unit `index` by a line_table."""
    if index < 0:
        return firstlineno      # a frame not started yet, as PyCode_Addr2Line says
    ends, lines = table
    i = bisect.bisect_right(ends, index)
    return lines[i] if i < len(lines) else None


def _signed_varint(table, pos):
    """locations.md's svarint: 6-bit chunks, lowest first, bit 6 set where
    another follows; the value's lowest bit is its sign."""
    value = shift = 0
    while pos < len(table):
        byte = table[pos]
        pos += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            break
    return -(value >> 1) if value & 1 else value >> 1


# --- finding the interpreter ---

def _interpreter_symbols(handle):
    """(path, {symbol: address in the process}) of the mapped file that holds
    _PyRuntime: libpython where the executable links it, else the executable
    (Python linked statically, or a program embedding it)."""
    files = _mapped_files(handle)
    if not files:
        handle.status()     # a zombie has no mappings left: this raises ZombieProcess
        raise NotYet("no files mapped (a kernel thread, or a process in its exec)")
    exe = handle.exe()
    candidates = [p for p in files if _LIBPYTHON.match(os.path.basename(p))]
    candidates += [exe] if exe in files else []
    for path in candidates:
        symbols = _symbols_in(handle, path, files[path])
        if all(name in symbols for name in _NEEDED):
            return path, symbols
    pythons = [os.path.basename(p) for p in candidates
               if _LIBPYTHON.match(os.path.basename(p)) or _PYTHON_EXE.match(os.path.basename(p))]
    if pythons:
        raise Unsupported(f"{pythons[0]}: no _PyRuntime symbol (stripped, or Python before 3.7)")
    raise NotYet(f"not a Python process: {os.path.basename(exe) or 'its executable'} "
                      "has no _PyRuntime symbol and maps no libpython")


def _mapped_files(handle):
    """{path: start} of the files mapped from their first byte, the lowest
    such mapping of each: where the loader put the file's start."""
    out = {}
    for line in handle.read("maps").splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith(b"/") and int(parts[2], 16) == 0:
            out.setdefault(parts[5].decode(errors="replace"), int(parts[0].split(b"-")[0], 16))
    return out


_SYMBOLS_KEPT = 256
_symbol_cache = {}      # (device, inode, mtime) -> {symbol: value in the file}


def _symbols_in(handle, path, start):
    """{symbol: address in the process} of the symbols needed that `path`
    defines, the file read through /proc/PID/root: in a container, the
    container's file. {} where it cannot be read (deleted since it was mapped).
    A file's symbols are read once: a shell script execs the same programs
    again and again, and a server's processes share one libpython."""
    try:
        fd = os.open("root" + path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=handle.fd)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in _symbol_cache:
            elf = ElfFile(fd)
            if len(_symbol_cache) >= _SYMBOLS_KEPT:
                _symbol_cache.clear()
            _symbol_cache[key] = (elf.file_start_vaddr(), elf.symbols(_NEEDED + (_VERSION,)))
        file_start, symbols = _symbol_cache[key]
        return {name: start - file_start + value for name, value in symbols.items()}
    except (ElfError, OSError):
        return {}
    finally:
        os.close(fd)


FRAME_BYTES = 64    # the kernel reads a frame's first 64 bytes at once (bpf/stacks.bpf.c)


def _offsets(mem, version, hexversion, runtime):
    if version[:2] in _OFFSETS:
        offsets = _OFFSETS[version[:2]]
    elif version[:2] == (3, 13):
        offsets = _debug_offsets(mem, version, hexversion, runtime)
    else:
        raise Unsupported(f"Python {_dotted(version)}: not supported (3.11 to 3.13 are)")
    if any(off % 8 or not 0 <= off < FRAME_BYTES
           for off in (offsets.frame_previous, offsets.frame_code, offsets.frame_instr)):
        raise Unsupported(f"Python {_dotted(version)}: a frame's fields lie beyond its first {FRAME_BYTES} bytes")
    return offsets


def _debug_offsets(mem, version, hexversion, runtime):
    """The Offsets of a 3.13 process, from the _Py_DebugOffsets it keeps at
    the start of _PyRuntime."""
    names = [f"{group}.{name}" for line in _DEBUG_OFFSETS_3_13
             for group, _, fields in [line.partition(": ")] for name in fields.split()]
    raw = mem.read(runtime, len(_DEBUG_COOKIE) + 8 * len(names))
    if raw is None or not raw.startswith(_DEBUG_COOKIE):
        raise Unsupported(f"Python {_dotted(version)}: no _Py_DebugOffsets at _PyRuntime")
    d = dict(zip(names, struct.unpack_from(f"<{len(names)}Q", raw, len(_DEBUG_COOKIE))))
    if d["head.version"] != hexversion:
        raise Unsupported(f"Python {_dotted(version)}: _Py_DebugOffsets of another version")
    if d["head.free_threaded"]:
        raise Unsupported(f"Python {_dotted(version)}: free-threaded builds are not supported")
    return Offsets(
        runtime_interpreters_head=d["runtime_state.interpreters_head"],
        interp_next=d["interpreter_state.next"],
        interp_threads_head=d["interpreter_state.threads_head"],
        tstate_next=d["thread_state.next"],
        tstate_native_thread_id=d["thread_state.native_thread_id"],
        tstate_cframe=-1,
        current_frame=d["thread_state.current_frame"],
        frame_previous=d["interpreter_frame.previous"],
        frame_code=d["interpreter_frame.executable"],
        frame_instr=d["interpreter_frame.instr_ptr"],
        frame_owner=d["interpreter_frame.owner"],
        owned_by_cstack=_FRAME_OWNED_BY_CSTACK_3_13,
        code_filename=d["code_object.filename"],
        code_name=d["code_object.qualname"],
        code_firstlineno=d["code_object.firstlineno"],
        code_linetable=d["code_object.linetable"],
        code_adaptive=d["code_object.co_code_adaptive"],
        object_type=d["pyobject.ob_type"],
        var_size=d["bytes_object.ob_size"],
        bytes_data=d["bytes_object.ob_sval"],
        unicode_length=d["unicode_object.length"],
        unicode_state=d["unicode_object.state"],
        unicode_ascii_data=d["unicode_object.asciiobject_size"],
        unicode_compact_data=d["unicode_object.asciiobject_size"] + _UTF8_FIELDS,
    )


def _dotted(version):
    return ".".join(map(str, version))


# --- the walk ---

def _linked(mem, first, next_offset, limit):
    """The nodes of a NULL-ended linked list, at most `limit` of them: an
    unreadable link ends it too (the list changed under the read)."""
    node = first
    for _ in range(limit):
        if not node:
            return
        yield node
        node = mem.u64(node + next_offset)


def _thread_state(mem, interp, native_tid):
    """The PyThreadState of the thread native_tid, or None."""
    off = interp.offsets
    interpreters = _linked(mem, mem.u64(interp.runtime + off.runtime_interpreters_head),
                           off.interp_next, MAX_INTERPRETERS)
    for state in interpreters:
        for tstate in _linked(mem, mem.u64(state + off.interp_threads_head), off.tstate_next, MAX_THREADS):
            if mem.u64(tstate + off.tstate_native_thread_id) == native_tid:
                return tstate
    return None


def _current_frame(mem, off, tstate):
    # 3.11, 3.12: through the thread's _PyCFrame; 3.13: in the thread state
    holder = mem.u64(tstate + off.tstate_cframe) if off.tstate_cframe >= 0 else tstate
    return mem.u64(holder + off.current_frame) if holder else None


# --- code objects ---

@dataclass(eq=False)
class _Code:
    """What a code object says of where its instructions are."""
    filename: str
    function: str
    firstlineno: int
    linetable: bytes
    units: int                      # code units in co_code_adaptive
    table: list = field(default_factory=list, compare=False)   # [line_table], once asked for

    def holds(self, index):
        # -1: a frame not started yet points before its first instruction (3.11, 3.12)
        return -1 <= index < self.units

    def line_at(self, index):
        if not self.table:
            self.table.append(line_table(self.linetable, self.firstlineno))
        return line_in(self.table[0], self.firstlineno, index)


def _read_code(mem, interp, address):
    """The _Code at address, or None where no code object is there."""
    off = interp.offsets
    head = mem.read(address, off.code_adaptive)     # every field up to the instructions
    if head is None or _u64(head, off.object_type) != interp.code_type or not _alive(head):
        return None
    filename = _read_str(mem, off, _u64(head, off.code_filename))
    function = _read_str(mem, off, _u64(head, off.code_name))
    linetable = _read_bytes(mem, off, _u64(head, off.code_linetable))
    if filename is None or function is None or linetable is None:
        return None
    firstlineno, = struct.unpack_from("<i", head, off.code_firstlineno)
    units, = struct.unpack_from("<q", head, off.var_size)
    return _Code(filename, function, firstlineno, linetable, units)


def _alive(head):
    """Whether an object's ob_refcnt (its first field) is a count: freeing an
    object writes a free-list link there (pymalloc's, or malloc's, which
    overwrites ob_type too), a pointer or NULL. Immortal objects count
    0xFFFFFFFF (3.12, 3.13)."""
    return 0 < _u64(head, 0) <= 0xFFFFFFFF


# PyASCIIObject.state, 3.11-3.13: interned:2, kind:3, compact:1, ascii:1, then others.
_KIND_SHIFT, _KIND_MASK, _COMPACT, _ASCII = 2, 7, 1 << 5, 1 << 6
_ENCODINGS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}     # PyUnicode_{1,2,4}BYTE_KIND


def _read_str(mem, off, address):
    """A compact str, as every name and file name of a code object is: its
    characters follow its header. None for anything else."""
    if not address:
        return None
    # Most names fit in one read with their header; near the end of a mapping, the header alone.
    head = mem.read(address, _ONE_READ) or mem.read(address, off.unicode_state + 4)
    if head is None:
        return None
    length, = struct.unpack_from("<q", head, off.unicode_length)
    state, = struct.unpack_from("<I", head, off.unicode_state)
    kind = state >> _KIND_SHIFT & _KIND_MASK
    if not state & _COMPACT or kind not in _ENCODINGS or not 0 <= length <= _MAX_NAME:
        return None
    start = off.unicode_ascii_data if state & _ASCII else off.unicode_compact_data
    end = start + length * kind
    data = head[start:end] if end <= len(head) else mem.read(address + start, length * kind)
    return None if data is None else data.decode(_ENCODINGS[kind], errors="replace")


def _read_bytes(mem, off, address):
    if not address:
        return None
    head = mem.read(address, _ONE_READ) or mem.read(address, off.bytes_data)
    size = None if head is None else _u64(head, off.var_size)
    if size is None or size > _MAX_LINETABLE:
        return None
    end = off.bytes_data + size
    return head[off.bytes_data:end] if end <= len(head) else mem.read(address + off.bytes_data, size)


def _u64(raw, offset):
    return int.from_bytes(raw[offset:offset + 8], "little")


# --- process memory ---

class _Memory:
    """A process's memory, through /proc/PID/mem: an address that is not
    mapped reads as None; a process gone or not to be read raises what a
    ProcDir read raises."""

    def __init__(self, handle):
        self.pid = handle.pid
        if handle.fd is None:
            raise procfs.NoSuchProcess(handle.pid, "gone (reading mem)")
        try:
            self.fd = os.open("mem", os.O_RDONLY | os.O_CLOEXEC, dir_fd=handle.fd)
        except OSError as err:
            raise _process_error(err, handle.pid) from None

    def read(self, address, size):
        try:
            data = os.pread(self.fd, size, address)
        except OverflowError:       # a garbage pointer past the largest file offset
            return None
        except OSError as err:
            if err.errno in (errno.EIO, errno.EFAULT, errno.EINVAL):
                return None
            raise _process_error(err, self.pid) from None
        # Short only where the process's memory is gone (it exited): nothing there.
        return data if len(data) == size else None

    def u64(self, address):
        data = self.read(address, 8)
        return None if data is None else int.from_bytes(data, "little")

    def byte(self, address):
        data = self.read(address, 1)
        return None if data is None else data[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        os.close(self.fd)


def _process_error(err, pid):
    if err.errno in (errno.ENOENT, errno.ESRCH):
        return procfs.NoSuchProcess(pid, "gone (reading mem)")
    if err.errno in (errno.EACCES, errno.EPERM):
        return procfs.AccessDenied(pid, "not allowed to read mem")
    return procfs.ProcessError(pid, f"reading mem: {err.strerror}")
