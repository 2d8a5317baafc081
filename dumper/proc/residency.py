"""Which pages of a frozen process are resident: mincore(2), run as the process.

mincore(2) answers only about the caller's own address space, so it runs
inside the target: injected into a frozen thread (:mod:`dumper.proc.inject`,
one single-stepped ``syscall`` per call, no code mapping needed), writing
into a scratch vector mapped in the target for the purpose
(:data:`VECTOR_BYTES`, charged to the target's memory cgroup, hence small),
read back through /proc/PID/mem after each call. The scratch mapping is
unmapped before :func:`resident_runs` returns (and by an undo action if the
session is aborted meanwhile); registers are restored exactly.

Cost: the kernel fills one byte per page, walking 16 MiB of address space
per internal step (mm/mincore.c: a page-sized bounce buffer), 8x fewer steps
than /proc/PID/pagemap's 2 MiB (PAGEMAP_WALK_SIZE) for 1/8 of the bytes.
Used by the pagemap scanner as a pre-filter (see :mod:`dumper.scan.pagemap`
for when the answer is exact); the caller must have the target frozen by
the warden (``func(ctx, ...)`` runs there, :meth:`dumper.proc.warden.Warden.call`).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import numpy as np

from ..errors import UnsupportedKernel
from ..kernel import mman, x86_64
from ..kernel.libc import PAGE_SIZE
from ..kernel.uio import IOVEC_DTYPE, process_vm_readv
from .task import unmap_scratch

__all__ = ["resident_runs", "VECTOR_BYTES"]

#: The scratch mapping in the target: two vectors of one byte per page, 4 GiB
#: of address space per mincore call each; the target fills one while the
#: other is read back (process_vm_readv). Halves of 1 MiB stay in the CPU
#: caches: read back at 6 GB/s here, 4 MiB ones at 1.6 GB/s.
VECTOR_BYTES = 2 << 20
_BLOCK = 4096  # vector bytes tested at once for any non-zero byte (16 MiB of address space)
_U64 = np.uint64


def resident_runs(ctx, pid: int, ranges: Sequence[tuple[int, int]], vector_bytes: int = VECTOR_BYTES
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs of pages that mincore(2) reports resident in frozen process ``pid``.

    ``ranges``: ``[(start, end), ...]`` in bytes, page-aligned, end-exclusive,
    each inside mapped memory. Returns ``(starts, ends)`` (uint64 arrays,
    bytes, end-exclusive, address order within each range, adjacent runs
    merged), or None when mincore cannot be run here (not x86_64, the scratch
    mapping refused, a call failed): the caller then reads every page.
    Runs in the warden (``ctx``: :class:`dumper.proc.warden.WardenContext`).
    """
    try:
        injector = ctx.injector(pid)
    except UnsupportedKernel:
        return None
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    half = vector_bytes // 2
    calls = [(pos, min(half, (hi - pos) // PAGE_SIZE)) for lo, hi in ranges for pos in range(lo, hi, half * PAGE_SIZE)]
    buf = np.empty(half, np.uint8)
    local = np.array([(buf.ctypes.data, 0)], IOVEC_DTYPE)
    remote = np.array([(0, 0)], IOVEC_DTYPE)

    def take(at: int, pos: int, n: int) -> None:
        """Read back one call's vector and keep its runs."""
        local["iov_len"] = remote["iov_len"] = n
        remote["iov_base"] = at
        if process_vm_readv(pid, local, remote) != n:
            raise OSError(errno.EIO, "short read of the mincore vector")
        s, e = _runs(buf[:n], pos)
        if len(s):
            starts.append(s)
            ends.append(e)

    with injector as inj:
        vec = inj.syscall(x86_64.NR_mmap, 0, 2 * half, mman.PROT_READ | mman.PROT_WRITE,
                          mman.MAP_PRIVATE | mman.MAP_ANONYMOUS | mman.MAP_NORESERVE, -1, 0)
        if vec < 0:
            return None
        undo = ctx.on_abort(unmap_scratch, pid, inj.tid, vec, 2 * half)
        try:
            # Two halves: the target fills one while this process reads the other.
            pending = None
            for k, (pos, n) in enumerate(calls):
                at = vec + (k % 2) * half
                inj.syscall_start(x86_64.NR_mincore, pos, n * PAGE_SIZE, at)
                try:
                    if pending is not None:
                        take(*pending)
                finally:
                    ret = inj.syscall_wait()
                if ret != 0:
                    return None
                pending = (at, pos, n)
            if pending is not None:
                take(*pending)
        except OSError:
            return None
        finally:
            inj.syscall(x86_64.NR_munmap, vec, 2 * half)
            ctx.forget(undo)
    if not starts:
        return np.empty(0, _U64), np.empty(0, _U64)
    s, e = np.concatenate(starts), np.concatenate(ends)
    keep = np.ones(len(s), bool)
    keep[1:] = s[1:] != e[:-1]  # runs cut only by a call boundary
    return s[keep], e[np.flatnonzero(np.append(keep[1:], True))]


def _runs(vec: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of non-zero bytes of a mincore vector whose first byte is the
    page at ``base``, as byte addresses. One OR-reduction per 4 KiB block
    first: in a sparse mapping nearly every block is zero."""
    n = len(vec)
    nb = n // _BLOCK
    if nb:
        blocks = vec[: nb * _BLOCK].view(_U64).reshape(nb, _BLOCK // 8)
        busy = np.flatnonzero(np.bitwise_or.reduce(blocks, axis=1))
        if busy.size > nb // 4:
            idx = np.flatnonzero(vec)
        else:
            i = np.flatnonzero(vec[: nb * _BLOCK].reshape(nb, _BLOCK)[busy])
            idx = np.concatenate((busy[i // _BLOCK] * _BLOCK + i % _BLOCK,
                                  np.flatnonzero(vec[nb * _BLOCK :]) + nb * _BLOCK))
    else:
        idx = np.flatnonzero(vec)
    if not idx.size:
        return np.empty(0, _U64), np.empty(0, _U64)
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    first = idx[np.concatenate(([0], cut))].astype(_U64)
    last = idx[np.concatenate((cut, [idx.size])) - 1].astype(_U64)
    return _U64(base) + first * _U64(PAGE_SIZE), _U64(base) + (last + _U64(1)) * _U64(PAGE_SIZE)
