"""``dump()``: freeze a process, select its pages, write a checkpoint.

Order of work, chosen to keep the frozen time short:

1. refuse an existing destination before touching the target;
2. freeze every thread (ptrace), list VMAs (smaps), scan the private ones
   with the mask scanner (:func:`dumper.dump.select.dump_masks`), read the
   selected pages from /proc/PID/mem into a bounded buffer and hand them to
   the pages writer, which copies and compresses them in a thread pool;
3. thaw (resume, leave stopped, or kill) as soon as the last page is copied;
4. let compression finish, write mm/inventory/stats, fsync and rename the
   checkpoint into place.

On any error, SIGINT or SIGTERM the target is thawed back into the state it
was found in and no checkpoint directory is left behind.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import DumpError
from ..image import CheckpointWriter, vma_entry_from
from ..image import format as fmt
from ..image.pb import inventory_pb2, mm_pb2, stats_pb2
from ..kernel.libc import PAGE_SIZE
from ..proc.freeze import THAW_MODES, Freezer, raise_on_termination
from ..proc.process import Process
from ..scan import open_backend, scan_range
from ..scan.base import REGION_DTYPE
from .memread import MemReader
from .select import classify, dump_masks, runs_in_vmas

__all__ = ["dump", "DumpResult", "THAW_MODES"]


@dataclass(slots=True)
class DumpResult:
    """What a dump did. Times in nanoseconds, sizes in bytes unless named pages."""

    dest: str
    pid: int
    comm: str
    backend: str
    frozen_ns: int
    freezing_ns: int
    scan_ns: int
    read_ns: int
    total_ns: int
    pages_scanned: int
    pages_written: int
    pages_unreadable: int
    bytes_raw: int
    bytes_written: int
    compress_ns: int
    write_ns: int
    vmas: int
    vmas_skipped: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def _progress(total_bytes: int, enabled: bool):
    if not enabled:
        return nullcontext(None)
    from tqdm import tqdm

    # delay: only dumps that take more than about a second show a bar.
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                desc="dumping", delay=1.0, leave=False)


def dump(
    pid: int,
    dest: str | os.PathLike,
    *,
    thaw: str = "resume",
    compress: bool = True,
    level: int = 3,
    threads: int | None = None,
    backend: str = "auto",
    force: bool = False,
    progress: bool = False,
) -> DumpResult:
    """Checkpoint the memory of process ``pid`` into directory ``dest``.

    ``thaw`` is "resume", "leave-stopped" or "kill". ``compress`` selects
    zstd frames (``pages-1.zst.img``) over CRIU's raw ``pages-1.img``.
    Raises DumpError (destination exists without ``force``, disk full, ...),
    the ProcessError kinds (NoSuchProcess, ZombieProcess, NoMemoryMap,
    AccessDenied, RefusedTarget), UnsupportedKernel for ``backend="ioctl"``
    on kernels before 6.7; KeyboardInterrupt/SystemExit on SIGINT/SIGTERM.
    """
    if thaw not in THAW_MODES:
        raise DumpError(f"unknown thaw mode {thaw!r} (choose from {', '.join(THAW_MODES)})")
    t_begin = time.monotonic_ns()
    wall_begin = time.time_ns()
    proc = Process(pid)
    freezer = Freezer(proc)  # refuses self/ancestors/zombies/kthreads up front
    writer = CheckpointWriter(dest, force=force)  # refuses an existing dest up front
    pages_id = 1
    with ExitStack() as stack:
        stack.callback(writer.abort)  # no-op after commit
        if threading.current_thread() is threading.main_thread():
            stack.enter_context(raise_on_termination())
        t0 = time.monotonic_ns()
        stack.enter_context(freezer)  # freezes; thaws to "resume" on any way out
        freezing_ns = time.monotonic_ns() - t0

        vmas = proc.vmas()
        plans = [classify(v) for v in vmas]
        t0 = time.monotonic_ns()
        with open_backend(proc, backend) as be:
            backend_name = be.name
            scanned = [p.vma for p in plans if p.mode == "pages"]
            if scanned:
                result = scan_range(be, scanned[0].start, scanned[-1].end, dump_masks(be.supported))
                regions = result.array
            else:
                regions = np.empty(0, REGION_DTYPE)
        scan_ns = time.monotonic_ns() - t0
        per_vma = runs_in_vmas(regions, plans)
        pages_scanned = sum(p.vma.size // PAGE_SIZE for p in plans if p.mode != "skip")
        total_bytes = sum(n for _, runs in per_vma for _, n in runs) * PAGE_SIZE

        pw = writer.pages_writer(pid, pages_id, compress=compress, level=level, threads=threads)
        reader = MemReader(proc)
        stack.callback(reader.close)
        dumped = [0] * len(per_vma)
        with _progress(total_bytes, progress) as bar:
            for i, (plan, runs) in enumerate(per_vma):
                dumped[i] = reader.copy_runs(runs, pw.add_present_from, bar.update if bar is not None else None)
        mm = mm_pb2.mm_entry(**proc.mm_layout(), exe_file_id=0, mm_saved_auxv=proc.auxv())
        freezer.thaw(thaw)
        frozen_ns = freezer.frozen_time_ns or 0

        pw.close()  # compression tail runs while the target already runs
        skipped: dict[str, int] = {}
        for i, (plan, _) in enumerate(per_vma):
            if plan.mode == "skip":
                skipped[plan.reason] = skipped.get(plan.reason, 0) + 1
            mm.vmas.append(vma_entry_from(
                plan.vma, status=plan.status, dumped=plan.mode != "skip",
                contents_skipped_reason=plan.reason or None, nr_pages_dumped=dumped[i]))
        writer.write_mm(pid, mm)
        st = pw.stats
        stats = stats_pb2.dump_stats_entry(
            freezing_time=min(freezing_ns // 1000, 2**32 - 1),
            frozen_time=min(frozen_ns // 1000, 2**32 - 1),
            memdump_time=min(reader.read_ns // 1000, 2**32 - 1),
            memwrite_time=min(st.write_ns // 1000, 2**32 - 1),
            pages_scanned=pages_scanned,
            pages_skipped_parent=0,
            pages_written=st.pages_present,
            pages_lazy=0,
            bytes_raw=st.bytes_raw,
            bytes_compressed=st.bytes_compressed,
            scan_time_us=scan_ns // 1000,
            read_time_us=reader.read_ns // 1000,
            compress_time_us=st.compress_ns // 1000,
            write_time_us=st.write_ns // 1000,
            pages_unreadable=reader.pages_unreadable,
        )
        writer.write_stats(stats)
        inv = inventory_pb2.inventory_entry(
            dumper_version=__version__,
            kernel_release=os.uname().release,
            machine=os.uname().machine,
            scanner=backend_name,
            tracker="none",
            dump_start_ns=wall_begin,
            dump_end_ns=time.time_ns(),
            root_pid=pid,
            pids=[pid],
            pre_dump=False,
        )
        inv.compression = fmt.COMPRESSION_ZSTD if compress else fmt.COMPRESSION_NONE
        if compress:
            inv.compression_level = level
            inv.frame_pages = pw.frame_pages
        writer.write_inventory(inv)
        path = writer.commit()
    return DumpResult(
        dest=os.fspath(path), pid=pid, comm=proc.name, backend=backend_name,
        frozen_ns=frozen_ns, freezing_ns=freezing_ns, scan_ns=scan_ns, read_ns=reader.read_ns,
        total_ns=time.monotonic_ns() - t_begin, pages_scanned=pages_scanned,
        pages_written=st.pages_present, pages_unreadable=reader.pages_unreadable,
        bytes_raw=st.bytes_raw, bytes_written=st.bytes_file, compress_ns=st.compress_ns,
        write_ns=st.write_ns, vmas=len(plans), vmas_skipped=skipped, unreadable=reader.unreadable,
    )
