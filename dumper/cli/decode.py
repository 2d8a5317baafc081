"""``dumper decode FILE [--pretty]``: one image file as JSON, like ``crit decode``.

Prints ``{"magic": "PAGEMAP", "entries": [...]}``: the image type without
the common magic, then every entry (a pagemap's first entry is its
``pagemap_head``; a compressed pages file gives its ``zpages_head`` and
``zpages_index``, not the page bytes). Only fields that are set appear,
under their proto names. ``--pretty`` indents and prints addresses in hex
and flag fields by name (:mod:`dumper.image.pretty`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..errors import BadMagic, ImageError
from ..image import format as fmt
from ..image import read_image
from ..image.reader import iter_image, open_image_file
from ..image.pretty import message_to_dict

_IMAGE_FIRST_WORDS = frozenset({fmt.INVENTORY_MAGIC, fmt.IMG_COMMON_MAGIC, fmt.IMG_SERVICE_MAGIC})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="an image file: inventory.img, mm-PID.img, pagemap-PID.img, stats-dump, pages-N.zst.img"
    )
    parser.add_argument(
        "--pretty", action="store_true", help="indent; addresses in hex, flags by name (like crit decode --pretty)"
    )


def _first_word(path: str | os.PathLike) -> int | None:
    try:
        with open_image_file(path) as f:
            head = f.read(fmt.U32.size)
    except (OSError, ImageError):
        return None
    return fmt.U32.unpack(head)[0] if len(head) == fmt.U32.size else None


def decode(path: str | os.PathLike, *, pretty: bool = False) -> dict:
    """``{"magic": NAME, "entries": [dict, ...]}`` for the image at ``path``.

    Raises BadMagic ("raw page data, not an image" for a file with no image
    magic, such as CRIU's ``pages-N.img``), and the other ImageErrors of
    :func:`dumper.image.read_image`.
    """
    try:
        name, msgs = read_image(path)
    except BadMagic as err:
        word = _first_word(path)
        if err.offset == 0 and word is not None and word not in _IMAGE_FIRST_WORDS:
            raise BadMagic(
                path, 0, f"raw page data, not an image: no image magic at the start ({word:#010x}); "
                "pages-N.img files hold page bytes only"
            ) from err
        raise
    return {"magic": name, "entries": [message_to_dict(m, pretty=pretty) for m in msgs]}


# Entries held back before output starts: an image this small prints all
# or (on an error) nothing; a larger one streams.
_HOLD = 10_000


def run(args: argparse.Namespace) -> int:
    # Streamed: one entry decoded at a time (a pagemap may hold millions);
    # the output is exactly what json.dump of decode() prints.
    try:
        with iter_image(args.file) as (name, entries):
            if args.pretty:
                parts = ['{\n    "magic": ' + json.dumps(name) + ',\n    "entries": [']
                sep, first, close = ",\n        ", "\n        ", "\n    ]\n}\n"
            else:
                parts = ['{"magic": ' + json.dumps(name) + ', "entries": [']
                sep, first, close = ", ", "", "]}\n"
            n = 0
            for _, msg in entries:
                d = message_to_dict(msg, pretty=args.pretty)
                text = json.dumps(d, indent=4).replace("\n", "\n        ") if args.pretty else json.dumps(d)
                parts.append((sep if n else first) + text)
                n += 1
                if len(parts) > _HOLD:
                    sys.stdout.write("".join(parts))
                    parts.clear()
            parts.append(close if n else ("]\n}\n" if args.pretty else "]}\n"))
            sys.stdout.write("".join(parts))
    except BadMagic:
        decode(args.file)  # the error decode() gives (raw page data...)
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import subcommand_main

    return subcommand_main("decode", argv)
