"""An image set CRIU can read, made from a checkpoint whose pages are zstd.

CRIU reads page data only from raw ``pages-N.img`` files (criu/pagemap.c
``open_page_read_at``: ``pagemap-PID.img`` names ``pages_id`` N, and the
pages file is read with ``preadv`` at the entries' offsets). A dumper
checkpoint stores them as ``pages-N.zst.img``; :func:`materialise` builds,
in a private directory:

* ``pages-N.img`` for every compressed pages file, decompressed frame by
  frame by a few threads and written in order (memory stays near
  ``2 * threads`` batches of about 4 MiB, whatever the size), every frame
  checked as it is decompressed (content size, XXH64 checksum, frame
  length against the index: a damaged frame stops the restore before CRIU
  runs);
* every other regular file of the checkpoint directory, hard-linked (or
  copied where a link is impossible: another file system, protected
  hardlinks). ``pagemap-PID.img`` is linked unchanged: CRIU reads its
  ``pages_id`` and entries and skips dumper's own fields (numbers >= 32);
* for each parent of an incremental chain, the same again in a real
  directory named ``parent`` inside the level below (CRIU's ``open_parent``
  opens ``parent`` relative to the image directory, a symlink or a
  directory). PE_PARENT entries are kept: CRIU follows them level by level.

Directories are created 0700, files 0600, through directory descriptors
with O_EXCL|O_NOFOLLOW; nothing outside the destination is written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptImage, NotRestorable
from ..image import format as fmt
from ..image.checkpoint import Checkpoint
from ..image.reader import PagesReader

__all__ = ["Materialised", "needs_materialising", "raw_pages_bytes", "materialise"]

# Bytes of decompressed pages one worker produces per task (a few frames).
_BATCH_BYTES = 4 << 20
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class Materialised:
    """What :func:`materialise` wrote. ``path``: the directory to give CRIU;
    ``levels``: checkpoints in the chain (1 without parents);
    ``pages_bytes``: raw page bytes written; ``linked``/``copied``: other
    files; ``seconds``: wall time."""

    path: Path
    levels: int = 0
    pages_bytes: int = 0
    linked: int = 0
    copied: int = 0
    seconds: float = 0.0


def _levels(ck: Checkpoint):
    return ck.chain()


def needs_materialising(ck: Checkpoint) -> bool:
    """True if any checkpoint of ``ck``'s chain has a compressed pages file
    (then CRIU cannot read the set as it is)."""
    return any(p.pages.compressed for level in _levels(ck) for p in level.processes.values())


def raw_pages_bytes(ck: Checkpoint) -> int:
    """Bytes of raw ``pages-N.img`` :func:`materialise` would write for the
    whole chain."""
    return sum(
        p.pages.nr_pages * p.pages.page_size
        for level in _levels(ck)
        for p in level.processes.values()
        if p.pages.compressed
    )


def _mkdir_private(parent_fd: int, name: str) -> int:
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    os.fchmod(fd, 0o700)
    return fd


def _write_all(fd: int, parts: list) -> None:
    views = [memoryview(p) for p in parts]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _write_raw_pages(src: PagesReader, dst_fd: int, name: str, threads: int) -> int:
    """Decompress ``src`` into a new raw file ``name`` in directory
    ``dst_fd``; returns the bytes written."""
    lay = src.layout
    fp, ps, total = src.frame_pages, src.page_size, src.nr_pages
    per_task = max(1, _BATCH_BYTES // (fp * ps))
    nframes = lay.nr_frames
    tasks = [(a, min(a + per_task, nframes)) for a in range(0, nframes, per_task)]
    local = threading.local()
    readers: list[PagesReader] = []
    lock = threading.Lock()

    def frames(task: tuple[int, int]) -> list[bytes]:
        r = getattr(local, "reader", None)
        if r is None:
            r = local.reader = PagesReader(src.path, compressed=True, page_size=ps)
            with lock:
                readers.append(r)
        a, b = task
        return [r.read_pages(i * fp, min(fp, total - i * fp)) for i in range(a, b)]

    out = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dst_fd)
    written = 0
    try:
        os.fchmod(out, 0o600)
        with ThreadPoolExecutor(threads, thread_name_prefix="materialise") as pool:
            inflight: deque = deque()
            it = iter(tasks)
            try:
                for task in it:
                    inflight.append(pool.submit(frames, task))
                    if len(inflight) >= 2 * threads:
                        parts = inflight.popleft().result()
                        _write_all(out, parts)
                        written += sum(len(p) for p in parts)
                while inflight:
                    parts = inflight.popleft().result()
                    _write_all(out, parts)
                    written += sum(len(p) for p in parts)
            finally:
                for fut in inflight:
                    fut.cancel()
    except OSError as err:
        raise NotRestorable(f"writing the raw pages {name} for CRIU: {err.strerror}") from err
    finally:
        os.close(out)
        for r in readers:
            r.close()
    if written != total * ps:
        raise CorruptImage(src.path, None, f"decompressed {written} bytes, expected {total * ps}")
    return written


def _copy_file(src_fd: int, name: str, dst_fd: int) -> None:
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
    try:
        if not stat.S_ISREG(os.fstat(fin).st_mode):
            return
        fout = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dst_fd)
        try:
            os.fchmod(fout, 0o600)
            with open(fin, "rb", closefd=False) as a, open(fout, "wb", closefd=False) as b:
                shutil.copyfileobj(a, b, 1 << 20)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _link_or_copy(src_fd: int, name: str, dst_fd: int, result: Materialised) -> None:
    try:
        os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        result.linked += 1
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP):
            raise
    _copy_file(src_fd, name, dst_fd)
    result.copied += 1


def _materialise_level(level: Checkpoint, dst_fd: int, result: Materialised, threads: int) -> None:
    compressed = {p.pages_path.name: p.pages for p in level.processes.values() if p.pages.compressed}
    src_fd = os.open(level.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for entry in sorted(os.scandir(src_fd), key=lambda e: e.name):
            name = entry.name
            if name == fmt.PARENT_LINK:
                continue
            if name in compressed:
                reader = compressed[name]
                raw_name = fmt.pages_name(reader.layout.head.pages_id)
                result.pages_bytes += _write_raw_pages(reader, dst_fd, raw_name, threads)
                continue
            if name.endswith(".zst.img"):
                continue  # not named by any pagemap: CRIU would not read it either
            if not entry.is_file(follow_symlinks=False):
                continue  # CRIU's images are regular files; leave anything else behind
            _link_or_copy(src_fd, name, dst_fd, result)
    finally:
        os.close(src_fd)


def materialise(ck: Checkpoint, dest: str | os.PathLike, *, threads: int | None = None) -> Materialised:
    """Write a CRIU-readable image set for ``ck`` and its parent chain into
    ``dest``, an existing empty private directory (see the module
    docstring). ``threads``: decompression workers (default up to 4).
    Interrupting (KeyboardInterrupt) waits for at most ``2 * threads``
    batches in flight.

    Raises CorruptImage for a damaged frame, NotRestorable for a write that
    fails (no space...), ImageError for an unreadable parent.
    """
    t0 = time.monotonic()
    dest = Path(dest)
    result = Materialised(path=dest)
    nthreads = threads or min(4, os.cpu_count() or 1)
    dst_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for depth, level in enumerate(_levels(ck)):
            if depth:
                try:
                    new_fd = _mkdir_private(dst_fd, fmt.PARENT_LINK)
                except OSError as err:
                    raise NotRestorable(f"creating {dest}/.../parent: {err.strerror}") from err
                os.close(dst_fd)
                dst_fd = new_fd
            try:
                _materialise_level(level, dst_fd, result, nthreads)
            except OSError as err:
                raise NotRestorable(f"copying {level.path} for CRIU: {err.strerror}") from err
            result.levels += 1
    finally:
        os.close(dst_fd)
    result.seconds = time.monotonic() - t0
    return result
