"""Restore test target: a Python 3 program holding a dict and a bytearray.

    python3 restore_python.py READY_FD LOG

Every ~10 ms it applies :func:`step` to its state; every :data:`EVERY` steps
it appends ``"py I CHECKSUM"`` to LOG (O_APPEND). The state after step I is
a pure function of I, so a test can recompute the checksum of any I with
:func:`expected` and prove that a restored interpreter went on from the
saved state, not from scratch.
"""

from __future__ import annotations

import os
import sys
import time
import zlib

SIZE = 4 << 20  # bytes in the bytearray
KEYS = 5000  # keys in the dict
EVERY = 10


def initial() -> tuple[dict, bytearray]:
    d = {f"k{j}": j * j for j in range(KEYS)}
    ba = bytearray(bytes(range(256)) * (SIZE // 256))
    return d, ba


def step(state: tuple[dict, bytearray], i: int) -> None:
    d, ba = state
    d[f"k{(i * 31) % KEYS}"] = i
    d[f"n{i % 97}"] = str(i) * (i % 7)
    pos = (i * 40961) % SIZE
    ba[pos : pos + 64] = bytes((i + j) & 0xFF for j in range(64))[: SIZE - pos]


def checksum(state: tuple[dict, bytearray]) -> int:
    d, ba = state
    return zlib.crc32(repr(list(d.items())).encode(), zlib.crc32(ba))


def expected(indexes) -> dict[int, int]:
    """``{i: checksum after step i}`` for the given step numbers."""
    want = sorted(set(indexes))
    out: dict[int, int] = {}
    if not want:
        return out
    state = initial()
    k = 0
    for i in range(1, want[-1] + 1):
        step(state, i)
        if i == want[k]:
            out[i] = checksum(state)
            k += 1
    return out


def main() -> int:
    ready, log_path = int(sys.argv[1]), sys.argv[2]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    state = initial()
    os.write(ready, b"READY\n")
    os.close(ready)
    i = 0
    while True:
        i += 1
        step(state, i)
        if i % EVERY == 0:
            os.write(log, f"py {i} {checksum(state)}\n".encode())
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
