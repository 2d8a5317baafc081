"""proto/ keeps CRIU 4.2's schemas, proven against CRIU's own files.

- Every message and enum we define that CRIU also defines is compared with
  CRIU's images/*.proto, compiled here with grpc_tools.protoc into a private
  descriptor pool: file name, field numbers, names, types, labels, type
  names, defaults and packing; enum values. Our own fields are numbered
  >= 32 and optional. magic.h's magics equal format.py's.
- A real ``criu dump`` of a small C program (threads, pipe and FIFO with
  buffered bytes, eventfd, a file deleted while open, memfd, pty, timers,
  sigaltstack, a pending signal) decodes with our modules without unknown
  fields, and ``dumper decode`` prints exactly the values CRIU's compiled
  classes give (json_format on both sides), extra payloads included.

CRIU's sources come from build/criu-4.2 (the project's build), else
/work/main/build/criu-4.2, else the v4.2 tarball in ../shared/criu beside
the clone; CRIU itself from $DUMPER_CRIU, those builds, or PATH. Tests skip
with the reason when they are missing.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, unknown_fields
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

import dumper.image.pb as pb
from dumper.cli import decode as decode_cmd
from dumper.errors import BadMagic, CorruptImage, ImageError
from dumper.image import format as fmt
from dumper.image import read_image
from dumper.image.pb import (
    core_pb2,
    core_x86_pb2,
    fown_pb2,
    ghost_file_pb2,
    ipc_desc_pb2,
    ipc_shm_pb2,
    pipe_data_pb2,
    regfile_pb2,
)
from dumper.image.pretty import message_to_dict

REPO = Path(__file__).resolve().parents[1]
CRIU_VERSION_DIR = "criu-4.2"
SOURCE_TREES = (REPO / "build" / CRIU_VERSION_DIR, Path("/work/main/build") / CRIU_VERSION_DIR)
TARBALL = REPO.parent / "shared" / "criu" / f"{CRIU_VERSION_DIR}.tar.gz"

# Ours only: no CRIU counterpart.
OUR_MESSAGES = {"dumper_opts", "zpages_head", "zpages_index", "cow_ref_entry", "tracked_range", "unrestorable_reason"}
OUR_ENUMS = {"pages_compression"}
# opts.proto is CRIU's name for its display options (CRIU_Opts, extension
# 1018); ours holds dumper_opts (51018) instead. zpages.proto is ours only.
OUR_FILES = {"opts.proto", "zpages.proto"}
# CRIU fields we leave out on purpose: file_entry members for kinds dumper
# never writes (sockets, tun, BPF maps; their schemas pull in sk-*.proto).
OMITTED_FIELDS = {"file_entry": {"isk", "psk", "nlsk", "usk", "tunf", "bpf"}}
FIRST_OWN_FIELD = 32

needs_protoc = pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")


# --- CRIU's schemas, compiled here


def _criu_source(tmp_root: Path) -> Path | None:
    """A directory holding CRIU v4.2's images/*.proto and criu/include/magic.h."""
    for tree in SOURCE_TREES:
        if (tree / "images" / "core.proto").is_file() and (tree / "criu" / "include" / "magic.h").is_file():
            return tree
    if not TARBALL.is_file():
        return None
    out = tmp_root / CRIU_VERSION_DIR
    (out / "images").mkdir(parents=True)
    (out / "criu" / "include").mkdir(parents=True)
    with tarfile.open(TARBALL) as tar:
        for member in tar:
            m = re.fullmatch(rf"{CRIU_VERSION_DIR}/(images/[\w.-]+\.proto|criu/include/magic\.h)", member.name)
            if m and member.isfile():
                (out / m.group(1)).write_bytes(tar.extractfile(member).read())
    return out


@pytest.fixture(scope="session")
def criu_source(tmp_path_factory) -> Path:
    src = _criu_source(tmp_path_factory.mktemp("criu-src"))
    if src is None:
        pytest.skip(f"CRIU {CRIU_VERSION_DIR} sources not found ({', '.join(map(str, SOURCE_TREES))}, {TARBALL})")
    return src


@pytest.fixture(scope="session")
def criu_pool(criu_source, tmp_path_factory) -> descriptor_pool.DescriptorPool:
    """CRIU's images/*.proto compiled by protoc, in a pool of their own
    (their file names equal ours, so they cannot share the default pool)."""
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools not installed")
    from importlib.resources import files

    import grpc_tools

    images = criu_source / "images"
    out = tmp_path_factory.mktemp("criu-pb") / "criu.pb"
    protos = sorted(p.name for p in images.glob("*.proto"))
    res = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{images}", f"-I{files(grpc_tools) / '_proto'}",
         "--include_imports", f"--descriptor_set_out={out}", *protos],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    pool = descriptor_pool.DescriptorPool()
    for fdp in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(fdp)
    return pool


def _our_files():
    return [getattr(pb, name).DESCRIPTOR for name in pb.__all__]


def _walk(descs):
    for d in descs:
        yield d
        yield from _walk(d.nested_types)


def _our_messages() -> list[Descriptor]:
    return [d for f in _our_files() for d in _walk(f.message_types_by_name.values())]


def _our_enums() -> list[EnumDescriptor]:
    return [e for f in _our_files() for e in (*f.enum_types_by_name.values(),
                                              *(e for m in _walk(f.message_types_by_name.values())
                                                for e in m.enum_types))]


def _label(f: FieldDescriptor) -> str:
    return "required" if f.is_required else "repeated" if f.is_repeated else "optional"


def _facts(f: FieldDescriptor) -> tuple:
    """Everything about a field that shapes the wire or the API."""
    type_name = (f.message_type.full_name if f.message_type is not None
                 else f.enum_type.full_name if f.enum_type is not None else None)
    default = f.default_value if f.has_default_value else None
    return (f.name, f.type, _label(f), type_name, f.has_default_value, default, f.is_packed)


# --- schemas


@needs_protoc
def test_every_message_matches_criu(criu_pool):
    # GIVEN each message we define; WHEN CRIU defines one of the same name
    checked = 0
    for ours in _our_messages():
        if ours.full_name in OUR_MESSAGES:
            continue
        criu = criu_pool.FindMessageTypeByName(ours.full_name)  # KeyError: not CRIU's
        # THEN it lives in CRIU's file and every CRIU field is ours, identical
        assert ours.file.name == criu.file.name, ours.full_name
        omitted = OMITTED_FIELDS.get(ours.full_name, set())
        for cf in criu.fields:
            where = f"{ours.full_name}.{cf.name} = {cf.number}"
            if cf.name in omitted:
                assert cf.number not in ours.fields_by_number, where
                continue
            assert cf.number in ours.fields_by_number, f"{where}: missing"
            assert _facts(ours.fields_by_number[cf.number]) == _facts(cf), where
        # ... and any field of ours beyond CRIU's is numbered past it and optional
        for f in ours.fields:
            if f.number not in criu.fields_by_number:
                assert f.number >= FIRST_OWN_FIELD and not f.is_required, f"{ours.full_name}.{f.name}"
        assert {n.name for n in criu.nested_types} <= {n.name for n in ours.nested_types}, ours.full_name
        checked += 1
    assert checked >= 100


@needs_protoc
def test_every_enum_matches_criu(criu_pool):
    checked = 0
    for ours in _our_enums():
        if ours.full_name in OUR_ENUMS:
            continue
        criu = criu_pool.FindEnumTypeByName(ours.full_name)
        assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in criu.values], ours.full_name
        assert ours.file.name == criu.file.name
        checked += 1
    assert checked >= 8


@needs_protoc
def test_each_mirrored_file_is_complete(criu_pool):
    # every message and enum of a CRIU file we mirror is ours too
    for fd in _our_files():
        if fd.name in OUR_FILES:
            continue
        criu = criu_pool.FindFileByName(fd.name)  # KeyError: not a CRIU file name
        assert set(criu.message_types_by_name) <= set(fd.message_types_by_name), fd.name
        assert set(criu.enum_types_by_name) <= set(fd.enum_types_by_name), fd.name


def test_our_fields_in_criu_messages_need_no_criu_source():
    # without CRIU's files: our additions are the >= 32 optional ones
    for desc in _our_messages():
        if desc.full_name in OUR_MESSAGES or desc.full_name.startswith("user_mips") or "riscv64" in desc.full_name:
            continue  # CRIU's own mips/riscv registers use numbers past 32
        for f in desc.fields:
            if f.number >= FIRST_OWN_FIELD:
                assert not f.is_required, f"{desc.full_name}.{f.name}"


def test_magics_match_criu(criu_source):
    text = (criu_source / "criu" / "include" / "magic.h").read_text()
    criu = {m[1]: int(m[2], 16) for m in re.finditer(r"#define\s+(\w+)_MAGIC\s+(0x[0-9a-fA-F]+)", text)}
    aliases = {m[1]: m[2] for m in re.finditer(r"#define\s+(\w+)_MAGIC\s+([A-Z]\w*)_MAGIC\b", text)}
    for name in ("IMG_COMMON", "IMG_SERVICE", "KDAT", "RAW_IMAGE"):
        criu.pop(name, None)
    ours = {k: v for k, v in fmt.MAGICS.items() if k not in ("ZPAGES", "COW_REFS")}
    assert ours == criu
    assert (fmt.IMG_COMMON_MAGIC, fmt.IMG_SERVICE_MAGIC) == (0x54564319, 0x55105940)
    # names sharing another's value: RAW_IMAGE ones are raw files, the rest
    # resolve to a MAGICS name (PAGES_OLD -> PAGEMAP)
    resolved = {}
    for k, v in aliases.items():
        while v in aliases:
            v = aliases[v]
        if v != "RAW_IMAGE":
            resolved[k] = v
    assert fmt.MAGIC_ALIASES == resolved


def test_our_magic_is_not_criu_style():
    # CRIU magics use decimal-digit nibbles only; ours have a hex letter.
    for ours in (fmt.ZPAGES_MAGIC, fmt.COW_REFS_MAGIC):
        assert any((ours >> s) & 0xF > 9 for s in range(0, 32, 4))
        assert ours not in (fmt.IMG_COMMON_MAGIC, fmt.IMG_SERVICE_MAGIC, 0)
    assert len(set(fmt.MAGICS.values())) == len(fmt.MAGICS)


def test_every_entry_type_has_a_magic():
    assert set(fmt.ENTRY_TYPES) <= set(fmt.MAGICS)
    assert set(fmt.HEAD_TYPES) <= set(fmt.ENTRY_TYPES) and set(fmt.EXTRA_PAYLOADS) <= set(fmt.ENTRY_TYPES)


@needs_protoc
def test_criu_schema_decodes_our_pagemap(tmp_path, criu_pool):
    # GIVEN a pagemap written by us, with a > 2**32-page entry
    from dumper.image.writer import PagesWriter

    def create(name):
        return open(tmp_path / name, "wb")

    pw = PagesWriter(create, 7, 3, page_size=4096, compress=False)
    pw.add_present(0x10000, bytes(8192))
    pw.add_parent(0x20000, 5)
    pw.add_parent(1 << 32, 1 << 33)
    pw.close()
    # WHEN CRIU's own schema decodes it
    Head = message_factory.GetMessageClass(criu_pool.FindMessageTypeByName("pagemap_head"))
    Entry = message_factory.GetMessageClass(criu_pool.FindMessageTypeByName("pagemap_entry"))
    with open(tmp_path / "pagemap-7.img", "rb") as f:
        assert fmt.read_magic(f) == "PAGEMAP"
        payloads = [p for _, p in fmt.iter_entries(f, None, 8)]
    head = Head.FromString(payloads[0])
    entries = [Entry.FromString(p) for p in payloads[1:]]
    # THEN required fields are set, old and new counts agree where they can
    assert head.pages_id == 3 and head.IsInitialized()
    assert [(e.vaddr, e.compat_nr_pages, e.nr_pages, e.flags) for e in entries] == [
        (0x10000, 2, 2, fmt.PE_PRESENT),
        (0x20000, 5, 5, fmt.PE_PARENT),
        (1 << 32, 0, 1 << 33, fmt.PE_PARENT),
    ]
    assert all(e.IsInitialized() and not e.HasField("in_parent") for e in entries)


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_modules_are_current():
    from dumper.image import gen

    if not gen.PROTO_DIR.is_dir():
        pytest.skip("proto/ sources not present (installed package)")
    stale = gen.stale_files()
    assert not stale, f"regenerate with `python -m dumper.image.gen`: stale {stale}"


def test_fix_imports_is_relative_and_idempotent():
    from dumper.image.gen import fix_imports, module_name

    src = "import opts_pb2 as opts__pb2\nimport core_x86_pb2 as core__x86__pb2\nfrom google.protobuf import d\n"
    out = fix_imports(src)
    assert out == ("from . import opts_pb2 as opts__pb2\nfrom . import core_x86_pb2 as core__x86__pb2\n"
                   "from google.protobuf import d\n")
    assert fix_imports(out) == out
    assert module_name("core-x86.proto") == "core_x86_pb2" and module_name("fdinfo.proto") == "fdinfo_pb2"


# --- extra payloads, on synthetic images


def _entry(msg) -> bytes:
    data = msg.SerializeToString()
    return struct.pack("<I", len(data)) + data


def _image(magic: str, *parts: bytes) -> bytes:
    return struct.pack("<II", fmt.IMG_COMMON_MAGIC, fmt.MAGICS[magic]) + b"".join(parts)


def _pipe_data(pipe_id: int, data: bytes) -> bytes:
    return _entry(pipe_data_pb2.pipe_data_entry(pipe_id=pipe_id, bytes=len(data), size=65536)) + data


def test_pipes_data_extras_are_sized_and_skipped(tmp_path):
    # GIVEN two pipes' buffers, one empty, raw bytes after each entry
    p = tmp_path / "pipes-data.img"
    p.write_bytes(_image("PIPES_DATA", _pipe_data(7, b"hello\x00pipe"), _pipe_data(8, b""), _pipe_data(9, b"x" * 5000)))
    # WHEN read
    with open(p, "rb") as f:
        assert fmt.read_magic(f, p) == "PIPES_DATA"
        entries = list(fmt.iter_image(f, p, "PIPES_DATA", 8))
        datas = [fmt.read_extra(f, e.extra, p) for e in entries]
    # THEN each entry's extra is its bytes, at the right offset
    assert [e.msg.pipe_id for e in entries] == [7, 8, 9]
    assert datas == [b"hello\x00pipe", b"", b"x" * 5000]
    assert entries[0].offset == 8 and entries[0].extra.offset == 8 + len(_entry(entries[0].msg))
    assert [e.extra.size for e in entries] == [e.extra.span for e in entries] == [10, 0, 5000]
    # ... read_image gives the messages only, not the bytes as entries
    name, msgs = read_image(p)
    assert name == "PIPES_DATA" and [m.pipe_id for m in msgs] == [7, 8, 9]
    # ... and decode shows crit's --nopl placeholder, or the bytes
    assert [e["extra"] for e in decode_cmd.decode(p)["entries"]] == ["... <10B>", "... <0B>", "... <4.9KB>"]
    got = decode_cmd.decode(p, payload=True)["entries"][0]
    assert got == {"pipe_id": 7, "bytes": 10, "size": 65536, "extra": base64.b64encode(b"hello\x00pipe").decode()}


def test_extra_past_end_of_file_is_corrupt_with_offset(tmp_path):
    # GIVEN an entry announcing 2**32-1 bytes of buffer, then 3 bytes
    p = tmp_path / "fifo-data.img"
    head = _entry(pipe_data_pb2.pipe_data_entry(pipe_id=1, bytes=0xFFFFFFFF))
    p.write_bytes(_image("FIFO_DATA", head, b"abc"))
    # WHEN read; THEN refused before any allocation, naming file and offset
    with pytest.raises(CorruptImage, match="past the end of the file") as ei:
        read_image(p)
    assert ei.value.path == str(p) and ei.value.offset == 8 + len(head)
    # the same through decode
    with pytest.raises(CorruptImage):
        decode_cmd.decode(p)


def test_ghost_file_unchunked_content_runs_to_the_end(tmp_path):
    gf = ghost_file_pb2.ghost_file_entry(uid=0, gid=0, mode=0o100600, dev=(8 << 20) | 1, ino=12)
    p = tmp_path / fmt.ghost_file_name(0x1F)
    assert p.name == "ghost-file-1f.img"
    p.write_bytes(_image("GHOST_FILE", _entry(gf), b"ghost data"))
    with open(p, "rb") as f:
        fmt.read_magic(f, p)
        (e,) = fmt.iter_image(f, p, "GHOST_FILE", 8)
        assert type(e.msg) is ghost_file_pb2.ghost_file_entry
        assert fmt.read_extra(f, e.extra, p) == b"ghost data"
    assert decode_cmd.decode(p, pretty=True)["entries"] == [
        {"uid": 0, "gid": 0, "mode": 0o100600, "dev": "8:1", "ino": 12, "extra": "... <10B>"}
    ]


def test_ghost_file_chunks_each_carry_their_bytes(tmp_path):
    gf = ghost_file_pb2.ghost_file_entry(uid=1, gid=2, mode=0o100644, chunks=True, size=20000)
    chunks = [(0, b"a" * 100), (16384, b"b" * 3616)]
    parts = [_entry(gf)]
    for off, data in chunks:
        parts.append(_entry(ghost_file_pb2.ghost_chunk_entry(len=len(data), off=off)) + data)
    p = tmp_path / "ghost-file-2.img"
    p.write_bytes(_image("GHOST_FILE", *parts))
    with open(p, "rb") as f:
        fmt.read_magic(f, p)
        entries = list(fmt.iter_image(f, p, "GHOST_FILE", 8))
        assert entries[0].extra is None
        assert [(e.msg.off, fmt.read_extra(f, e.extra, p)) for e in entries[1:]] == chunks
        # iter_extra streams in bounded pieces
        assert list(fmt.iter_extra(f, entries[2].extra, p, chunk=1000)) == [b"b" * 1000] * 3 + [b"b" * 616]
    # a chunk announcing more than is there
    p.write_bytes(_image("GHOST_FILE", *parts)[:-1])
    with pytest.raises(CorruptImage, match="ghost_chunk_entry announces 3616 bytes"):
        read_image(p)


def test_ipc_shm_old_layout_pads_to_four_bytes(tmp_path):
    desc = ipc_desc_pb2.ipc_desc_entry(key=1, uid=0, gid=0, cuid=0, cgid=0, mode=0o600, id=5)
    old = ipc_shm_pb2.ipc_shm_entry(desc=desc, size=5)
    new = ipc_shm_pb2.ipc_shm_entry(desc=desc, size=1 << 40, in_pagemaps=True)
    buf = io.BytesIO()
    fmt.write_magic(buf, "IPCNS_SHM")
    fmt.write_entry(buf, old)
    assert fmt.write_extra(buf, b"12345", align=4) == 8
    fmt.write_entry(buf, new)  # contents in pagemap-shmem: nothing follows
    p = tmp_path / fmt.ipcns_shm_name(3)
    p.write_bytes(buf.getvalue())
    with open(p, "rb") as f:
        fmt.read_magic(f, p)
        a, b = fmt.iter_image(f, p, "IPCNS_SHM", 8)
        assert (a.extra.size, a.extra.span, fmt.read_extra(f, a.extra, p)) == (5, 8, b"12345")
        assert b.extra is None and b.msg.size == 1 << 40


def test_name_helpers():
    assert fmt.core_name(12) == "core-12.img" and fmt.ids_name(3) == "ids-3.img" and fmt.fs_name(3) == "fs-3.img"
    assert fmt.fdinfo_name(2) == "fdinfo-2.img" and fmt.timens_name(0) == "timens-0.img"
    assert fmt.pagemap_shmem_name(1029) == "pagemap-shmem-1029.img" and fmt.ipcns_shm_name(9) == "ipcns-shm-9.img"
    assert (fmt.FILES_NAME, fmt.MEMFD_INODE_NAME, fmt.REMAP_FPATH_NAME) == ("files.img", "memfd.img", "remap-fpath.img")
    assert (fmt.PIPES_DATA_NAME, fmt.FIFO_DATA_NAME, fmt.SECCOMP_NAME) == ("pipes-data.img", "fifo-data.img", "seccomp.img")
    assert (fmt.TTY_INFO_NAME, fmt.TTY_DATA_NAME, fmt.PSTREE_NAME) == ("tty-info.img", "tty-data.img", "pstree.img")


# --- pretty printing of the new hints


def test_pretty_registers_in_hex_and_task_state_by_name():
    regs = core_x86_pb2.user_x86_regs_entry(**{f.name: 0 for f in core_x86_pb2.user_x86_regs_entry.DESCRIPTOR.fields
                                               if f.is_required})
    regs.ip, regs.orig_ax = 0x401000, (1 << 64) - 1
    fp = core_x86_pb2.user_x86_fpregs_entry(cwd=0x37F, swd=0, twd=0, fop=0, rip=0, rdp=0, mxcsr=0x1F80, mxcsr_mask=0)
    core = core_pb2.core_entry(
        mtype=core_pb2.core_entry.X86_64,
        thread_info=core_x86_pb2.thread_info_x86(clear_tid_addr=0x7F00, gpregs=regs, fpregs=fp),
        tc=core_pb2.task_core_entry(task_state=6, exit_code=0, personality=0, flags=0, blk_sigset=1 << 11, comm="t"),
    )
    d = message_to_dict(core, pretty=True)
    # hex on gpregs reaches every register (crit), not the fpregs beside it
    assert d["thread_info"]["gpregs"]["ip"] == "0x401000" and d["thread_info"]["gpregs"]["orig_ax"] == "0xffffffffffffffff"
    assert d["thread_info"]["fpregs"]["mxcsr"] == 0x1F80 and d["thread_info"]["clear_tid_addr"] == "0x7f00"
    assert d["tc"]["task_state"] == "Stopped" and d["tc"]["blk_sigset"] == "0x800" and d["mtype"] == "X86_64"
    plain = message_to_dict(core)
    assert plain["tc"]["task_state"] == 6 and plain["thread_info"]["gpregs"]["orig_ax"] == (1 << 64) - 1


def test_pretty_file_flags_and_devices():
    reg = regfile_pb2.reg_file_entry(id=1, flags=0o2102001, pos=0, name="/log",
                                     fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
    assert message_to_dict(reg, pretty=True)["flags"] == "O_WRONLY | O_APPEND | O_LARGEFILE | O_CLOEXEC"
    gf = ghost_file_pb2.ghost_file_entry(uid=0, gid=0, mode=0o20666, rdev=os.makedev(1, 3), dev=(259 << 20) | 2)
    d = message_to_dict(gf, pretty=True)
    assert (d["rdev"], d["dev"]) == ("1:3", "259:2")


# --- a real criu dump, decoded both ways

PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static void on_usr1(int sig) { (void)sig; }
static void *idle(void *arg) { (void)arg; for (;;) pause(); return NULL; }

int main(int argc, char **argv)
{
	char path[4096];
	int p[2], fifo_r, fifo_w, log, ghost, big, mfd, ptm, pts, efd;
	pipe(p);
	write(p[1], "hello pipe", 10);
	snprintf(path, sizeof path, "%s/fifo", argv[1]);
	mkfifo(path, 0600);
	fifo_r = open(path, O_RDONLY | O_NONBLOCK);
	fifo_w = open(path, O_WRONLY);
	write(fifo_w, "fifo bytes", 10);
	efd = eventfd(5, EFD_CLOEXEC);
	snprintf(path, sizeof path, "%s/log", argv[1]);
	log = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	snprintf(path, sizeof path, "%s/small", argv[1]);
	ghost = open(path, O_RDWR | O_CREAT, 0600);
	write(ghost, "ghost", 5);
	unlink(path);
	snprintf(path, sizeof path, "%s/big", argv[1]);
	big = open(path, O_RDWR | O_CREAT, 0600);
	pwrite(big, "head", 4, 0);
	pwrite(big, "tail", 4, 65536);
	unlink(path);
	char *shared = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	strcpy(shared, "shared");
	mfd = memfd_create("mfd", MFD_ALLOW_SEALING);
	write(mfd, "memfd data", 10);
	fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK);
	ptm = posix_openpt(O_RDWR | O_NOCTTY);
	grantpt(ptm);
	unlockpt(ptm);
	pts = open(ptsname(ptm), O_RDWR | O_NOCTTY);
	signal(SIGUSR1, on_usr1);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	raise(SIGUSR2);
	struct itimerval it = {{100, 0}, {100, 0}};
	setitimer(ITIMER_REAL, &it, NULL);
	timer_t timer;
	struct sigevent sev = {0};
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGUSR1;
	timer_create(CLOCK_MONOTONIC, &sev, &timer);
	struct itimerspec its = {{50, 0}, {50, 0}};
	timer_settime(timer, 0, &its, NULL);
	stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536};
	sigaltstack(&ss, NULL);
	pthread_t tid;
	pthread_create(&tid, NULL, idle, NULL);
	printf("READY\n");
	fflush(stdout);
	for (;;) {
		write(log, "x", 1);
		sleep(1);
	}
}
"""

# What CRIU must write for PROGRAM: the coverage this test proves.
EXPECTED_MAGICS = {"INVENTORY", "PSTREE", "CORE", "IDS", "FS", "MM", "PAGEMAP", "FDINFO", "FILES", "PIPES_DATA",
                   "FIFO_DATA", "GHOST_FILE", "REMAP_FPATH", "TTY_INFO", "MEMFD_INODE", "SECCOMP", "TIMENS", "STATS"}


def _criu_binary() -> str | None:
    for cand in (os.environ.get("DUMPER_CRIU"), *(str(t / "criu" / "criu") for t in SOURCE_TREES), shutil.which("criu")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def criu_dump(tmp_path_factory) -> Path:
    """The image directory of ``criu dump`` of PROGRAM (killed by the dump)."""
    criu = _criu_binary()
    if criu is None:
        pytest.skip("no CRIU: set $DUMPER_CRIU, build CRIU 4.2 into build/criu-4.2, or put criu on PATH")
    if os.geteuid() != 0:
        pytest.skip("criu dump needs root")
    version = subprocess.run([criu, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Version: (\d+)\.(\d+)", version)
    if not m or (int(m[1]), int(m[2])) < (4, 0):
        pytest.skip(f"{criu} is not CRIU >= 4.0 ({version.strip()!r}); older ones cannot run on this kernel")
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    work = tmp_path_factory.mktemp("criu-dump")
    (work / "t.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O0", "-pthread", "-o", str(work / "t"), str(work / "t.c")], check=True)
    images = work / "images"
    images.mkdir()
    files = work / "files"
    files.mkdir()
    with open(work / "out", "wb") as out:
        proc = subprocess.Popen([str(work / "t"), str(files)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while b"READY" not in (work / "out").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, "the program did not start"
            time.sleep(0.02)
        res = subprocess.run([criu, "dump", "-t", str(proc.pid), "-D", str(images), "-v2", "-o", str(work / "dump.log")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (work / "dump.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return images


def _int64s(desc: Descriptor, d: dict) -> dict:
    """json_format's 64-bit strings back to numbers (what decode prints, and
    crit), following the descriptor."""
    for name, value in d.items():
        f = desc.fields_by_name[name]
        if f.message_type is not None:
            d[name] = [_int64s(f.message_type, v) for v in value] if f.is_repeated else _int64s(f.message_type, value)
        elif f.cpp_type in (f.CPPTYPE_INT64, f.CPPTYPE_UINT64):
            d[name] = [int(v) for v in value] if f.is_repeated else int(value)
    return d


def _criu_decode(path: Path, pool) -> tuple[str, list[dict]]:
    """The image at ``path`` as CRIU's compiled classes see it, framing and
    extras parsed here the way crit does (lib/pycriu/images/images.py)."""
    data = path.read_bytes()
    first = struct.unpack_from("<I", data)[0]
    if first == fmt.INVENTORY_MAGIC:
        name, pos = "INVENTORY", 4
    else:
        name, pos = fmt.MAGIC_NAMES[struct.unpack_from("<I", data, 4)[0]], 8

    def cls(our_cls):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(our_cls.DESCRIPTOR.full_name))

    entries = []
    while pos < len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        our = fmt.HEAD_TYPES.get(name) if not entries and name in fmt.HEAD_TYPES else fmt.ENTRY_TYPES[name]
        msg = cls(our).FromString(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
        d = _int64s(msg.DESCRIPTOR, json_format.MessageToDict(msg, preserving_proto_field_name=True))
        extra = None
        if name in ("PIPES_DATA", "FIFO_DATA"):
            extra = data[pos : pos + msg.bytes]
        elif name == "GHOST_FILE":
            if msg.DESCRIPTOR.name == "ghost_chunk_entry":
                extra = data[pos : pos + msg.len]
            elif not msg.chunks:
                extra = data[pos:]
        if extra is not None:
            d["extra"] = base64.b64encode(extra).decode()
            pos += len(extra)
        entries.append(d)
    return name, entries


def _unknown(msg, allowed: dict[str, set[int]], where: str) -> list[str]:
    bad = []
    numbers = {f.number for f in unknown_fields.UnknownFieldSet(msg)}
    extra = numbers - allowed.get(msg.DESCRIPTOR.full_name, set())
    if extra:
        bad.append(f"{where}: unknown fields {sorted(extra)}")
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            for i, sub in enumerate(value if fd.is_repeated else [value]):
                bad += _unknown(sub, allowed, f"{where}.{fd.name}[{i}]")
    return bad


@needs_protoc
def test_criu_dump_decodes_with_our_modules_as_with_criu_s(criu_dump, criu_pool):
    # numbers CRIU may write that we deliberately leave out
    allowed = {msg: {criu_pool.FindMessageTypeByName(msg).fields_by_name[n].number for n in names}
               for msg, names in OMITTED_FIELDS.items()}
    seen = set()
    for path in sorted(criu_dump.iterdir()):
        if re.fullmatch(r"pages-\d+\.img", path.name):
            with pytest.raises(BadMagic, match="not a CRIU or dumper image"):
                decode_cmd.decode(path)
            continue
        # GIVEN one image of CRIU's; WHEN our modules read it
        with open(path, "rb") as f:
            name = fmt.read_magic(f, path)
            ours = list(fmt.iter_image(f, path, name, f.tell()))
        seen.add(name)
        # THEN nothing is left unknown
        bad = [b for i, e in enumerate(ours) for b in _unknown(e.msg, allowed, f"{path.name} entry {i}")]
        assert not bad, bad
        # ... and decode prints what CRIU's own classes decode, extras too
        theirs_name, theirs = _criu_decode(path, criu_pool)
        got = decode_cmd.decode(path, payload=True)
        assert got == {"magic": theirs_name, "entries": theirs}, path.name
    assert EXPECTED_MAGICS <= seen, EXPECTED_MAGICS - seen


def _decoded(images: Path, name: str, **kw) -> list[dict]:
    return decode_cmd.decode(images / name, **kw)["entries"]


@needs_protoc
def test_criu_dump_values_are_the_programs(criu_dump):
    # the values the program set up, as decode shows them
    (tree,) = _decoded(criu_dump, "pstree.img")
    pid, tids = tree["pid"], tree["threads"]
    assert len(tids) == 2 and pid in tids
    payloads = {e["pipe_id"]: base64.b64decode(e["extra"]) for e in _decoded(criu_dump, "pipes-data.img", payload=True)}
    assert list(payloads.values()) == [b"hello pipe"]
    assert [base64.b64decode(e["extra"]) for e in _decoded(criu_dump, "fifo-data.img", payload=True)] == [b"fifo bytes"]
    ghosts = {p.name: _decoded(criu_dump, p.name, payload=True) for p in criu_dump.glob("ghost-file-*.img")}
    contents = set()
    for entries in ghosts.values():
        if entries[0].get("chunks"):  # the 64 KiB + 4 bytes file: two chunks around a hole
            assert entries[0]["size"] == 65540
            assert [(e["off"], base64.b64decode(e["extra"])[:4]) for e in entries[1:]][-1] == (65536, b"tail")
            contents.add("big")
        else:
            assert base64.b64decode(entries[0]["extra"]) == b"ghost"
            contents.add("small")
    assert contents == {"big", "small"}
    remaps = _decoded(criu_dump, "remap-fpath.img", pretty=True)
    assert sorted(r["remap_type"] for r in remaps) == ["GHOST", "GHOST"]
    files = _decoded(criu_dump, "files.img", pretty=True)
    kinds = {f["type"] for f in files}
    assert {"REG", "PIPE", "FIFO", "EVENTFD", "MEMFD", "TTY"} <= kinds
    assert [f["efd"]["counter"] for f in files if f["type"] == "EVENTFD"] == [5]
    log = next(f["reg"] for f in files if f["type"] == "REG" and f["reg"]["name"].endswith("/files/log"))
    assert log["flags"] == "O_WRONLY | O_APPEND | O_LARGEFILE"
    memfds = [m for m in _decoded(criu_dump, "memfd.img", pretty=True) if m["name"] == "mfd"]
    assert [(m["size"], m["seals"]) for m in memfds] == [(10, "F_SEAL_SHRINK")]
    (leader,) = _decoded(criu_dump, f"core-{pid}.img", pretty=True)
    tc, th = leader["tc"], leader["thread_core"]
    assert tc["task_state"] == "Alive" and tc["comm"] == "t"
    assert tc["timers"]["real"]["isec"] == 100 and [t["si_signo"] for t in tc["timers"]["posix"]] == [signal.SIGUSR1]
    # 62 sigactions: signals 1..64 without SIGKILL and SIGSTOP
    handled = {sig for sig in range(1, 65) if sig not in (signal.SIGKILL, signal.SIGSTOP)}
    assert len(tc["sigactions"]) == 62
    caught = {sig for sig, sa in zip(sorted(handled), tc["sigactions"]) if sa["sigaction"] != "0x0"}
    assert signal.SIGUSR1 in caught and signal.SIGUSR2 not in caught  # (glibc also catches 32, 33)
    assert int(tc["blk_sigset"], 16) & (1 << (signal.SIGUSR2 - 1))
    assert th["sas"]["ss_size"] == 65536
    # raise() queues SIGUSR2 on the calling thread: a private pending signal
    (sig,) = th["signals_p"]["signals"]
    assert struct.unpack_from("<i", base64.b64decode(sig["siginfo"]))[0] == signal.SIGUSR2
    assert leader["thread_info"]["gpregs"]["ip"].startswith("0x") and len(leader["thread_info"]["tls"]) == 3
    (other,) = _decoded(criu_dump, f"core-{max(set(tids) - {pid})}.img")
    assert "tc" not in other and "ids" not in other and other["thread_core"]["futex_rla_len"] > 0


# --- our own files.img


def test_decode_reads_the_files_img_export_writes(spawn_target, tmp_path, capsys):
    # GIVEN a dump of a target mapping a file, exported as a CRIU set
    from dumper.cli import main as cli_main
    from dumper.dump import dump
    from dumper.export import export_criu

    t = spawn_target("dense,file")
    t.stop()
    dump(t.pid, tmp_path / "ck", thaw="leave-stopped")
    export_criu(tmp_path / "ck", tmp_path / "criu")
    # WHEN `dumper decode` reads its files.img (refused before proto/ had fdinfo.proto)
    rc = cli_main(["decode", "--pretty", str(tmp_path / "criu" / fmt.FILES_NAME)])
    img = json.loads(capsys.readouterr().out)
    # THEN the dump's open file descriptions (an export copies files.img), the mapped file among them
    assert rc == 0 and img["magic"] == "FILES"
    regs = [e for e in img["entries"] if e["type"] == "REG"]
    assert all(e["reg"]["id"] == e["id"] for e in regs)
    assert str(tmp_path / "mapped.bin") in [e["reg"]["name"] for e in regs]
    assert all(e["reg"]["fown"] == {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0} for e in regs)


# --- hostile input: any bytes after any header give a result or an ImageError


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(fmt.ENTRY_TYPES)), body=st.binary(max_size=64), tail=st.binary(max_size=16),
       size=st.one_of(st.integers(0, 80), st.sampled_from([0xFFFFFFFF, fmt.MAX_ENTRY_SIZE + 1])))
def test_hostile_entries_give_image_errors(tmp_path, name, body, tail, size):

    if name == "INVENTORY":
        head = struct.pack("<I", fmt.INVENTORY_MAGIC)
    else:
        first = fmt.IMG_SERVICE_MAGIC if name in fmt.SERVICE_IMAGES else fmt.IMG_COMMON_MAGIC
        head = struct.pack("<II", first, fmt.MAGICS[name])
    p = tmp_path / "x.img"
    p.write_bytes(head + struct.pack("<I", size) + body + tail)
    for read in (read_image, lambda q: decode_cmd.decode(q, payload=True), lambda q: decode_cmd.decode(q, pretty=True)):
        try:
            read(p)
        except ImageError as err:
            assert err.path == str(p) and err.offset is not None and 0 <= err.offset <= p.stat().st_size


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(announced=st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1)), tail=st.binary(max_size=64),
       ghost=st.booleans())
def test_hostile_extra_sizes(tmp_path, announced, tail, ghost):
    # GIVEN a well-formed entry announcing `announced` bytes of extra data
    if ghost:
        name, msg = "GHOST_FILE", ghost_file_pb2.ghost_chunk_entry(len=announced * 4099, off=0)
        parts = [_entry(ghost_file_pb2.ghost_file_entry(uid=0, gid=0, mode=0o100600, chunks=True)), _entry(msg)]
    else:
        name, msg = "PIPES_DATA", pipe_data_pb2.pipe_data_entry(pipe_id=1, bytes=announced)
        parts = [_entry(msg)]
    p = tmp_path / "x.img"
    p.write_bytes(_image(name, *parts, tail))
    # WHEN decoded; THEN either the extra fits and is exactly those bytes, or an ImageError
    try:
        got = decode_cmd.decode(p, payload=True)["entries"]
    except ImageError as err:
        assert err.path == str(p) and 0 <= err.offset <= p.stat().st_size
        return
    want = msg.len if ghost else msg.bytes
    assert want <= len(tail) and base64.b64decode(got[1 if ghost else 0]["extra"]) == tail[:want]
