"""Just enough of an ELF64 little-endian file to place its symbols in a process:
where its loadable segments lie, the values of named symbols from .dynsym and
.symtab, and its functions, to name an address. Read with pread from an open descriptor, a few headers
and the symbol tables only, never the whole file (a libpython with debug
information is tens of MiB)."""
import array
import operator
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
_first = operator.itemgetter(0)
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
        """(values, sizes, string tables, name offsets) of every function
        defined, sorted by value, names left in their tables: a libtorch has
        hundreds of thousands, and few are ever asked for. Read as arrays of
        64-bit words (an entry is three: name, info and section; value;
        size), which is several times faster than unpacking each entry."""
        found = []
        for table, strings in self._symbol_tables():
            words = array.array("Q", table)
            if sys.byteorder != "little":
                words.byteswap()
            heads, values, sizes = words[0::3], words[1::3], words[2::3]
            found += [(value, size, strings, head & 0xFFFFFFFF)
                      for head, value, size in zip(heads, values, sizes)
                      if value and head >> 48 != SHN_UNDEF and (head >> 32) & 15 in (STT_FUNC, STT_GNU_IFUNC)]
        found.sort(key=_first)
        return found

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
        sections = self._read(self.shoff, self.shnum * self.shentsize)
        headers = [_SHDR.unpack_from(sections, i * self.shentsize) for i in range(self.shnum)]
        tables = [h for h in headers if h[1] in (SHT_DYNSYM, SHT_SYMTAB)]
        for header in sorted(tables, key=lambda h: h[1] != SHT_DYNSYM):
            offset, size, link = header[4], header[5], header[6]
            if link >= len(headers):
                raise ElfError("symbol table linked to no string table")
            strings = headers[link]
            yield (self._read(offset, size - size % _SYM.size),
                   self._read(strings[4], strings[5]))

    def _read(self, offset, size):
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise ElfError("truncated")
        return data


def _occurrences(data, needle):
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out
