"""Flatten a chain of incremental checkpoints into one standalone checkpoint.

Every PE_PARENT range is replaced by the pages the chain holds for it, so
the result reads back page for page like the chain and needs no parent.
Pages a process shared copy-on-write (PE_COW) are written as its own;
shared memory objects are copied once each, with the images naming them. Its
inventory keeps the write-tracking record of the newest checkpoint, so the
flattened one can be the parent of the next incremental dump.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DumpError
from ..image import CheckpointWriter
from ..image import format as fmt
from ..image.checkpoint import open_checkpoint
from ..image.shared import copy_shared
from ..image.pb import inventory_pb2, stats_pb2

__all__ = ["flatten", "FlattenResult"]


@dataclass(slots=True)
class FlattenResult:
    """``dest`` written from ``source`` (and ``chain_length`` checkpoints)."""

    dest: str
    source: str
    chain_length: int
    pages: int
    bytes_written: int


def flatten(src: str | os.PathLike, dest: str | os.PathLike, *, compress: bool = True, level: int = 3,
            threads: int | None = None, force: bool = False) -> FlattenResult:
    """Write ``dest``: the memory of checkpoint ``src`` with its chain resolved.

    Raises ImageError for a damaged or incomplete chain (nothing is written),
    DumpError for the destination: ``dest`` follows the rules of every
    checkpoint writer (:class:`~dumper.image.safefs.OutputDir`: an empty
    directory is filled, a checkpoint replaced only with ``force``, anything
    else refused, and so is a place inside any checkpoint of the chain), or
    the disk is full. A pre-dump source is refused: it is not a complete
    checkpoint.
    """
    with open_checkpoint(src) as ck:
        if ck.inventory.pre_dump:
            raise DumpError(f"{src} is a pre-dump (pages only): flatten the final dump taken with --parent")
        chain = list(ck.chain())
        total_pages = 0
        written = 0
        # Stats of the flattened checkpoint describe its own writing (no freeze, no scan).
        st = stats_pb2.dump_stats_entry(freezing_time=0, frozen_time=0, memdump_time=0, memwrite_time=0,
                                        pages_scanned=0, pages_skipped_parent=0, pages_written=0, pages_lazy=0)
        with CheckpointWriter(dest, force=force, page_size=ck.page_size, sources=[c.path for c in chain]) as w:
            for pages_id, pid in enumerate(ck.pids, 1):
                proc = ck.process(pid)
                with w.pages_writer(pid, pages_id, compress=compress, level=level, threads=threads) as pw:
                    # (holes of a sparse raw pages file in anonymous memory are left out: zeros anyway)
                    for vaddr, data in ck.iter_copy(pid, parents=True):
                        pw.add_present(vaddr, data)
                if proc.mm is not None:  # a set without mm-PID.img stays without (readers accept it)
                    mm = proc.mm.to_message()  # the whole mm_entry (readers hold VMAs compactly)
                    for v, n in zip(mm.vmas, ck.copied_per_vma(pid).tolist()):  # every page now lives here
                        v.nr_pages_dumped = n
                        v.ClearField("nr_pages_parent")
                    w.write_mm(pid, mm)
                total_pages += pw.stats.pages_present
                written += pw.stats.bytes_file
                pw.stats.add_to(st)
            # Shared memory objects, once each (pages shared copy-on-write were resolved above).
            for sst in copy_shared(ck, w, len(ck.pids) + 1, compress=compress, level=level, threads=threads):
                written += sst.bytes_file
                sst.add_to(st)
            inv = inventory_pb2.inventory_entry()
            inv.CopyFrom(ck.inventory)
            inv.ClearField("parent_path")
            inv.ClearField("parent_checkpoint_id")  # it stands alone
            inv.derived_by = "flatten"
            inv.compression = fmt.COMPRESSION_ZSTD if compress else fmt.COMPRESSION_NONE
            if compress:
                inv.compression_level = level
            else:
                inv.ClearField("compression_level")
                inv.ClearField("frame_pages")
            w.write_inventory(inv)
            w.write_stats(st)
            path = w.commit()
    return FlattenResult(os.fspath(path), os.fspath(src), len(chain), total_pages, written)
