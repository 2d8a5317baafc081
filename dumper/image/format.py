"""The on-disk format of a dumper checkpoint: magics, framing, names, flags.

A checkpoint is a directory of CRIU-compatible image files (criu/include/
magic.h, criu/image.c, criu/protobuf.c, lib/pycriu/images/images.py)::

    IMAGE_FILE   ::= MAGIC { ENTRY }
    MAGIC        ::= INVENTORY_MAGIC                     (inventory.img only)
                   | IMG_COMMON_MAGIC  u32 TYPE_MAGIC    (mm-*, pagemap-*, ...)
                   | IMG_SERVICE_MAGIC u32 TYPE_MAGIC    (stats-dump)
    ENTRY        ::= u32 SIZE, PAYLOAD [EXTRA]            (SIZE bytes of protobuf)
    EXTRA        ::= raw bytes whose length the PAYLOAD gives (a few types)

Every u32 is little-endian and unsigned (CRIU writes host order, which is
little-endian on x86_64/arm64). End of file exactly at an entry boundary
ends the list; a partial size or payload is an error. Entries larger than
:data:`MAX_ENTRY_SIZE` are refused before anything is allocated, and an
EXTRA must fit in the file before it is skipped or read.

Files, for pid ``P``, thread ``T``, pages id ``N`` and object ids ``ID``
(criu/image-desc.c; each type's messages in :data:`ENTRY_TYPES`)::

    inventory.img        one inventory_entry
    pstree.img           one pstree_entry per process, root first
    core-T.img           one core_entry per thread (the leader's with tc, ids)
    ids-P.img, fs-P.img  one task_kobj_ids_entry, one fs_entry
    mm-P.img             one mm_entry (its VMAs in field 14)
    pagemap-P.img        one pagemap_head, then pagemap_entry ascending by vaddr
    pagemap-shmem-ID.img the same, for a shared memory object (shmid)
    pages-N.img          raw: the PE_PRESENT pages, in entry order, no header
    pages-N.zst.img      dumper only: the same page stream, zstd-compressed
    cow-P.img            dumper only: cow_ref_entry per run of P's PE_COW
                         pages (see "Pages shared copy-on-write" below)
    fdinfo-ID.img        fdinfo_entry per descriptor of file table ID
    files.img            file_entry per open file description
    remap-fpath.img      remap_file_path_entry per file deleted while open...
    ghost-file-ID.img    ghost_file_entry, then the contents (EXTRA) or
                         ghost_chunk_entry + EXTRA per data extent (ID in hex)
    pipes-data.img       pipe_data_entry + EXTRA (the buffered bytes) per pipe
    fifo-data.img        the same, for FIFOs
    tty-info.img         tty_info_entry per terminal
    memfd.img            memfd_inode_entry per memfd inode
    seccomp.img          one seccomp_entry; timens-ID.img one timens_entry
    ipcns-shm-ID.img     ipc_shm_entry per SysV segment (+ EXTRA in old images)
    stats-dump           one stats_entry (service magic)
    parent               symlink to the parent checkpoint (incremental dumps)

:func:`iter_image` reads any of them as :class:`ImageEntry` items (message,
offset, and where its EXTRA is); :func:`read_extra`/:func:`iter_extra`
fetch an EXTRA's bytes.

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

Shared memory (CRIU 4.2's layout, criu/memfd.c and criu/shmem.c): the
contents of a shared memory object are saved once, however many processes
map it, in ``pagemap-shmem-SHMID.img`` (``vaddr`` of its entries = offset
in the object) and the pages file its head names. A MAP_SHARED anonymous
mapping, a ``/dev/zero`` one and a memfd mapping are ``VMA_AREA_REGULAR |
VMA_FILE_SHARED | VMA_AREA_MEMFD`` with ``shmid`` = the id of a MEMFD
``file_entry`` in ``files.img``, whose ``memfd_file_entry.inode_id`` names a
``memfd_inode_entry`` of ``memfd.img`` (name ``/dev/zero`` for shared
anonymous memory, size, seals, mode), whose ``shmid`` (the object's inode
number) names the pagemap. A SysV segment's VMA is ``VMA_AREA_REGULAR |
VMA_ANON_SHARED | VMA_AREA_SYSVIPC`` with ``shmid`` = the segment id, which
names the pagemap directly; ``ipcns-shm-ID.img`` describes the segment.
MAP_SHARED mappings of ordinary files save nothing: the file holds them.

Pages shared copy-on-write (dumper only; never in a ``--no-compress``
set, which stays CRIU's): a private page that processes of the tree still
share after fork is one physical page (pagemap PFNs tell it), stored once,
in the stream of the first process in pstree order that has it. In the
others' pagemaps its range is an entry flagged :data:`PE_COW` (no bytes
in their own stream; ``pages_off`` absent), and ``cow-PID.img`` (magic
COW_REFS) lists ``cow_ref_entry{vaddr, nr_pages, pages_id, pages_off}``
runs, ascending, covering the PE_COW entries exactly: the pages are
``[pages_off, pages_off + nr_pages)`` of the stream whose pagemap_head has
``pages_id``, a process of the same checkpoint. Readers older than this
refuse PE_COW as an unknown flag rather than misread it;
``dumper restore`` writes CRIU's per-process raw pages files back
(:mod:`dumper.restore.rawimages`).
"""

from __future__ import annotations

import importlib
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from google.protobuf import unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ..errors import BadMagic, CorruptImage, ImageError, UnsupportedVersion
from ..kernel import mman
from .pb import pagemap_pb2

if TYPE_CHECKING:
    from .pb import inventory_pb2

__all__ = [
    "U32",
    "ZPAGES_FOOTER",
    "MAX_ENTRY_SIZE",
    "IMG_COMMON_MAGIC",
    "IMG_SERVICE_MAGIC",
    # every *_MAGIC of MAGICS is added below
    "MAGICS",
    "MAGIC_NAMES",
    "MAGIC_ALIASES",
    "SERVICE_IMAGES",
    "ENTRY_TYPES",
    "HEAD_TYPES",
    "EXTRA_PAYLOADS",
    "Extra",
    "ImageEntry",
    "iter_image",
    "read_extra",
    "write_extra",
    "CRTOOLS_IMAGES_V1_1",
    "DUMPER_FORMAT_VERSION",
    "PE_PARENT",
    "PE_LAZY",
    "PE_PRESENT",
    "PE_COW",
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
    "VALUE_TABLES",
    "format_flags",
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "FRAME_PAGES",
    "MAX_FRAME_BYTES",
    "ZSTD_LEVEL",
    "INVENTORY_NAME",
    "STATS_DUMP_NAME",
    "PARENT_LINK",
    "PSTREE_NAME",
    "FILES_NAME",
    "REG_FILES_NAME",
    "REMAP_FPATH_NAME",
    "SECCOMP_NAME",
    "PIPES_DATA_NAME",
    "FIFO_DATA_NAME",
    "TTY_INFO_NAME",
    "TTY_DATA_NAME",
    "MEMFD_INODE_NAME",
    "FILE_LOCKS_NAME",
    "mm_name",
    "pagemap_name",
    "pages_name",
    "zpages_name",
    "core_name",
    "ids_name",
    "fs_name",
    "fdinfo_name",
    "pagemap_shmem_name",
    "cow_name",
    "ipcns_shm_name",
    "timens_name",
    "ghost_file_name",
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
FDINFO_MAGIC = 0x56213732  # Dmitrov
PAGEMAP_MAGIC = 0x56084025  # Vladimir (also pagemap-shmem-N.img)
CORE_MAGIC = 0x55053847  # Kolomna
IDS_MAGIC = 0x54432030  # Konigsberg
VMAS_MAGIC = 0x54123737  # Tula
PIPES_MAGIC = 0x56513555  # Tver
PIPES_DATA_MAGIC = 0x56453709  # Dubna
FIFO_MAGIC = 0x58364939  # Kirov
FIFO_DATA_MAGIC = 0x59333054  # Tosno
SIGACT_MAGIC = 0x55344201  # Murom
UNIXSK_MAGIC = 0x54373943  # Ryazan
INETSK_MAGIC = 0x56443851  # Pereslavl
PACKETSK_MAGIC = 0x60454618  # Veliky Ustyug
ITIMERS_MAGIC = 0x57464056  # Kostroma
POSIX_TIMERS_MAGIC = 0x52603957  # Lipetsk
SK_QUEUES_MAGIC = 0x56264026  # Suzdal
UTSNS_MAGIC = 0x54473203  # Smolensk
CREDS_MAGIC = 0x54023547  # Kozelsk
IPC_VAR_MAGIC = 0x53115007  # Samara
IPCNS_SHM_MAGIC = 0x46283044  # Odessa
IPCNS_MSG_MAGIC = 0x55453737  # Moscow
IPCNS_SEM_MAGIC = 0x59573019  # St. Petersburg
REG_FILES_MAGIC = 0x50363636  # Belgorod
EXT_FILES_MAGIC = 0x59255641  # Usolye
FS_MAGIC = 0x51403912  # Voronezh
MM_MAGIC = 0x57492820  # Pskov
REMAP_FPATH_MAGIC = 0x59133954  # Vologda
GHOST_FILE_MAGIC = 0x52583605  # Oryol
TCP_STREAM_MAGIC = 0x51465506  # Orenburg
EVENTFD_FILE_MAGIC = 0x44523722  # Anapa
EVENTPOLL_FILE_MAGIC = 0x45023858  # Krasnodar
EVENTPOLL_TFD_MAGIC = 0x44433746  # Novorossiysk
SIGNALFD_MAGIC = 0x57323820  # Uglich
INOTIFY_FILE_MAGIC = 0x48424431  # Volgograd
INOTIFY_WD_MAGIC = 0x54562009  # Svetlogorsk (Rauschen)
MNTS_MAGIC = 0x55563928  # Petushki
NETDEV_MAGIC = 0x57373951  # Yaroslavl
NETNS_MAGIC = 0x55933752  # Dolgoprudny
TTY_FILES_MAGIC = 0x59433025  # Pushkin
TTY_INFO_MAGIC = 0x59453036  # Kolpino
TTY_DATA_MAGIC = 0x59413026  # Pavlovsk
FILE_LOCKS_MAGIC = 0x54323616  # Kaluga
RLIMIT_MAGIC = 0x57113925  # Rostov
FANOTIFY_FILE_MAGIC = 0x55096122  # Chelyabinsk
FANOTIFY_MARK_MAGIC = 0x56506035  # Yekaterinburg
SIGNAL_MAGIC = 0x59255647  # Berezniki (also PSIGNAL)
NETLINK_SK_MAGIC = 0x58005614  # Perm
NS_FILES_MAGIC = 0x61394011  # Nyandoma
TUNFILE_MAGIC = 0x57143751  # Kalyazin
CGROUP_MAGIC = 0x59383330  # Tikhvin
TIMERFD_MAGIC = 0x50493712  # Korocha
CPUINFO_MAGIC = 0x61404013  # Nyandoma
USERNS_MAGIC = 0x55474906  # Kazan
SECCOMP_MAGIC = 0x64413049  # Kostomuksha
BINFMT_MISC_MAGIC = 0x67343323  # Apatity
AUTOFS_MAGIC = 0x49353943  # Sochi
FILES_MAGIC = 0x56303138  # Toropets
MEMFD_INODE_MAGIC = 0x48453499  # Dnipro
TIMENS_MAGIC = 0x43114433  # Beslan
PIDNS_MAGIC = 0x61157326  # Surgut
BPFMAP_FILE_MAGIC = 0x57506142  # Alapayevsk
BPFMAP_DATA_MAGIC = 0x64324033  # Arkhangelsk
APPARMOR_MAGIC = 0x59423047  # Nikolskoye
PIDFD_MAGIC = 0x54435556  # Ufa
STATS_MAGIC = 0x57093306  # Ostashkov (service)
IRMAP_CACHE_MAGIC = 0x57004059  # Ivanovo (service)

# Ours, for pages-N.zst.img. On disk it reads "ZPGS". CRIU's magics are
# coordinates written with decimal digits only (every hex nibble 0-9); this
# value has a nibble 0xA, so it cannot equal any present or future CRIU magic.
ZPAGES_MAGIC = 0x5347505A
# Ours, for cow-PID.img: "ZCOW" on disk (nibbles 0xA and 0xF: not CRIU's).
COW_REFS_MAGIC = 0x574F435A

# Every image magic CRIU 4.2 defines (crit's names: the macro without
# _MAGIC), and ours. Raw images (pages-N.img, tarballs, ip dumps) have none.
MAGICS: dict[str, int] = {
    name.removesuffix("_MAGIC"): value
    for name, value in list(globals().items())
    if name.endswith("_MAGIC") and name not in ("IMG_COMMON_MAGIC", "IMG_SERVICE_MAGIC")
}
MAGIC_NAMES: dict[int, str] = {v: k for k, v in MAGICS.items()}
__all__ += [f"{name}_MAGIC" for name in MAGICS]
# magic.h names that share another type's value (the name above is the one
# a reader reports, as crit does).
MAGIC_ALIASES: dict[str, str] = {
    "SHMEM_PAGEMAP": "PAGEMAP",
    "PAGES_OLD": "PAGEMAP",
    "SHM_PAGES_OLD": "PAGEMAP",
    "PSIGNAL": "SIGNAL",
    "BINFMT_MISC_OLD": "BINFMT_MISC",
}

# Images whose first u32 is IMG_SERVICE_MAGIC instead of IMG_COMMON_MAGIC.
SERVICE_IMAGES = frozenset({"STATS", "IRMAP_CACHE"})

class _LazyTypes(Mapping):
    """Magic name -> message class, each ``pb`` module imported when first
    asked for (the keys are known without importing anything)."""

    def __init__(self, spec: dict[str, tuple[str, str]]) -> None:
        self._spec = spec
        self._cache: dict[str, type[Message]] = {}

    def __getitem__(self, name: str) -> type[Message]:
        cls = self._cache.get(name)
        if cls is None:
            module, attr = self._spec[name]
            cls = self._cache[name] = getattr(importlib.import_module(f"{__package__}.pb.{module}"), attr)
        return cls

    def __iter__(self):
        return iter(self._spec)

    def __len__(self) -> int:
        return len(self._spec)


# Message class of each entry, by magic name (crit's handlers, for the types
# proto/ has schemas for). A few images differ from a plain list of one type:
# see HEAD_TYPES (a first entry of another type) and EXTRA_PAYLOADS (raw
# bytes after entries). ZPAGES is not a list of entries (module docstring).
ENTRY_TYPES: Mapping[str, type[Message]] = _LazyTypes({
    "INVENTORY": ("inventory_pb2", "inventory_entry"),
    "PSTREE": ("pstree_pb2", "pstree_entry"),
    "CORE": ("core_pb2", "core_entry"),
    "IDS": ("core_pb2", "task_kobj_ids_entry"),
    "MM": ("mm_pb2", "mm_entry"),
    "VMAS": ("vma_pb2", "vma_entry"),
    "PAGEMAP": ("pagemap_pb2", "pagemap_entry"),
    "FS": ("fs_pb2", "fs_entry"),
    "CREDS": ("creds_pb2", "creds_entry"),
    "RLIMIT": ("rlimit_pb2", "rlimit_entry"),
    "SIGACT": ("sa_pb2", "sa_entry"),
    "ITIMERS": ("timer_pb2", "itimer_entry"),
    "POSIX_TIMERS": ("timer_pb2", "posix_timer_entry"),
    "SECCOMP": ("seccomp_pb2", "seccomp_entry"),
    "TIMENS": ("timens_pb2", "timens_entry"),
    "FDINFO": ("fdinfo_pb2", "fdinfo_entry"),
    "FILES": ("fdinfo_pb2", "file_entry"),
    "REG_FILES": ("regfile_pb2", "reg_file_entry"),
    "REMAP_FPATH": ("remap_file_path_pb2", "remap_file_path_entry"),
    "GHOST_FILE": ("ghost_file_pb2", "ghost_chunk_entry"),
    "PIPES": ("pipe_pb2", "pipe_entry"),
    "PIPES_DATA": ("pipe_data_pb2", "pipe_data_entry"),
    "FIFO": ("fifo_pb2", "fifo_entry"),
    "FIFO_DATA": ("pipe_data_pb2", "pipe_data_entry"),
    "EVENTFD_FILE": ("eventfd_pb2", "eventfd_file_entry"),
    "EVENTPOLL_FILE": ("eventpoll_pb2", "eventpoll_file_entry"),
    "EVENTPOLL_TFD": ("eventpoll_pb2", "eventpoll_tfd_entry"),
    "SIGNALFD": ("signalfd_pb2", "signalfd_entry"),
    "TIMERFD": ("timerfd_pb2", "timerfd_entry"),
    "INOTIFY_FILE": ("fsnotify_pb2", "inotify_file_entry"),
    "INOTIFY_WD": ("fsnotify_pb2", "inotify_wd_entry"),
    "FANOTIFY_FILE": ("fsnotify_pb2", "fanotify_file_entry"),
    "FANOTIFY_MARK": ("fsnotify_pb2", "fanotify_mark_entry"),
    "NS_FILES": ("ns_pb2", "ns_file_entry"),
    "EXT_FILES": ("ext_file_pb2", "ext_file_entry"),
    "PIDFD": ("pidfd_pb2", "pidfd_entry"),
    "TTY_FILES": ("tty_pb2", "tty_file_entry"),
    "TTY_INFO": ("tty_pb2", "tty_info_entry"),
    "TTY_DATA": ("tty_pb2", "tty_data_entry"),
    "MEMFD_INODE": ("memfd_pb2", "memfd_inode_entry"),
    "FILE_LOCKS": ("file_lock_pb2", "file_lock_entry"),
    "IPCNS_SHM": ("ipc_shm_pb2", "ipc_shm_entry"),
    "COW_REFS": ("zpages_pb2", "cow_ref_entry"),
    "STATS": ("stats_pb2", "stats_entry"),
    "IRMAP_CACHE": ("fh_pb2", "irmap_cache_entry"),
})

# Images whose first entry has its own type; ENTRY_TYPES gives the others'.
HEAD_TYPES: Mapping[str, type[Message]] = _LazyTypes({
    "PAGEMAP": ("pagemap_pb2", "pagemap_head"),
    "GHOST_FILE": ("ghost_file_pb2", "ghost_file_entry"),
})

# --- versions

CRTOOLS_IMAGES_V1_1 = 2  # inventory img_version CRIU requires
# Version of dumper's own additions (inventory field dumper_format_version).
# Bump it when a reader of the old version would misread new images.
DUMPER_FORMAT_VERSION = 1

# --- pagemap flags (criu/include/pagemap.h)

PE_PARENT = 1 << 0  # data is in the parent checkpoint: no bytes here
PE_LAZY = 1 << 1  # may be restored lazily (userfaultfd)
PE_PRESENT = 1 << 2  # data is in this pages file
# dumper only: the data is another process's of this checkpoint, shared
# copy-on-write; cow-PID.img says where (module docstring). A high bit,
# far from CRIU's next ones.
PE_COW = 1 << 16

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
    "pmap.flags": {"PE_PARENT": PE_PARENT, "PE_LAZY": PE_LAZY, "PE_PRESENT": PE_PRESENT, "PE_COW": PE_COW},
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
    # O_* as the kernel stores them in f_flags, x86_64 (include/uapi/asm-generic/
    # fcntl.h; octal there). Python's os.O_LARGEFILE is 0 on 64-bit userspace,
    # but the kernel sets the bit, so the values are spelled out.
    "rfile.flags": {
        "O_WRONLY": 0o1,
        "O_RDWR": 0o2,
        "O_CREAT": 0o100,
        "O_EXCL": 0o200,
        "O_NOCTTY": 0o400,
        "O_TRUNC": 0o1000,
        "O_APPEND": 0o2000,
        "O_NONBLOCK": 0o4000,
        "O_DSYNC": 0o10000,
        "FASYNC": 0o20000,
        "O_DIRECT": 0o40000,
        "O_LARGEFILE": 0o100000,
        "O_DIRECTORY": 0o200000,
        "O_NOFOLLOW": 0o400000,
        "O_NOATIME": 0o1000000,
        "O_CLOEXEC": 0o2000000,
        "__O_SYNC": 0o4000000,  # O_SYNC is this and O_DSYNC
        "O_PATH": 0o10000000,
        "__O_TMPFILE": 0o20000000,  # O_TMPFILE is this and O_DIRECTORY
    },
    # memfd seals, F_GET_SEALS (include/uapi/linux/fcntl.h).
    "seals.flags": {
        "F_SEAL_SEAL": 0x0001,
        "F_SEAL_SHRINK": 0x0002,
        "F_SEAL_GROW": 0x0004,
        "F_SEAL_WRITE": 0x0008,
        "F_SEAL_FUTURE_WRITE": 0x0010,
        "F_SEAL_EXEC": 0x0020,
    },
}

# Names of single values, by the (dumper).dict option (crit's dict maps).
VALUE_TABLES: dict[str, dict[int, str]] = {
    # task_core_entry.task_state: criu/include/pstree.h TASK_ALIVE/DEAD/STOPPED
    "task_state": {1: "Alive", 3: "Zombie", 6: "Stopped"},
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


# One per dump (CRIU's imgset_template; no id in the name).
PSTREE_NAME = "pstree.img"
FILES_NAME = "files.img"  # every open file description (file_entry)
REG_FILES_NAME = "reg-files.img"  # old images: reg_file_entry list
REMAP_FPATH_NAME = "remap-fpath.img"
SECCOMP_NAME = "seccomp.img"
PIPES_DATA_NAME = "pipes-data.img"
FIFO_DATA_NAME = "fifo-data.img"
TTY_INFO_NAME = "tty-info.img"
TTY_DATA_NAME = "tty-data.img"
MEMFD_INODE_NAME = "memfd.img"  # memfd_inode_entry list (MEMFD_INODE magic)
FILE_LOCKS_NAME = "filelocks.img"


def core_name(tid: int) -> str:
    """One thread's core_entry (every thread, the leader included)."""
    return f"core-{tid}.img"


def ids_name(pid: int) -> str:
    return f"ids-{pid}.img"


def fs_name(pid: int) -> str:
    return f"fs-{pid}.img"


def fdinfo_name(files_id: int) -> str:
    """Descriptors of one file table: named by task_kobj_ids_entry.files_id
    (inventory fdinfo_per_id), not by pid."""
    return f"fdinfo-{files_id}.img"


def pagemap_shmem_name(shmid: int) -> str:
    """Pagemap of a shared memory object (shared anonymous, memfd, SysV shm),
    PAGEMAP magic; its pagemap_head names the pages-N.img."""
    return f"pagemap-shmem-{shmid}.img"


def cow_name(pid: int) -> str:
    """Where ``pid``'s PE_COW pages are (dumper only, COW_REFS magic)."""
    return f"cow-{pid}.img"


def ipcns_shm_name(ns_id: int) -> str:
    return f"ipcns-shm-{ns_id}.img"


def timens_name(ns_id: int) -> str:
    return f"timens-{ns_id}.img"


def ghost_file_name(remap_id: int) -> str:
    """Contents of a file deleted while open; the id is in hex (``%x``)."""
    return f"ghost-file-{remap_id:x}.img"


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


def _read(f: BinaryIO, n: int, path, offset: int) -> bytes:
    """``f.read(n)``; a failing read (EIO...) is ImageError naming the file."""
    try:
        return f.read(n)
    except OSError as err:
        raise ImageError(path, offset, f"read failed: {err.strerror}") from err


def _read_exact(f: BinaryIO, n: int, path, offset: int, what: str) -> bytes:
    data = _read(f, n, path, offset)
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


def _end_offset(f: BinaryIO, offset: int) -> int | None:
    """The file offset where ``f`` ends, given that its current position is
    file offset ``offset`` (streams may start inside a file); None for a
    stream that cannot seek."""
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return offset + end - here


def _next_payload(
    f: BinaryIO, path, offset: int, file_size: int | None, limit: int | None
) -> bytes | None:
    """The payload of the entry whose size field is at ``offset`` (the
    current position), or None at EOF on an entry boundary. Every size is
    checked before the payload is read."""
    head = _read(f, U32.size, path, offset)
    if not head:
        if limit is not None:
            raise CorruptImage(path, offset, f"entries end before offset {limit}")
        return None
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
    return _read_exact(f, size, path, offset + U32.size, "entry payload")


def iter_entries(
    f: BinaryIO, path: str | os.PathLike | None, offset: int, *, limit: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each entry from the current position.

    ``offset`` is the file offset of that position (for error messages).
    Stops at EOF on an entry boundary, or once the position reaches
    ``limit`` (a byte offset; an entry crossing it is corrupt). Raises
    CorruptImage for a short size field, a size over :data:`MAX_ENTRY_SIZE`
    or past the end of the file (checked before reading), and a short payload.
    Knows nothing of extra payloads: for a whole image use :func:`iter_image`.
    """
    file_size = _end_offset(f, offset)
    while limit is None or offset < limit:
        payload = _next_payload(f, path, offset, file_size, limit)
        if payload is None:
            return
        yield offset, payload
        offset += U32.size + len(payload)


# --- extra payloads (crit's ENTRY ::= SIZE PAYLOAD [EXTRA])


@dataclass(frozen=True, slots=True)
class Extra:
    """Raw bytes that follow an entry in the file, not part of its message:
    ``size`` bytes of data at file ``offset``, occupying ``span`` bytes of
    the file (``size`` plus zero padding). Read them with :func:`read_extra`
    or :func:`iter_extra`."""

    offset: int
    size: int
    span: int


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One decoded entry: ``offset`` of its size field, the message, and the
    raw bytes after it if its image type has any (else None)."""

    offset: int
    msg: Message
    extra: Extra | None = None


_TO_END = -1  # the extra runs to the end of the file


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def _pipe_data_extra(msg: Message) -> tuple[int, int]:
    return msg.bytes, msg.bytes  # criu/pipes.c: the buffer, spliced right after the entry


def _ipc_shm_extra(msg: Message) -> tuple[int, int] | None:
    if msg.in_pagemaps:  # what CRIU 4.2 writes: contents in pagemap-shmem-N
        return None
    return msg.size, _round_up(msg.size, 4)  # criu/ipc_ns.c restore_content


def _ghost_extra(msg: Message) -> tuple[int, int] | int | None:
    if isinstance(msg, HEAD_TYPES["GHOST_FILE"]):
        return None if msg.chunks else _TO_END  # unchunked: the whole content follows
    return msg.len, msg.len  # a ghost_chunk_entry


# Image types with raw bytes after (some of) their entries, and how many
# (criu/pipes.c, criu/ipc_ns.c, criu/files-reg.c; crit's extra handlers):
# message -> (size, span), _TO_END, or None for no extra. Types with extras
# dumper has no schema for (SK_QUEUES, TCP_STREAM, IPCNS_SEM, IPCNS_MSG,
# BPFMAP_DATA) are not in ENTRY_TYPES, so they are refused, never misread.
EXTRA_PAYLOADS: dict[str, Callable[[Message], tuple[int, int] | int | None]] = {
    "PIPES_DATA": _pipe_data_extra,
    "FIFO_DATA": _pipe_data_extra,
    "IPCNS_SHM": _ipc_shm_extra,
    "GHOST_FILE": _ghost_extra,
}


def iter_image(f: BinaryIO, path: str | os.PathLike | None, name: str, offset: int) -> Iterator[ImageEntry]:
    """Decode the entries of an image of type ``name`` (a key of
    :data:`ENTRY_TYPES`) from the current position, file offset ``offset``
    (just past the magic); the stream must be seekable.

    The first entry is a :data:`HEAD_TYPES` message where the type has one.
    Extra payloads (:data:`EXTRA_PAYLOADS`) are not read: each is checked to
    fit in the file, skipped, and described by ``ImageEntry.extra``.

    Raises KeyError for a ``name`` without entry type, CorruptImage as
    :func:`iter_entries` and :func:`parse_entry` do, and for an extra
    payload that runs past the end of the file.
    """
    cls = ENTRY_TYPES[name]
    head_cls = HEAD_TYPES.get(name)
    extra_of = EXTRA_PAYLOADS.get(name)
    file_size = _end_offset(f, offset)
    first = True
    while True:
        payload = _next_payload(f, path, offset, file_size, None)
        if payload is None:
            return
        msg = parse_entry(head_cls if first and head_cls is not None else cls, payload, path, offset)
        first = False
        entry_offset, offset = offset, offset + U32.size + len(payload)
        extra = None
        want = extra_of(msg) if extra_of is not None else None
        if want is not None:
            if file_size is None:
                raise CorruptImage(path, offset, "an image with extra payloads needs a stream of known size")
            size, span = (file_size - offset, file_size - offset) if want == _TO_END else want
            if offset + span > file_size:
                raise CorruptImage(
                    path, offset, f"{type(msg).__name__} announces {size} bytes of data, "
                    f"past the end of the file ({file_size} bytes)"
                )
            extra = Extra(offset, size, span)
            offset += span
            f.seek(span, os.SEEK_CUR)
        yield ImageEntry(entry_offset, msg, extra)


def iter_extra(
    f: BinaryIO, extra: Extra, path: str | os.PathLike | None = None, *, chunk: int = 1 << 20
) -> Iterator[bytes]:
    """The data of ``extra`` (padding excluded) in pieces of at most
    ``chunk`` bytes; memory stays bounded whatever ``extra.size`` says.
    ``f`` is the image file itself (positions are file offsets).
    CorruptImage if the file ends first."""
    pos = extra.offset
    end = extra.offset + extra.size
    f.seek(pos)
    while pos < end:
        n = min(chunk, end - pos)
        yield _read_exact(f, n, path, pos, "extra payload")
        pos += n


def read_extra(f: BinaryIO, extra: Extra, path: str | os.PathLike | None = None) -> bytes:
    """The data of ``extra`` (padding excluded) as one bytes object: at most
    the file's size, checked again before reading (CorruptImage if short)."""
    size = _end_offset(f, f.tell())
    if size is not None and extra.offset + extra.size > size:
        raise CorruptImage(path, extra.offset, f"extra payload of {extra.size} bytes runs past the end of the file")
    return b"".join(iter_extra(f, extra, path))


def write_extra(f: BinaryIO, data: bytes, *, align: int = 1) -> int:
    """Write raw ``data`` after an entry, zero-padded to a multiple of
    ``align`` bytes (4 for old-style ipcns-shm contents, 1 otherwise).
    Returns bytes written."""
    pad = _round_up(len(data), align) - len(data)
    f.write(data)
    if pad:
        f.write(bytes(pad))
    return len(data) + pad


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
