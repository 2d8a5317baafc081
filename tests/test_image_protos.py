"""The generated protobuf modules are current, and the schemas keep CRIU's
field numbers and types (criu images/*.proto, v4.2) so crit reads our images."""

from __future__ import annotations

import importlib.util

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor as FD

from dumper.image import format as fmt
from dumper.image.pb import inventory_pb2, mm_pb2, pagemap_pb2, stats_pb2, vma_pb2

U32, U64, BOOL, STR, S64, I32, MSG, ENUM = (
    FD.TYPE_UINT32,
    FD.TYPE_UINT64,
    FD.TYPE_BOOL,
    FD.TYPE_STRING,
    FD.TYPE_SINT64,
    FD.TYPE_INT32,
    FD.TYPE_MESSAGE,
    FD.TYPE_ENUM,
)
REQ, OPT, REP = "required", "optional", "repeated"

# (number, name, type, label) as in CRIU's images/*.proto at v4.2.
CRIU_FIELDS = {
    pagemap_pb2.pagemap_head: [(1, "pages_id", U32, REQ)],
    pagemap_pb2.pagemap_entry: [
        (1, "vaddr", U64, REQ),
        (2, "compat_nr_pages", U32, REQ),
        (3, "in_parent", BOOL, OPT),
        (4, "flags", U32, OPT),
        (5, "nr_pages", U64, OPT),
    ],
    vma_pb2.vma_entry: [
        (1, "start", U64, REQ),
        (2, "end", U64, REQ),
        (3, "pgoff", U64, REQ),
        (4, "shmid", U64, REQ),
        (5, "prot", U32, REQ),
        (6, "flags", U32, REQ),
        (7, "status", U32, REQ),
        (8, "fd", S64, REQ),
        (9, "madv", U64, OPT),
        (10, "fdflags", U32, OPT),
    ],
    mm_pb2.mm_entry: [
        *[
            (i, n, U64, REQ)
            for i, n in enumerate(
                "mm_start_code mm_end_code mm_start_data mm_end_data mm_start_stack mm_start_brk "
                "mm_brk mm_arg_start mm_arg_end mm_env_start mm_env_end".split(),
                1,
            )
        ],
        (12, "exe_file_id", U32, REQ),
        (13, "mm_saved_auxv", U64, REP),
        (14, "vmas", MSG, REP),
        (15, "dumpable", I32, OPT),
        (16, "aios", MSG, REP),
        (17, "thp_disabled", BOOL, OPT),
    ],
    inventory_pb2.inventory_entry: [
        (1, "img_version", U32, REQ),
        (2, "fdinfo_per_id", BOOL, OPT),
        (3, "root_ids", MSG, OPT),
        (4, "ns_per_id", BOOL, OPT),
        (5, "root_cg_set", U32, OPT),
        (6, "lsmtype", ENUM, OPT),
        (8, "dump_uptime", U64, OPT),
        (9, "pre_dump_mode", U32, OPT),
        (10, "tcp_close", BOOL, OPT),
        (11, "network_lock_method", U32, OPT),
        (12, "plugins_entry", MSG, OPT),
        (13, "dump_criu_run_id", STR, OPT),
        (14, "allow_uprobes", BOOL, OPT),
    ],
    stats_pb2.dump_stats_entry: [
        (1, "freezing_time", U32, REQ),
        (2, "frozen_time", U32, REQ),
        (3, "memdump_time", U32, REQ),
        (4, "memwrite_time", U32, REQ),
        (5, "pages_scanned", U64, REQ),
        (6, "pages_skipped_parent", U64, REQ),
        (7, "pages_written", U64, REQ),
        (8, "irmap_resolve", U32, OPT),
        (9, "pages_lazy", U64, REQ),
        (10, "page_pipes", U64, OPT),
        (11, "page_pipe_bufs", U64, OPT),
        (12, "shpages_scanned", U64, OPT),
        (13, "shpages_skipped_parent", U64, OPT),
        (14, "shpages_written", U64, OPT),
    ],
    stats_pb2.stats_entry: [(1, "dump", MSG, OPT), (2, "restore", MSG, OPT)],
}


def _label(f) -> str:
    if f.is_required:
        return REQ
    return REP if f.is_repeated else OPT


@pytest.mark.parametrize("cls", list(CRIU_FIELDS), ids=lambda c: c.DESCRIPTOR.name)
def test_criu_fields_keep_numbers_and_types(cls):
    # GIVEN CRIU's field table; WHEN we look at our descriptor; THEN they agree
    by_number = cls.DESCRIPTOR.fields_by_number
    for number, name, ftype, label in CRIU_FIELDS[cls]:
        f = by_number[number]
        assert (f.name, f.type, _label(f)) == (name, ftype, label), (cls.DESCRIPTOR.name, number)
    # ... and every field of ours is optional or repeated, numbered past CRIU's
    criu_numbers = {n for n, *_ in CRIU_FIELDS[cls]}
    for f in cls.DESCRIPTOR.fields:
        if f.number not in criu_numbers:
            assert f.number >= 16 and not f.is_required, f.name


def _criu_pagemap_classes():
    """CRIU v4.2's pagemap.proto, built in a private pool (no codegen)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="criu_pagemap.proto", package="criu", syntax="proto2")
    head = fdp.message_type.add(name="pagemap_head")
    head.field.add(name="pages_id", number=1, type=U32, label=FD.LABEL_REQUIRED)
    ent = fdp.message_type.add(name="pagemap_entry")
    for number, name, ftype, label in CRIU_FIELDS[pagemap_pb2.pagemap_entry]:
        ent.field.add(
            name=name,
            number=number,
            type=ftype,
            label=FD.LABEL_REQUIRED if label == REQ else FD.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("criu.pagemap_head")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("criu.pagemap_entry")),
    )


def test_criu_schema_decodes_our_pagemap(tmp_path):
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
    Head, Entry = _criu_pagemap_classes()
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


def test_our_magic_is_not_criu_style():
    # CRIU magics use decimal-digit nibbles only; ours has a hex letter.
    assert any((fmt.ZPAGES_MAGIC >> s) & 0xF > 9 for s in range(0, 32, 4))
    assert len(set(fmt.MAGICS.values())) == len(fmt.MAGICS)
    assert fmt.ZPAGES_MAGIC not in (fmt.IMG_COMMON_MAGIC, fmt.IMG_SERVICE_MAGIC, 0)


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_modules_are_current():
    from dumper.image import gen

    if not gen.PROTO_DIR.is_dir():
        pytest.skip("proto/ sources not present (installed package)")
    stale = gen.stale_files()
    assert not stale, f"regenerate with `python -m dumper.image.gen`: stale {stale}"


def test_fix_imports_is_relative_and_idempotent():
    from dumper.image.gen import fix_imports

    src = "import opts_pb2 as opts__pb2\nfrom google.protobuf import descriptor_pb2 as d\n"
    out = fix_imports(src)
    assert out == "from . import opts_pb2 as opts__pb2\nfrom google.protobuf import descriptor_pb2 as d\n"
    assert fix_imports(out) == out
