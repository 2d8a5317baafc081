"""``dumper cat DIR --addr ADDR --size N``: memory of a checkpointed process.

Prints the ``N`` bytes at ``ADDR`` as they were at dump time
(:meth:`dumper.image.checkpoint.Checkpoint.read`: dumped pages, pages of the
parent chain, zeros for untouched anonymous memory, the mapped file for
untouched private file pages). Raw bytes to stdout by default, ``xxd``-style
lines with ``--hexdump``, or into a new 0600 file with ``-o FILE`` (memory
holds secrets), through :class:`~dumper.image.safefs.OutputFile`: FILE
appears complete or not at all, a symlink at FILE is never followed, an
existing FILE is refused unless ``--force``, which replaces a regular file
atomically once everything was written.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import BinaryIO, Sequence

from ..errors import DumperError
from ..image.checkpoint import open_checkpoint
from ..image.safefs import OutputFile
from .options import address, non_negative, pid

# Ranges up to this size are read whole before anything is written to
# stdout, so an error never leaves partial output there; larger ones are
# streamed in chunks (a multiple of 16, so --hexdump lines stay whole).
CHUNK = 16 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="checkpoint directory (dumper's or CRIU's)")
    parser.add_argument("--addr", type=address, required=True, help="first byte address (0x... or decimal)")
    parser.add_argument("--size", type=non_negative, required=True, help="number of bytes")
    parser.add_argument("--pid", type=pid, default=None, help="process (default: the checkpoint's root)")
    parser.add_argument("--hexdump", action="store_true", help="print xxd-like lines instead of raw bytes")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE instead of stdout: a new file, mode 0600, that appears only once "
                             "complete; an existing FILE is refused unless --force")
    parser.add_argument("--force", action="store_true",
                        help="with -o: replace an existing regular file FILE (atomically, on success only)")


_PRINTABLE = bytes(c if 0x20 <= c < 0x7F else 0x2E for c in range(256))


def hexdump_lines(data: bytes, addr: int) -> list[str]:
    """``xxd``-style lines for ``data`` whose first byte is at ``addr``:
    16 bytes a line, offset column = the address, 2-byte groups, ASCII."""
    out = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        out.append(f"{addr + i:08x}: {chunk.hex(' ', -2):<39}  {chunk.translate(_PRINTABLE).decode('ascii')}")
    return out


def run(args: argparse.Namespace) -> int:
    if args.addr + args.size > 1 << 64:
        raise DumperError(f"{args.addr:#x} + {args.size} runs past the end of the address space")
    if args.force and not args.output:
        raise DumperError("--force only applies to -o FILE")
    with open_checkpoint(args.dir) as ck:
        _check_range(ck, args.pid, args.addr, args.size)
        # Refused up front: an existing FILE without --force, a symlink, ...
        output = OutputFile(args.output, force=args.force, error=DumperError) if args.output else None
        with output or nullcontext():
            out: BinaryIO = output.file if output else sys.stdout.buffer
            try:
                _copy(ck, args, out)
                if output:
                    output.commit()  # FILE appears now, complete
                else:
                    out.flush()
            except BrokenPipeError:
                raise
            except OSError as err:
                raise DumperError(f"writing {args.output or 'stdout'}: {err.strerror}") from err
    return 0


def _copy(ck, args: argparse.Namespace, out: BinaryIO) -> None:
    done = 0
    while done < args.size:
        n = min(CHUNK, args.size - done)
        data = ck.read(args.pid, args.addr + done, n)
        if args.hexdump:
            out.write("".join(line + "\n" for line in hexdump_lines(data, args.addr + done)).encode("ascii"))
        else:
            out.write(data)
        done += n


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
