"""A target process holding every memory layout the scanner tests need.

Run as ``python layouts.py LAYOUT[,LAYOUT...] [--file PATH]``. It sets the
layouts up, prints one JSON line ``{"name": [addr, length], ...}`` and then
``READY``, and serves commands from stdin, one per line, answering ``OK`` or
``ERR message``:

    write NAME PAGE [PAGE...]   write a byte into those pages
    read NAME PAGE [PAGE...]    read a byte from those pages
    pageout NAME                MADV_PAGEOUT the whole layout
    dontneed NAME PAGE          MADV_DONTNEED one page
    mmap NAME PAGES             map a new anonymous private region, write it
    mremap NAME                 move a layout elsewhere (MREMAP_FIXED)
    munmap NAME                 unmap a layout
    mprotect NAME PROT          mprotect a whole layout (PROT: r, rw, none)
    checksum NAME               crc32 of the layout's bytes
    exit                        exit(0)

Stand-alone on purpose (ctypes only): it is the workload, not the tool.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import zlib

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.syscall.restype = ctypes.c_long
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

PAGE = os.sysconf("SC_PAGE_SIZE")
HPAGE = 2 << 20
PROT_RW = 0x1 | 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANON, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MADV_DONTNEED, MADV_HUGEPAGE, MADV_PAGEOUT, MADV_GUARD_INSTALL = 4, 14, 21, 102

regions: dict[str, tuple[int, int]] = {}


def mmap(length, flags=MAP_PRIVATE | MAP_ANON, fd=-1, align=PAGE, prot=PROT_RW):
    addr = libc.mmap(None, length + align - PAGE, prot, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    aligned = -(-addr // align) * align
    if aligned > addr:
        libc.munmap(addr, aligned - addr)
    tail = addr + length + align - PAGE - (aligned + length)
    if tail:
        libc.munmap(aligned + length, tail)
    return aligned


def madvise(addr, length, advice):
    if libc.madvise(addr, length, advice):
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({advice}): {os.strerror(err)}")


def write(addr, page, value=None):
    b = bytes([(page * 7 + 1) & 0xFF or 1]) if value is None else value
    ctypes.memmove(addr + page * PAGE, b, len(b))


def read(addr, page):
    return ctypes.c_char.from_address(addr + page * PAGE).value


def setup_dense():
    a = mmap(256 * PAGE)
    for p in range(256):
        ctypes.memset(a + p * PAGE, (p % 251) + 1, PAGE)
    regions["dense"] = (a, 256 * PAGE)


def setup_sparse():
    size = 64 << 30
    a = mmap(size, MAP_PRIVATE | MAP_ANON | MAP_NORESERVE)
    step = size // PAGE // 97
    for i in range(100):
        write(a, (i * step + i) % (size // PAGE))
    regions["sparse"] = (a, size)


def setup_zero():
    a = mmap(64 * PAGE)
    madvise(a, 64 * PAGE, 15)  # MADV_NOHUGEPAGE: small zero page, not the huge one
    for p in range(64):
        read(a, p)
    for p in range(0, 64, 8):
        write(a, p)  # some written among the zero pages
    regions["zero"] = (a, 64 * PAGE)


def setup_file(path):
    with open(path, "wb") as f:
        f.write(os.urandom(32 * PAGE))
    fd = os.open(path, os.O_RDWR)
    a = mmap(32 * PAGE, MAP_PRIVATE, fd)
    os.close(fd)
    for p in range(0, 32, 2):
        read(a, p)  # page cache, still FILE
    for p in range(1, 32, 4):
        write(a, p)  # COW: anonymous now
    regions["file"] = (a, 32 * PAGE)


def setup_shared():
    a = mmap(16 * PAGE, MAP_SHARED | MAP_ANON)
    for p in range(0, 16, 3):
        write(a, p)
    regions["shared"] = (a, 16 * PAGE)


def setup_thp():
    a = mmap(2 * HPAGE, align=HPAGE)
    madvise(a, 2 * HPAGE, MADV_HUGEPAGE)
    ctypes.memset(a, 0x5A, HPAGE)  # one written THP
    read(a + HPAGE, 0)  # the huge zero page
    regions["thp"] = (a, 2 * HPAGE)


def setup_swap():
    a = mmap(64 * PAGE)
    madvise(a, 64 * PAGE, 15)
    for p in range(64):
        write(a, p, bytes([p + 1]) * 64)
    regions["swap"] = (a, 64 * PAGE)


def setup_guard():
    a = mmap(16 * PAGE)
    for p in range(16):
        write(a, p)
    madvise(a + 4 * PAGE, 3 * PAGE, MADV_GUARD_INSTALL)
    madvise(a + 12 * PAGE, PAGE, MADV_GUARD_INSTALL)
    regions["guard"] = (a, 16 * PAGE)


class uffdio_api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64)]


def _iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


_uffd_fd = None


def _setup_fork_advised(name, advice):
    a = mmap(16 * PAGE)
    for p in range(16):
        ctypes.memset(a + p * PAGE, (p * 13 + advice) % 251 + 1, PAGE)
    madvise(a, 16 * PAGE, advice)
    regions[name] = (a, 16 * PAGE)


def setup_dontfork():
    _setup_fork_advised("dontfork", 10)  # MADV_DONTFORK: a forked child has no such VMA


def setup_wipeonfork():
    _setup_fork_advised("wipeonfork", 18)  # MADV_WIPEONFORK (4.14): a forked child reads zeros


def setup_alt():
    n = 4000
    a = mmap(n * PAGE)
    madvise(a, n * PAGE, 15)
    for p in range(0, n, 2):
        write(a, p)
    regions["alt"] = (a, n * PAGE)


def setup_uffd():
    global _uffd_fd
    n = 32
    a = mmap(n * PAGE)
    madvise(a, n * PAGE, 15)
    for p in range(0, n, 2):
        write(a, p)
    fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK | 1)  # userfaultfd, UFFD_USER_MODE_ONLY
    if fd < 0:
        raise OSError(ctypes.get_errno(), "userfaultfd")
    api = uffdio_api(0xAA, (1 << 15) | (1 << 13), 0)  # WP_ASYNC | WP_UNPOPULATED
    if libc.ioctl(fd, _iowr(0x3F, 24), ctypes.byref(api)):
        raise OSError(ctypes.get_errno(), "UFFDIO_API")
    reg = uffdio_register(a, n * PAGE, 1 << 1, 0)
    if libc.ioctl(fd, _iowr(0x00, 32), ctypes.byref(reg)):
        raise OSError(ctypes.get_errno(), "UFFDIO_REGISTER")
    wp = uffdio_writeprotect(a, n * PAGE, 1)
    if libc.ioctl(fd, _iowr(0x06, 24), ctypes.byref(wp)):
        raise OSError(ctypes.get_errno(), "UFFDIO_WRITEPROTECT")
    for p in range(0, n, 5):
        write(a, p)  # written after protection: WRITTEN again
    _uffd_fd = fd
    regions["uffd"] = (a, n * PAGE)


def serve():
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "exit":
                sys.stdout.write("OK\n")
                sys.stdout.flush()
                os._exit(0)
            if cmd in ("write", "read"):
                a, _ = regions[args[0]]
                for p in args[1:]:
                    (write if cmd == "write" else read)(a, int(p))
            elif cmd == "guard":  # guard REGION PAGE: MADV_GUARD_INSTALL on one page
                a, _ = regions[args[0]]
                madvise(a + int(args[1]) * PAGE, PAGE, MADV_GUARD_INSTALL)
            elif cmd == "pageout":
                a, n = regions[args[0]]
                madvise(a, n, MADV_PAGEOUT)
            elif cmd == "dontneed":
                a, _ = regions[args[0]]
                madvise(a + int(args[1]) * PAGE, PAGE, MADV_DONTNEED)
            elif cmd == "mmap":
                n = int(args[1]) * PAGE
                a = mmap(n)
                ctypes.memset(a, 0x33, n)
                regions[args[0]] = (a, n)
                sys.stdout.write(json.dumps({args[0]: [a, n]}) + "\n")
            elif cmd == "mremap":
                a, n = regions[args[0]]
                dst = mmap(n)  # a free place to move to
                libc.mremap.restype = ctypes.c_void_p
                libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                                        ctypes.c_void_p]
                moved = libc.mremap(a, n, n, 1 | 2, dst)  # MREMAP_MAYMOVE | MREMAP_FIXED
                if moved in (None, ctypes.c_void_p(-1).value):
                    raise OSError(ctypes.get_errno(), "mremap")
                regions[args[0]] = (moved, n)
                sys.stdout.write(json.dumps({args[0]: [moved, n]}) + "\n")
            elif cmd == "mprotect":
                a, n = regions[args[0]]
                libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                if libc.mprotect(a, n, {"r": 1, "rw": 3, "none": 0}[args[1]]):
                    raise OSError(ctypes.get_errno(), "mprotect")
            elif cmd == "munmap":
                a, n = regions.pop(args[0])
                libc.munmap(a, n)
            elif cmd == "checksum":
                a, n = regions[args[0]]
                sys.stdout.write(f"{zlib.crc32(ctypes.string_at(a, n))}\n")
            else:
                raise ValueError(f"unknown command {cmd!r}")
            sys.stdout.write("OK\n")
        except Exception as err:  # report, keep serving
            sys.stdout.write(f"ERR {err}\n")
        sys.stdout.flush()


SETUPS = {
    "dense": setup_dense, "sparse": setup_sparse, "zero": setup_zero, "shared": setup_shared,
    "thp": setup_thp, "swap": setup_swap, "guard": setup_guard, "uffd": setup_uffd,
    "alt": setup_alt, "dontfork": setup_dontfork, "wipeonfork": setup_wipeonfork,
}


def main(argv):
    names = argv[0].split(",") if argv else list(SETUPS)
    path = argv[argv.index("--file") + 1] if "--file" in argv else None
    errors = {}
    for name in names:
        try:
            if name == "file":
                if path:
                    setup_file(path)
            else:
                SETUPS[name]()
        except OSError as err:
            errors[name] = str(err)
    sys.stdout.write(json.dumps({"regions": regions, "errors": errors}) + "\n")
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    serve()


if __name__ == "__main__":
    main(sys.argv[1:])
