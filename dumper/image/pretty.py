"""Image messages as JSON-ready dicts, and the text forms of VMAs.

:func:`message_to_dict` is what ``dumper decode`` prints: protobuf's own
``json_format.MessageToDict`` (proto field names, only the fields that are
set, enums by name), then one pass over the result guided by the
descriptors, in the manner of CRIU's ``pycriu/images/pb2dict.py``:

- 64-bit integers become JSON numbers again (``MessageToDict`` writes them
  as strings for JavaScript's sake; ``crit decode`` writes numbers);
- with ``pretty``, fields with the ``(dumper).hex`` option print as
  ``"0x..."`` (on a message field: every integer inside it, as crit prints
  registers), ``(dumper).flags = "TABLE"`` fields as ``"NAME | NAME"``
  (:data:`dumper.image.format.FLAG_TABLES`, unknown bits in hex),
  ``(dumper).dev``/``odev`` fields as ``"major:minor"`` and
  ``(dumper).dict = "TABLE"`` fields by name
  (:data:`dumper.image.format.VALUE_TABLES`, unknown values as numbers).

Bytes fields are base64 without line breaks (crit breaks them every 76
characters); everything else matches ``crit decode`` field for field.

The options are read from the descriptors (``proto/opts.proto``), so a new
field needs no code here.

:func:`vma_annotation` and :func:`prot_text` give the columns of
``dumper mems``/``rss`` (crit's ``explore_mems`` layout).
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from . import format as fmt
from .pb import opts_pb2, vma_pb2

__all__ = ["message_to_dict", "field_options", "prot_text", "vma_annotation", "printable"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# CRIU's kernel-style device numbers (pycriu pb2dict: kern_minorbits = 20).
_KERN_MINORBITS = 20

_options_cache: dict[str, opts_pb2.dumper_opts | None] = {}


def field_options(field: FieldDescriptor) -> opts_pb2.dumper_opts | None:
    """The ``(dumper)`` options of ``field``, or None if it has none."""
    key = field.full_name
    if key not in _options_cache:
        opts = field.GetOptions()
        _options_cache[key] = opts.Extensions[opts_pb2.dumper] if opts.HasExtension(opts_pb2.dumper) else None
    return _options_cache[key]


def _dev_text(value: int, old_encoding: bool) -> str:
    if old_encoding:  # glibc's major(3)/minor(3), as crit's os.major/os.minor
        return f"{os.major(value)}:{os.minor(value)}"
    return f"{value >> _KERN_MINORBITS}:{value & ((1 << _KERN_MINORBITS) - 1)}"


def _scalar(field: FieldDescriptor, value: Any, pretty: bool, hex_all: bool) -> Any:
    if field.type in _INT64_TYPES:
        value = int(value)
    if not pretty or field.type in (FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    opts = field_options(field)
    if hex_all or (opts is not None and opts.hex):
        return f"{value:#x}"
    if opts is None:
        return value
    if opts.flags and opts.flags in fmt.FLAG_TABLES:
        return fmt.format_flags(value, opts.flags)
    if opts.dev or opts.odev:
        return _dev_text(value, opts.odev)
    if opts.dict and opts.dict in fmt.VALUE_TABLES:
        return fmt.VALUE_TABLES[opts.dict].get(value, value)
    return value


def _convert(desc: Descriptor, d: dict, pretty: bool, hex_all: bool = False) -> dict:
    for name, value in d.items():
        field = desc.fields_by_name.get(name)
        if field is None:  # not a field of ours (an extension): leave it
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            # crit: hex on a message field makes every integer inside it hex
            inner_hex = hex_all or (pretty and (opts := field_options(field)) is not None and opts.hex)
            if field.is_repeated:
                d[name] = [_convert(sub, v, pretty, inner_hex) for v in value]
            else:
                d[name] = _convert(sub, value, pretty, inner_hex)
        elif field.is_repeated:
            d[name] = [_scalar(field, v, pretty, hex_all) for v in value]
        else:
            d[name] = _scalar(field, value, pretty, hex_all)
    return d


def message_to_dict(msg: Message, *, pretty: bool = False) -> dict:
    """``msg`` as a JSON-ready dict (see the module docstring)."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return _convert(msg.DESCRIPTOR, d, pretty)


# --- VMAs as text (crit x DIR mems)

_PROT = fmt.FLAG_TABLES["mmap.prot"]
_MAP_GROWSDOWN = fmt.FLAG_TABLES["mmap.flags"]["MAP_GROWSDOWN"]
_MAP_SHARED = fmt.FLAG_TABLES["mmap.flags"]["MAP_SHARED"]


def printable(text: str | bytes) -> str:
    """``text`` with control and other unprintable characters escaped, so a
    hostile path cannot break a line or drive the terminal."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def prot_text(prot: int) -> str:
    """``"rw-"``-style text of PROT_* bits."""
    return "".join(c if prot & _PROT[name] else "-" for c, name in
                   (("r", "PROT_READ"), ("w", "PROT_WRITE"), ("x", "PROT_EXEC")))


def vma_annotation(vma: vma_pb2.vma_entry, shm_ids: dict[int, int] | None = None) -> str:
    """crit's annotation of a VMA: `` /path + 0x1000 (s)``, `` shmem[1]``,
    `` [stack]``, `` [vdso]``..., then `` *`` if the VMA is not
    VMA_AREA_REGULAR. Empty for plain anonymous memory. ``shm_ids`` numbers
    shared objects by first appearance (crit's ``vma_id``), per call site.
    The path is the one dumper records; a CRIU image names files by id in
    ``reg-files.img``, which is not read: ``file #ID``."""
    st = vma.status
    ids = shm_ids if shm_ids is not None else {}

    def shm(kind: str) -> str:
        n = ids.setdefault(vma.shmid, len(ids) + 1)
        return f" {kind}[{n:x}]"

    if st & fmt.VMA_AREA_SYSVIPC:
        fn = shm("ips")
    elif st & fmt.VMA_ANON_SHARED:
        fn = shm("shmem")
    elif st & fmt.VMA_AREA_SOCKET:
        fn = shm("packet")
    elif st & fmt.VMA_AREA_MEMFD and not vma.path:  # CRIU 4.2 marks it VMA_FILE_SHARED too
        fn = f" memfd #{vma.shmid}" + (" (s)" if vma.flags & _MAP_SHARED else "")
    elif st & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED):
        fn = " " + (printable(vma.path) if vma.path else f"file #{vma.shmid}")
        if vma.pgoff:
            fn += f" + {vma.pgoff:#x}"
        if st & fmt.VMA_FILE_SHARED:
            fn += " (s)"
    elif st & fmt.VMA_AREA_MEMFD:
        fn = " " + (printable(vma.path) if vma.path else f"memfd #{vma.shmid}")
        if vma.flags & _MAP_SHARED:
            fn += " (s)"
    elif st & fmt.VMA_AREA_STACK:
        fn = " [stack]"
    elif st & fmt.VMA_AREA_VSYSCALL:
        fn = " [vsyscall]"
    elif st & fmt.VMA_AREA_VDSO:
        fn = " [vdso]"
    elif st & fmt.VMA_AREA_VVAR:
        fn = " [vvar]"
    elif st & fmt.VMA_AREA_HEAP:
        fn = " [heap]"
    elif st & fmt.VMA_AREA_UPROBES:
        fn = " [uprobes]"
    elif st & fmt.VMA_AREA_GUARD:
        fn = " [guard]"
    elif st & fmt.VMA_AREA_AIORING:
        fn = " [aio]"
    elif st & fmt.VMA_AREA_SHSTK:
        fn = " [shstk]"
    elif vma.flags & _MAP_GROWSDOWN:
        fn = " [stack?]"
    elif vma.path:  # e.g. "[anon:name]"
        fn = " " + printable(vma.path)
    else:
        fn = ""
    if not st & fmt.VMA_AREA_REGULAR:
        fn += " *"
    return fn
