"""An image set CRIU can read, made from a checkpoint whose pages are zstd.

CRIU reads page data only from raw ``pages-N.img`` files (criu/pagemap.c
``open_page_read_at``: ``pagemap-PID.img`` names ``pages_id`` N, and the
pages file is read with ``preadv`` at the entries' offsets). A dumper
checkpoint stores them as ``pages-N.zst.img``; :func:`materialise` builds,
in a private directory:

* ``pages-N.img`` for every compressed pages file, a process's or a shared
  memory object's (``pagemap-shmem-ID.img``), written by
  :func:`dumper.image.rawpages.write_pages` (a few threads decompressing
  ahead, memory near ``2 * threads`` batches of about 4 MiB whatever the
  size, every frame checked as it is decompressed: a damaged frame stops
  the restore before CRIU runs); a pagemap whose entries CRIU could not
  read as stored is written again with CRIU's fields
  (:func:`~dumper.image.rawpages.write_pagemap`): pages a forked tree
  shares copy-on-write (PE_COW, stored once in another process's stream)
  become PE_PRESENT with their bytes in each process's own pages file, as
  CRIU writes them, and ``cow-PID.img`` is left out;
* every other regular file of the checkpoint directory, hard-linked (or
  copied where a link is impossible: another file system, protected
  hardlinks). ``pagemap-PID.img`` is linked unchanged: CRIU reads its
  ``pages_id`` and entries and skips dumper's own fields (numbers >= 32);
* for each parent of an incremental chain, the same again in a real
  directory named ``parent`` inside the level below (CRIU's ``open_parent``
  opens ``parent`` relative to the image directory, a symlink or a
  directory). PE_PARENT entries are kept: CRIU follows them level by level.

Directories are created 0700, files 0600, through directory descriptors
with O_EXCL|O_NOFOLLOW (:class:`dumper.image.safefs.Dir`); nothing outside
the destination is written.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, NotRestorable
from ..image import format as fmt
from ..image.checkpoint import Checkpoint
from ..image.rawpages import PagemapPlan, pagemap_names, plan_pagemap, write_pagemap, write_pages
from ..image.safefs import Dir

__all__ = ["Materialised", "needs_materialising", "raw_pages_bytes", "materialise"]

_COW_RE = re.compile(r"^cow-\d+\.img$")


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


def _rewritten(level: Checkpoint) -> Iterator[PagemapPlan]:
    """Plans of the level's pagemaps whose pages CRIU cannot read as
    stored: a compressed stream (a process's or a shared memory object's),
    or entries CRIU does not know (PE_COW: pages stored once in another
    process's stream). Metadata only: work follows the entries."""
    for name in pagemap_names(level):
        plan = plan_pagemap(level, name, flatten=False)
        if plan.stream.compressed or not plan.as_stored:
            yield plan


def needs_materialising(ck: Checkpoint) -> bool:
    """True if any checkpoint of ``ck``'s chain has a pagemap CRIU cannot
    read as stored (compressed pages, pages shared copy-on-write). True
    for a damaged one too: reading it for CRIU reports the damage."""
    try:
        return any(next(_rewritten(level), None) is not None for level in _levels(ck))
    except ImageError:
        return True


def raw_pages_bytes(ck: Checkpoint) -> int:
    """Bytes of raw ``pages-N.img`` :func:`materialise` would write for the
    whole chain."""
    return sum(plan.present * plan.page_size for level in _levels(ck) for plan in _rewritten(level))


def _copy_file(src_fd: int, name: str, dst: Dir) -> None:
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
    try:
        if not stat.S_ISREG(os.fstat(fin).st_mode):
            return
        with open(fin, "rb", closefd=False) as a, dst.create(name) as b:
            shutil.copyfileobj(a, b, 1 << 20)
    finally:
        os.close(fin)


def _link_or_copy(src_fd: int, name: str, dst: Dir, result: Materialised) -> None:
    try:
        os.link(name, name, src_dir_fd=src_fd, dst_dir_fd=dst.fd, follow_symlinks=False)
        result.linked += 1
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP):
            raise
    _copy_file(src_fd, name, dst)
    result.copied += 1


def _materialise_level(level: Checkpoint, dst: Dir, result: Materialised, threads: int) -> None:
    # Pagemaps whose pages CRIU cannot read as stored get a raw pages file
    # (and, if their entries had to change, a pagemap) written here.
    written: set[str] = set()  # source names not to link
    for plan in _rewritten(level):
        with dst.create(fmt.pages_name(plan.pages_id)) as f:
            result.pages_bytes += write_pages(plan, f, threads=threads)
        written.add(plan.stream.name)
        if not plan.as_stored:
            with dst.create(plan.name) as f:
                write_pagemap(plan, f)
            written.add(plan.name)
    src_fd = os.open(level.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for entry in sorted(os.scandir(src_fd), key=lambda e: e.name):
            name = entry.name
            if name == fmt.PARENT_LINK or name in written:
                continue
            if name.endswith(".zst.img") or _COW_RE.match(name):
                continue  # dumper's own (pages no pagemap names, COW references): CRIU reads neither
            if not entry.is_file(follow_symlinks=False):
                continue  # CRIU's images are regular files; leave anything else behind
            _link_or_copy(src_fd, name, dst, result)
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
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise NotRestorable(f"opening {dest}: {err.strerror}") from err
    dst = root = Dir(fd, dest, NotRestorable)
    try:
        for depth, level in enumerate(_levels(ck)):
            if depth:
                dst = dst.mkdir(fmt.PARENT_LINK)
            try:
                _materialise_level(level, dst, result, nthreads)
            except OSError as err:
                raise NotRestorable(f"copying {level.path} for CRIU: {err.strerror}") from err
            result.levels += 1
    finally:
        root.close()
    result.seconds = time.monotonic() - t0
    return result
