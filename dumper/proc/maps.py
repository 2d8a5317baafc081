"""/proc/PID/maps and /proc/PID/smaps parsing (fs/proc/task_mmu.c
``show_map_vma``; VmFlags mnemonics from ``show_smap_vma_flags``, 3.8+)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..kernel.mman import PROT_EXEC, PROT_READ, PROT_WRITE

__all__ = ["Vma", "parse_maps", "maps_text", "TASK_SIZE_MAX"]

# Highest user address + 1 on x86_64 with 5-level paging (arch/x86/include/asm/
# page_64_types.h); [vsyscall] sits above every TASK_SIZE and is not in the mm.
TASK_SIZE_MAX = (1 << 56) - 4096

_HEX = frozenset(b"0123456789abcdef")


@dataclass(slots=True)
class Vma:
    """One line of /proc/PID/maps, plus smaps fields when read from smaps.

    ``start``/``end`` are byte addresses, end-exclusive. ``pgoff`` is the file
    offset in bytes (as maps prints it). ``path`` is the decoded name column:
    a file path, ``[heap]``/``[stack]``/``[vdso]``/``[vvar]``/``[vsyscall]``,
    ``[anon:NAME]``, or ``""`` for plain anonymous memory. ``vmflags`` holds
    the two-letter smaps ``VmFlags`` mnemonics (empty when read from maps).
    ``rss``/``swap``/``anonymous`` are smaps counters in bytes.
    """

    start: int
    end: int
    perms: str
    pgoff: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str
    vmflags: frozenset[str] = field(default_factory=frozenset)
    rss: int = 0
    swap: int = 0
    anonymous: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def nr_pages(self) -> int:
        return self.size // os.sysconf("SC_PAGE_SIZE")

    @property
    def prot(self) -> int:
        p = self.perms
        return (
            (PROT_READ if p[0] == "r" else 0)
            | (PROT_WRITE if p[1] == "w" else 0)
            | (PROT_EXEC if p[2] == "x" else 0)
        )

    @property
    def shared(self) -> bool:
        """VM_MAYSHARE: MAP_SHARED file, shared anonymous, memfd, SysV shm."""
        return self.perms[3] == "s"

    @property
    def file_backed(self) -> bool:
        """True when a file (or shmem object) backs the mapping."""
        return self.inode != 0 or self.path.startswith("/")

    @property
    def anonymous_private(self) -> bool:
        return not self.shared and not self.file_backed

    @property
    def special(self) -> str | None:
        """``[vdso]``, ``[vvar]``, ``[heap]``, ... or None."""
        if self.path.startswith("[") and not self.path.startswith("[anon:"):
            return self.path
        return None

    @property
    def pfnmap(self) -> bool:
        return "pf" in self.vmflags

    @property
    def io(self) -> bool:
        return "io" in self.vmflags

    @property
    def user(self) -> bool:
        """False for the [vsyscall] gate area, which no page walk visits."""
        return self.end <= TASK_SIZE_MAX

    def __repr__(self) -> str:
        return f"Vma({self.start:#x}-{self.end:#x} {self.perms} {self.path!r})"


def _parse_header(line: bytes) -> Vma:
    # "7f3c1c000000-7f3c1c021000 rw-p 00000000 00:00 0          [heap]"
    parts = line.split(None, 5)
    lo, _, hi = parts[0].partition(b"-")
    major, _, minor = parts[3].partition(b":")
    path = parts[5].rstrip(b"\n") if len(parts) > 5 else b""
    return Vma(
        start=int(lo, 16),
        end=int(hi, 16),
        perms=parts[1].decode(),
        pgoff=int(parts[2], 16),
        dev_major=int(major, 16),
        dev_minor=int(minor, 16),
        inode=int(parts[4]),
        path=os.fsdecode(path),
    )


_KB_FIELDS = {b"Rss": "rss", b"Swap": "swap", b"Anonymous": "anonymous"}

# One VMA header line of maps/smaps (task_mmu.c show_map_vma); the name may
# hold spaces, but never a newline (the kernel escapes it).
_HEADER = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) *([^\n]*)$",
                     re.MULTILINE)
_SMAPS_FIELDS = {
    "rss": re.compile(rb"^Rss: +(\d+) kB$", re.MULTILINE),
    "swap": re.compile(rb"^Swap: +(\d+) kB$", re.MULTILINE),
    "anonymous": re.compile(rb"^Anonymous: +(\d+) kB$", re.MULTILINE),
}
_VMFLAGS = re.compile(rb"^VmFlags: ?([^\n]*)$", re.MULTILINE)


def parse_maps(data: bytes) -> list[Vma]:
    """Parse the bytes of /proc/PID/maps or /proc/PID/smaps into VMAs.

    In bulk: one regular-expression pass for the headers and one per smaps
    field used (each VMA block has exactly one of each), so 64,000 VMAs
    parse in a fraction of a second; names, permissions and VmFlags sets
    repeat and are shared. Input whose blocks do not line up (an old kernel
    without some field) goes through a line-by-line parser instead.
    """
    smaps = b"\nVmFlags:" in data or data.startswith(b"VmFlags:") or b"\nRss:" in data
    fields = _smaps_columns(data) if smaps else None
    if fields is not None:
        heads = fields.pop("heads")
    else:
        heads = _HEADER.findall(data)
        if smaps:
            fields = {name: rx.findall(data) for name, rx in _SMAPS_FIELDS.items()}
            fields["vmflags"] = _VMFLAGS.findall(data)
            if any(len(v) != len(heads) for v in fields.values()):
                return _parse_lines(data)
        elif data.count(b"\n") + (not data.endswith(b"\n") and bool(data)) != len(heads):
            return _parse_lines(data)
    names: dict[bytes, str] = {}
    flagsets: dict[bytes, frozenset[str]] = {}
    perms: dict[bytes, str] = {}
    vmas = []
    for lo, hi, pm, off, major, minor, ino, name in heads:
        path = names.get(name)
        if path is None:
            path = names[name] = os.fsdecode(name)
        pstr = perms.get(pm)
        if pstr is None:
            pstr = perms[pm] = pm.decode()
        vmas.append(Vma(int(lo, 16), int(hi, 16), pstr, int(off, 16), int(major, 16), int(minor, 16),
                        int(ino), path))
    if smaps:
        for v, rss, swap, anon, fl in zip(vmas, fields["rss"], fields["swap"], fields["anonymous"],
                                          fields["vmflags"]):
            fs = flagsets.get(fl)
            if fs is None:
                fs = flagsets[fl] = frozenset(fl.decode().split())
            v.vmflags = fs
            v.rss, v.swap, v.anonymous = int(rss) * 1024, int(swap) * 1024, int(anon) * 1024
    return vmas


_HEADER_LINE = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ [^\n]*\n", re.MULTILINE)


def maps_text(smaps: bytes) -> bytes:
    """The /proc/PID/maps text that /proc/PID/smaps bytes hold: their VMA
    header lines, which the kernel prints with the same function as maps
    (fs/proc/task_mmu.c show_smap -> show_map_vma), byte for byte. A later
    maps read equal to it means the same VMAs as that smaps read."""
    return b"".join(_HEADER_LINE.findall(smaps))


def _smaps_columns(data: bytes) -> dict[str, list] | None:
    """smaps as columns, when every VMA block has the same lines in the same
    order (true of one kernel: show_smap prints a fixed list) -- the usual
    case, and ~10x faster than searching the whole text per field: lines
    are sliced by position (C speed), only headers and the fields used are
    parsed. None when the blocks do not line up."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    first = next((i for i, ln in enumerate(lines[:64]) if ln.startswith(b"VmFlags:")), None)
    if first is None:
        return None
    k = first + 1  # lines per block
    n, rest = divmod(len(lines), k)
    if rest or not n:
        return None
    block = [ln.partition(b":")[0] for ln in lines[1:k]]
    where = {name: block.index(key) + 1 for key, name in _KB_FIELDS.items() if key in block}
    if len(where) != len(_KB_FIELDS):
        return None
    heads = _HEADER.findall(b"\n".join(lines[0::k]))
    flag_lines = b"\n".join(lines[first::k])
    if len(heads) != n or flag_lines.count(b"VmFlags:") != n:
        return None
    out: dict[str, list] = {"heads": heads}
    for name, pos in where.items():
        column = b"\n".join(lines[pos::k])
        if column.count(block[pos - 1] + b":") != n:
            return None
        out[name] = _KB_NUMBER.findall(column)
        if len(out[name]) != n:
            return None
    out["vmflags"] = [ln[8:].strip() for ln in lines[first::k]]
    return out


_KB_NUMBER = re.compile(rb"(\d+) kB")


def _parse_lines(data: bytes) -> list[Vma]:
    """The line-by-line parser, for input the bulk one does not recognise."""
    vmas: list[Vma] = []
    cur: Vma | None = None
    for line in data.splitlines():
        if not line:
            continue
        if line[0] in _HEX:
            cur = _parse_header(line)
            vmas.append(cur)
            continue
        if cur is None:
            continue
        key, _, value = line.partition(b":")
        if key == b"VmFlags":
            cur.vmflags = frozenset(value.decode().split())
        elif key in _KB_FIELDS:
            setattr(cur, _KB_FIELDS[key], int(value.split()[0]) * 1024)
    return vmas
