"""``dumper verify DIR [--pid PID]``: is a checkpoint intact?

Without ``--pid``: every zstd frame is decompressed (content size, XXH64
checksum, frame length against the index) and the structure is checked
(:meth:`dumper.image.checkpoint.Checkpoint.verify`: entries sorted, disjoint,
page aligned, inside dumped VMAs; PE_PRESENT pages matching the pages file;
per-VMA page counts; the parent chain holding every PE_PARENT range), for the
checkpoint and its parent chain.

With ``--pid PID``: also compares every recorded page with the memory of the
live process PID, frozen with ptrace for the comparison and then given back
in the state it was found in. When PID is the checkpoint's root, the whole
live tree is frozen and compared: every process of the checkpoint that is
alive (pages shared copy-on-write included), and every saved shared memory
object with the live object, read through a descriptor of our own (pread:
no page of the process is touched). Pages the processes changed since the
dump differ legitimately, so this is meant for a tree that stayed stopped
(``dump --leave-stopped``) or otherwise unchanged.

Exit status 0 when intact, 1 with one line per problem (at most
``--max-problems``, then a count of the rest); errors that stop the check
(unreadable directory, no such process) are one ``dumper: error:`` line,
also status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from ..errors import DumperError, ImageError
from ..image.checkpoint import Checkpoint, open_checkpoint
from ..proc.warden import Warden
from ..proc.process import Process
from .options import human_bytes, non_negative, pid, plural

EXIT_OK = 0
EXIT_PROBLEMS = 1


def _positive(text: str) -> int:
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--pid", type=pid, default=None,
                        help="also compare every recorded page with this live process (frozen meanwhile)")
    parser.add_argument("--no-parents", action="store_true", help="check this checkpoint only, not its parents")
    parser.add_argument("--threads", type=_positive, default=None, metavar="N",
                        help="decompression threads (default: up to 4)")
    parser.add_argument("--max-problems", type=non_negative, default=50, metavar="N",
                        help="problems listed before only counting the rest (default 50)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line when intact")
    parser.add_argument("--json", action="store_true", help="print one JSON object (problems, notes, counts)")


def page_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, count)`` runs of True in a boolean array (no Python loop per page)."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def differing_runs(a, b, page_size: int) -> list[tuple[int, int]]:
    """``(first_page, count)`` runs of pages that differ between two
    equal-length bytes-like objects of whole pages. One vectorised pass over
    8-byte words; no copy of the data."""
    if len(a) == 0:
        return []
    if type(a) is bytes and type(b) is bytes and a == b:  # memcmp: the common case
        return []
    words = page_size // 8
    x = np.frombuffer(a, np.uint64).reshape(-1, words)
    y = np.frombuffer(b, np.uint64).reshape(-1, words)
    return page_runs((x != y).any(axis=1))


def _pread_live(fd: int, view: memoryview, addr: int) -> int:
    """Fill ``view`` from /proc/PID/mem at ``addr``; returns the bytes read,
    fewer where the kernel stops (an unreadable page)."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], addr + got)
        except OSError as err:
            if err.errno in (errno.EIO, errno.EFAULT, errno.ENOMEM):
                break
            raise
        if n <= 0:
            break
        got += n
    return got


class _Runs:
    """Merges adjacent page ranges of the same kind into one report line."""

    def __init__(self, fmt_line) -> None:
        self.fmt_line = fmt_line
        self.cur: list | None = None  # [kind, start, end]

    def add(self, kind: str, s: int, e: int) -> Iterator[str]:
        if self.cur is not None and self.cur[0] == kind and self.cur[2] == s:
            self.cur[2] = e
            return
        yield from self.flush()
        self.cur = [kind, s, e]

    def flush(self) -> Iterator[str]:
        if self.cur is not None:
            yield self.fmt_line(*self.cur)
            self.cur = None


def rseq_areas(tids) -> list[tuple[int, int]]:
    """``(address, size)`` of each stopped thread's ``struct rseq``
    (PTRACE_GET_RSEQ_CONFIGURATION, Linux 5.13); threads without one, or a
    kernel without the request, give nothing."""
    from ..kernel.ptrace import get_rseq_configuration

    out = []
    for tid in tids:
        try:
            conf = get_rseq_configuration(tid)
        except OSError:
            continue
        if conf.rseq_abi_pointer:
            out.append((conf.rseq_abi_pointer, max(conf.rseq_abi_size, 32)))
    return out


def _rseq_areas_of(ctx, pid: int) -> list[tuple[int, int]]:
    """In the warden: :func:`rseq_areas` of every thread of frozen ``pid``."""
    return rseq_areas(ctx.freezer(pid).threads)


def kernel_written_mask(areas: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """Byte ranges ``[a, b)`` inside ``[lo, hi)`` that the kernel rewrites on
    its own: the rseq cpu_id_start/cpu_id/node_id/mm_cid fields of ``areas``."""
    from ..kernel.ptrace import RSEQ_KERNEL_FIELDS

    out = []
    for base, _ in areas:
        for off, size in RSEQ_KERNEL_FIELDS:
            a, b = base + off, base + off + size
            if a < hi and lo < b:
                out.append((max(a, lo), min(b, hi)))
    return out


def only_kernel_written(a, b, base: int, areas: list[tuple[int, int]]) -> bool:
    """Do bytes-likes ``a`` and ``b`` (at address ``base``) differ only in
    kernel-written rseq fields of ``areas``?"""
    masked = kernel_written_mask(areas, base, base + len(a))
    if not masked:
        return False
    x = bytearray(a)
    y = bytearray(b)
    for s, e in masked:
        x[s - base:e - base] = bytes(e - s)
        y[s - base:e - base] = bytes(e - s)
    return x == y


def compare_live(ck: Checkpoint, live_pid: int, ckpt_pid: int | None = None,
                 notes: list[str] | None = None, warden: Warden | None = None) -> Iterator[str]:
    """Freeze ``live_pid``, compare every recorded page of checkpoint process
    ``ckpt_pid`` (default ``live_pid``) with its memory, thaw it; yield one
    line per range of pages that differ or cannot be read any more. Work is
    per chunk (a zstd frame), read into one reused buffer; only a failing
    read goes on page-wise. Pages that differ only in the rseq fields the
    kernel rewrites by itself (cpu_id_start, cpu_id, node_id, mm_cid of a
    thread's ``struct rseq``, from PTRACE_GET_RSEQ_CONFIGURATION) are not
    problems: they are appended to ``notes`` instead. ``warden``: one that
    already holds ``live_pid`` frozen (a tree being compared)."""
    if ckpt_pid is None:
        ckpt_pid = live_pid
    ps = ck.process(ckpt_pid).page_size
    target = Process(live_pid)
    what = {"differ": "differ from the checkpoint", "unreadable": "cannot be read from the live process"}
    runs = _Runs(lambda kind, s, e: f"pid {live_pid}: [{s:#x}, {e:#x}) {plural((e - s) // ps, 'page')} {what[kind]}")
    kernel_only = _Runs(lambda kind, s, e: f"pid {live_pid}: [{s:#x}, {e:#x}) differs only in rseq fields the "
                        "kernel rewrites when a thread migrates (cpu_id, cpu_id_start, node_id, mm_cid): not a change")

    bufs = [bytearray()]
    with (Warden() if warden is None else contextlib.nullcontext(warden)) as w:
        if warden is None:
            w.freeze(target.pid, tree=False)
        areas = w.call(_rseq_areas_of, target.pid)  # ptrace requests: the warden is the tracer
        fd = target.open("mem")
        try:
            for start, end in ck.recorded_ranges(ckpt_pid):
                try:
                    yield from _compare_range(ck, ckpt_pid, start, end, fd, target, bufs, ps, areas, runs, kernel_only)
                except ImageError as err:  # damage the structural check reports too: one line, go on
                    yield from runs.flush()
                    yield str(err)
            yield from runs.flush()
            if notes is not None:
                notes.extend(kernel_only.flush())
        finally:
            os.close(fd)


def _compare_range(ck, ckpt_pid, start, end, fd, target, bufs, ps, areas, runs, kernel_only) -> Iterator[str]:
    """compare_live's work for one recorded range ``[start, end)``
    (``bufs[0]``: the reused read buffer)."""
    for vaddr, chunk in ck.iter_chunks(ckpt_pid, start, end - start, recorded_only=True):
        if len(bufs[0]) < len(chunk):
            bufs[0] = bytearray(len(chunk))
        buf = bufs[0]
        pos = 0
        while pos < len(chunk):
            view = memoryview(buf)[: len(chunk) - pos]
            with target.translate("mem"):
                got = _pread_live(fd, view, vaddr + pos)
            got -= got % ps
            mine = memoryview(chunk)[pos : pos + got]
            for first, count in differing_runs(mine, view[:got], ps):
                for k in range(first, first + count):  # few pages: the ones that differ
                    s = vaddr + pos + k * ps
                    pa, pb = mine[k * ps:(k + 1) * ps], view[k * ps:(k + 1) * ps]
                    if areas and only_kernel_written(pa, pb, s, areas):
                        list(kernel_only.add("rseq", s, s + ps))
                    else:
                        yield from runs.add("differ", s, s + ps)
            pos += got
            if pos < len(chunk):  # this page cannot be read: note it, go on after it
                yield from runs.add("unreadable", vaddr + pos, vaddr + pos + ps)
                pos += ps


def compare_live_tree(ck: Checkpoint, live_pid: int, notes: list[str]) -> Iterator[str]:
    """:func:`compare_live` for ``live_pid``; when it is the checkpoint's
    root, for the whole tree: frozen at once, every process of the
    checkpoint still alive compared, then the shared memory objects."""
    if live_pid != ck.root_pid or len(ck.pids) < 2 and not ck.shared.objects:
        yield from compare_live(ck, live_pid, notes=notes)
        return
    with Warden() as w:
        tree = w.freeze(live_pid, tree=True)
        alive = {fp.pid for fp in tree.processes.values() if not fp.zombie}
        for pid in ck.pids:
            if pid not in alive:
                yield f"pid {pid}: in the checkpoint, not in the live tree of {live_pid}"
                continue
            yield from compare_live(ck, pid, notes=notes, warden=w)
        yield from compare_shared(ck, alive, notes)


def compare_shared(ck: Checkpoint, alive: set[int], notes: list[str]) -> Iterator[str]:
    """Compare each saved shared memory object with the live one, found
    through a mapping of a live process of the checkpoint (its
    /proc/PID/map_files link, opened read-only: pread only). Live data the
    checkpoint holds as a hole must be zeros."""
    from ..dump.shmem import data_extents
    from ..image.shared import is_shmem_vma

    ps = ck.page_size
    for obj in ck.shared.objects.values():
        if not obj.saved:
            continue
        where = next(((pid, v) for pid, v in ck.shared.mapped_by(obj) if pid in alive), None)
        if where is None:
            notes.append(f"{obj.describe()}: no live process of the checkpoint maps it; not compared")
            continue
        pid, v = where
        try:
            fd = os.open(f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            yield f"{obj.describe()}: cannot open it through pid {pid}'s mapping: {err.strerror}"
            continue
        try:
            size = os.fstat(fd).st_size
            if obj.size is not None and obj.kind != "sysv" and size != obj.size:
                yield f"{obj.describe()}: {size} bytes live, {obj.size} in the checkpoint"
            ent = obj.entries
            runs = _Runs(lambda kind, s, e: f"{obj.describe()}: offsets [{s:#x}, {e:#x}) {plural((e - s) // ps, 'page')} "
                         + ("differ from the checkpoint" if kind == "differ" else "cannot be read live"))
            for off, n in zip(ent.vaddr.tolist(), ent.nr_pages.tolist()):
                pos = off
                for chunk in obj.chunks(off, n * ps, f"{obj.describe()}"):
                    live = os.pread(fd, len(chunk), pos)
                    live += bytes(len(chunk) - len(live))
                    for first, count in differing_runs(memoryview(chunk), live, ps):
                        yield from runs.add("differ", pos + first * ps, pos + (first + count) * ps)
                    pos += len(chunk)
            have = (ent.vaddr, ent.vaddr + ent.nr_pages * np.uint64(ps))
            ls, le = data_extents(fd, size)
            for s, e in zip(ls.tolist(), le.tolist()):  # live data where the checkpoint has none
                for a, b in _outside(s, e, have):
                    data = os.pread(fd, b - a, a)
                    for first, count in page_runs(np.frombuffer(data + bytes(-len(data) % ps), np.uint64)
                                                  .reshape(-1, ps // 8).any(axis=1)):
                        yield from runs.add("differ", a + first * ps, a + (first + count) * ps)
            yield from runs.flush()
        finally:
            os.close(fd)


def _outside(s: int, e: int, have) -> list[tuple[int, int]]:
    """Parts of ``[s, e)`` no interval of ``have`` (sorted arrays) covers."""
    out, pos = [], s
    starts, ends = have
    i = int(np.searchsorted(ends, np.uint64(s), side="right"))
    while pos < e and i < len(starts):
        a, b = int(starts[i]), int(ends[i])
        if a >= e:
            break
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
        i += 1
    if pos < e:
        out.append((pos, e))
    return out


def _same_layout(ck: Checkpoint, live_pid: int) -> bool:
    """Whether ``live_pid``'s mappings are the checkpoint's (every recorded
    VMA start mapped again, and as many VMAs): what criu restore recreates,
    while ASLR gives a process that merely reuses the pid other addresses."""
    t = ck.process(live_pid).vmas
    try:
        live = {int(line.split(b"-", 1)[0], 16) for line in Process(live_pid).read_file("maps").splitlines()}
    except DumperError:
        return False
    starts = {int(a) for a in t.start}
    return bool(starts) and starts <= live and len(live) - len(starts) <= max(2, len(starts) // 10)


def check_same_process(ck: Checkpoint, live_pid: int) -> str | None:
    """DumperError unless live process ``live_pid`` is a process the
    checkpoint was taken of: its pid is in the checkpoint and, where the
    inventory records the root's start time, the same start time -- or a
    later one with the checkpoint's memory layout, as when `criu restore`
    brought it back (returns a note saying so)."""
    if live_pid not in ck.processes:
        raise DumperError(f"pid {live_pid} is not in {ck.path} (it holds pids {', '.join(map(str, ck.pids))}): "
                          "--pid compares a process with its own checkpoint")
    inv = ck.inventory
    if live_pid == ck.root_pid and inv.HasField("task_start_time"):
        started = Process(live_pid).stat().starttime
        if started != inv.task_start_time and _same_layout(ck, live_pid):
            return (f"pid {live_pid} started after the dump (tick {started}, the checkpoint's "
                    f"{inv.task_start_time}) with the checkpoint's memory layout: a restored process")
        if started != inv.task_start_time:
            raise DumperError(f"pid {live_pid} is not the process {ck.path} was taken of: it started at tick "
                              f"{started}, the checkpoint's at {inv.task_start_time} (the pid was reused)")


def _usable_chain(ck: Checkpoint):
    """The checkpoint and the parents that open (verify reports a broken link)."""
    c = ck
    while c is not None:
        yield c
        try:
            c = c.parent
        except ImageError:
            return


def _process_state_problems(ck: Checkpoint) -> Iterator[str]:
    """The images criu restore needs that a checkpoint with process state
    holds as something else than a regular file (a symlink, a FIFO: `dumper
    restore` and `export` refuse the set for it, so verify says it too). An
    absent one is not reported: verify checks partial sets (memory images of
    a CRIU set) as well."""
    from ..image.criuset import has_process_state, missing_images, process_tree

    try:
        if not has_process_state(ck):
            return
        tree = process_tree(ck)
    except ImageError as err:
        yield str(err)
        return
    for name in missing_images(ck, tree):
        if os.path.lexists(ck.path / name):
            yield f"{ck.path / name}: not a regular file (criu restore needs it)"


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    problems: list[str] = []
    notes: list[str] = []
    shown = 0

    seen: set[str] = set()

    def report(line: str) -> None:
        nonlocal shown
        if line in seen:
            return  # (damage the structural check and the live comparison both meet: once)
        seen.add(line)
        problems.append(line)
        if not args.json and shown < args.max_problems:
            print(line)
            shown += 1

    def finish(ok: bool, summary: str | None, extra: dict) -> int:
        if args.json:
            print(json.dumps({"dir": args.dir, "ok": ok, "problems": problems, "notes": notes,
                              "seconds": round(time.monotonic() - t0, 3), **extra}, indent=2))
        else:
            if len(problems) > shown:
                print(f"... and {plural(len(problems) - shown, 'more problem')}")
            for n in notes:
                print(f"note: {n}")
            if summary:
                print(summary, file=sys.stderr if not ok else sys.stdout)
        return EXIT_OK if ok else EXIT_PROBLEMS

    try:
        ck = open_checkpoint(args.dir)
    except ImageError as err:
        report(str(err))
        return finish(False, f"FAILED: {args.dir}: the checkpoint cannot be opened", {"opened": False})
    with ck:
        if args.pid is not None:
            note = check_same_process(ck, args.pid)  # a different process is an error, not dozens of lines
            if note:
                notes.append(note)
        for problem in ck.verify(parents=not args.no_parents, threads=args.threads):
            report(str(problem))
        for line in _process_state_problems(ck):
            report(line)
        if args.pid is not None:
            for line in compare_live_tree(ck, args.pid, notes):
                report(line)
        pages = sum(p.nr_pages_present for p in ck.processes.values())
        pages += sum(o.nr_pages for o in ck.shared.objects.values())
        nparents = len(ck.parent_paths) if not args.no_parents else 0
        chain = [ck] if args.no_parents else list(_usable_chain(ck))
        unchecked = sum(n for c in chain for n in c.unchecked_pages().values())
        for c in chain:
            for upid, n in c.unchecked_pages().items():
                notes.append(f"{c.path}: pid {upid}: the contents of {plural(n, 'page')} in "
                             f"{c.process(upid).pages_path.name} cannot be checked: a raw pages file without "
                             "checksums (as CRIU writes them); only its length and the structure were verified")
        extra = {"opened": True, "processes": len(ck.processes), "pages": pages, "parents": nparents,
                 "pages_unchecked": unchecked, "compared_pid": args.pid}
        if problems:
            return finish(False, f"FAILED: {args.dir}: {plural(len(problems), 'problem')}", extra)
        summary = None if args.quiet else (
            f"OK: {args.dir}: {plural(len(ck.processes), 'process', 'processes')}, {plural(pages, 'page')} "
            f"({human_bytes(pages * ck.page_size)}) verified"
            + (f" ({unchecked} of them in raw pages files without checksums: contents not checked)"
               if unchecked else "")
            + (f", parent chain of {nparents}" if nparents else "")
            + (f", compared with live pid {args.pid}" if args.pid is not None else "")
            + f" in {time.monotonic() - t0:.2f} s")
        return finish(True, summary, extra)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("verify", argv)
