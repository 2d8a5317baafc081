"""``dumper show DIR``: a readable summary of a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ..errors import ImageError
from ..image import format as fmt
from ..image.checkpoint import open_checkpoint
from ..image.reader import read_image
from ..image.pretty import printable
from .mems import add_pid_option, selected_pids
from .options import human_bytes, plural

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--all-vmas", action="store_true", help="list VMAs with nothing dumped too")
    add_pid_option(parser)


def _kind(v) -> str:
    st = v.status
    for bit, name in ((fmt.VMA_AREA_GUARD, "guard"), (fmt.VMA_AREA_VDSO, "vdso"), (fmt.VMA_AREA_VVAR, "vvar"),
                      (fmt.VMA_AREA_VSYSCALL, "vsyscall"), (fmt.VMA_AREA_MEMFD, "memfd"),
                      (fmt.VMA_AREA_SYSVIPC, "sysv-shm"), (fmt.VMA_FILE_SHARED, "file-shared"),
                      (fmt.VMA_ANON_SHARED, "anon-shared"), (fmt.VMA_FILE_PRIVATE, "file-private"),
                      (fmt.VMA_ANON_PRIVATE, "anon-private")):
        if st & bit:
            return name
    return "other"


def _vma_facts(ck, proc, v, pages: tuple[int, int], cow: int = 0, shm: tuple = (None, None)) -> dict:
    """One VMA as show reports it: path from the image or, for a CRIU set,
    from its files.img; status "guard", "skipped" (with the reason) or the
    pages the pagemap holds in it (``pages_cow`` of them stored once in
    another process's stream); for a shared memory VMA, its object
    (``shmid``) and the object's pages in the mapping's range."""
    guard = bool(v.status & fmt.VMA_AREA_GUARD)
    path = v.path
    if not path and v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED):
        try:
            cf = ck.criu_files().get(v.shmid)
        except ImageError:
            cf = None
        path = cf.name if cf is not None else ""
    dumped = (not v.HasField("dumped") or v.dumped) and not guard
    reason = printable(v.contents_skipped_reason) if v.HasField("dumped") and not v.dumped else ""
    if not dumped and not guard and not reason:
        reason = "no reason recorded"
    return {
        "start": v.start, "end": v.end, "prot": v.prot, "kind": _kind(v), "path": printable(path),
        "dumped": dumped, "guard": guard, "reason": reason,
        "pages": v.nr_pages_dumped if v.HasField("nr_pages_dumped") else pages[0],
        "pages_parent": v.nr_pages_parent if v.HasField("nr_pages_parent") else pages[1] - cow,
        "pages_cow": cow, "shmid": shm[0], "pages_shared": shm[1],
    }


class _Lazy(list):
    """A list made item by item from ``make()`` each time it is iterated
    (``len()`` known up front): VMAs of a huge mm are never all in memory
    at once."""

    def __init__(self, make, n: int) -> None:
        super().__init__()
        self._make = make
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        return iter(self._make())


def _shared_facts(ck, obj) -> dict:
    """One shared memory object: what it is, what is stored, who maps it."""
    maps = ck.shared.mapped_by(obj)
    return {
        "shmid": obj.shmid, "kind": obj.kind, "name": printable(obj.name), "size": obj.size,
        "saved": obj.saved, "pages": obj.nr_pages,
        "pages_file": printable(Path(obj.pages.path).name) if obj.pages is not None else None,
        "pages_file_bytes": os.fstat(obj.pages._fd).st_size if obj.pages is not None else 0,
        "mapped_by": sorted({pid for pid, _ in maps}), "mappings": len(maps),
    }


def summarize(path: str) -> dict:
    """The facts ``show`` prints, as a JSON-ready dict. Raises ImageError
    for damage in this checkpoint; a broken parent chain is reported in
    ``chain`` (the last element has ``ok`` false) and ``parent_chain_error``."""
    with open_checkpoint(path) as ck:
        return _summary(ck, path, lazy=False)


def _vmas_of(ck, proc):
    from .mems import pages_per_vma_arrays, shared_counts

    pres, other, _ = pages_per_vma_arrays(proc)
    cows, shm = shared_counts(ck, proc)
    for v, a, b, cw, sh in zip(proc.mm.vmas, pres.tolist(), other.tolist(), cows, shm):
        yield _vma_facts(ck, proc, v, (a, b), cw, sh)


def _summary(ck, path: str, *, lazy: bool, pid: int | None = None) -> dict:
    """:func:`summarize` of the open ``ck``; with ``lazy`` each process's
    ``vmas`` is made while it is iterated (``ck`` must stay open). ``pid``:
    that process only."""
    inv = ck.inventory
    try:
        stats, stats_error = ck.stats, None
    except ImageError as err:  # auxiliary: the rest of the checkpoint still shows (verify reports it)
        stats, stats_error = None, str(err)
    zombies = _zombies(ck) if pid is None else []  # all of them, or only the --pid process
    procs = []
    for pid in selected_pids(ck, pid):
        proc = ck.process(pid)
        vmas: list = []
        if proc.mm is not None:
            vmas = _Lazy(lambda proc=proc: _vmas_of(ck, proc), len(proc.mm.vmas))
            if not lazy:
                vmas = list(vmas)
        pages_file = proc.pages_path
        procs.append({
            "pid": pid,
            "entries": len(proc.entries),
            "pages_present": proc.entries.pages(fmt.PE_PRESENT),
            "pages_parent": proc.entries.pages(fmt.PE_PARENT),
            "pages_cow": proc.entries.pages(fmt.PE_COW),
            "pages_file": pages_file.name,
            "pages_file_bytes": os.fstat(proc.pages._fd).st_size,
            "mm": proc.mm is not None,
            "vmas": vmas,
        })
    shared = [_shared_facts(ck, o) for o in ck.shared.objects.values()]
    status = ck.chain_status()
    chain = [c["path"] for c in status if c["ok"]]
    chain_error = next((c["error"] for c in status if not c["ok"]), None)
    link = ck.path / fmt.PARENT_LINK
    parent = os.readlink(link) if os.path.islink(link) else None
    out = {
        "dir": path,
        "dumper_version": inv.dumper_version,
        "format_version": inv.dumper_format_version,
        "checkpoint_id": inv.checkpoint_id or None,
        "parent_checkpoint_id": inv.parent_checkpoint_id or None,
        "kernel": inv.kernel_release,
        "machine": inv.machine,
        "page_size": inv.page_size,
        "scanner": inv.scanner,
        "tracker": inv.tracker,
        "compression": "zstd" if inv.compression == fmt.COMPRESSION_ZSTD else "none",
        "compression_level": inv.compression_level if inv.compression == fmt.COMPRESSION_ZSTD else None,
        "pre_dump": inv.pre_dump,
        "derived_by": printable(inv.derived_by) if inv.derived_by else None,
        "parent": printable(parent) if parent is not None else None,
        "parent_chain": chain,  # resolved, nearest first, the usable part
        "chain": status,  # every link, the broken one (if any) last with ok false
        "parent_chain_error": chain_error,
        "dump_start_ns": inv.dump_start_ns,
        "processes": procs,
        "zombies": zombies,
        "shared": shared,
    }
    if stats is not None:
        out["stats"] = {f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields if stats.HasField(f.name)}
    out["stats_error"] = stats_error
    return out


def run(args: argparse.Namespace) -> int:
    with open_checkpoint(args.dir) as ck:
        s = _summary(ck, args.dir, lazy=True, pid=getattr(args, "pid", None))
        if args.json:
            _print_json(s)
            return 0
        return _print_text(s, args)


def _print_json(s: dict) -> None:
    """``s`` as indented JSON, each process's VMAs streamed one a line
    (json's C encoder per VMA): a huge mm is never one string in memory."""
    marks = []
    procs = []
    for i, p in enumerate(s["processes"]):
        mark = f"@vmas-{i}-{os.getpid()}@"
        marks.append((json.dumps(mark), p["vmas"]))
        procs.append({**p, "vmas": mark})
    text = json.dumps({**s, "processes": procs}, indent=2)
    out = sys.stdout
    for mark, vmas in marks:
        before, text = text.split(mark, 1)
        out.write(before)
        out.write("[")
        batch = []
        for k, v in enumerate(vmas):
            batch.append(("\n        " if k == 0 else ",\n        ") + json.dumps(v))
            if len(batch) >= 4096:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch) + ("\n      ]" if len(vmas) else "]"))
    out.write(text + "\n")


def _print_text(s: dict, args: argparse.Namespace) -> int:
    when = datetime.fromtimestamp(s["dump_start_ns"] / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"checkpoint {s['dir']}")
    if s["dumper_version"]:
        print(f"  written    {when} by dumper {s['dumper_version']} (format {s['format_version']})")
    else:
        print("  written    by CRIU or another tool (no dumper fields in inventory.img)")
    if s["kernel"]:
        print(f"  kernel     {s['kernel']} {s['machine']}, {s['page_size']} B pages, scanner {s['scanner']}")
    comp = f"zstd level {s['compression_level']}" if s["compression"] == "zstd" else "none (CRIU raw pages)"
    print(f"  pages      compression {comp}" + ("; PRE-DUMP (pages only)" if s["pre_dump"] else ""))
    if s["parent"]:
        print(f"  parent     {s['parent']}")
    if s["chain"]:
        links = [c["path"] if c["ok"] else f"BROKEN at {c['path']}" for c in s["chain"]]
        good = len(s["parent_chain"])
        print(f"  chain      {' -> '.join(links)} ({good} deep" + (", broken)" if s["parent_chain_error"] else ")"))
    if s["parent_chain_error"]:
        # The chain line above already marks the broken link: this one says why.
        label = "  broken     " if s["chain"] else "  chain      BROKEN: "
        print(f"{label}{s['parent_chain_error']} (pages this checkpoint holds read; pages in the parent do not)")
    st = s.get("stats", {})
    if s.get("stats_error"):
        print(f"  stats      UNREADABLE: {s['stats_error']}")
    if st:
        raw = st.get("bytes_raw", 0)
        files = sum(p["pages_file_bytes"] or 0 for p in s["processes"]) + sum(o["pages_file_bytes"] for o in s["shared"])
        # the same ratio `dumper dump` prints: raw page bytes / pages file size
        ratio = f", raw / image = {raw / files:.2f}x" if files and s["compression"] == "zstd" else ""
        if s["derived_by"]:  # written from other checkpoints: nothing was frozen or scanned
            print(f"  stats      {st.get('pages_written', 0)} pages written ({human_bytes(raw)}) by "
                  f"{s['derived_by']}" + ratio)
        else:
            print(f"  frozen     {st.get('frozen_time', 0) / 1000:.1f} ms (freezing {st.get('freezing_time', 0) / 1000:.1f} ms)")
            print(f"  stats      {st.get('pages_written', 0)} pages written ({human_bytes(raw)}) from "
                  f"{human_bytes(st.get('pages_scanned', 0) * (s['page_size'] or 4096))} of private mappings, "
                  f"{st.get('pages_unreadable', 0)} unreadable"
                  + (f", {st.get('pages_skipped_parent', 0)} in parent" if st.get("pages_skipped_parent") else "")
                  + ratio)
    if s["derived_by"]:
        print(f"  derived    by {s['derived_by']} from other checkpoints, not by a dump")
    if s["tracker"] and s["tracker"] != "none":
        armed = "armed by the newest dump it was made from (kept for the next incremental dump)" \
            if s["derived_by"] else "armed by this dump"
        print(f"  tracking   {s['tracker']} {armed}" + ("; PRE-DUMP: pages only" if s["pre_dump"] else ""))
    for p in s["processes"]:
        print(f"process {p['pid']}: {p['entries']} pagemap entries, {p['pages_present']} pages in "
              f"{p['pages_file']} ({human_bytes(p['pages_file_bytes'] or 0)})"
              + (f", {p['pages_parent']} in parent" if p["pages_parent"] else "")
              + (f", {p['pages_cow']} shared copy-on-write (stored once, with another process)"
                 if p["pages_cow"] else ""))
        if not p["mm"]:
            print("  no mm image: VMAs unknown (a CRIU pre-dump?); only pages with pagemap entries read")
            continue
        print(f"  {'start':>14} {'end':>14} {'size':>10} {'prot':4} {'kind':12} {'dumped':>8}  name")
        hidden = 0
        for v in p["vmas"]:
            if not args.all_vmas and _empty(v):
                hidden += 1
                continue
            prot = "".join(c if v["prot"] & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
            dumped = "guard" if v["guard"] else (str(v["pages"]) if v["dumped"] else "skipped")
            if v["dumped"] and v["pages_cow"]:
                dumped += f"+{v['pages_cow']}c"
            note = f"  [{v['reason']}]" if not v["dumped"] and v["reason"] else ""
            if v["dumped"] and v["pages_shared"] is not None:
                dumped = f"{v['pages_shared']}s"
                note = (f"  [shared memory {v['shmid']}: saved once]" if v["shmid"] is not None
                        else "  [shared memory: its object is not in the checkpoint]")
            print(f"  {v['start']:#14x} {v['end']:#14x} {human_bytes(v['end'] - v['start']):>10} {prot:4} "
                  f"{v['kind']:12} {dumped:>8}  {v['path']}{note}")
        if hidden:
            print(f"  ({plural(hidden, 'VMA')} with no pages to dump not listed; --all-vmas shows them)")
    for z in s["zombies"]:
        print(f"process {z['pid']}: zombie, {z['status']}, not reaped by {z['ppid']}: in pstree.img only "
              "(no memory; criu restore recreates it as a zombie)")
    if s["shared"]:
        print("shared memory (saved once, whoever maps it; MAP_SHARED file mappings keep their contents in the file)")
        for o in s["shared"]:
            size = human_bytes(o["size"]) if o["size"] is not None else "size unknown"
            saved = (f"{plural(o['pages'], 'page')} in {o['pages_file']} ({human_bytes(o['pages_file_bytes'])})"
                     if o["saved"] else "contents not saved")
            print(f"  shmem {o['shmid']}: {o['kind']} {o['name']!s}, {size}, {saved}; "
                  f"{plural(o['mappings'], 'mapping')} in {plural(len(o['mapped_by']), 'pid')} "
                  f"{', '.join(map(str, o['mapped_by'])) or '-'}")
    return 0


def _zombies(ck) -> list[dict]:
    """Processes of pstree.img without memory images: the zombies of the
    tree (CRIU records them; their core image holds the wait status)."""
    if ck.pstree is None:
        return []
    have = set(ck.pids)
    out = []
    for e in ck.pstree:
        if e.pid in have:
            continue
        status = "exit status unknown"
        try:
            _, cores = read_image(ck.path / fmt.core_name(e.pid))
            tc = cores[0].tc if cores and cores[0].HasField("tc") else None
        except (ImageError, OSError, IndexError):
            tc = None
        if tc is not None:
            w = tc.exit_code
            status = f"exited with status {os.WEXITSTATUS(w)}" if os.WIFEXITED(w) else (
                f"killed by signal {os.WTERMSIG(w)}" if os.WIFSIGNALED(w) else f"wait status {w:#x}")
        out.append({"pid": int(e.pid), "ppid": int(e.ppid), "exit_code": tc.exit_code if tc is not None else None,
                    "status": status})
    return out


def _empty(v: dict) -> bool:
    """A dumped VMA with nothing recorded in it (listed with --all-vmas only)."""
    return (v["dumped"] and not v["pages"] and not v["pages_parent"] and not v["pages_cow"]
            and v["pages_shared"] is None)


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("show", argv)
