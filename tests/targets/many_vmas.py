"""A target with many VMAs, a spinning worker and a main thread blocked in read().

Run as ``python many_vmas.py NVMAS COUNTER_FILE``. It maps NVMAS one-page
VMAs in one block (every other page read-only, so none merge), writes a
known pattern into every 8th page, then prints one JSON line
``{"data": [addr, length]}`` and READY. A worker thread bumps a 64-bit
counter in the first page of COUNTER_FILE (MAP_SHARED) for ever; the main
thread blocks in read() on its standard input, so its registers are the
same at every stop, and exits when the input closes.

Stand-alone on purpose (ctypes only): it is the workload, not the tool.
"""

import ctypes
import json
import mmap
import os
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

PAGE = os.sysconf("SC_PAGE_SIZE")
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANON = 0x02, 0x20


def main() -> None:
    n = int(sys.argv[1])
    size = n * PAGE
    addr = libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    for p in range(0, n, 8):
        ctypes.memset(addr + p * PAGE, (p // 8) % 251 + 1, PAGE)
    for p in range(1, n, 2):
        if libc.mprotect(addr + p * PAGE, PAGE, PROT_READ):
            raise OSError(ctypes.get_errno(), "mprotect")

    f = open(sys.argv[2], "r+b")
    counter = (ctypes.c_uint64 * 1).from_buffer(mmap.mmap(f.fileno(), PAGE))

    def spin() -> None:
        while True:
            counter[0] += 1

    threading.Thread(target=spin, daemon=True).start()
    print(json.dumps({"data": [addr, size]}), flush=True)
    print("READY", flush=True)
    while os.read(0, 4096):  # blocked in read(): stable registers
        pass


if __name__ == "__main__":
    main()
