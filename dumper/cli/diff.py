"""``dumper diff A B``: which pages differ between two checkpoints.

For every process both checkpoints hold (or their two root processes when
they hold one each under different pids), the recorded pages (those with a
PE_PRESENT entry, or PE_PARENT resolved through the parent chain) are
sorted into three sets of address ranges:

* ``differ``: recorded in both, with different bytes;
* ``only-in-A`` / ``only-in-B``: recorded in one checkpoint only (in the
  other the page was untouched, zero, or not mapped; contents not compared).

Shared memory objects both hold (same shmid) are compared the same way,
offsets in the object for addresses; a page only one of them stores is
compared with zeros (the other object never had it written), so it shows
as ``differ`` when it holds data. Pages shared copy-on-write (PE_COW) are
compared as the process's own.

Pages recorded in both are streamed from the two checkpoints a zstd frame
at a time and compared with numpy, never page by page in Python. Exit status 0 when nothing differs, 1
when something does (like ``diff``); errors are one ``dumper: error:`` line,
status 1 as well.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ImageError
from ..image import format as fmt
from ..image.checkpoint import Checkpoint, open_checkpoint
from .options import human_bytes, non_negative, pid, plural
from .verify import differing_runs, only_kernel_written

KINDS = ("differ", "only-in-A", "only-in-B")
# Not differences: pages whose bytes differ only in rseq fields the kernel
# rewrites on its own (cpu_id_start, cpu_id, node_id, mm_cid).
KERNEL_ONLY = "kernel-written"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="first checkpoint directory")
    parser.add_argument("b", metavar="B", help="second checkpoint directory")
    parser.add_argument("--pid", type=pid, default=None, help="compare this process only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max-ranges", type=non_negative, default=100, metavar="N",
                        help="ranges listed per kind and process (default 100; --json lists all)")


@dataclass
class ProcessDiff:
    """Differences of one process. Ranges are ``(start, end)`` byte
    addresses, end-exclusive, ascending and merged; counts are pages."""

    pid_a: int
    pid_b: int
    page_size: int
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: {k: [] for k in (*KINDS, KERNEL_ONLY)})

    def pages(self, kind: str) -> int:
        return sum(e - s for s, e in self.ranges[kind]) // self.page_size

    def _add(self, kind: str, s: int, e: int) -> None:
        r = self.ranges[kind]
        if r and r[-1][1] == s:
            r[-1] = (r[-1][0], e)
        else:
            r.append((s, e))

    @property
    def same(self) -> bool:
        return not any(self.ranges[k] for k in KINDS)

    def to_json(self) -> dict:
        return {
            "pid_a": self.pid_a, "pid_b": self.pid_b, "page_size": self.page_size,
            **{kind: {"pages": self.pages(kind), "ranges": [[s, e] for s, e in self.ranges[kind]]}
               for kind in (*KINDS, KERNEL_ONLY)},
        }


def _split(ra: list[tuple[int, int]], rb: list[tuple[int, int]]):
    """Yield ``(kind, start, end)`` covering the union of two sorted disjoint
    range lists: ``"both"``, ``"only-in-A"`` or ``"only-in-B"``."""
    bounds = sorted({x for r in (ra, rb) for s, e in r for x in (s, e)})
    ia = ib = 0
    for s, e in zip(bounds, bounds[1:]):
        while ia < len(ra) and ra[ia][1] <= s:
            ia += 1
        while ib < len(rb) and rb[ib][1] <= s:
            ib += 1
        in_a = ia < len(ra) and ra[ia][0] <= s
        in_b = ib < len(rb) and rb[ib][0] <= s
        if in_a and in_b:
            yield "both", s, e
        elif in_a:
            yield "only-in-A", s, e
        elif in_b:
            yield "only-in-B", s, e


def diff_process(a: Checkpoint, b: Checkpoint, pid_a: int, pid_b: int) -> ProcessDiff:
    """Compare process ``pid_a`` of ``a`` with ``pid_b`` of ``b``.
    ImageError if the page sizes differ or the data is damaged."""
    ps = a.process(pid_a).page_size
    if b.process(pid_b).page_size != ps:
        raise ImageError(b.path, None, f"page size {b.process(pid_b).page_size}, {a.path} has {ps}")
    d = ProcessDiff(pid_a, pid_b, ps)
    for kind, s, e in _split(a.recorded_ranges(pid_a), b.recorded_ranges(pid_b)):
        if kind != "both":
            d._add(kind, s, e)
            continue
        ia = a.iter_chunks(pid_a, s, e - s, recorded_only=True)
        ib = b.iter_chunks(pid_b, s, e - s, recorded_only=True)
        ca = cb = memoryview(b"")
        pos = s
        while pos < e:  # walk both chunk streams in step; chunks are whole pages
            if not len(ca):
                ca = memoryview(next(ia)[1])
            if not len(cb):
                cb = memoryview(next(ib)[1])
            n = min(len(ca), len(cb))
            for first, count in differing_runs(ca[:n], cb[:n], ps):
                d._add("differ", pos + first * ps, pos + (first + count) * ps)
            ca, cb, pos = ca[n:], cb[n:], pos + n
    _set_apart_kernel_written(d, a, b, pid_a, pid_b)
    return d


def _set_apart_kernel_written(d: ProcessDiff, a: Checkpoint, b: Checkpoint, pid_a: int, pid_b: int) -> None:
    """Move pages that differ only in kernel-written rseq fields (areas
    from either checkpoint's core images) from ``differ`` to KERNEL_ONLY."""
    areas = sorted(set(a.rseq_areas(pid_a)) | set(b.rseq_areas(pid_b)))
    ps = d.page_size
    pages = sorted({base // ps * ps for base, _ in areas})
    keep = d.ranges["differ"]
    for page in pages:
        hit = next((i for i, (s, e) in enumerate(keep) if s <= page < e), None)
        if hit is None:
            continue
        if not only_kernel_written(a.read(pid_a, page, ps), b.read(pid_b, page, ps), page, areas):
            continue
        s, e = keep.pop(hit)
        keep[hit:hit] = [r for r in ((s, page), (page + ps, e)) if r[1] > r[0]]
        d.ranges[KERNEL_ONLY].append((page, page + ps))


def diff_checkpoints(a: Checkpoint, b: Checkpoint, pid: int | None = None) -> tuple[list[ProcessDiff], list[str]]:
    """``(per-process diffs, notes)``: the processes both hold (only ``pid``
    if given; the two roots when each holds one process under different
    pids); notes name processes only one side holds."""
    notes = []
    if pid is not None:
        pairs = [(pid, pid)]
    else:
        common = [p for p in a.pids if p in b.processes]
        if not common and len(a.pids) == 1 and len(b.pids) == 1:
            pairs = [(a.root_pid, b.root_pid)]
            notes.append(f"comparing pid {a.root_pid} of A with pid {b.root_pid} of B")
        else:
            pairs = [(p, p) for p in common]
            notes += [f"pid {p} only in A" for p in a.pids if p not in b.processes]
            notes += [f"pid {p} only in B" for p in b.pids if p not in a.processes]
    return [diff_process(a, b, pa, pb) for pa, pb in pairs], notes


def diff_shared(a: Checkpoint, b: Checkpoint) -> tuple[list[ProcessDiff], list[str]]:
    """``(diffs, notes)`` of the shared memory objects both checkpoints
    hold (by shmid); a diff's ``pid_a``/``pid_b`` are the shmid and its
    ranges offsets in the object. Notes name objects only one holds."""
    oa, ob = a.shared.objects, b.shared.objects
    notes = [f"shmem {k} only in {which}" for k, which in
             [(k, "A") for k in oa.keys() - ob.keys()] + [(k, "B") for k in ob.keys() - oa.keys()]]
    diffs = []
    for shmid in sorted(oa.keys() & ob.keys()):
        x, y = oa[shmid], ob[shmid]
        d = ProcessDiff(shmid, shmid, a.page_size)
        if not (x.saved and y.saved):
            if x.saved != y.saved:
                notes.append(f"shmem {shmid}: contents saved only in {'A' if x.saved else 'B'}")
            diffs.append(d)
            continue
        ps = a.page_size
        ranges = [(int(v), int(v) + int(n) * ps) for o in (x, y) for v, n in zip(o.entries.vaddr, o.entries.nr_pages)]
        limit = min((o.size for o in (x, y) if o.size is not None), default=None)
        for s, e in _merge(sorted(ranges)):
            if limit is not None and e > -(-limit // ps) * ps:
                e = -(-limit // ps) * ps
            if e <= s:
                continue
            ca = b"".join(x.chunks(s, e - s, f"A {x.describe()}"))
            cb = b"".join(y.chunks(s, e - s, f"B {y.describe()}"))
            for first, count in differing_runs(ca, cb, ps):
                d._add("differ", s + first * ps, s + (first + count) * ps)
        diffs.append(d)
    return diffs, notes


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def run(args: argparse.Namespace) -> int:
    with open_checkpoint(args.a) as a, open_checkpoint(args.b) as b:
        diffs, notes = diff_checkpoints(a, b, args.pid)
        shared, shared_notes = diff_shared(a, b) if args.pid is None else ([], [])
    notes += shared_notes
    same = all(d.same for d in diffs + shared) and not any("only in" in n for n in notes)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "same": same, "notes": notes,
                          "processes": [d.to_json() for d in diffs],
                          "shared": [{**d.to_json(), "shmid": d.pid_a} for d in shared]}, indent=2))
        return 0 if same else 1
    for n in notes:
        print(n)
    for d in diffs:
        for s, e in d.ranges[KERNEL_ONLY]:
            print(f"note: pid {d.pid_a}: [{s:#x}, {e:#x}) differs only in rseq fields the kernel rewrites "
                  "(cpu_id, node_id, mm_cid): not a difference")
        who = f"pid {d.pid_a}" if d.pid_a == d.pid_b else f"pid {d.pid_a} (A) / {d.pid_b} (B)"
        counts = ", ".join(f"{plural(d.pages(k), 'page')} {k}" for k in KINDS)
        print(f"{who}: {counts}")
        for kind in KINDS:
            ranges = d.ranges[kind]
            for s, e in ranges[: args.max_ranges]:
                n = (e - s) // d.page_size
                rng = f"{s:#x}-{e:#x}"
                print(f"  {kind:<10} {rng:<33} {n:>9} {'page' if n == 1 else 'pages':<5} {human_bytes(e - s):>10}")
            if len(ranges) > args.max_ranges:
                print(f"  {kind:<10} ... and {len(ranges) - args.max_ranges} more range(s)")
    for d in shared:
        ranges = d.ranges["differ"]
        print(f"shmem {d.pid_a}: {plural(d.pages('differ'), 'page')} differ")
        for s, e in ranges[: args.max_ranges]:
            print(f"  {'differ':<10} {f'offsets {s:#x}-{e:#x}':<33} {(e - s) // d.page_size:>9} {'page' if e - s == d.page_size else 'pages'}")
        if len(ranges) > args.max_ranges:
            print(f"  differ     ... and {len(ranges) - args.max_ranges} more range(s)")
    if same:
        print("no differences")
    return 0 if same else 1


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("diff", argv)
