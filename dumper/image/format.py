"""The on-disk format of a dumper checkpoint: magics, framing, names, flags.

A checkpoint is a directory of CRIU-compatible image files (criu/include/
magic.h, criu/image.c, criu/protobuf.c, lib/pycriu/images/images.py)::

    IMAGE_FILE   ::= MAGIC { ENTRY }
    MAGIC        ::= INVENTORY_MAGIC                     (inventory.img only)
                   | IMG_COMMON_MAGIC  u32 TYPE_MAGIC    (mm-*, pagemap-*, ...)
                   | IMG_SERVICE_MAGIC u32 TYPE_MAGIC    (stats-dump)
    ENTRY        ::= u32 SIZE, PAYLOAD                   (SIZE bytes of protobuf)

Every u32 is little-endian and unsigned (CRIU writes host order, which is
little-endian on x86_64/arm64). End of file exactly at an entry boundary
ends the list; a partial size or payload is an error. Entries larger than
:data:`MAX_ENTRY_SIZE` are refused before anything is allocated.

Files, for pid ``P`` and pages id ``N`` (criu/image-desc.c)::

    inventory.img        one inventory_entry
    mm-P.img             one mm_entry (its VMAs in field 14)
    pagemap-P.img        one pagemap_head, then pagemap_entry ascending by vaddr
    pages-N.img          raw: the PE_PRESENT pages, in entry order, no header
    pages-N.zst.img      dumper only: the same page stream, zstd-compressed
    stats-dump           one stats_entry (service magic)
    parent               symlink to the parent checkpoint (incremental dumps)

Compressed pages file (``pages-N.zst.img``, no CRIU counterpart; CRIU opens
``pages-N.img`` by name and so never mistakes it for raw pages)::

    ZPAGES_FILE  ::= IMG_COMMON_MAGIC ZPAGES_MAGIC HEAD { FRAME } INDEX FOOTER
    HEAD         ::= ENTRY(zpages_head)   page_size, frame_pages, compression
    FRAME        ::= one zstd frame, with content size and XXH64 checksum, of
                     frame_pages * page_size bytes (the last frame: the rest)
    INDEX        ::= ENTRY(zpages_index)  nr_pages, compressed size per frame
    FOOTER       ::= u64 INDEX_OFFSET, u32 INDEX_CRC32, u32 ZPAGES_MAGIC

The uncompressed stream is byte for byte what ``pages-N.img`` would hold, so
stream page ``k`` lives in frame ``k // frame_pages`` at byte
``(k % frame_pages) * page_size``. Frame ``i`` starts at ``DATA_OFFSET`` (the
end of HEAD) plus the sizes of frames ``0..i-1``. The FOOTER is the last
:data:`ZPAGES_FOOTER.size` bytes: ``INDEX_OFFSET`` is the file offset of the
INDEX entry's size field, ``INDEX_CRC32`` the zlib CRC-32 of its payload.
A reader checks that INDEX ends where FOOTER begins, that the frame sizes sum
to ``INDEX_OFFSET - DATA_OFFSET``, that there are ``ceil(nr_pages /
frame_pages)`` frames, and that every size is within zstd's bound. A file
truncated mid-write has no valid footer and is refused as corrupt. Before
decompressing a frame the reader checks that its header declares exactly the
expected content size and a checksum; after, that the frame fills its slot.
The frame index is stored as sizes only: offsets are their prefix sums, so
the two cannot disagree.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from google.protobuf import unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ..errors import BadMagic, CorruptImage, UnsupportedVersion
from ..kernel import mman
from .pb import inventory_pb2, mm_pb2, pagemap_pb2, pstree_pb2, stats_pb2

__all__ = [
    "U32",
    "ZPAGES_FOOTER",
    "MAX_ENTRY_SIZE",
    "IMG_COMMON_MAGIC",
    "IMG_SERVICE_MAGIC",
    "INVENTORY_MAGIC",
    "PSTREE_MAGIC",
    "PAGEMAP_MAGIC",
    "CORE_MAGIC",
    "IDS_MAGIC",
    "VMAS_MAGIC",
    "FILES_MAGIC",
    "REG_FILES_MAGIC",
    "MM_MAGIC",
    "STATS_MAGIC",
    "IRMAP_CACHE_MAGIC",
    "ZPAGES_MAGIC",
    "MAGICS",
    "MAGIC_NAMES",
    "SERVICE_IMAGES",
    "ENTRY_TYPES",
    "CRTOOLS_IMAGES_V1_1",
    "DUMPER_FORMAT_VERSION",
    "PE_PARENT",
    "PE_LAZY",
    "PE_PRESENT",
    "VMA_AREA_NONE",
    "VMA_AREA_REGULAR",
    "VMA_AREA_STACK",
    "VMA_AREA_VSYSCALL",
    "VMA_AREA_VDSO",
    "VMA_AREA_HEAP",
    "VMA_FILE_PRIVATE",
    "VMA_FILE_SHARED",
    "VMA_ANON_SHARED",
    "VMA_ANON_PRIVATE",
    "VMA_AREA_SYSVIPC",
    "VMA_AREA_SOCKET",
    "VMA_AREA_VVAR",
    "VMA_AREA_AIORING",
    "VMA_AREA_MEMFD",
    "VMA_AREA_SHSTK",
    "VMA_AREA_GUARD",
    "VMA_AREA_UPROBES",
    "FLAG_TABLES",
    "format_flags",
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "FRAME_PAGES",
    "MAX_FRAME_BYTES",
    "ZSTD_LEVEL",
    "INVENTORY_NAME",
    "STATS_DUMP_NAME",
    "PARENT_LINK",
    "mm_name",
    "pagemap_name",
    "pages_name",
    "zpages_name",
    "zstd_frame_bound",
    "check_page_size",
    "check_inventory",
    "write_magic",
    "write_entry",
    "write_entries",
    "encode_image",
    "read_magic",
    "iter_entries",
    "parse_entry",
    "raw_enum",
]

# --- framing

U32 = struct.Struct("<I")
# Compressed pages footer: index offset (bytes), CRC-32 of the index payload, magic.
ZPAGES_FOOTER = struct.Struct("<QII")

# Largest entry payload (bytes) a reader accepts and a writer produces. CRIU
# has no limit. The biggest entry we write is mm_entry, ~100 bytes per VMA:
# ~7 MiB at the default vm.max_map_count (65530), ~100 MiB if an admin raised
# it to 1M. Readers also check every size against the file size first.
MAX_ENTRY_SIZE = 256 << 20

# --- magics (criu/include/magic.h; each names a town whose coordinates it encodes)

IMG_COMMON_MAGIC = 0x54564319  # Sarov
IMG_SERVICE_MAGIC = 0x55105940  # Zlatoust
INVENTORY_MAGIC = 0x58313116  # Veliky Novgorod
PSTREE_MAGIC = 0x50273030  # Kyiv
PAGEMAP_MAGIC = 0x56084025  # Vladimir
CORE_MAGIC = 0x55053847  # Kolomna
IDS_MAGIC = 0x54432030  # Konigsberg
VMAS_MAGIC = 0x54123737  # Tula
FILES_MAGIC = 0x56303138  # Toropets
REG_FILES_MAGIC = 0x50363636  # Belgorod
MM_MAGIC = 0x57492820  # Pskov
STATS_MAGIC = 0x57093306  # Ostashkov (service)
IRMAP_CACHE_MAGIC = 0x57004059  # Ivanovo (service)

# Ours, for pages-N.zst.img. On disk it reads "ZPGS". CRIU's magics are
# coordinates written with decimal digits only (every hex nibble 0-9); this
# value has a nibble 0xA, so it cannot equal any present or future CRIU magic.
ZPAGES_MAGIC = 0x5347505A

MAGICS: dict[str, int] = {
    "INVENTORY": INVENTORY_MAGIC,
    "PSTREE": PSTREE_MAGIC,
    "PAGEMAP": PAGEMAP_MAGIC,
    "CORE": CORE_MAGIC,
    "IDS": IDS_MAGIC,
    "VMAS": VMAS_MAGIC,
    "FILES": FILES_MAGIC,
    "REG_FILES": REG_FILES_MAGIC,
    "MM": MM_MAGIC,
    "STATS": STATS_MAGIC,
    "IRMAP_CACHE": IRMAP_CACHE_MAGIC,
    "ZPAGES": ZPAGES_MAGIC,
}
MAGIC_NAMES: dict[int, str] = {v: k for k, v in MAGICS.items()}

# Images whose first u32 is IMG_SERVICE_MAGIC instead of IMG_COMMON_MAGIC.
SERVICE_IMAGES = frozenset({"STATS", "IRMAP_CACHE"})

# Message class of each entry, by magic name. PAGEMAP's first entry is a
# pagemap_head; ZPAGES is not a list of entries (see the module docstring).
ENTRY_TYPES: dict[str, type[Message]] = {
    "INVENTORY": inventory_pb2.inventory_entry,
    "PAGEMAP": pagemap_pb2.pagemap_entry,
    "MM": mm_pb2.mm_entry,
    "STATS": stats_pb2.stats_entry,
    "PSTREE": pstree_pb2.pstree_entry,
}

# --- versions

CRTOOLS_IMAGES_V1_1 = 2  # inventory img_version CRIU requires
# Version of dumper's own additions (inventory field dumper_format_version).
# Bump it when a reader of the old version would misread new images.
DUMPER_FORMAT_VERSION = 1

# --- pagemap flags (criu/include/pagemap.h)

PE_PARENT = 1 << 0  # data is in the parent checkpoint: no bytes here
PE_LAZY = 1 << 1  # may be restored lazily (userfaultfd)
PE_PRESENT = 1 << 2  # data is in this pages file

# --- VMA status bits (criu/include/image.h; part of the image ABI)

VMA_AREA_NONE = 0
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_SOCKET = 1 << 11
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14
VMA_AREA_SHSTK = 1 << 15
VMA_AREA_GUARD = 1 << 16  # pseudo-VMA for MADV_GUARD_INSTALL ranges
VMA_AREA_UPROBES = 1 << 17

# Flag tables named by the (dumper).flags option in proto/ (for show/decode).
FLAG_TABLES: dict[str, dict[str, int]] = {
    "pmap.flags": {"PE_PARENT": PE_PARENT, "PE_LAZY": PE_LAZY, "PE_PRESENT": PE_PRESENT},
    "mmap.prot": {name: getattr(mman, name) for name in ("PROT_READ", "PROT_WRITE", "PROT_EXEC")},
    "mmap.flags": {
        name: getattr(mman, name)
        for name in (
            "MAP_SHARED",
            "MAP_PRIVATE",
            "MAP_DROPPABLE",
            "MAP_ANONYMOUS",
            "MAP_GROWSDOWN",
            "MAP_LOCKED",
            "MAP_NORESERVE",
            "MAP_HUGETLB",
        )
    },
    "mmap.status": {
        "VMA_AREA_REGULAR": VMA_AREA_REGULAR,
        "VMA_AREA_STACK": VMA_AREA_STACK,
        "VMA_AREA_VSYSCALL": VMA_AREA_VSYSCALL,
        "VMA_AREA_VDSO": VMA_AREA_VDSO,
        "VMA_AREA_HEAP": VMA_AREA_HEAP,
        "VMA_FILE_PRIVATE": VMA_FILE_PRIVATE,
        "VMA_FILE_SHARED": VMA_FILE_SHARED,
        "VMA_ANON_SHARED": VMA_ANON_SHARED,
        "VMA_ANON_PRIVATE": VMA_ANON_PRIVATE,
        "VMA_AREA_SYSVIPC": VMA_AREA_SYSVIPC,
        "VMA_AREA_SOCKET": VMA_AREA_SOCKET,
        "VMA_AREA_VVAR": VMA_AREA_VVAR,
        "VMA_AREA_AIORING": VMA_AREA_AIORING,
        "VMA_AREA_MEMFD": VMA_AREA_MEMFD,
        "VMA_AREA_SHSTK": VMA_AREA_SHSTK,
        "VMA_AREA_GUARD": VMA_AREA_GUARD,
        "VMA_AREA_UPROBES": VMA_AREA_UPROBES,
    },
}


def format_flags(value: int, table: str) -> str:
    """``"PE_PRESENT | PE_LAZY"``-style text (crit's form); unknown bits as
    hex, ``"0"`` for no bits. ``table`` is a key of :data:`FLAG_TABLES`."""
    names = []
    for name, bit in FLAG_TABLES[table].items():
        if value & bit:
            names.append(name)
            value &= ~bit
    if value:
        names.append(f"{value:#x}")
    return " | ".join(names) or "0"


# --- compression

COMPRESSION_NONE = pagemap_pb2.NONE
COMPRESSION_ZSTD = pagemap_pb2.ZSTD

FRAME_PAGES = 64  # pages per zstd frame: 256 KiB with 4 KiB pages
MAX_FRAME_BYTES = 16 << 20  # largest uncompressed frame a reader accepts
ZSTD_LEVEL = 3


def zstd_frame_bound(nbytes: int) -> int:
    """Upper bound (bytes) of a zstd frame holding ``nbytes`` of content,
    header and checksum included (ZSTD_COMPRESSBOUND plus slack)."""
    return nbytes + (nbytes >> 8) + 512


def check_page_size(page_size: int, path: str | os.PathLike | None = None, offset: int | None = None) -> int:
    """Return ``page_size`` if it is a power of two in [4 KiB, 64 KiB] (the
    sizes Linux supports for user pages), else raise CorruptImage (with
    ``offset``, where the size was read, if given)."""
    if not (4096 <= page_size <= 65536 and page_size & (page_size - 1) == 0):
        raise CorruptImage(path, offset, f"implausible page size {page_size}")
    return page_size


def check_inventory(
    inv: inventory_pb2.inventory_entry, path: str | os.PathLike | None = None, offset: int | None = None
) -> None:
    """Refuse an inventory this code cannot read.

    Raises UnsupportedVersion when ``img_version`` is not CRIU's 2
    (criu/image.c refuses other values the same way) or when
    ``dumper_format_version`` is newer than :data:`DUMPER_FORMAT_VERSION`.
    An absent ``dumper_format_version`` means a plain CRIU image.
    ``offset`` (for errors) is where the inventory entry starts.
    """
    if inv.img_version != CRTOOLS_IMAGES_V1_1:
        raise UnsupportedVersion(path, offset, f"images version {inv.img_version} (expected {CRTOOLS_IMAGES_V1_1})")
    if inv.HasField("dumper_format_version") and inv.dumper_format_version > DUMPER_FORMAT_VERSION:
        raise UnsupportedVersion(
            path,
            offset,
            f"dumper format version {inv.dumper_format_version} is newer than this dumper "
            f"understands ({DUMPER_FORMAT_VERSION})",
        )


# --- file names (criu/image-desc.c)

INVENTORY_NAME = "inventory.img"
STATS_DUMP_NAME = "stats-dump"
PARENT_LINK = "parent"


def mm_name(pid: int) -> str:
    return f"mm-{pid}.img"


def pagemap_name(pid: int) -> str:
    return f"pagemap-{pid}.img"


def pages_name(pages_id: int) -> str:
    """Raw pages file, CRIU's name and layout."""
    return f"pages-{pages_id}.img"


def zpages_name(pages_id: int) -> str:
    """dumper's compressed pages file."""
    return f"pages-{pages_id}.zst.img"


# --- writing


def _magic_words(magic: str) -> bytes:
    value = MAGICS[magic]
    if magic == "INVENTORY":
        return U32.pack(value)
    first = IMG_SERVICE_MAGIC if magic in SERVICE_IMAGES else IMG_COMMON_MAGIC
    return U32.pack(first) + U32.pack(value)


def write_magic(f: BinaryIO, magic: str) -> int:
    """Write the header of an image of type ``magic`` (a :data:`MAGICS` key);
    returns the number of bytes written (4 or 8)."""
    words = _magic_words(magic)
    f.write(words)
    return len(words)


def write_entry(f: BinaryIO, msg: Message) -> int:
    """Write one ``u32 SIZE, PAYLOAD`` entry; returns bytes written.

    Raises EncodeError (protobuf) when a required field is unset and
    ValueError when the payload exceeds :data:`MAX_ENTRY_SIZE`.
    """
    payload = msg.SerializeToString()
    if len(payload) > MAX_ENTRY_SIZE:
        raise ValueError(f"{type(msg).__name__} is {len(payload)} bytes, over the {MAX_ENTRY_SIZE} limit")
    f.write(U32.pack(len(payload)))
    f.write(payload)
    return U32.size + len(payload)


def write_entries(f: BinaryIO, msgs: Iterable[Message]) -> int:
    """Write each message as an entry; returns bytes written."""
    return sum(write_entry(f, m) for m in msgs)


def encode_image(magic: str, msgs: Iterable[Message]) -> bytes:
    """The bytes of a whole image file: header then entries."""
    buf = io.BytesIO()
    write_magic(buf, magic)
    write_entries(buf, msgs)
    return buf.getvalue()


# --- reading (input is untrusted: every size is checked before use)


def _read_exact(f: BinaryIO, n: int, path, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptImage(path, offset, f"truncated {what}: {len(data)} of {n} bytes")
    return data


def read_magic(f: BinaryIO, path: str | os.PathLike | None = None) -> str:
    """Read an image header from the start of ``f``; return the magic name.

    Raises BadMagic for an unknown or mismatched magic (including raw
    ``pages-N.img`` data) and CorruptImage for a file shorter than its header.
    """
    first = U32.unpack(_read_exact(f, 4, path, 0, "image header"))[0]
    if first == INVENTORY_MAGIC:
        return "INVENTORY"
    if first not in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC):
        raise BadMagic(
            path, 0, f"unknown magic {first:#010x} (raw page data, i.e. pages-N.img, has no magic)"
        )
    second = U32.unpack(_read_exact(f, 4, path, 4, "image header"))[0]
    name = MAGIC_NAMES.get(second)
    if name is None or name == "INVENTORY":
        raise BadMagic(path, 4, f"unknown image magic {second:#010x}")
    if (first == IMG_SERVICE_MAGIC) != (name in SERVICE_IMAGES):
        kind = "service" if first == IMG_SERVICE_MAGIC else "common"
        raise BadMagic(path, 0, f"{name} image with a {kind} magic")
    return name


def iter_entries(
    f: BinaryIO, path: str | os.PathLike | None, offset: int, *, limit: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each entry from the current position.

    ``offset`` is the file offset of that position (for error messages).
    Stops at EOF on an entry boundary, or once the position reaches
    ``limit`` (a byte offset; an entry crossing it is corrupt). Raises
    CorruptImage for a short size field, a size over :data:`MAX_ENTRY_SIZE`
    or past the end of the file (checked before reading), and a short payload.
    """
    try:
        file_size = os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # BytesIO and other streams
        file_size = None
    while limit is None or offset < limit:
        head = f.read(U32.size)
        if not head:
            if limit is not None:
                raise CorruptImage(path, offset, f"entries end before offset {limit}")
            return
        if len(head) != U32.size:
            raise CorruptImage(path, offset, f"truncated entry size: {len(head)} of 4 bytes")
        size = U32.unpack(head)[0]
        end = offset + U32.size + size
        if size > MAX_ENTRY_SIZE:
            raise CorruptImage(path, offset, f"entry size {size} exceeds the {MAX_ENTRY_SIZE}-byte limit")
        if limit is not None and end > limit:
            raise CorruptImage(path, offset, f"entry of {size} bytes runs past offset {limit}")
        if file_size is not None and end > file_size:
            raise CorruptImage(path, offset, f"entry of {size} bytes runs past the end of the file ({file_size} bytes)")
        payload = _read_exact(f, size, path, offset + U32.size, "entry payload")
        yield offset, payload
        offset = end


def parse_entry(cls: type[Message], payload: bytes, path: str | os.PathLike | None, offset: int) -> Message:
    """Decode ``payload`` as ``cls``; CorruptImage on bad wire data or a
    missing required field (protobuf's Python parser does not check those)."""
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as err:
        raise CorruptImage(path, offset, f"bad {cls.__name__}: {err}") from err
    if not msg.IsInitialized():
        missing = ", ".join(msg.FindInitializationErrors())
        raise CorruptImage(path, offset, f"{cls.__name__} lacks required fields: {missing}")
    bad = _bad_text(msg)
    if bad is not None:
        raise CorruptImage(path, offset, f"{cls.__name__}.{bad} is not valid UTF-8")
    return msg


# Per message type: its string fields and the message fields that (maybe
# deeply) hold strings, as (name, repeated) pairs.
_TEXT_PLANS: dict[str, tuple[tuple[tuple[str, bool], ...], tuple[tuple[str, bool], ...]]] = {}


def _text_plan(desc: Descriptor):
    plan = _TEXT_PLANS.get(desc.full_name)
    if plan is None:
        _TEXT_PLANS[desc.full_name] = ((), ())  # a recursive type: no strings through itself
        strings = tuple((f.name, f.is_repeated) for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING)
        subs = tuple(
            (f.name, f.is_repeated)
            for f in desc.fields
            if f.type == FieldDescriptor.TYPE_MESSAGE and any(_text_plan(f.message_type))
        )
        plan = _TEXT_PLANS[desc.full_name] = (strings, subs)
    return plan


def _bad_text(msg: Message) -> str | None:
    """The name of a string field of ``msg`` (or of a message inside it)
    that holds invalid UTF-8, else None. proto2 parsers do not check UTF-8
    and the Python runtime then hands out ``bytes`` where callers expect
    ``str``."""
    strings, subs = _text_plan(msg.DESCRIPTOR)
    for name, repeated in strings:
        values = getattr(msg, name)
        if any(isinstance(v, bytes) for v in values) if repeated else isinstance(values, bytes):
            return name
    for name, repeated in subs:
        for i, sub in enumerate(getattr(msg, name) if repeated else [getattr(msg, name)]):
            bad = _bad_text(sub)
            if bad is not None:
                return f"{name}[{i}].{bad}" if repeated else f"{name}.{bad}"
    return None



def raw_enum(msg: Message, name: str) -> int | None:
    """The number stored in enum field ``name`` of ``msg``, or None if absent.

    proto2 enums are closed: a value this schema does not list (written by a
    newer dumper) is parsed into the unknown fields and ``HasField`` says
    False. This finds it there, so such a file is refused instead of being
    read as if the field were absent.
    """
    if msg.HasField(name):
        return getattr(msg, name)
    number = msg.DESCRIPTOR.fields_by_name[name].number
    for field in unknown_fields.UnknownFieldSet(msg):
        if field.field_number == number:
            return field.data
    return None
