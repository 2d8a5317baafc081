"""``dumper cat DIR --addr ADDR --size N``: memory of a checkpointed process.

Prints the ``N`` bytes at ``ADDR`` as they were at dump time
(:meth:`dumper.image.checkpoint.Checkpoint.read`: dumped pages, pages of the
parent chain, zeros for untouched anonymous memory, the mapped file for
untouched private file pages). Raw bytes to stdout by default, ``xxd``-style
lines with ``--hexdump``, or into a new 0600 file with ``-o FILE`` (memory
holds secrets).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import BinaryIO, Sequence

from ..errors import DumperError
from ..image.checkpoint import open_checkpoint
from .options import address, non_negative, pid

# Ranges up to this size are read whole before anything is written, so an
# error never leaves partial output; larger ones are streamed in chunks (a
# multiple of 16, so --hexdump lines stay whole).
CHUNK = 16 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--addr", type=address, required=True, help="first byte address (0x... or decimal)")
    parser.add_argument("--size", type=non_negative, required=True, help="number of bytes")
    parser.add_argument("--pid", type=pid, default=None, help="process (default: the checkpoint's root)")
    parser.add_argument("--hexdump", action="store_true", help="print xxd-like lines instead of raw bytes")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (created 0600) instead of stdout")


_PRINTABLE = bytes(c if 0x20 <= c < 0x7F else 0x2E for c in range(256))


def hexdump_lines(data: bytes, addr: int) -> list[str]:
    """``xxd``-style lines for ``data`` whose first byte is at ``addr``:
    16 bytes a line, offset column = the address, 2-byte groups, ASCII."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        out.append(f"{addr + i:08x}: {chunk.hex(' ', -2):<39}  {chunk.translate(_PRINTABLE).decode('ascii')}")
    return out


def _open_output(path: str) -> BinaryIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise DumperError(f"cannot write {path}: {err.strerror}") from err
    return open(fd, "wb")


def run(args: argparse.Namespace) -> int:
    if args.addr + args.size > 1 << 64:
        raise DumperError(f"{args.addr:#x} + {args.size} runs past the end of the address space")
    with open_checkpoint(args.dir) as ck:
        _check_range(ck, args.pid, args.addr, args.size)
        # The first chunk (all of it up to CHUNK bytes) is read before the
        # output is opened: a bad range leaves no output file behind.
        n = min(CHUNK, args.size)
        data = ck.read(args.pid, args.addr, n)
        out: BinaryIO = _open_output(args.output) if args.output else sys.stdout.buffer
        try:
            done = 0
            while True:
                if args.hexdump:
                    lines = hexdump_lines(data, args.addr + done)
                    out.write("".join(line + "\n" for line in lines).encode("ascii"))
                else:
                    out.write(data)
                done += n
                if done >= args.size:
                    break
                n = min(CHUNK, args.size - done)
                data = ck.read(args.pid, args.addr + done, n)
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as err:
            _discard(args.output, out)
            raise DumperError(f"writing {args.output or 'stdout'}: {err.strerror}") from err
        except BaseException:
            _discard(args.output, out)  # no half-written output left behind
            raise
        finally:
            if args.output and not out.closed:
                out.close()
    return 0


def _discard(path: str | None, out) -> None:
    if path:
        out.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def _check_range(ck, pid: int | None, addr: int, size: int) -> None:
    """Refuse up front a range not wholly inside VMAs whose contents the
    checkpoint can give, so nothing is written for a range that fails later.
    O(number of VMAs crossed)."""
    proc = ck.process(pid)
    if not proc.vmas:
        return  # a CRIU set without mm-PID.img: read() decides page by page
    pos, end = addr, addr + size
    while pos < end:
        v = proc.vma_at(pos)
        if v is None:
            raise DumperError(f"{pos:#x} is outside any recorded VMA of pid {proc.pid} in {ck.path}")
        if v.HasField("dumped") and not v.dumped:
            raise DumperError(f"{pos:#x} is in [{v.start:#x}, {v.end:#x}), whose contents were not dumped: "
                              f"{v.contents_skipped_reason or 'skipped'}")
        pos = v.end


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("cat", argv)
