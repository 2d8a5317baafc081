"""``dumper show DIR``: a readable summary of a checkpoint directory."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from typing import Sequence

from ..errors import CorruptImage, ImageError
from ..image import format as fmt
from ..image import load_inventory, load_pagemap, read_image
from ..image.checkpoint import open_checkpoint, resolve_parent_chain
from .options import human_bytes

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--all-vmas", action="store_true", help="list VMAs with nothing dumped too")


def _kind(v) -> str:
    st = v.status
    for bit, name in ((fmt.VMA_AREA_VDSO, "vdso"), (fmt.VMA_AREA_VVAR, "vvar"),
                      (fmt.VMA_AREA_VSYSCALL, "vsyscall"), (fmt.VMA_AREA_MEMFD, "memfd"),
                      (fmt.VMA_AREA_SYSVIPC, "sysv-shm"), (fmt.VMA_FILE_SHARED, "file-shared"),
                      (fmt.VMA_ANON_SHARED, "anon-shared"), (fmt.VMA_FILE_PRIVATE, "file-private"),
                      (fmt.VMA_ANON_PRIVATE, "anon-private")):
        if st & bit:
            return name
    return "other"


def summarize(path: str) -> dict:
    """The facts ``show`` prints, as a JSON-ready dict. Raises ImageError."""
    if not os.path.isdir(path):
        raise ImageError(path, None, "not a checkpoint directory")
    inv = load_inventory(os.path.join(path, fmt.INVENTORY_NAME))
    stats = None
    spath = os.path.join(path, fmt.STATS_DUMP_NAME)
    if os.path.exists(spath):
        name, msgs = read_image(spath)
        if name != "STATS" or len(msgs) != 1:
            raise CorruptImage(spath, 0, f"expected one stats entry, found a {name} image with {len(msgs)} entries")
        stats = msgs[0].dump if msgs[0].HasField("dump") else None
    with open_checkpoint(path) as ck:  # finds the pids of CRIU's image sets too
        pids = list(ck.pids)
    procs = []
    for pid in pids:
        mm_path = os.path.join(path, fmt.mm_name(pid))
        name, mm_msgs = read_image(mm_path)
        if name != "MM" or len(mm_msgs) != 1:
            raise CorruptImage(mm_path, 0, f"expected one mm entry, found a {name} image with {len(mm_msgs)} entries")
        mm = mm_msgs[0]
        head, entries = load_pagemap(os.path.join(path, fmt.pagemap_name(pid)))
        pages_file = os.path.join(path, fmt.zpages_name(head.pages_id) if head.compression == fmt.COMPRESSION_ZSTD
                                  else fmt.pages_name(head.pages_id))
        vmas = []
        for v in mm.vmas:
            vmas.append({
                "start": v.start, "end": v.end, "prot": v.prot, "kind": _kind(v), "path": v.path,
                "dumped": v.dumped, "reason": v.contents_skipped_reason, "pages": v.nr_pages_dumped,
            })
        procs.append({
            "pid": pid,
            "entries": len(entries),
            "pages_present": sum(e.nr_pages for e in entries if e.flags & fmt.PE_PRESENT),
            "pages_parent": sum(e.nr_pages for e in entries if e.flags & fmt.PE_PARENT),
            "pages_file": os.path.basename(pages_file),
            "pages_file_bytes": os.path.getsize(pages_file) if os.path.exists(pages_file) else None,
            "vmas": vmas,
        })
    chain, chain_error = [], None
    try:
        chain = [str(p) for p in resolve_parent_chain(path)]
        for member in chain:  # metadata of each: damage anywhere breaks reads
            with open_checkpoint(member):
                pass
    except ImageError as err:
        chain_error = str(err)
    out = {
        "dir": path,
        "dumper_version": inv.dumper_version,
        "format_version": inv.dumper_format_version,
        "kernel": inv.kernel_release,
        "machine": inv.machine,
        "page_size": inv.page_size,
        "scanner": inv.scanner,
        "tracker": inv.tracker,
        "compression": "zstd" if inv.compression == fmt.COMPRESSION_ZSTD else "none",
        "compression_level": inv.compression_level if inv.compression == fmt.COMPRESSION_ZSTD else None,
        "pre_dump": inv.pre_dump,
        "parent": os.readlink(os.path.join(path, "parent")) if os.path.islink(os.path.join(path, "parent")) else None,
        "parent_chain": chain,  # resolved, nearest first
        "parent_chain_error": chain_error,
        "dump_start_ns": inv.dump_start_ns,
        "processes": procs,
    }
    if stats is not None:
        out["stats"] = {f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields if stats.HasField(f.name)}
    return out


def run(args: argparse.Namespace) -> int:
    s = summarize(args.dir)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
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
    if s["parent_chain"]:
        print(f"  chain      {' -> '.join(s['parent_chain'])} ({len(s['parent_chain'])} deep)")
    if s["parent_chain_error"]:
        print(f"  chain      BROKEN: {s['parent_chain_error']}")
    st = s.get("stats", {})
    if st:
        raw = st.get("bytes_raw", 0)
        files = sum(p["pages_file_bytes"] or 0 for p in s["processes"])
        # the same ratio `dumper dump` prints: raw page bytes / pages file size
        ratio = f", raw / image = {raw / files:.2f}x" if files and s["compression"] == "zstd" else ""
        print(f"  frozen     {st.get('frozen_time', 0) / 1000:.1f} ms (freezing {st.get('freezing_time', 0) / 1000:.1f} ms)")
        print(f"  stats      {st.get('pages_written', 0)} pages written ({human_bytes(raw)}) from "
              f"{human_bytes(st.get('pages_scanned', 0) * (s['page_size'] or 4096))} of private mappings, "
              f"{st.get('pages_unreadable', 0)} unreadable"
              + (f", {st.get('pages_skipped_parent', 0)} in parent" if st.get("pages_skipped_parent") else "")
              + ratio)
    if s["tracker"] and s["tracker"] != "none":
        print(f"  tracking   {s['tracker']} armed by this dump" + ("; PRE-DUMP: pages only" if s["pre_dump"] else ""))
    for p in s["processes"]:
        print(f"process {p['pid']}: {p['entries']} pagemap entries, {p['pages_present']} pages in "
              f"{p['pages_file']} ({human_bytes(p['pages_file_bytes'] or 0)})"
              + (f", {p['pages_parent']} in parent" if p["pages_parent"] else ""))
        print(f"  {'start':>14} {'end':>14} {'size':>10} {'prot':4} {'kind':12} {'dumped':>8}  name")
        for v in p["vmas"]:
            if not args.all_vmas and v["dumped"] and not v["pages"]:
                continue
            prot = "".join(c if v["prot"] & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
            dumped = str(v["pages"]) if v["dumped"] else "skipped"
            note = f"  [{v['reason']}]" if not v["dumped"] and v["reason"] else ""
            print(f"  {v['start']:#14x} {v['end']:#14x} {human_bytes(v['end'] - v['start']):>10} {prot:4} "
                  f"{v['kind']:12} {dumped:>8}  {v['path']}{note}")
        hidden = sum(1 for v in p["vmas"] if v["dumped"] and not v["pages"])
        if hidden and not args.all_vmas:
            print(f"  ({hidden} VMAs with no pages to dump not listed; --all-vmas shows them)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("show", argv)
