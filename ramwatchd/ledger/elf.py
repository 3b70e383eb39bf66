"""Just enough of an ELF64 little-endian file to place its symbols in a process:
where its loadable segments lie, the values of named symbols from .dynsym and
.symtab, and its functions, to name an address. Read with pread from an open descriptor, a few headers
and the symbol tables only, never the whole file (a libpython with debug
information is tens of MiB)."""
import array
import bisect
import itertools
import os
import struct
import sys

_IDENT = b"\x7fELF\x02\x01"      # magic, ELFCLASS64, ELFDATA2LSB
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
PT_LOAD, PT_NOTE = 1, 4
NT_GNU_BUILD_ID = 3
SHT_SYMTAB, SHT_DYNSYM = 2, 11
SHN_UNDEF = 0
STT_FUNC, STT_GNU_IFUNC = 2, 10


class ElfError(ValueError):
    """Not an ELF64 little-endian file, or a truncated one."""


class ElfFile:
    """An ELF file open at `fd` (the caller owns the descriptor)."""

    def __init__(self, fd):
        self.fd = fd
        header = self._read(0, _EHDR.size)
        if not header.startswith(_IDENT):
            raise ElfError("not an ELF64 little-endian file")
        (_, _, _, _, _, self.phoff, self.shoff, _, _,
         self.phentsize, self.phnum, self.shentsize, self.shnum, _) = _EHDR.unpack(header)

    def file_start_vaddr(self):
        """The virtual address the file's first byte is linked at: the first
        PT_LOAD's p_vaddr less its p_offset (0 and 0 for a shared library, 0x400000
        and 0 for a classic executable). A mapping of the file at offset 0 that
        starts at S puts every symbol at S - this + its value."""
        loads = self.loads()
        if not loads:
            raise ElfError("no loadable segment")
        offset, vaddr, _ = loads[0]
        return vaddr - offset

    def loads(self):
        """[(file offset, virtual address, bytes in the file)] of each PT_LOAD."""
        table = self._read(self.phoff, self.phnum * self.phentsize)
        out = []
        for i in range(self.phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz, *_ = _PHDR.unpack_from(table, i * self.phentsize)
            if p_type == PT_LOAD:
                out.append((p_offset, p_vaddr, p_filesz))
        return out

    def build_id(self):
        """The GNU build id in hex (what names the file's separate debug
        information under /usr/lib/debug/.build-id), or None."""
        table = self._read(self.phoff, self.phnum * self.phentsize)
        for i in range(self.phnum):
            p_type, _, p_offset, _, _, p_filesz, *_ = _PHDR.unpack_from(table, i * self.phentsize)
            if p_type != PT_NOTE:
                continue
            notes, pos = self._read(p_offset, p_filesz), 0
            while pos + 12 <= len(notes):
                namesz, descsz, kind = struct.unpack_from("<III", notes, pos)
                name_at = pos + 12
                desc_at = name_at + (namesz + 3) // 4 * 4
                if kind == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
                    return notes[desc_at:desc_at + descsz].hex()
                pos = desc_at + (descsz + 3) // 4 * 4
        return None

    def functions(self):
        """The Functions the file defines, from each of its symbol tables.
        Their names stay in the file, read when asked for (a libtorch's string
        table is 72 MiB): the Functions hold a descriptor of their own."""
        fd = os.dup(self.fd)
        return Functions(fd, [_FunctionTable(self._read(offset, size), _Names(fd, strings_at, strings_size))
                              for offset, size, strings_at, strings_size in self._symbol_sections()])

    def symbols(self, names):
        """{name: value} of those of `names` that the file defines, from .dynsym
        (what a stripped file keeps for the dynamic linker) and, for those it
        lacks, .symtab (tens of thousands of symbols where it is not stripped)."""
        wanted = [name.encode() for name in names]
        found = {}
        for table, strings in self._symbol_tables():
            if len(found) == len(wanted):
                break
            # A linker may share one string's tail with another name ("Py_Version"
            # inside "_Py_Version"), so every place the name ends is a candidate.
            at = {offset: name for name in wanted for offset in _occurrences(strings, name + b"\0")}
            for st_name, _, _, st_shndx, st_value, _ in _SYM.iter_unpack(table):
                if st_name in at and st_shndx != SHN_UNDEF:
                    found.setdefault(at[st_name].decode(), st_value)
        return found

    def _symbol_tables(self):
        """(symbols, their string table) of each symbol table, .dynsym first."""
        for offset, size, strings_at, strings_size in self._symbol_sections():
            yield self._read(offset, size), self._read(strings_at, strings_size)

    def _symbol_sections(self):
        """(offset, size, string table offset, its size) of each symbol table, .dynsym first."""
        sections = self._read(self.shoff, self.shnum * self.shentsize)
        headers = [_SHDR.unpack_from(sections, i * self.shentsize) for i in range(self.shnum)]
        tables = [h for h in headers if h[1] in (SHT_DYNSYM, SHT_SYMTAB)]
        for header in sorted(tables, key=lambda h: h[1] != SHT_DYNSYM):
            offset, size, link = header[4], header[5], header[6]
            if link >= len(headers):
                raise ElfError("symbol table linked to no string table")
            yield offset, size - size % _SYM.size, headers[link][4], headers[link][5]

    def _read(self, offset, size):
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise ElfError("truncated")
        return data


class Functions:
    """A file's functions by address: which one holds a virtual address."""

    def __init__(self, fd, tables):
        self.fd = fd
        self.tables = tables

    def close(self):
        os.close(self.fd)

    def at(self, vaddr):
        """The raw name of the function holding vaddr, or None. A file with
        both tables defines most functions in each: the closer start wins."""
        found = [hit for hit in (t.at(vaddr) for t in self.tables) if hit is not None]
        return max(found)[1] if found else None


class _FunctionTable:
    """One symbol table's functions, sorted by value, names left in the string
    table: a libtorch has hundreds of thousands, and few are ever asked for.
    Sorted without a Python loop over the entries (bytes and array slices pick
    the fields, translate tells functions apart): half a second for libtorch
    with a loop, a fraction with these."""

    def __init__(self, table, names):
        words = array.array("Q", table)
        halves = array.array("I", table)
        if sys.byteorder != "little":
            words.byteswap()
            halves.byteswap()
        count = len(words) // 3
        self.values, self.sizes, self.name_at = words[1::3], words[2::3], halves[0::6]
        self.names = names
        # st_info's low nibble is the type; st_shndx (2 bytes) is 0 where undefined.
        function = int.from_bytes(table[4::_SYM.size].translate(_IS_FUNCTION), "little")
        defined = int.from_bytes(table[6::_SYM.size].translate(_NONZERO), "little") | \
            int.from_bytes(table[7::_SYM.size].translate(_NONZERO), "little")
        wanted = (function & defined).to_bytes(count, "little")
        self.order = list(itertools.compress(range(count), wanted))
        self.order.sort(key=self.values.__getitem__)
        self.starts = array.array("Q", map(self.values.__getitem__, self.order))

    def at(self, vaddr):
        """(start, raw name) of the function holding vaddr, or None."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0 or not self.starts[i]:
            return None
        entry = self.order[i]
        if self.sizes[entry] and vaddr >= self.starts[i] + self.sizes[entry]:
            return None
        return self.starts[i], self.names.at(self.name_at[entry])


class _Names:
    """A string table read where a name is asked for."""

    def __init__(self, fd, offset, size):
        self.fd, self.offset, self.size = fd, offset, size

    def at(self, start):
        name = b""
        while start + len(name) < self.size:
            chunk = os.pread(self.fd, 256, self.offset + start + len(name))
            end = chunk.find(b"\0")
            if end >= 0 or not chunk:
                return name + chunk[:max(end, 0)]
            name += chunk
        return name


_IS_FUNCTION = bytes(int(info & 15 in (STT_FUNC, STT_GNU_IFUNC)) for info in range(256))
_NONZERO = bytes([0] + [1] * 255)


def _occurrences(data, needle):
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out
