"""``dumper decode FILE [--pretty] [--payload]``: one image file as JSON, like ``crit decode``.

Prints ``{"magic": "PAGEMAP", "entries": [...]}``: the image type without
the common magic, then every entry (a pagemap's first entry is its
``pagemap_head``; a compressed pages file gives its ``zpages_head`` and
``zpages_index``, not the page bytes). Only fields that are set appear,
under their proto names. ``--pretty`` indents and prints addresses in hex
and flag fields by name (:mod:`dumper.image.pretty`).

Raw bytes that follow an entry (the buffered data of ``pipes-data.img`` and
``fifo-data.img``, the contents in ``ghost-file-N.img``, old-style
``ipcns-shm-N.img`` segments) appear as ``"extra"``: a size placeholder
``"... <10B>"`` as ``crit decode --nopl`` prints it, or the bytes in base64
with ``--payload`` (crit's default).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import sys
from typing import Sequence

from ..errors import BadMagic, ImageError
from ..image import format as fmt
from ..image import read_image
from ..image.pretty import message_to_dict
from ..image.reader import open_image_file

_IMAGE_FIRST_WORDS = frozenset({fmt.INVENTORY_MAGIC, fmt.IMG_COMMON_MAGIC, fmt.IMG_SERVICE_MAGIC})
_RAW_PAGES_NAME = re.compile(r"pages-\d+\.img\Z")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="an image file: inventory.img, core-TID.img, files.img, pagemap-PID.img, pages-N.zst.img, ..."
    )
    parser.add_argument(
        "--pretty", action="store_true", help="indent; addresses in hex, flags by name (like crit decode --pretty)"
    )
    parser.add_argument(
        "--payload", action="store_true",
        help="print the raw data after entries (pipe buffers, ghost file contents) in base64, "
        "instead of its size (crit decode's default; its --nopl is ours)",
    )


def size_text(num: int) -> str:
    """crit's human-readable size: ``10B``, ``4K``... (binary units, one
    decimal where not whole)."""
    value = float(num)
    for unit in ("", "K", "M", "G", "T", "P", "E", "Z"):
        if value < 1024.0:
            return f"{int(value)}{unit}B" if int(value) == value else f"{value:.1f}{unit}B"
        value /= 1024.0
    return f"{value:.1f}YB"


def _not_an_image(path: str | os.PathLike, err: BadMagic) -> BadMagic:
    """A clearer BadMagic for a file whose first word is no image magic at all."""
    try:
        with open_image_file(path) as f:
            head = f.read(fmt.U32.size)
    except (OSError, ImageError):
        return err
    if err.offset != 0 or len(head) != fmt.U32.size:
        return err
    word = fmt.U32.unpack(head)[0]
    if word in _IMAGE_FIRST_WORDS:
        return err
    msg = f"not a CRIU or dumper image: no image magic at the start ({word:#010x})"
    if _RAW_PAGES_NAME.search(os.fspath(path)):
        msg += "; pages-N.img files hold raw page bytes only"
    return BadMagic(path, 0, msg)


@contextlib.contextmanager
def _entry_dicts(path: str | os.PathLike, *, pretty: bool = False, payload: bool = False):
    """``(magic_name, iterator of entry dicts)``, decoded one at a time.

    An entry followed by raw data gets an ``"extra"`` key: the data in base64
    with ``payload`` (read through a second handle, so the entries keep
    streaming), else crit's ``"... <SIZE>"`` placeholder.
    """
    with open_image_file(path) as f:
        name = fmt.read_magic(f, path)
        if name not in fmt.ENTRY_TYPES:  # ZPAGES, or an ImageError for a type without schema
            _, msgs = read_image(path)
            yield name, (message_to_dict(m, pretty=pretty) for m in msgs)
            return
        with open_image_file(path) if payload else contextlib.nullcontext() as g:
            def dicts():
                for entry in fmt.iter_image(f, path, name, f.tell()):
                    d = message_to_dict(entry.msg, pretty=pretty)
                    if entry.extra is not None:
                        if payload:
                            d["extra"] = base64.b64encode(fmt.read_extra(g, entry.extra, path)).decode("ascii")
                        else:
                            d["extra"] = f"... <{size_text(entry.extra.size)}>"
                    yield d
            yield name, dicts()


def decode(path: str | os.PathLike, *, pretty: bool = False, payload: bool = False) -> dict:
    """``{"magic": NAME, "entries": [dict, ...]}`` for the image at ``path``
    (see :func:`_entry_dicts` for entries followed by raw data).

    Raises BadMagic ("not a CRIU or dumper image" for a file with no image
    magic, such as CRIU's raw ``pages-N.img`` or any other file), and the
    other ImageErrors of :func:`dumper.image.read_image` and
    :func:`dumper.image.format.iter_image`.
    """
    try:
        with _entry_dicts(path, pretty=pretty, payload=payload) as (name, dicts):
            return {"magic": name, "entries": list(dicts)}
    except BadMagic as err:
        raise _not_an_image(path, err) from err


# Entries held back before output starts: an image this small prints all
# or (on an error) nothing; a larger one streams.
_HOLD = 10_000


def run(args: argparse.Namespace) -> int:
    # Streamed: one entry decoded at a time (a pagemap may hold millions);
    # the output is exactly what json.dump of decode() prints.
    try:
        with _entry_dicts(args.file, pretty=args.pretty, payload=args.payload) as (name, dicts):
            if args.pretty:
                parts = ['{\n    "magic": ' + json.dumps(name) + ',\n    "entries": [']
                sep, first, close = ",\n        ", "\n        ", "\n    ]\n}\n"
            else:
                parts = ['{"magic": ' + json.dumps(name) + ', "entries": [']
                sep, first, close = ", ", "", "]}\n"
            n = 0
            for d in dicts:
                text = json.dumps(d, indent=4).replace("\n", "\n        ") if args.pretty else json.dumps(d)
                parts.append((sep if n else first) + text)
                n += 1
                if len(parts) > _HOLD:
                    sys.stdout.write("".join(parts))
                    parts.clear()
            parts.append(close if n else ("]\n}\n" if args.pretty else "]}\n"))
            sys.stdout.write("".join(parts))
    except BadMagic as err:
        raise _not_an_image(args.file, err) from err
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("decode", argv)
