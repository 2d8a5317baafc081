"""The spool: raw page copies taken while the target is frozen, compressed
and written only after it runs again.

Bytes live at offsets of one linear space: ``[0, ram_size)`` in anonymous
memory of the dumper, beyond that in a spill file (an unnamed ``O_TMPFILE``
in the checkpoint's temporary directory: nothing to clean up, and it goes
wherever the checkpoint goes). RAM is bounded by ``limit`` bytes (default:
derived from MemAvailable, :func:`default_limit`).

Copying into memory that was never touched costs a page fault per 4 KiB
page, which is far slower than the copy itself (measured here: reading
1 GiB from a process took 0.3 s into populated memory and 1-8 s into fresh
memory), so :meth:`Spool.reserve` maps and populates the expected size
*before* the freeze (no MADV_HUGEPAGE: with THP defrag "madvise", its
direct compaction stalled the populate for seconds here). A short
estimate only costs speed: more memory is mapped as needed, up to the limit.
The spool is never inherited by a forked child (MADV_DONTFORK): sharing it
copy-on-write with the warden made every copied page fault.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import DumpError
from ..kernel import mman
from ..kernel.libc import MAP_FAILED, PAGE_SIZE, libc

__all__ = ["Spool", "default_limit", "parse_size"]

_SEGMENT_MIN = 64 << 20  # RAM grows by at least this much when the estimate was short
_BOUNCE = 4 << 20  # bytes copied per step when spilling to the file


def default_limit() -> int:
    """Half of MemAvailable (bytes), at least 64 MiB: the rest is left to the
    system and to the target, which keeps running while we compress."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return max(int(line.split()[1]) * 1024 // 2, 64 << 20)
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1048576"`` -> bytes (K/M/G/T are powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 2G)") from None
    if value < 0:
        raise ValueError(f"not a size: {text!r}")
    return value


class _Segment:
    """One anonymous private mapping of the dumper."""

    __slots__ = ("addr", "size", "offset")

    def __init__(self, size: int, offset: int, populate: bool) -> None:
        addr = libc.mmap(None, size, mman.PROT_READ | mman.PROT_WRITE,
                         mman.MAP_PRIVATE | mman.MAP_ANONYMOUS | mman.MAP_NORESERVE, -1, 0)
        if addr in (None, MAP_FAILED):
            err = ctypes.get_errno()
            raise DumpError(f"cannot map {size} bytes for the page spool: {os.strerror(err)}")
        self.addr, self.size, self.offset = addr, size, offset
        # Not inherited by fork: the warden is forked once the spool exists,
        # and a shared copy-on-write spool would fault (and copy) every page
        # written while the target is frozen (5x slower copies, measured).
        if libc.madvise(addr, size, mman.MADV_DONTFORK) != 0:
            err = ctypes.get_errno()
            self.close()
            raise DumpError(f"cannot keep the page spool out of forked children: {os.strerror(err)}")
        if populate and libc.madvise(addr, size, mman.MADV_POPULATE_WRITE) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS):  # pre-5.14: fault on first use instead
                self.close()
                raise DumpError(f"cannot populate {size} bytes for the page spool: {os.strerror(err)} "
                                "(lower --spool-limit?)")

    def view(self, start: int, length: int) -> memoryview:
        return memoryview((ctypes.c_char * length).from_address(self.addr + start)).cast("B")

    def close(self) -> None:
        if self.addr:
            libc.munmap(self.addr, self.size)
            self.addr = 0


class Spool:
    """Append-only store of page bytes; see the module docstring.

    Fill it with :meth:`buffer` / :meth:`advance` (the copier reads target
    memory straight into the buffer); read it back with :meth:`read`.
    ``spill_dir`` is the directory for the spill file (path or directory
    fd); None forbids spilling (DumpError when RAM runs out). Not
    thread-safe. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, *, limit: int | None = None, spill_dir: str | int | None = None) -> None:
        self.limit = default_limit() if limit is None else limit
        if self.limit < 0:
            raise ValueError("spool limit must be >= 0")
        self.spill_dir = spill_dir
        self.size = 0  # bytes appended
        self._segments: list[_Segment] = []
        self._ram = 0  # bytes of RAM mapped
        self._spill_fd = -1
        self._spilled = 0
        self._bounce: _Segment | None = None
        self._bounce_off = -1  # spool offset the bounce buffer stands for

    # -- filling ---------------------------------------------------------------

    @property
    def ram_bytes(self) -> int:
        return self._ram

    @property
    def spilled_bytes(self) -> int:
        return self._spilled

    def reserve(self, nbytes: int) -> None:
        """Map and populate RAM for ``nbytes`` more bytes now (page-rounded,
        capped by the limit). Call before the freeze."""
        want = min(-(-nbytes // PAGE_SIZE) * PAGE_SIZE, self.limit - self._ram)
        if want > 0:
            self._add_segment(want, populate=True)

    def _add_segment(self, size: int, populate: bool) -> None:
        self._segments.append(_Segment(size, self._ram, populate))
        self._ram += size

    def buffer(self, want: int) -> memoryview:
        """A writable buffer for the next bytes: at the tail, up to ``want``
        bytes (page multiple, at least a page). Fill it, then call
        :meth:`advance` with the bytes actually filled."""
        want = max(want - want % PAGE_SIZE, PAGE_SIZE)
        if self.size >= self._ram and self._ram < self.limit:
            self._add_segment(min(max(want, _SEGMENT_MIN), self.limit - self._ram), populate=False)
        if self.size < self._ram:
            seg = self._segments[self._seg_index(self.size)]
            start = self.size - seg.offset
            return seg.view(start, min(want, seg.size - start))
        if self.spill_dir is None:
            raise DumpError(f"the page spool is full ({self.limit} bytes; raise --spool-limit)")
        if self._bounce is None:
            self._bounce = _Segment(_BOUNCE, -1, populate=True)
        self._bounce_off = self.size
        return self._bounce.view(0, min(want, _BOUNCE))

    def advance(self, nbytes: int) -> None:
        """Account ``nbytes`` (page multiple) written into the last :meth:`buffer`."""
        if nbytes % PAGE_SIZE:
            raise ValueError("spool advances by whole pages")
        if nbytes and self.size >= self._ram:  # the bytes sit in the bounce buffer
            if self._bounce_off != self.size:
                raise ValueError("advance() without buffer()")
            self._spill(self._bounce.view(0, nbytes))
        self.size += nbytes

    def _spill(self, data: memoryview) -> None:
        try:
            if self._spill_fd < 0:
                d = self.spill_dir
                if isinstance(d, int):
                    fd = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=d)
                else:
                    fd = os.open(d, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
                self._spill_fd = fd
            done = 0
            while done < len(data):
                done += os.pwrite(self._spill_fd, data[done:], self._spilled + done)
        except OSError as err:
            raise DumpError(f"spilling pages to the checkpoint directory: {err.strerror}") from err
        self._spilled += len(data)

    def _seg_index(self, offset: int) -> int:
        # Few segments (the reservation, then 64 MiB steps): a scan is fine.
        for i in range(len(self._segments) - 1, -1, -1):
            if self._segments[i].offset <= offset:
                return i
        raise IndexError(offset)

    # -- reading back ----------------------------------------------------------

    def read(self, offset: int, nbytes: int) -> memoryview | bytes:
        """The bytes at ``[offset, offset + nbytes)``: a view into RAM when
        they lie in one segment (valid until :meth:`close`), else a copy."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ValueError(f"spool read [{offset}, {offset + nbytes}) outside [0, {self.size})")
        if offset + nbytes <= self._ram:
            seg = self._segments[self._seg_index(offset)]
            if offset + nbytes <= seg.offset + seg.size:
                return seg.view(offset - seg.offset, nbytes)
        out = bytearray(nbytes)
        pos = 0
        while pos < nbytes:
            at = offset + pos
            if at < self._ram:
                seg = self._segments[self._seg_index(at)]
                n = min(nbytes - pos, seg.offset + seg.size - at)
                out[pos:pos + n] = seg.view(at - seg.offset, n)
            else:
                n = nbytes - pos
                try:
                    got = os.preadv(self._spill_fd, [memoryview(out)[pos:]], at - self._ram)
                except OSError as err:
                    raise DumpError(f"reading spilled pages back: {err.strerror}") from err
                if got <= 0:
                    raise DumpError("reading spilled pages back: the spill file is short")
                n = got
            pos += n
        return bytes(out)

    def close(self) -> None:
        for seg in self._segments:
            seg.close()
        self._segments.clear()
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None
        if self._spill_fd >= 0:
            os.close(self._spill_fd)
            self._spill_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
