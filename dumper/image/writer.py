"""Writing a checkpoint directory: atomic, private, bounded in memory.

:class:`CheckpointWriter` builds the image files through
:class:`~dumper.image.safefs.OutputDir`: in a private staging directory next
to the destination (``.NAME.tmp-PID-START-RAND/NAME``, mode 0700, every file
0600, created through directory descriptors with O_EXCL|O_NOFOLLOW) that is
renamed into place by ``renameat2`` on :meth:`~CheckpointWriter.commit`,
after fsyncing every file and the directory. Until then nothing exists at the
destination, so a failed or interrupted dump never leaves something that looks
like a checkpoint; what a killed run leaves is removed by the next run into
the same place. See :mod:`dumper.image.safefs` for what holds when other
users can write the destination's parent.

:class:`PagesWriter` writes one process's ``pagemap-PID.img`` and its pages
file: either CRIU's raw ``pages-N.img`` (criu/page-xfer.c layout: the bytes of
the PE_PRESENT entries, in entry order) or dumper's ``pages-N.zst.img`` (see
:mod:`dumper.image.format`), compressed by a thread pool while the caller goes
on reading memory.

Errors: :class:`~dumper.errors.DumpError` for I/O failures (with the OSError
as ``__cause__``) and for an existing destination; ``ValueError`` for misuse
(unaligned or out-of-order entries).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import zstandard
from google.protobuf.message import EncodeError, Message

from ..errors import DumpError
from ..kernel.libc import aligned_buffer, keep_freed_memory
from ..proc.maps import Vma
from . import format as fmt
from .checkpoint import check_not_a_parent
from .safefs import OutputDir
from .pb import inventory_pb2, mm_pb2, pagemap_pb2, stats_pb2, vma_pb2, zpages_pb2

__all__ = [
    "CheckpointWriter",
    "PagesWriter",
    "PagesWriterStats",
    "vma_entry_from",
    "fill_required",
    "read_whole",
]

_U64_LIMIT = 1 << 64
# Compression threads: each brings 2 batch buffers (4 MiB); more threads than
# this cannot help on any machine and would only grow memory.
MAX_THREADS = 256
#: Frames compressed by one worker task (2 MiB of pages with 256 KiB frames).
BATCH_FRAMES = 8
_U32_LIMIT = 1 << 32


def fill_required(msg: Message) -> Message:
    """Set every unset *required scalar* field of ``msg`` (not of nested
    messages) to its zero value, CRIU's "unknown" for mm_entry and
    dump_stats_entry. Returns ``msg``."""
    for field in msg.DESCRIPTOR.fields:
        if (
            field.is_required
            and field.type != field.TYPE_MESSAGE
            and not msg.HasField(field.name)
        ):
            setattr(msg, field.name, field.default_value)
    return msg


# smaps VmFlags -> MAP_* and 1 << MADV_* (criu/proc_parse.c __parse_vmflags;
# MADV_* numbers from include/uapi/asm-generic/mman-common.h).
_VMFLAG_MAP = {
    "gd": fmt.FLAG_TABLES["mmap.flags"]["MAP_GROWSDOWN"],
    "lo": fmt.FLAG_TABLES["mmap.flags"]["MAP_LOCKED"],
    "nr": fmt.FLAG_TABLES["mmap.flags"]["MAP_NORESERVE"],
    "ht": fmt.FLAG_TABLES["mmap.flags"]["MAP_HUGETLB"],
    "dp": fmt.FLAG_TABLES["mmap.flags"]["MAP_DROPPABLE"],
}
_VMFLAG_MADV = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15, "wf": 18}
_MAP_SHARED = fmt.FLAG_TABLES["mmap.flags"]["MAP_SHARED"]
_MAP_PRIVATE = fmt.FLAG_TABLES["mmap.flags"]["MAP_PRIVATE"]
_MAP_ANONYMOUS = fmt.FLAG_TABLES["mmap.flags"]["MAP_ANONYMOUS"]
_MAP_DROPPABLE = fmt.FLAG_TABLES["mmap.flags"]["MAP_DROPPABLE"]


def vma_entry_from(
    vma: Vma,
    *,
    status: int,
    shmid: int = 0,
    dumped: bool | None = None,
    contents_skipped_reason: str | None = None,
    nr_pages_dumped: int | None = None,
    nr_pages_parent: int | None = None,
    into=None,
) -> vma_pb2.vma_entry:
    """A ``vma_entry`` for ``vma`` with the given VMA_* ``status`` bits.

    ``flags`` and ``madv`` are derived as CRIU does (proc_parse.c): shared or
    private from the perms, MAP_ANONYMOUS when ``status`` has
    VMA_ANON_PRIVATE/VMA_ANON_SHARED, the rest from smaps VmFlags
    (MAP_DROPPABLE replaces MAP_PRIVATE). ``fd`` is -1 as in CRIU.
    The classification itself (``status``) is the caller's. ``into``: a
    repeated ``vma_entry`` field to add the entry to (built in place, not
    copied: 64,000 VMAs).
    """
    anon = bool(status & (fmt.VMA_ANON_PRIVATE | fmt.VMA_ANON_SHARED))
    flags, madv, vmflags = _derived_flags(vma.vmflags, vma.shared, anon)
    fields = dict(start=vma.start, end=vma.end, pgoff=vma.pgoff, shmid=shmid, prot=vma.prot, flags=flags,
                  status=status, fd=-1, path=vma.path, dev_major=vma.dev_major, dev_minor=vma.dev_minor,
                  inode=vma.inode, vmflags=vmflags)
    if madv:
        fields["madv"] = madv
    if dumped is not None:
        fields["dumped"] = dumped
    if contents_skipped_reason is not None:
        fields["contents_skipped_reason"] = contents_skipped_reason
    if nr_pages_dumped is not None:
        fields["nr_pages_dumped"] = nr_pages_dumped
    if nr_pages_parent is not None:
        fields["nr_pages_parent"] = nr_pages_parent
    return into.add(**fields) if into is not None else vma_pb2.vma_entry(**fields)


@functools.lru_cache(maxsize=1024)
def _derived_flags(vmflags: frozenset[str], shared: bool, anon: bool) -> tuple[int, int, str]:
    """``(flags, madv, vmflags text)`` of a VMA: they repeat from VMA to VMA."""
    flags = _MAP_SHARED if shared else _MAP_PRIVATE
    if anon:
        flags |= _MAP_ANONYMOUS
    madv = 0
    for mnemonic in vmflags:
        flags |= _VMFLAG_MAP.get(mnemonic, 0)
        if mnemonic in _VMFLAG_MADV:
            madv |= 1 << _VMFLAG_MADV[mnemonic]
    if flags & _MAP_DROPPABLE:
        flags &= ~_MAP_PRIVATE
    return flags, madv, " ".join(sorted(vmflags))


def _check_page_size(page_size: int) -> int:
    if not (4096 <= page_size <= 65536 and page_size & (page_size - 1) == 0):
        raise ValueError(f"page size {page_size} is not a power of two in [4096, 65536]")
    return page_size


def _fsync_close(f: BinaryIO) -> None:
    try:
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()


@dataclass(slots=True)
class PagesWriterStats:
    """Counters of one :class:`PagesWriter`.

    Pages are counted after entry merging; ``bytes_raw`` is the length of the
    page stream (``pages_present * page_size``); ``bytes_compressed`` the sum
    of zstd frame sizes (0 when raw); ``bytes_file`` the size of the pages
    file (header, index and footer included). Times in nanoseconds:
    ``compress_ns`` is summed over worker threads, so it may exceed wall
    time; ``write_ns`` covers write and fsync of the pages file.
    """

    entries: int = 0
    pages_present: int = 0
    pages_parent: int = 0
    pages_cow: int = 0  # PE_COW: stored once, in another process's stream
    frames: int = 0
    bytes_raw: int = 0
    bytes_compressed: int = 0
    bytes_file: int = 0
    compress_ns: int = 0
    write_ns: int = 0

    def add_to(self, dump: stats_pb2.dump_stats_entry) -> None:
        """Add these counters into a ``dump_stats_entry`` (pages_written,
        pages_skipped_parent, bytes_*, compress/write times in µs)."""
        dump.pages_written += self.pages_present
        dump.pages_skipped_parent += self.pages_parent
        dump.bytes_raw += self.bytes_raw
        dump.bytes_compressed += self.bytes_compressed
        dump.compress_time_us += self.compress_ns // 1000
        dump.write_time_us += self.write_ns // 1000


class PagesWriter:
    """Writer of ``pagemap-PID.img`` and its pages file for one process.

    Get one from :meth:`CheckpointWriter.pages_writer`. Add entries in
    ascending, non-overlapping vaddr order with :meth:`add_present` and
    :meth:`add_parent`, then :meth:`close`. Not thread-safe: one caller.

    ``compress=False`` writes ``pages-N.img`` exactly as CRIU would for the
    same entries. ``compress=True`` writes ``pages-N.zst.img``: the same page
    stream cut into frames of ``frame_pages`` pages, each compressed at
    ``level`` by a pool of ``threads`` workers (default ``os.cpu_count()``)
    and written, in order, by one writer thread. Frames are handed to the
    workers :data:`BATCH_FRAMES` at a time (one task, one wake-up, per batch:
    with a task per 256 KiB frame, thread hand-offs took a sixth of the CPU).
    Batches live in a fixed pool of ``2 * threads + 2`` buffers that are
    recycled once written, so memory stays near that many batches (12 MiB
    on 2 cores with 256 KiB frames) whatever the dump size, and
    :meth:`add_present_from` lets the caller read memory straight into a
    batch buffer, without a copy. The first compressing writer of a process
    has glibc keep freed memory (:func:`~dumper.kernel.libc.keep_freed_memory`:
    up to 32 MiB an arena), for the frames zstd allocates.
    ``merge=True`` folds an entry into the previous one when both have the
    same flags and are contiguous in memory.
    """

    def __init__(
        self,
        create: Callable[[str], BinaryIO],
        pid: int,
        pages_id: int,
        *,
        page_size: int,
        compress: bool = True,
        level: int = fmt.ZSTD_LEVEL,
        threads: int | None = None,
        frame_pages: int = fmt.FRAME_PAGES,
        merge: bool = True,
        pagemap_name: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        _check_page_size(page_size)
        self._progress = progress
        if not 1 <= frame_pages * page_size <= fmt.MAX_FRAME_BYTES:
            raise ValueError(f"frame_pages {frame_pages} out of range")
        if not 0 < pages_id < _U32_LIMIT:
            raise ValueError(f"pages_id {pages_id} out of range")
        self.pid = pid
        self.pages_id = pages_id
        self.page_size = page_size
        self.compress = compress
        self.level = level
        self.frame_pages = frame_pages
        self.merge = merge
        self.stats = PagesWriterStats()
        self.pages_file = fmt.zpages_name(pages_id) if compress else fmt.pages_name(pages_id)
        self.closed = False

        # Entries as parallel lists of ints; messages are built once, in close().
        self._vaddr: list[int] = []
        self._nr: list[int] = []
        self._flags: list[int] = []
        self._off: list[int] = []
        # Raw files only: zlib crc32 of each PE_PRESENT entry's pages (-1 for
        # others), computed as pages are written and carried across merged
        # entries; pagemap_entry.pages_crc32 lets verify check page contents.
        self._crc: list[int] | None = None if compress else []
        self._next = 0  # lowest vaddr the next entry may start at

        self._pool: ThreadPoolExecutor | None = None
        self._pages_f: BinaryIO | None = None
        # pagemap-PID.img, or pagemap-shmem-SHMID.img for a shared memory object
        self._pagemap_f: BinaryIO | None = create(pagemap_name or fmt.pagemap_name(pid))
        try:
            self._pages_f = create(self.pages_file)
        except BaseException:
            self._pagemap_f.close()
            raise
        self._pos = 0  # bytes written to the pages file
        if compress:
            self._frame_bytes = frame_pages * page_size
            self._frame_sizes: list[int] = []
            nthreads = threads or os.cpu_count() or 1
            if not 1 <= nthreads <= MAX_THREADS:
                raise ValueError(f"threads must be between 1 and {MAX_THREADS}, not {nthreads}")
            self._tls = threading.local()
            keep_freed_memory()  # each compressed frame is a new allocation
            self._pool = ThreadPoolExecutor(nthreads, thread_name_prefix=f"zstd-{pid}")
            # Bounded buffer pool: taking a free buffer is the back-pressure.
            self._batch_bytes = BATCH_FRAMES * self._frame_bytes
            self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
            nbuf = 2 * nthreads + 2
            for _ in range(nbuf):
                self._free.put(aligned_buffer(self._batch_bytes))
            # Frames queued or being compressed, pool buffers or caller memory:
            # a token each. A SimpleQueue, not a Semaphore: its get() is one C
            # call that a Ctrl-C either completes or leaves untouched, where a
            # Condition interrupted halfway could lose a wake-up (a hang).
            self._inflight: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(nbuf):
                self._inflight.put(None)
            self._writer_done: queue.SimpleQueue = queue.SimpleQueue()  # the writer thread's last act
            self._cur = self._free.get()
            self._fill = 0  # bytes of self._cur in use
            self._out: queue.SimpleQueue = queue.SimpleQueue()  # (future, buffer) in stream order
            self._error: BaseException | None = None
            self._writer: threading.Thread | None = None
            self._writer_stopping = self._writer_stopped = False
            head = zpages_pb2.zpages_head(
                page_size=page_size,
                frame_pages=frame_pages,
                compression=fmt.COMPRESSION_ZSTD,
                level=level,
                pages_id=pages_id,
            )
            self._write(fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(fmt.ZPAGES_MAGIC))
            payload = head.SerializeToString()
            self._write(fmt.U32.pack(len(payload)) + payload)
            self._data_offset = self._pos
            writer = threading.Thread(target=self._write_frames, name=f"zpages-writer-{pid}", daemon=True)
            writer.start()
            self._writer = writer  # only a started writer is waited for
        else:
            self._raw_buf: memoryview | None = None

    # --- entries

    def _add_entry(self, vaddr: int, nr: int, flags: int) -> None:
        if self.closed:
            raise ValueError("PagesWriter is closed")
        if vaddr % self.page_size:
            raise ValueError(f"vaddr {vaddr:#x} is not page aligned")
        if vaddr < self._next:
            raise ValueError(f"entry at {vaddr:#x} is below the end of the previous one ({self._next:#x})")
        end = vaddr + nr * self.page_size
        if nr <= 0 or end > _U64_LIMIT:
            raise ValueError(f"bad entry {vaddr:#x} + {nr} pages")
        st = self.stats
        if flags & fmt.PE_PRESENT:
            off = st.pages_present
            st.pages_present += nr
        else:
            off = -1
            if flags & fmt.PE_COW:
                st.pages_cow += nr
            else:
                st.pages_parent += nr
        if self.merge and self._vaddr and self._flags[-1] == flags and vaddr == self._next:
            self._nr[-1] += nr
        else:
            self._vaddr.append(vaddr)
            self._nr.append(nr)
            self._flags.append(flags)
            self._off.append(off)
            if self._crc is not None:
                self._crc.append(0 if flags & fmt.PE_PRESENT else -1)
        self._next = end

    def add_present(self, vaddr: int, data, *, stable: bool = False,
                    release: Callable[[], None] | None = None) -> None:
        """Append a PE_PRESENT entry at ``vaddr`` (bytes, page aligned) holding
        ``data`` (any C-contiguous bytes-like object; its length a non-zero
        multiple of the page size). Without ``stable`` the bytes are copied or
        written before this returns, so the caller may reuse its buffer; with
        ``stable`` the caller promises ``data`` stays unchanged until
        :meth:`close` returns -- or, given ``release``, until ``release()`` is
        called (once, from the writer's thread when the frames made from it
        are compressed, or from this call if none is) -- and whole frames are
        compressed straight from it (no copy). ValueError on misuse,
        DumpError on I/O failure."""
        mv = memoryview(data).cast("B")
        n = mv.nbytes
        if n == 0 or n % self.page_size:
            raise ValueError(f"data length {n} is not a non-zero multiple of the page size {self.page_size}")
        self._add_entry(vaddr, n // self.page_size, fmt.PE_PRESENT)
        self.stats.bytes_raw += n
        if self.compress:
            if not self._feed(mv, stable, release) and release is not None:
                release()
        else:
            self._write(mv)
            self._crc[-1] = zlib.crc32(mv, self._crc[-1])
            if release is not None:
                release()
            if self._progress is not None:
                self._progress(n)

    def add_present_from(self, vaddr: int, nr_pages: int, readinto: Callable[[memoryview, int], int]) -> int:
        """Append up to ``nr_pages`` pages at ``vaddr`` that ``readinto`` reads
        straight into the writer's buffers (no copy).

        ``readinto(view, addr)`` fills ``view`` with the memory at ``addr`` and
        returns the bytes it got, a multiple of the page size; fewer than asked
        means the page after them could not be read. Returns the pages added:
        less than ``nr_pages`` when ``readinto`` came up short, and the caller
        decides what to do with the failing page before calling again past it.
        """
        ps = self.page_size
        done = 0
        while done < nr_pages:
            if self.compress:
                buf, fill = self._cur, self._fill
                n = min((len(buf) - fill) // ps, nr_pages - done)
                view = memoryview(buf)[fill : fill + n * ps]
            else:
                raw = self._raw_buffer()
                n = min(len(raw) // ps, nr_pages - done)
                view = memoryview(raw)[: n * ps]
            got = readinto(view, vaddr + done * ps)
            got -= got % ps
            if got:
                self._add_entry(vaddr + done * ps, got // ps, fmt.PE_PRESENT)
                self.stats.bytes_raw += got
                if self.compress:
                    self._fill += got
                    if self._fill == len(self._cur):
                        self._submit_frame()
                else:
                    self._write(view[:got])
                    self._crc[-1] = zlib.crc32(view[:got], self._crc[-1])
            done += got // ps
            if got < n * ps:
                break
        return done

    def add_present_read(self, vaddr: int, nr_pages: int, readinto: Callable[[memoryview, int], int],
                         unreadable: Callable[[int], None]) -> None:
        """Append ``nr_pages`` pages at ``vaddr`` as PE_PRESENT, their bytes read
        by the compression workers themselves, each frame just before it is
        compressed: the read runs on every worker and its bytes are still in
        that core's cache when compressed (a copy-on-write snapshot, read
        after the thaw, goes this way).

        ``readinto`` is as for :meth:`add_present_from` and must be safe to
        call from several threads at once (``preadv`` at explicit offsets is).
        A page it cannot read is stored as zeros and ``unreadable(addr)`` is
        called, from a worker thread.
        """
        ps = self.page_size
        n = nr_pages * ps
        if n <= 0:
            raise ValueError(f"bad run {vaddr:#x} + {nr_pages} pages")
        self._add_entry(vaddr, nr_pages, fmt.PE_PRESENT)
        self.stats.bytes_raw += n
        if not self.compress:
            raw = self._raw_buffer()
            for pos in range(0, n, len(raw)):
                view = memoryview(raw)[: min(len(raw), n - pos)]
                read_whole(readinto, view, vaddr + pos, ps, unreadable)
                self._write(view)
                self._crc[-1] = zlib.crc32(view, self._crc[-1])
                if self._progress is not None:
                    self._progress(len(view))
            return
        fb, pos = self._frame_bytes, 0
        if self._fill % fb:  # finish the frame under way, here
            k = min(n, fb - self._fill % fb)
            read_whole(readinto, memoryview(self._cur)[self._fill : self._fill + k], vaddr, ps, unreadable)
            self._fill += k
            pos = k
            if self._fill == len(self._cur):
                self._submit_frame()
        if n - pos >= fb:
            self._submit_frame()  # whole frames only: the workers' frames start on the grid
            while n - pos >= fb:
                k = min(n - pos - (n - pos) % fb, self._batch_bytes)
                self._inflight.get()
                self._out.put((self._pool.submit(self._read_compress, readinto, vaddr + pos, k, unreadable), None, None))
                pos += k
                if self._error is not None:
                    raise self._error
        if pos < n:  # the tail, less than a frame, starts the next one
            read_whole(readinto, memoryview(self._cur)[self._fill : self._fill + n - pos], vaddr + pos, ps,
                        unreadable)
            self._fill += n - pos

    def _raw_buffer(self) -> memoryview:
        """The one reused buffer raw (uncompressed) pages are read into."""
        if self._raw_buf is None:
            self._raw_buf = aligned_buffer(fmt.FRAME_PAGES * self.page_size)
        return self._raw_buf

    def _read_compress(self, readinto, addr: int, nbytes: int, unreadable) -> tuple[list[bytes], int]:
        """Worker: ``nbytes`` (whole frames, at most a batch) at ``addr`` read
        into this thread's buffer in one go and compressed frame by frame."""
        buf = getattr(self._tls, "rbuf", None)
        if buf is None:
            buf = self._tls.rbuf = aligned_buffer(self._batch_bytes)
        # One read for the batch: every call drops and retakes the GIL, which
        # four threads contend for (the batch, 2 MiB, stays in the core's cache).
        read_whole(readinto, buf[:nbytes], addr, self.page_size, unreadable)
        return self._compress(buf[:nbytes])

    def add_parent(self, vaddr: int, nr_pages: int) -> None:
        """Append a PE_PARENT entry: ``nr_pages`` pages at ``vaddr`` whose data
        is in the parent checkpoint (no bytes here)."""
        self._add_entry(vaddr, nr_pages, fmt.PE_PARENT)

    def add_cow(self, vaddr: int, nr_pages: int) -> None:
        """Append a PE_COW entry: ``nr_pages`` pages at ``vaddr`` stored in
        another process's stream of the checkpoint (the caller writes
        ``cow-PID.img`` saying where; no bytes here)."""
        self._add_entry(vaddr, nr_pages, fmt.PE_COW)

    # --- page stream

    def _write(self, data) -> None:
        t0 = time.perf_counter_ns()
        try:
            self._pages_f.write(data)
        except OSError as err:
            raise DumpError(f"writing {self.pages_file}: {err.strerror}") from err
        self.stats.write_ns += time.perf_counter_ns() - t0
        self._pos += len(data)

    def _write_frames_direct(self, frames: list[bytes]) -> None:
        """Write compressed frames with one ``writev``, past the file's
        buffer: copying a 256 KiB frame into a 1 MiB buffer first cost as
        much CPU as compressing it when it does not compress."""
        t0 = time.perf_counter_ns()
        f = self._pages_f
        try:
            f.flush()
            fd, left, views = f.fileno(), sum(len(x) for x in frames), frames
            total = left
            while left:
                n = os.writev(fd, views)
                left -= n
                if left:  # short write (a signal, the disk filling): the rest, then the error
                    views = _after(views, n)
        except OSError as err:
            raise DumpError(f"writing {self.pages_file}: {err.strerror}") from err
        self.stats.write_ns += time.perf_counter_ns() - t0
        self._pos += total

    def _feed(self, mv: memoryview, stable: bool = False, release: Callable[[], None] | None = None) -> bool:
        """Queue ``mv``'s bytes for compression. Returns whether ``release``
        was handed to the writer thread (with the last frame made from
        ``mv`` without a copy)."""
        pos, n = 0, mv.nbytes
        fb = self._frame_bytes
        handed = False
        while pos < n:
            if stable and self._fill == 0 and n - pos >= fb:
                # Whole frames of caller memory that outlives us: no copy.
                k = min(n - pos, self._batch_bytes)
                k -= k % fb
                self._inflight.get()
                pos += k
                last = n - pos < fb  # what is left, if anything, is copied below
                handed = last and release is not None
                self._out.put((self._pool.submit(self._compress, mv[pos - k:pos]), None, release if last else None))
                if self._error is not None:
                    raise self._error
                continue
            k = min(len(self._cur) - self._fill, n - pos)
            self._cur[self._fill : self._fill + k] = mv[pos : pos + k]  # own copy: the caller reuses data
            self._fill += k
            pos += k
            if self._fill == len(self._cur):
                self._submit_frame()
        return handed

    def _compress(self, chunk) -> tuple[list[bytes], int]:
        """``chunk`` cut into frames of ``frame_pages`` pages (the last one
        may be short), each compressed."""
        # One compressor per worker thread: ZstdCompressor is not thread-safe.
        cctx = getattr(self._tls, "cctx", None)
        if cctx is None:
            cctx = self._tls.cctx = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=True
            )
        t0 = time.perf_counter_ns()
        fb = self._frame_bytes
        frames = [cctx.compress(chunk[i:i + fb]) for i in range(0, len(chunk), fb)]
        return frames, time.perf_counter_ns() - t0

    def _submit_frame(self) -> None:
        """Hand the current buffer to the pool and take a free one (may wait)."""
        if self._fill:
            chunk = memoryview(self._cur)[: self._fill]
            self._inflight.get()
            self._out.put((self._pool.submit(self._compress, chunk), self._cur, None))
            self._cur = self._free.get()
            self._fill = 0
        if self._error is not None:
            raise self._error

    def _write_frames(self) -> None:
        """Writer thread: write compressed frames in stream order, recycle buffers."""
        try:
            self._write_frames_until_stopped()
        finally:
            self._writer_done.put(True)

    def _write_frames_until_stopped(self) -> None:
        while True:
            item = self._out.get()
            if item is None:
                return
            fut, buf, release = item
            try:
                if self._error is None:
                    frames, ns = fut.result()
                    self.stats.compress_ns += ns
                    self._write_frames_direct(frames)
                    sizes = [len(f) for f in frames]
                    self._frame_sizes += sizes
                    self.stats.bytes_compressed += sum(sizes)
                    self.stats.frames += len(frames)
                    if self._progress is not None:
                        self._progress(self._frame_bytes * len(frames))
                else:
                    fut.cancel()
            except BaseException as err:  # handed to the producer, which raises it
                self._error = err if isinstance(err, DumpError) else DumpError(f"compressing pages: {err}")
            finally:
                if buf is not None:
                    self._free.put(buf)
                if release is not None:
                    release()
                self._inflight.put(None)

    def _stop_writer(self) -> None:
        # Waited for on a queue, not with Thread.join(): a join that Ctrl-C
        # interrupts marks a running thread stopped (Python 3.11), and the
        # next stop would not wait for it.
        if self._writer is not None and not self._writer_stopping:
            self._writer_stopping = True
            self._out.put(None)
        if self._writer is not None and not self._writer_stopped:
            self._writer_done.get()
            self._writer_stopped = True

    def _finish_zpages(self) -> None:
        self._submit_frame()
        self._stop_writer()
        if self._error is not None:
            raise self._error
        index = zpages_pb2.zpages_index(nr_pages=self.stats.pages_present, frame_size=self._frame_sizes)
        payload = index.SerializeToString()
        index_offset = self._pos
        self._write(fmt.U32.pack(len(payload)) + payload)
        self._write(fmt.ZPAGES_FOOTER.pack(index_offset, zlib.crc32(payload), fmt.ZPAGES_MAGIC))

    # --- pagemap

    def _pagemap_messages(self):
        yield pagemap_pb2.pagemap_head(
            pages_id=self.pages_id,
            pages_file=self.pages_file,
            compression=fmt.COMPRESSION_ZSTD if self.compress else fmt.COMPRESSION_NONE,
            page_size=self.page_size,
            nr_present_pages=self.stats.pages_present,
        )
        entry = pagemap_pb2.pagemap_entry
        crcs = self._crc if self._crc is not None else [-1] * len(self._vaddr)
        for vaddr, nr, flags, off, crc in zip(self._vaddr, self._nr, self._flags, self._off, crcs):
            e = entry(vaddr=vaddr, compat_nr_pages=nr if nr < _U32_LIMIT else 0, flags=flags, nr_pages=nr)
            if off >= 0:
                e.pages_off = off
            if crc >= 0:
                e.pages_crc32 = crc
            yield e

    def close(self) -> None:
        """Finish the pages file (drain the pool, write index and footer) and
        write ``pagemap-PID.img``; both are fsynced and closed. Idempotent."""
        if self.closed:
            return
        try:
            if self.compress:
                self._finish_zpages()
            t0 = time.perf_counter_ns()
            _fsync_close(self._pages_f)
            self.stats.write_ns += time.perf_counter_ns() - t0
            self.stats.bytes_file = self._pos
            self.stats.entries = len(self._vaddr)
            fmt.write_magic(self._pagemap_f, "PAGEMAP")
            fmt.write_entries(self._pagemap_f, self._pagemap_messages())
            _fsync_close(self._pagemap_f)
        except OSError as err:
            self.abort()
            raise DumpError(f"writing pages of pid {self.pid}: {err.strerror}") from err
        except BaseException:
            self.abort()
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
        self.closed = True

    def abort(self) -> None:
        """Drop queued work and close the files without syncing (the caller
        removes them). Idempotent."""
        self.closed = True
        if self._pool is not None:
            if self._error is None:
                self._error = DumpError("pages writer aborted")
            self._stop_writer()
            self._pool.shutdown(wait=True, cancel_futures=True)
        for f in (self._pages_f, self._pagemap_f):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> PagesWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _after(views: list, n: int) -> list:
    """``views`` with their first ``n`` bytes dropped."""
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(memoryview(v)[n:] if n else v)
        n = 0
    return out


def read_whole(readinto, view: memoryview, addr: int, page_size: int, unreadable) -> None:
    """Fill ``view`` from ``addr`` with ``readinto`` (``readinto(view, addr)``
    -> bytes got, short before a page it cannot read); such a page becomes
    zeros and its address is passed to ``unreadable``."""
    got = 0
    while got < len(view):
        k = readinto(view[got:], addr + got)
        got += k - k % page_size
        if got < len(view):
            view[got : got + page_size] = bytes(page_size)
            unreadable(addr + got)
            got += page_size


def _refuse_a_parent(dest: Path, dir_fd: int) -> None:
    check_not_a_parent(dest)


class CheckpointWriter:
    """Builds a checkpoint directory at ``dest`` atomically.

    ``dest``'s parent must exist. The rules for an existing ``dest`` are
    :class:`~dumper.image.safefs.OutputDir`'s, checked here before anything
    is written and again at :meth:`commit`: an empty directory is filled
    (replaced atomically by ours, so it becomes ours and 0700); a
    checkpoint (holds ``inventory.img``) is replaced only with ``force``, and
    only if ``replace_check(dest, dir_fd)`` does not raise (default:
    :func:`~dumper.image.checkpoint.check_not_a_parent`, refusing a
    checkpoint another one was taken over); anything else --
    a non-empty directory, a file, a symlink -- is refused, ``force`` or not.
    ``sources``: directories this checkpoint is made from (a parent chain);
    ``dest`` inside or equal to one of them is refused.

    Use as a context manager: leaving the block by an exception calls
    :meth:`abort`; leaving it normally without :meth:`commit` aborts too.
    """

    def __init__(
        self,
        dest: str | os.PathLike,
        *,
        force: bool = False,
        page_size: int | None = None,
        sources: Iterable[str | os.PathLike] = (),
        replace_check: Callable[[Path, int], None] | None = None,
    ) -> None:
        self.force = force
        self.page_size = _check_page_size(page_size or os.sysconf("SC_PAGE_SIZE"))
        self._out: OutputDir | None = OutputDir(dest, force=force, sources=sources,
                                                replace_check=replace_check or _refuse_a_parent)
        self.dest = self._out.dest
        self.files: list[str] = []  # names written so far
        self._pages_writers: list[PagesWriter] = []
        self.committed = False

    @property
    def tmpdir(self) -> Path | None:
        """Where the files are being written, for messages (None once
        committed or aborted). Files are created through a descriptor, never
        through this path."""
        return self._out.work_path if self._out is not None else None

    @property
    def dir_fd(self) -> int:
        """A descriptor of the directory being written (valid until commit or
        abort): for anything else the dump puts there, e.g. an ``O_TMPFILE``
        spill file (``os.open(".", O_TMPFILE|..., dir_fd=w.dir_fd)``). Never
        use :attr:`tmpdir`'s path for that: it may have been swapped."""
        return self._dir().fd

    def _dir(self):
        if self._out is None:
            raise DumpError("checkpoint writer is closed")
        return self._out.dir

    # --- files

    def _create(self, name: str) -> BinaryIO:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad image file name {name!r}")
        f = self._dir().create(name)
        self.files.append(name)
        return f

    def write_image(self, name: str, magic: str, msgs: list[Message]) -> Path:
        """Write image file ``name``: the ``magic`` header (a
        :data:`~dumper.image.format.MAGICS` key), then ``msgs`` as entries.
        Returns its (temporary) path. DumpError on I/O failure or a message
        missing required fields."""
        return self.write_image_extra(name, magic, msgs)

    def write_image_extra(self, name: str, magic: str, items: Iterable[Message | bytes]) -> Path:
        """:meth:`write_image` for images with raw data after some entries
        (pipes-data, fifo-data, ghost-file: crit's "extra" payloads): each
        item is a message, written as an entry, or bytes, written as they
        are right after the previous entry."""
        f = self._create(name)
        try:
            fmt.write_magic(f, magic)
            for item in items:
                if isinstance(item, Message):
                    fmt.write_entry(f, item)
                else:
                    fmt.write_extra(f, item)
            _fsync_close(f)
        except OSError as err:
            f.discard()
            raise DumpError(f"writing {name}: {err.strerror}") from err
        except (EncodeError, ValueError) as err:
            f.discard()
            raise DumpError(f"writing {name}: {err}") from err
        return self.tmpdir / name

    def write_inventory(self, inv: inventory_pb2.inventory_entry) -> Path:
        """Write ``inventory.img``. A copy of ``inv`` is written with defaults
        for unset fields: img_version 2, fdinfo_per_id true (CRIU refuses
        images without it), dumper_format_version, page_size."""
        m = inventory_pb2.inventory_entry()
        m.CopyFrom(inv)
        if not m.HasField("img_version"):
            m.img_version = fmt.CRTOOLS_IMAGES_V1_1
        if not m.HasField("fdinfo_per_id"):
            m.fdinfo_per_id = True
        if not m.HasField("dumper_format_version"):
            m.dumper_format_version = fmt.DUMPER_FORMAT_VERSION
        if not m.HasField("page_size"):
            m.page_size = self.page_size
        return self.write_image(fmt.INVENTORY_NAME, "INVENTORY", [m])

    def write_mm(self, pid: int, mm: mm_pb2.mm_entry) -> Path:
        """Write ``mm-PID.img``: one mm_entry (a copy, with unset required
        top-level fields set to 0). Its VMAs must be complete."""
        m = mm_pb2.mm_entry()
        m.CopyFrom(mm)
        fill_required(m)
        return self.write_image(fmt.mm_name(pid), "MM", [m])

    def write_stats(self, stats: stats_pb2.stats_entry | stats_pb2.dump_stats_entry) -> Path:
        """Write ``stats-dump`` (service magic). A bare dump_stats_entry is
        wrapped in ``stats_entry.dump``; unset required fields become 0."""
        m = stats_pb2.stats_entry()
        if isinstance(stats, stats_pb2.dump_stats_entry):
            m.dump.CopyFrom(stats)
        else:
            m.CopyFrom(stats)
        if m.HasField("dump"):
            fill_required(m.dump)
        return self.write_image(fmt.STATS_DUMP_NAME, "STATS", [m])

    def link_parent(self, target: str | os.PathLike) -> None:
        """Create the ``parent`` symlink to ``target`` (CRIU's
        ``--prev-images-dir``; a relative target such as ``../1`` keeps the
        pair movable). The target is stored as given."""
        self._dir().symlink(target, fmt.PARENT_LINK)
        self.files.append(fmt.PARENT_LINK)

    def pages_writer(
        self,
        pid: int,
        pages_id: int,
        *,
        compress: bool = True,
        level: int = fmt.ZSTD_LEVEL,
        threads: int | None = None,
        frame_pages: int = fmt.FRAME_PAGES,
        merge: bool = True,
        pagemap_name: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PagesWriter:
        """A :class:`PagesWriter` for ``pagemap-PID.img`` and
        ``pages-<pages_id>.img`` (raw) or ``pages-<pages_id>.zst.img``
        (compressed). Close it before :meth:`commit`. ``pagemap_name``:
        another name than ``pagemap-PID.img`` (a shared memory object's
        ``pagemap-shmem-SHMID.img``; ``pid`` then only names threads).
        ``progress(nbytes)`` is called, from the writer's thread, as
        compressed frames are written (raw bytes per frame)."""
        pw = PagesWriter(
            self._create,
            pid,
            pages_id,
            page_size=self.page_size,
            compress=compress,
            level=level,
            threads=threads,
            frame_pages=frame_pages,
            merge=merge,
            pagemap_name=pagemap_name,
            progress=progress,
        )
        self._pages_writers.append(pw)
        return pw

    # --- commit / abort

    def commit(self) -> Path:
        """Make the checkpoint visible at ``dest`` and return ``dest``.

        Every PagesWriter must be closed (DumpError otherwise). Files were
        fsynced when closed; here the directory's contents are checked to be
        exactly what was written, it is fsynced and moved into place
        (``renameat2``: RENAME_NOREPLACE, or RENAME_EXCHANGE to replace an
        empty directory or, with ``force``, a checkpoint, which is then
        removed), and the parent directory fsynced. On failure nothing is
        installed and the writer stays open for the caller to :meth:`abort`.
        """
        self._dir()
        open_writers = [pw.pid for pw in self._pages_writers if not pw.closed]
        if open_writers:
            raise DumpError(f"pages writers still open for pids {open_writers}")
        path = self._out.commit()
        self._out = None
        self.committed = True
        return path

    def abort(self) -> None:
        """Close any open PagesWriter and remove the temporary directory.
        Idempotent; does nothing after a successful commit."""
        for pw in self._pages_writers:
            if not pw.closed:
                pw.abort()
        if self._out is not None:
            self._out.abort()
            self._out = None

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
