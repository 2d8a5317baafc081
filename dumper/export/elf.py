"""ELF core files from checkpoints: what the kernel's own core dump of the
process would hold, in the same order and layout (fs/binfmt_elf.c
``elf_core_dump``, fs/coredump.c ``vma_dump_size``), written from the
checkpoint's images instead of the live process::

    with open_checkpoint("/ckpt/2") as ck, open("core", "w+b") as f:
        result = write_core(ck, ck.root_pid, f)
    export_elf("/ckpt/2", "core.1234")             # safe output, one process
    core_of_process(1234, "core.1234")             # freeze, dump, write: like gcore

Layout: ELF header (ET_CORE, EM_X86_64), program headers (PT_NOTE, then
PT_LOAD segments in address order, ``p_align`` the page size, ``p_flags``
from the VMA's prot), the notes, padding to a page, then each segment's
bytes. Notes, in the kernel's order: for the first thread (the leader)
NT_PRSTATUS, NT_PRPSINFO, NT_SIGINFO, NT_AUXV, NT_FILE, NT_PRFPREG,
NT_X86_XSTATE (NT_X86_SHSTK where a shadow stack is on); for each other
thread NT_PRSTATUS, NT_PRFPREG, NT_X86_XSTATE; then NT_X86_XSAVE_LAYOUT
(:mod:`.xstate`).

Which VMAs have bytes in the file (``p_filesz``), as the kernel decides
with the coredump_filter recorded at dump time (default 0x33 when the
checkpoint has none; ``with_file_pages`` adds MMF_DUMP_MAPPED_PRIVATE):

* [vdso], [vvar], [vsyscall], [uprobes]: always, whole (the kernel's
  ``always_dump_vma``); [vvar] and [vsyscall] are not in the checkpoint and
  the kernel cannot read them either: file holes;
* VM_DONTDUMP (``dd``: MADV_DONTDUMP, e.g. sanitizer shadow) and VM_IO:
  nothing; hugetlb by the filter's hugetlb bits;
* shared memory (shared anonymous, memfd, SysV; MMF_DUMP_ANON_SHARED, on
  by default): whole, the bytes of the object the checkpoint saved once
  for the tree (holes where it holds no page); an object the checkpoint
  does not hold (a pre-dump): nothing. MAP_SHARED file mappings
  (MMF_DUMP_MAPPED_SHARED, off by default) keep their contents in the
  file, not the checkpoint: nothing (``p_filesz = 0``); gdb reads them
  from the file NT_FILE names;
* private VMAs the process wrote to (the kernel's ``anon_vma``; here: the
  checkpoint holds pages of it, its own or, in a forked tree, pages it
  shares copy-on-write, stored once), with MMF_DUMP_ANON_PRIVATE: whole. Pages
  the dump did not save are never-touched anonymous memory (file holes)
  or, in a private file mapping, the file's own bytes (read from the
  mapped file, so gdb sees what the process saw, not zeros);
* other private file mappings: nothing (gdb reads them from the files
  NT_FILE lists), or whole with MMF_DUMP_MAPPED_PRIVATE; but the first page
  of a readable mapping at file offset 0 that starts with the ELF magic
  (MMF_DUMP_ELF_HEADERS): the ELF and program headers, so gdb finds the
  build-ids of the libraries;
* anything else: nothing.

Sparse: bytes never saved are holes (seeked over, never written), so the
allocated size follows the saved pages. The kernel's layout gives each
VMA one PT_LOAD with ``p_filesz = p_memsz``; that is kept unless the holes
would exceed max(the bytes written, 256 MiB) (a 16 TiB reservation would
make a 16 TiB file, more than ext4 can hold): then, largest first, the
untouched tail of a segment is left out of ``p_filesz`` (readers take
``p_memsz - p_filesz`` as zeros) and a large untouched stretch inside one
ends the segment, a new PT_LOAD starting at the next saved page.

Registers: as captured (``thread_info.captured_gpregs``), so a thread
stopped in a system call shows as gdb attached to the live process shows
it; checkpoints without them (older dumps, CRIU's) give the restore
registers, where a thread interrupted in a restartable syscall appears
about to execute its ``syscall`` instruction again (ip two bytes back, ax
= the syscall number). There is no "current" signal: ``pr_cursig`` 0 and
an NT_SIGINFO of zeros, as gcore writes for a process that got none.

Errors: ImageError (or a subclass) for a damaged or incomplete checkpoint,
raised before the output is committed, so no partial core is left; a
mapped file that changed or vanished since the dump only costs its
untouched pages (holes) and adds a line to ``CoreResult.notes``.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import CorruptImage, DumpError, ImageError
from ..image import format as fmt
from ..image.checkpoint import PSTREE_NAME, Checkpoint, CheckpointProcess, open_checkpoint, read_pstree
from ..image.mapped import ImageDir, MappedFileError, printable_path
from ..image.safefs import OutputDir, OutputFile
from ..image.shared import is_shmem_vma
from ..image.pb import core_pb2
from ..kernel import elf
from ..kernel.mman import MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE
from . import xstate

__all__ = ["CoreResult", "ElfExportResult", "write_core", "export_elf", "core_of_process", "HOLE_ALLOWANCE"]

# Holes allowed in the file beyond the bytes written (see the module docstring).
HOLE_ALLOWANCE = 256 << 20
_MTYPE_X86_64 = core_pb2.core_entry.X86_64
_SPECIAL_STATUS = fmt.VMA_AREA_VDSO | fmt.VMA_AREA_VVAR | fmt.VMA_AREA_VSYSCALL | fmt.VMA_AREA_UPROBES
_SPECIAL_NAMES = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")
_SHARED_STATUS = (fmt.VMA_FILE_SHARED | fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC | fmt.VMA_AREA_MEMFD
                  | fmt.VMA_AREA_SOCKET)
_TASK_STOPPED, _TASK_ZOMBIE = 3, 6  # CRIU's task_state
_U64 = np.uint64


@dataclass(slots=True)
class CoreResult:
    """One core written. Sizes in bytes: ``data_bytes`` copied from the
    checkpoint and mapped files, ``note_bytes`` of notes, ``apparent`` the
    file's length, ``allocated`` its disk blocks (st_blocks * 512, known
    once written). ``notes``: what could not be put in as the kernel would."""

    path: str
    pid: int
    threads: int
    vmas: int
    segments: int
    data_bytes: int
    file_fill_bytes: int
    note_bytes: int
    apparent: int
    allocated: int = 0
    elapsed_ns: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class ElfExportResult:
    source: str
    out: str
    cores: list[CoreResult]
    checkpoint_pages: int = 0  # pages the checkpoint (and its parents) recorded for these processes

    def to_json(self) -> dict:
        return {"source": self.source, "out": self.out, "checkpoint_pages": self.checkpoint_pages,
                "cores": [c.to_json() for c in self.cores]}


# --- the thread state ----------------------------------------------------------


@dataclass(slots=True)
class _Thread:
    tid: int
    core: core_pb2.core_entry
    path: Path


def _load_core_image(d: ImageDir, tid: int) -> _Thread:
    name = fmt.core_name(tid)
    path = d.path / name
    if not d.exists(name):
        raise ImageError(path, None, f"missing: the checkpoint holds no state for thread {tid} (a pre-dump, "
                         "or a dump made before threads were saved); an ELF core needs every thread's registers")
    with d.open(name) as f:
        kind = fmt.read_magic(f, path)
        if kind != "CORE":
            raise CorruptImage(path, 0, f"expected a CORE image, found {kind}")
        entries = list(fmt.iter_entries(f, path, 8))
    if len(entries) != 1:
        raise CorruptImage(path, 8, f"holds {len(entries)} core entries, expected 1")
    off, payload = entries[0]
    core = fmt.parse_entry(core_pb2.core_entry, payload, path, off)
    if core.mtype != _MTYPE_X86_64 or not core.HasField("thread_info"):
        raise CorruptImage(path, off, f"not an x86_64 thread (mtype {core.mtype}): cannot make an x86_64 core")
    return _Thread(tid, core, path)


def _load_threads(d: ImageDir, proc: CheckpointProcess) -> list[_Thread]:
    """The threads, leader first (pstree order), each with its core image."""
    tids = list(dict.fromkeys(proc.threads)) or [proc.pid]
    if proc.pid in tids:
        tids.remove(proc.pid)
        tids.insert(0, proc.pid)
    return [_load_core_image(d, tid) for tid in tids]


# --- notes -----------------------------------------------------------------------


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    hdr = elf.Elf64_Nhdr(n_namesz=len(name) + 1, n_descsz=len(desc), n_type=ntype)
    return bytes(hdr) + _pad4(name + b"\0") + _pad4(desc)


_GREG_NAMES = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
               "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
assert len(_GREG_NAMES) == elf.ELF_NGREG


@dataclass(slots=True)
class _Ids:
    pid: int
    ppid: int
    pgrp: int
    sid: int


def _sigset(signals) -> int:
    mask = 0
    for s in signals:
        if len(s.siginfo) >= 4:
            signo = struct.unpack_from("<i", s.siginfo)[0]
            if 1 <= signo <= 64:
                mask |= 1 << (signo - 1)
    return mask


def _prstatus(t: _Thread, ids: _Ids, leader_core) -> bytes:
    ti = t.core.thread_info
    regs = ti.captured_gpregs if ti.HasField("captured_gpregs") else ti.gpregs
    st = elf.elf_prstatus()
    c = st.common
    tc = t.core.thread_core
    c.pr_sigpend = _sigset(tc.signals_p.signals)
    if tc.HasField("blk_sigset"):
        c.pr_sighold = tc.blk_sigset
    elif leader_core.HasField("tc"):
        c.pr_sighold = leader_core.tc.blk_sigset
    c.pr_pid, c.pr_ppid, c.pr_pgrp, c.pr_sid = t.tid, ids.ppid, ids.pgrp, ids.sid
    st.pr_reg[:] = [getattr(regs, n) for n in _GREG_NAMES]
    st.pr_fpvalid = 1
    return bytes(st)


def _psargs(ck: Checkpoint, pid: int, mm) -> bytes:
    """fs/binfmt_elf.c fill_psinfo: the start of the argument area, NULs as
    spaces; the executable's path (or nothing) when the area is not saved."""
    n = min(max(mm.mm_arg_end - mm.mm_arg_start, 0), elf.ELF_PRARGSZ - 1) if mm is not None else 0
    if n:
        try:
            return ck.read(pid, mm.mm_arg_start, n).replace(b"\0", b" ")
        except (ImageError, ValueError):
            pass
    exe = mm.exe_path if mm is not None and mm.HasField("exe_path") else ""
    return os.fsencode(exe)[: elf.ELF_PRARGSZ - 1]


def _prpsinfo(ck: Checkpoint, proc: CheckpointProcess, leader: _Thread, ids: _Ids) -> bytes:
    ps = elf.elf_prpsinfo()
    tc = leader.core.tc if leader.core.HasField("tc") else None
    state = tc.task_state if tc is not None else 1
    # "RSDTZW"[i] for the kernel's state bit i - 1; a checkpoint tells alive, stopped, zombie.
    i = {_TASK_STOPPED: 3, _TASK_ZOMBIE: 4}.get(state, 0)
    ps.pr_state, ps.pr_sname, ps.pr_zomb = bytes([i]), b"RSDTZW"[i:i + 1], bytes([i == 4])
    thc = leader.core.thread_core
    ps.pr_nice = max(-128, min(127, thc.sched_nice))
    ps.pr_flag = tc.flags if tc is not None else 0
    if thc.HasField("creds"):
        ps.pr_uid, ps.pr_gid = thc.creds.uid, thc.creds.gid
    ps.pr_pid, ps.pr_ppid, ps.pr_pgrp, ps.pr_sid = ids.pid, ids.ppid, ids.pgrp, ids.sid
    comm = tc.comm if tc is not None and tc.comm else thc.comm
    ps.pr_fname = comm.encode(errors="replace")[: elf.TASK_COMM_LEN - 1]
    ps.pr_psargs = _psargs(ck, proc.pid, proc.mm)
    return bytes(ps)


def _auxv(mm) -> bytes:
    """NT_AUXV: the saved auxv up to and including its AT_NULL pair."""
    words = list(mm.mm_saved_auxv) if mm is not None else []
    out = []
    for k in range(0, len(words) - 1, 2):
        out += words[k:k + 2]
        if words[k] == 0:
            break
    else:
        out += [0, 0]
    return struct.pack(f"<{len(out)}Q", *out)


def _vma_file_name(ck: Checkpoint, proc: CheckpointProcess, vma) -> str | None:
    """The name the kernel's d_path gives the VMA's file, or None without one."""
    if vma.HasField("path"):
        return vma.path if vma.path.startswith("/") else None
    if vma.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED):
        try:
            path, _, _ = ck.mapped_file(proc, vma)
        except ImageError:
            return None
        return path
    return None


def _file_note(ck: Checkpoint, proc: CheckpointProcess) -> bytes | None:
    """NT_FILE (fs/binfmt_elf.c fill_files_note): every VMA with a file,
    ``(start, end, offset in pages)`` then the names; None when too big."""
    ps = proc.page_size
    rows, names = [], []
    for v in proc.vmas:
        name = _vma_file_name(ck, proc, v)
        if name is not None:
            rows.append((v.start, v.end, v.pgoff // ps))
            names.append(os.fsencode(name) + b"\0")
    data = struct.pack("<QQ", len(rows), ps) + b"".join(struct.pack("<QQQ", *r) for r in rows) + b"".join(names)
    return data if len(data) < elf.MAX_FILE_NOTE_SIZE else None


def _fp_notes(t: _Thread, layout: xstate.XstateLayout, notes_out: list[str]) -> bytes:
    fp = t.core.thread_info.fpregs
    out = _note(elf.NN_CORE, elf.NT_PRFPREG, bytes(xstate.fxsave_bytes(fp, t.path)))
    if fp.HasField("xsave") and layout.xfeatures:
        buf, dropped = xstate.xstate_bytes(fp, layout, t.path)
        if dropped:
            notes_out.append(f"thread {t.tid}: xsave components {', '.join(dropped)} are not on this CPU: "
                             "left out of NT_X86_XSTATE")
        out += _note(elf.NN_LINUX, elf.NT_X86_XSTATE, buf)
        cet = fp.xsave.cet if fp.xsave.HasField("cet") else None
        if cet is not None and cet.cet & 1:  # CET_SHSTK_EN: the thread runs on a shadow stack
            out += _note(elf.NN_LINUX, elf.NT_X86_SHSTK, struct.pack("<Q", cet.ssp))
    return out


def _notes(ck: Checkpoint, proc: CheckpointProcess, threads: list[_Thread], ids: _Ids,
           notes_out: list[str]) -> bytes:
    layout = xstate.xstate_layout()
    leader = threads[0]
    parts = []
    for i, t in enumerate(threads):
        parts.append(_note(elf.NN_CORE, elf.NT_PRSTATUS, _prstatus(t, ids, leader.core)))
        if i == 0:
            parts.append(_note(elf.NN_CORE, elf.NT_PRPSINFO, _prpsinfo(ck, proc, leader, ids)))
            parts.append(_note(elf.NN_CORE, elf.NT_SIGINFO, bytes(elf.SIGINFO_SIZE)))
            parts.append(_note(elf.NN_CORE, elf.NT_AUXV, _auxv(proc.mm)))
            files = _file_note(ck, proc)
            if files is not None:
                parts.append(_note(elf.NN_CORE, elf.NT_FILE, files))
            else:
                notes_out.append(f"NT_FILE left out: more than {elf.MAX_FILE_NOTE_SIZE} bytes, as the kernel does")
        parts.append(_fp_notes(t, layout, notes_out))
    if layout.components:
        parts.append(_note(elf.NN_LINUX, elf.NT_X86_XSAVE_LAYOUT, xstate.xsave_layout_desc(layout)))
    return b"".join(parts)


# --- which memory goes in --------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    """One PT_LOAD. Bytes: ``vaddr``, ``memsz``, ``filesz``; ``source``:
    "anon" (saved pages, holes between), "file" (saved pages, the mapped
    file's bytes between) or "none"; ``vma`` for file reads."""

    vaddr: int
    memsz: int
    filesz: int
    flags: int
    source: str
    vma: object
    offset: int = 0


@dataclass(slots=True)
class _VmaPlan:
    vma: object
    kind: str  # "none", "anon", "file", "header"
    runs: tuple  # saved pages inside the VMA: (starts, ends) in pages


def _pflags(prot: int) -> int:
    return ((elf.PF_R if prot & PROT_READ else 0) | (elf.PF_W if prot & PROT_WRITE else 0)
            | (elf.PF_X if prot & PROT_EXEC else 0))


def _vmflags(vma) -> frozenset[str]:
    return frozenset(vma.vmflags.split()) if vma.HasField("vmflags") else frozenset()


def _recorded_pages(proc: CheckpointProcess) -> tuple[np.ndarray, np.ndarray]:
    """Pages with data (PE_PRESENT, PE_PARENT, or PE_COW: stored once in
    another process's stream of a tree), as merged page intervals."""
    ent = proc.entries
    keep = ent.mask(fmt.PE_PRESENT | fmt.PE_PARENT | fmt.PE_COW)
    starts = ent.vaddr[keep] // _U64(proc.page_size)
    return _merged(starts, starts + ent.nr_pages[keep])


def _merged(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending intervals with touching ones joined."""
    if len(starts) < 2:
        return starts, ends
    brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    return starts[np.concatenate(([0], brk))], ends[np.concatenate((brk - 1, [len(ends) - 1]))]


def _shared_runs(ck: Checkpoint, vma) -> tuple[np.ndarray, np.ndarray] | None:
    """Pages of a shared memory VMA (shared anonymous, memfd, SysV) its
    object stores in the checkpoint, as page intervals of the mapping's
    addresses; None when the checkpoint does not hold the object (a
    pre-dump, a set without it)."""
    if not is_shmem_vma(vma):
        return None
    obj, a, b = ck.shared.vma_ranges(vma)
    if obj is None or not obj.saved:
        return None
    ps = _U64(ck.page_size)
    return _merged(a // ps, b // ps)


def _runs_per_vma(proc: CheckpointProcess, rec: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    ps = _U64(proc.page_size)
    vs = np.array([v.start for v in proc.vmas], _U64) // ps
    ve = np.array([v.end for v in proc.vmas], _U64) // ps
    out = [(np.empty(0, _U64), np.empty(0, _U64)) for _ in proc.vmas]
    rs, re_ = rec
    if not len(rs) or not len(vs):
        return out
    lo = np.searchsorted(re_, vs, side="right")
    hi = np.searchsorted(rs, ve, side="left")
    for i in np.flatnonzero(hi > lo).tolist():
        s = np.maximum(rs[lo[i]:hi[i]], vs[i])
        e = np.minimum(re_[lo[i]:hi[i]], ve[i])
        out[i] = (s, e)
    return out


def _plan_vma(vma, runs, filt: int, shared_saved: bool = False) -> tuple[str, str]:
    """(kind, why nothing) for one VMA, fs/coredump.c vma_dump_size's order.
    ``shared_saved``: a shared memory VMA whose object the checkpoint holds
    (``runs`` are then the object's pages in the mapping)."""
    def want(bit):
        return bool(filt & bit)

    flags = _vmflags(vma)
    special = vma.status & _SPECIAL_STATUS or (vma.HasField("path") and vma.path in _SPECIAL_NAMES)
    skipped = vma.HasField("dumped") and not vma.dumped
    shared = bool(vma.status & _SHARED_STATUS or vma.flags & MAP_SHARED)
    if special:
        return "anon", ""
    if "dd" in flags:
        return "none", ""
    if "ht" in flags:
        if want(elf.MMF_DUMP_HUGETLB_SHARED if shared else elf.MMF_DUMP_HUGETLB_PRIVATE):
            return ("none", "shared") if shared or skipped else ("anon", "")
        return "none", ""
    if "io" in flags:
        return "none", ""
    if shared:
        deleted = (vma.status & (fmt.VMA_ANON_SHARED | fmt.VMA_AREA_MEMFD | fmt.VMA_AREA_SYSVIPC)
                   or (vma.HasField("path") and vma.path.endswith(" (deleted)")))
        if want(elf.MMF_DUMP_ANON_SHARED if deleted else elf.MMF_DUMP_MAPPED_SHARED):
            return ("anon", "") if shared_saved else ("none", "shared")
        return "none", ""
    file_backed = bool(vma.status & fmt.VMA_FILE_PRIVATE)
    if len(runs[0]) and want(elf.MMF_DUMP_ANON_PRIVATE):
        return ("file" if file_backed and not skipped else "anon"), ""
    if not file_backed:
        return "none", ""
    if want(elf.MMF_DUMP_MAPPED_PRIVATE):
        return ("anon" if skipped else "file"), ""
    if want(elf.MMF_DUMP_ELF_HEADERS) and vma.pgoff == 0 and vma.prot & PROT_READ:
        return "header", ""
    return "none", ""


def _is_elf(ck: Checkpoint, pid: int, vma, notes_out: list[str]) -> bool:
    try:
        return ck.read(pid, vma.start, 4) == elf.ELFMAG
    except CorruptImage:
        raise
    except ImageError as err:  # the mapped file is gone or changed: no header page
        notes_out.append(f"ELF header page at {vma.start:#x} left out: {err}")
        return False


def _file_known(ck: Checkpoint, proc: CheckpointProcess, vma, notes_out: list[str]) -> bool:
    """Whether the image names the file behind a private file VMA (a CRIU
    set may not): without it, untouched pages cannot be filled."""
    path, _, why = ck.mapped_file(proc, vma)
    if path is None:
        notes_out.append(f"{vma.start:#x}-{vma.end:#x}: untouched pages left as holes: {why}")
    return path is not None


def _segments(plans: list[_VmaPlan], ps: int) -> list[_Segment]:
    """Kernel layout: one PT_LOAD per VMA; whole where the plan says so."""
    segs = []
    for p in plans:
        v = p.vma
        size = v.end - v.start
        filesz = {"none": 0, "header": ps}.get(p.kind, size)
        segs.append(_Segment(v.start, size, min(filesz, size), _pflags(v.prot), p.kind, v))
    return segs


def _fit_holes(segs: list[_Segment], plans: list[_VmaPlan], ps: int, allowance: int) -> list[_Segment]:
    """Trim and split "anon" segments until the file's holes fit the
    allowance (module docstring): the largest untouched stretches first
    (a segment's tail before a split of the same size: it costs no program
    header), so small VMAs keep the kernel's layout. All in pages."""
    written = sum(s.filesz for s in segs if s.source != "anon") // ps
    parts = []  # per segment: (size, kind 0 tail / 1 split, segment, gap start, gap end), arrays in pages
    for i, (s, p) in enumerate(zip(segs, plans)):
        if s.source != "anon" or not s.filesz:
            continue
        vs, ve = _U64(s.vaddr // ps), _U64((s.vaddr + s.memsz) // ps)
        rs, re_ = p.runs
        written += int((re_ - rs).sum()) if len(rs) else 0
        a = np.concatenate(([vs], re_)).astype(_U64)  # gaps: before each run, then the tail
        b = np.concatenate((rs, [ve])).astype(_U64)
        kind = np.ones(len(a), np.int8)
        kind[-1] = 0
        ok = b > a
        parts.append((b[ok] - a[ok], kind[ok], np.full(int(ok.sum()), i), a[ok], b[ok]))
    holes = sum(s.filesz for s in segs) // ps - written
    budget = max(written, allowance // ps)
    if holes <= budget or not parts:
        return segs
    size, kind, seg, ga, gb = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((kind, -size.astype(np.int64)))
    need = np.searchsorted(np.cumsum(size[order].astype(np.int64)), holes - budget) + 1
    take = order[:need]
    trims = {int(i): int(a) for i, a, k in zip(seg[take], ga[take], kind[take]) if k == 0}
    splits: dict[int, list[tuple[int, int]]] = {}
    for i, a, b, k in zip(seg[take].tolist(), ga[take].tolist(), gb[take].tolist(), kind[take].tolist()):
        if k:
            splits.setdefault(i, []).append((a, b))
    out = []
    for i, s in enumerate(segs):
        if i not in trims and i not in splits:
            out.append(s)
            continue
        end = s.vaddr + s.memsz
        start = s.vaddr
        for a, b in sorted(splits.get(i, [])):  # [start, b) holds data up to a, then a new segment at b
            out.append(_Segment(start, b * ps - start, a * ps - start, s.flags, s.source, s.vma))
            start = b * ps
        data_end = trims[i] * ps if i in trims else end
        out.append(_Segment(start, end - start, max(data_end - start, 0), s.flags, s.source, s.vma))
    return out


# --- writing -------------------------------------------------------------------


def _headers(segs: list[_Segment], notes: bytes, ps: int) -> tuple[bytes, int, bytes]:
    """Assign the segments' file offsets; returns (ELF header, program
    headers and notes; the file's size; the extended-numbering section
    header to write at its end, or b"")."""
    nseg = len(segs) + 1  # PT_NOTE
    extnum = nseg >= elf.PN_XNUM
    notes_off = ctypes.sizeof(elf.Elf64_Ehdr) + nseg * ctypes.sizeof(elf.Elf64_Phdr)
    pos = notes_off + len(notes)
    pos += -pos % ps
    for s in segs:
        s.offset = pos
        pos += s.filesz
    eh = elf.Elf64_Ehdr()
    eh.e_ident[:] = list(elf.ELFMAG + bytes([elf.ELFCLASS64, elf.ELFDATA2LSB, elf.EV_CURRENT, elf.ELFOSABI_NONE]))\
        + [0] * (elf.EI_NIDENT - 8)
    eh.e_type, eh.e_machine, eh.e_version = elf.ET_CORE, elf.EM_X86_64, elf.EV_CURRENT
    eh.e_phoff = ctypes.sizeof(elf.Elf64_Ehdr)
    eh.e_ehsize, eh.e_phentsize = ctypes.sizeof(elf.Elf64_Ehdr), ctypes.sizeof(elf.Elf64_Phdr)
    eh.e_phnum = elf.PN_XNUM if extnum else nseg
    shdr = b""
    if extnum:  # fs/binfmt_elf.c fill_extnum_info: the count in section header 0
        eh.e_shoff, eh.e_shentsize, eh.e_shnum = pos, ctypes.sizeof(elf.Elf64_Shdr), 1
        shdr = bytes(elf.Elf64_Shdr(sh_type=elf.SHT_NULL, sh_size=1, sh_info=nseg))
    ph = [bytes(elf.Elf64_Phdr(p_type=elf.PT_NOTE, p_offset=notes_off, p_filesz=len(notes), p_align=4))]
    for s in segs:
        ph.append(bytes(elf.Elf64_Phdr(p_type=elf.PT_LOAD, p_flags=s.flags, p_offset=s.offset, p_vaddr=s.vaddr,
                                       p_filesz=s.filesz, p_memsz=s.memsz, p_align=ps)))
    head = bytes(eh) + b"".join(ph) + notes
    return head, pos + len(shdr), shdr


def _guard_free(proc: CheckpointProcess, lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` without guard regions (reading those faults: holes)."""
    out, pos = [], lo
    for g in proc.guards:
        if g.end <= pos or g.start >= hi:
            continue
        if g.start > pos:
            out.append((pos, g.start))
        pos = max(pos, g.end)
    if pos < hi:
        out.append((pos, hi))
    return out


class _Writer:
    def __init__(self, ck: Checkpoint, proc: CheckpointProcess, f: BinaryIO, notes_out: list[str]) -> None:
        self.ck, self.proc, self.f, self.notes_out = ck, proc, f, notes_out
        self.data_bytes = 0
        self.file_fill = 0

    def _put(self, seg: _Segment, addr: int, chunks) -> None:
        self.f.seek(seg.offset + (addr - seg.vaddr))
        for _, chunk in chunks:
            self.f.write(chunk)
            self.data_bytes += len(chunk)

    def _runs(self, seg: _Segment, runs: tuple, lo: int | None = None, hi: int | None = None) -> int:
        """Write the saved pages of ``runs`` in the segment's file part (or
        in ``[lo, hi)`` of it, bytes); returns the bytes written."""
        ps = self.proc.page_size
        lo = max(seg.vaddr, lo if lo is not None else 0) // ps
        hi = min(seg.vaddr + seg.filesz, hi if hi is not None else 1 << 64) // ps
        rs, re_ = runs
        if not len(rs) or hi <= lo:
            return 0
        before = self.data_bytes
        i, j = np.searchsorted(re_, lo, side="right"), np.searchsorted(rs, hi, side="left")
        # A shared memory VMA's pages are its object's (read through the VMA); others', the pagemap's.
        recorded = not is_shmem_vma(seg.vma)
        for s, e in zip(np.maximum(rs[i:j], lo).tolist(), np.minimum(re_[i:j], hi).tolist()):
            self._put(seg, s * ps, self.ck.iter_chunks(self.proc.pid, s * ps, (e - s) * ps, recorded_only=recorded))
        return self.data_bytes - before

    def _file_end(self, vma) -> int | None:
        """Where the mapped file's last page ends in the VMA (pages past the
        end of a file do not exist: the kernel leaves holes), or None."""
        _, ident, _ = self.ck.mapped_file(self.proc, vma)
        if ident is None or ident.size is None:
            return None
        ps = self.proc.page_size
        return vma.start + max(0, -(-ident.size // ps) * ps - vma.pgoff)

    def _file(self, seg: _Segment, runs: tuple) -> None:
        """Saved pages, and the mapped file's bytes between them."""
        before = self.data_bytes
        saved = 0
        end = seg.vaddr + seg.filesz
        file_end = self._file_end(seg.vma)
        fill_end = min(end, file_end) if file_end is not None else end
        try:
            for a, b in _guard_free(self.proc, seg.vaddr, fill_end):
                self._put(seg, a, self.ck.iter_chunks(self.proc.pid, a, b - a))
        except CorruptImage:
            raise
        except ImageError as err:  # the file: gone, changed, shorter; a broken chain fails again below
            v = seg.vma
            self.notes_out.append(f"{v.start:#x}-{v.end:#x} {printable_path(v.path) if v.HasField('path') else ''}: "
                                  f"untouched pages left as holes: {err}")
            fill_end = seg.vaddr
        saved += self._runs(seg, runs, fill_end, end)  # saved pages the file did not cover
        rs, re_ = runs
        ps = self.proc.page_size
        if len(rs):  # saved pages inside what was filled are not from the file
            lo, hi = seg.vaddr // ps, fill_end // ps
            inside = np.minimum(re_, hi).astype(np.int64) - np.maximum(rs, lo).astype(np.int64)
            saved += int(inside.clip(min=0).sum()) * ps if hi > lo else 0
        self.file_fill += max(self.data_bytes - before - saved, 0)

    def write(self, seg: _Segment, runs: tuple) -> None:
        if not seg.filesz:
            return
        if seg.source == "anon":
            self._runs(seg, runs)
        elif seg.source in ("file", "header"):
            self._file(seg, runs)


def write_core(ck: Checkpoint, pid: int | None, f: BinaryIO, *, with_file_pages: bool = False,
               coredump_filter: int | None = None, hole_allowance: int = HOLE_ALLOWANCE) -> CoreResult:
    """Write the ELF core of process ``pid`` (None: the root) of checkpoint
    ``ck`` into ``f`` (a new, empty, seekable binary file: holes are left
    by seeking, the length set at the end). ``coredump_filter`` overrides
    the recorded one; ``with_file_pages`` adds MMF_DUMP_MAPPED_PRIVATE.
    Returns a :class:`CoreResult` (``path`` and ``allocated`` are left to
    the caller). Raises ImageError for a checkpoint without thread state
    (core images) or memory layout (mm image), CorruptImage for damaged
    images or page data."""
    t0 = time.monotonic_ns()
    proc = ck.process(pid)
    if proc.mm is None:
        raise ImageError(proc.mm_path, None, "missing: the checkpoint has no memory layout for this process "
                         "(a pre-dump?): an ELF core needs its VMAs")
    d = ImageDir(ck.path)
    try:
        threads = _load_threads(d, proc)
        tree = [e for e in read_pstree(d.path / PSTREE_NAME, d.open(PSTREE_NAME)) if e.pid == proc.pid] \
            if d.exists(PSTREE_NAME) else []
    finally:
        d.close()
    ids = _Ids(proc.pid, tree[0].ppid if tree else (proc.ppid or 0), tree[0].pgid if tree else 0,
               tree[0].sid if tree else 0)
    notes_out: list[str] = []
    mm = proc.mm
    filt = coredump_filter if coredump_filter is not None else \
        (mm.coredump_filter if mm.HasField("coredump_filter") else elf.MMF_DUMP_FILTER_DEFAULT)
    if with_file_pages:
        filt |= elf.MMF_DUMP_MAPPED_PRIVATE
    ps = proc.page_size
    runs = _runs_per_vma(proc, _recorded_pages(proc))
    plans, missing_shared = [], 0
    for v, r in zip(proc.vmas, runs):
        sr = _shared_runs(ck, v)
        if sr is not None:
            r = sr
        kind, why = _plan_vma(v, r, filt, sr is not None)
        if kind in ("file", "header") and not _file_known(ck, proc, v, notes_out):
            kind = "anon" if kind == "file" else "none"
        if kind == "header" and not _is_elf(ck, proc.pid, v, notes_out):
            kind = "none"
        missing_shared += why == "shared"
        plans.append(_VmaPlan(v, kind, r))
    if missing_shared:
        notes_out.append(f"{missing_shared} shared mappings have no bytes in the core (p_filesz 0): the "
                         "checkpoint does not hold their contents (MAP_SHARED files keep theirs: gdb reads them "
                         "from the files; shared memory objects a pre-dump did not save)")
    notes = _notes(ck, proc, threads, ids, notes_out)
    segs = _fit_holes(_segments(plans, ps), plans, ps, hole_allowance)
    head, size, shdr = _headers(segs, notes, ps)
    runs_of = {id(p.vma): p.runs for p in plans}
    f.write(head)
    w = _Writer(ck, proc, f, notes_out)
    for s in segs:
        w.write(s, runs_of[id(s.vma)])
    if shdr:
        f.seek(size - len(shdr))
        f.write(shdr)
    f.truncate(size)
    return CoreResult(path="", pid=proc.pid, threads=len(threads), vmas=len(proc.vmas), segments=len(segs),
                      data_bytes=w.data_bytes, file_fill_bytes=w.file_fill, note_bytes=len(notes), apparent=size,
                      elapsed_ns=time.monotonic_ns() - t0, notes=notes_out)


# --- outputs -----------------------------------------------------------------------


def _allocated(path: str | os.PathLike) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_blocks * 512
    except OSError:
        return 0


def _chain_pages(ck: Checkpoint, pid: int) -> int:
    proc = ck.process(pid)
    return proc.entries.pages(fmt.PE_PRESENT | fmt.PE_PARENT)


def export_elf(src: str | os.PathLike, out: str | os.PathLike, *, pid: int | None = None, force: bool = False,
               with_file_pages: bool = False) -> ElfExportResult:
    """One ELF core per process of checkpoint ``src``: ``out`` is the core
    file when there is one process (or ``pid`` picks one), else a directory
    of ``core.PID`` files. Created through :mod:`dumper.image.safefs`:
    complete or absent, 0600 (a directory 0700). Raises ImageError for a damaged checkpoint, DumpError for an
    output that exists (without ``force``) or cannot be created."""
    with open_checkpoint(src) as ck:
        pids = [ck.process(pid).pid] if pid is not None else list(ck.pids)
        cores = []
        if len(pids) == 1:
            with OutputFile(out, force=force) as o:
                r = write_core(ck, pids[0], o.file, with_file_pages=with_file_pages)
                dest = o.commit()
            r.path, r.allocated = os.fspath(dest), _allocated(dest)
            cores.append(r)
        else:
            with OutputDir(out, force=force, sources=[ck.path], what="directory of cores") as o:
                for p in pids:
                    f = o.dir.create(f"core.{p}")
                    try:
                        cores.append(write_core(ck, p, f, with_file_pages=with_file_pages))
                        f.sync_close()
                    except BaseException:
                        getattr(f, "discard", f.close)()
                        raise
                dest = o.commit()
            for r in cores:
                r.path = os.fspath(Path(dest) / f"core.{r.pid}")
                r.allocated = _allocated(r.path)
        pages = sum(_chain_pages(ck, p) for p in pids)
        return ElfExportResult(source=os.fspath(ck.path), out=os.fspath(dest), cores=cores, checkpoint_pages=pages)


def core_of_process(pid: int, out: str | os.PathLike, *, thaw: str = "resume", with_file_pages: bool = False,
                    force: bool = False, freeze_timeout: float = 5.0, compress: bool = True) -> tuple[CoreResult, object]:
    """``gcore PID``: freeze the process, dump it into a private temporary
    checkpoint beside ``out`` (zstd unless ``compress`` is false: half the
    bytes through the disk, measured faster overall than raw pages), let it
    go (``thaw``: "resume", "leave-stopped" or "kill", as ``dumper dump``),
    then write its core to ``out`` and remove the checkpoint. The process
    runs again as soon as its pages are copied; the core shows it as it was
    when frozen. Returns
    ``(CoreResult, DumpResult)``. Raises what :func:`dumper.dump.dump` and
    :func:`export_elf` raise; ``out`` is refused before the process is
    touched if it exists (without ``force``)."""
    import shutil
    import tempfile

    from ..dump import dump

    with OutputFile(out, force=force) as o:
        try:
            tmp = tempfile.mkdtemp(prefix=".dumper-core-", dir=os.path.dirname(os.path.abspath(out)))
        except OSError as err:
            raise DumpError(f"cannot make a temporary checkpoint next to {out}: {err.strerror}") from err
        try:
            ckdir = os.path.join(tmp, "checkpoint")
            dres = dump(pid, ckdir, thaw=thaw, compress=compress, freeze_timeout=freeze_timeout, single=True)
            with open_checkpoint(ckdir) as ck:
                r = write_core(ck, pid, o.file, with_file_pages=with_file_pages)
            dest = o.commit()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    r.path, r.allocated = os.fspath(dest), _allocated(dest)
    return r, dres
