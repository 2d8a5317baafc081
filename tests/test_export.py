"""``dumper export --format criu``: CRIU image sets from checkpoints.

Real dumps of spawned targets are exported and read back four ways:

- with CRIU 4.2's own ``criu restore`` (plain, without dumper): a C program
  with two threads, a counter in a log, a pipe holding bytes and a file
  deleted while open is dumped (killed, reaped), exported, restored, and
  goes on from the saved counter with its pipe bytes and ghost file; an
  incremental chain exported flattened and with ``--keep-chain`` too;
- with dumper's own reader (:mod:`dumper.image.checkpoint`), which must give
  exactly the memory of the source checkpoint (chains flattened, or kept);
- image by image: every CRIU image of the source is in the set with CRIU's
  fields only (its entries and raw payloads equal the source's, filtered),
  nothing else is; the main messages also parse with protobuf classes built
  here from CRIU v4.2's images/*.proto field numbers (not dumper's .proto);
- with CRIU's ``crit`` (skipped with the reason when not built):
  ``decode``/``show``/``x ps|fds|mems|rss``, and a differential against
  ``criu dump`` of the same stopped target.

Sources without process state (a checkpoint from before it was saved,
tests/data/tiny-zst; a pre-dump) give the memory-only set, and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields

from criu_helpers import criu_restore, read_entries, read_msgs
from dumper.cli import main as cli_main
from dumper.cli.verify import only_kernel_written
from dumper.dump import dump
from dumper.errors import DumperError, ImageError
from dumper.export import COMPLETE, MEMORY, ExportError, export, export_criu
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.criuset import FIRST_OWN_FIELD, criu_fields_only
from dumper.image.pb import inventory_pb2, pstree_pb2
from dumper.kernel.libc import PAGE_SIZE
from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async
from targets.restore_support import Target as CTarget
from targets.restore_support import counters, wait_for

P = PAGE_SIZE
LAYOUTS = "dense,sparse,zero,file"
DATA = Path(__file__).resolve().parent / "data"
needs_uffd = pytest.mark.skipif(not (probe_scan_categories() and probe_uffd_wp_async()),
                                reason="uffd-wp tracking needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)")


def _find_criu() -> str | None:
    from dumper.errors import CriuNotFound
    from dumper.restore.criu import find_criu

    try:
        return find_criu().path
    except CriuNotFound:
        return None


CRIU = _find_criu()
# crit: beside the CRIU that .ci/build-criu builds (build/criu-4.2/bin/crit), else on PATH
_built_crit = Path(CRIU).resolve().parents[1] / "bin" / "crit" if CRIU else None
CRIT = str(_built_crit) if _built_crit is not None and _built_crit.exists() else shutil.which("crit")
needs_crit = pytest.mark.skipif(CRIT is None, reason="crit (CRIU's image tool): not built (.ci/build-criu) nor on PATH")
needs_criu = pytest.mark.skipif(CRIU is None or os.geteuid() != 0,
                                reason="no CRIU 4.x (.ci/build-criu builds it)" if CRIU is None else "criu dump needs root")


# --- CRIU's messages, from CRIU v4.2 images/*.proto (numbers and types only)

_F = descriptor_pb2.FieldDescriptorProto
REQ, OPT, REP = _F.LABEL_REQUIRED, _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
U32, U64, S64, I32, S32, BOOL, STR = (_F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_SINT64, _F.TYPE_INT32,
                                      _F.TYPE_SINT32, _F.TYPE_BOOL, _F.TYPE_STRING)
ENUMS = {"lsmtype": ["NO_LSM", "SELINUX", "APPARMOR"], "fd_types": ["UND", "REG", "PIPE", "FIFO"]}
CRIU_MESSAGES = {
    "task_kobj_ids_entry": [(n, name, U32, REQ if n <= 4 else OPT) for n, name in enumerate(
        ["vm_id", "files_id", "fs_id", "sighand_id", "pid_ns_id", "net_ns_id", "ipc_ns_id", "uts_ns_id",
         "mnt_ns_id", "user_ns_id", "cgroup_ns_id", "time_ns_id"], 1)],
    "plugins_entry": [(12, "plugins", STR, REP)],
    "inventory_entry": [
        (1, "img_version", U32, REQ), (2, "fdinfo_per_id", BOOL, OPT), (3, "root_ids", "task_kobj_ids_entry", OPT),
        (4, "ns_per_id", BOOL, OPT), (5, "root_cg_set", U32, OPT), (6, "lsmtype", "lsmtype", OPT),
        (8, "dump_uptime", U64, OPT), (9, "pre_dump_mode", U32, OPT), (10, "tcp_close", BOOL, OPT),
        (11, "network_lock_method", U32, OPT), (12, "plugins_entry", "plugins_entry", OPT),
        (13, "dump_criu_run_id", STR, OPT), (14, "allow_uprobes", BOOL, OPT),
    ],
    "pstree_entry": [(1, "pid", U32, REQ), (2, "ppid", U32, REQ), (3, "pgid", U32, REQ), (4, "sid", U32, REQ),
                     (5, "threads", U32, REP)],
    "vma_entry": [(1, "start", U64, REQ), (2, "end", U64, REQ), (3, "pgoff", U64, REQ), (4, "shmid", U64, REQ),
                  (5, "prot", U32, REQ), (6, "flags", U32, REQ), (7, "status", U32, REQ), (8, "fd", S64, REQ),
                  (9, "madv", U64, OPT), (10, "fdflags", U32, OPT)],
    "aio_ring_entry": [(1, "id", U64, REQ), (2, "nr_req", U32, REQ), (3, "ring_len", U32, REQ)],
    "mm_entry": [(n, name, U64, REQ) for n, name in enumerate(
        ["mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack", "mm_start_brk",
         "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end"], 1)] + [
        (12, "exe_file_id", U32, REQ), (13, "mm_saved_auxv", U64, REP), (14, "vmas", "vma_entry", REP),
        (15, "dumpable", I32, OPT), (16, "aios", "aio_ring_entry", REP), (17, "thp_disabled", BOOL, OPT)],
    "pagemap_head": [(1, "pages_id", U32, REQ)],
    "pagemap_entry": [(1, "vaddr", U64, REQ), (2, "compat_nr_pages", U32, REQ), (3, "in_parent", BOOL, OPT),
                      (4, "flags", U32, OPT), (5, "nr_pages", U64, OPT)],
    "fown_entry": [(n, name, U32, REQ) for n, name in enumerate(["uid", "euid", "signum", "pid_type", "pid"], 1)],
    "reg_file_entry": [(1, "id", U32, REQ), (2, "flags", U32, REQ), (3, "pos", U64, REQ),
                       (5, "fown", "fown_entry", REQ), (6, "name", STR, REQ), (7, "mnt_id", S32, OPT),
                       (8, "size", U64, OPT), (9, "ext", BOOL, OPT), (10, "mode", U32, OPT),
                       (11, "build_id", U32, REP), (12, "checksum", U32, OPT), (13, "checksum_config", U32, OPT),
                       (14, "checksum_parameter", U32, OPT)],
    "pipe_entry": [(1, "id", U32, REQ), (2, "pipe_id", U32, REQ), (3, "flags", U32, REQ), (4, "fown", "fown_entry", REQ)],
    # the REG and PIPE members of the file_entry union: what the targets here hold
    "file_entry": [(1, "type", "fd_types", REQ), (2, "id", U32, REQ), (3, "reg", "reg_file_entry", OPT),
                   (18, "pipe", "pipe_entry", OPT)],
}


def _criu_classes() -> dict:
    fdp = descriptor_pb2.FileDescriptorProto(name="test_export_criu_v42.proto", package="criu42", syntax="proto2")
    for name, values in ENUMS.items():
        e = fdp.enum_type.add(name=name)
        for number, value in enumerate(values):
            e.value.add(name=value, number=number)
    for name, fields in CRIU_MESSAGES.items():
        m = fdp.message_type.add(name=name)
        for number, fname, ftype, label in fields:
            f = m.field.add(name=fname, number=number, label=label)
            if isinstance(ftype, int):
                f.type = ftype
            else:
                f.type = _F.TYPE_ENUM if ftype in ENUMS else _F.TYPE_MESSAGE
                f.type_name = f".criu42.{ftype}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"criu42.{n}")) for n in CRIU_MESSAGES}


CRIU_PB = _criu_classes()
# magic name -> (first u32 or None for inventory, message of each entry)
CRIU_IMAGES = {
    "inventory.img": (fmt.INVENTORY_MAGIC, None, "inventory_entry"),
    "pstree.img": (fmt.IMG_COMMON_MAGIC, fmt.PSTREE_MAGIC, "pstree_entry"),
    "files.img": (fmt.IMG_COMMON_MAGIC, fmt.FILES_MAGIC, "file_entry"),
}


def _no_unknown_fields(msg, where: str) -> None:
    assert len(unknown_fields.UnknownFieldSet(msg)) == 0, f"{where}: fields CRIU does not know"
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            for i, sub in enumerate(value if fd.is_repeated else [value]):
                _no_unknown_fields(sub, f"{where}.{fd.name}[{i}]")


def decode_as_criu(path: Path) -> list:
    """The entries of one exported image, parsed with CRIU v4.2's messages;
    every entry fully initialized and holding no field unknown to CRIU."""
    data = path.read_bytes()
    name = path.name
    if name in CRIU_IMAGES:
        first, second, msg = CRIU_IMAGES[name]
    elif name.startswith("mm-"):
        first, second, msg = fmt.IMG_COMMON_MAGIC, fmt.MM_MAGIC, "mm_entry"
    elif name.startswith("pagemap-"):
        first, second, msg = fmt.IMG_COMMON_MAGIC, fmt.PAGEMAP_MAGIC, "pagemap_entry"
    else:
        raise AssertionError(f"unexpected image {name}")
    pos = 4
    assert int.from_bytes(data[:4], "little") == first, name
    if second is not None:
        assert int.from_bytes(data[4:8], "little") == second, name
        pos = 8
    out = []
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "little")
        payload = data[pos + 4 : pos + 4 + size]
        assert len(payload) == size, f"{name}: truncated entry at {pos}"
        cls = CRIU_PB["pagemap_head" if msg == "pagemap_entry" and not out else msg]
        m = cls.FromString(payload)
        assert m.IsInitialized(), f"{name} entry {len(out)}: {m.FindInitializationErrors()}"
        _no_unknown_fields(m, f"{name} entry {len(out)}")
        out.append(m)
        pos += 4 + size
    return out


# --- helpers


def pages_of(ck_path: Path, pid: int) -> dict[int, bytes]:
    """vaddr -> page bytes of every recorded page, PE_PARENT resolved."""
    with open_checkpoint(ck_path) as ck:
        out = {}
        for vaddr, data in ck.iter_pages(pid):
            for i in range(0, len(data), P):
                out[vaddr + i] = bytes(data[i : i + P])
    return out


def vma_ranges(ck_path: Path, pid: int, *, merge_vvar: bool = False) -> list[tuple]:
    with open_checkpoint(ck_path) as ck:
        vmas = [(v.start, v.end, v.prot, v.pgoff, v.status & ~fmt.VMA_ANON_PRIVATE) for v in ck.processes[pid].vmas]
    if merge_vvar:
        merged = []
        for v in vmas:
            if merged and merged[-1][4] & fmt.VMA_AREA_VVAR and v[4] & fmt.VMA_AREA_VVAR and merged[-1][1] == v[0]:
                merged[-1] = (merged[-1][0], v[1], *merged[-1][2:])
            else:
                merged.append(v)
        vmas = merged
    return vmas


def wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            d = f.read()
        if d[d.rindex(b")") + 2 :].split()[0] == b"T":
            return
        time.sleep(0.005)
    raise TimeoutError(f"pid {pid} did not stop")




def _no_dumper_fields(msg, where: str) -> None:
    """No field numbered from 32 and no unknown field, at any depth."""
    assert len(unknown_fields.UnknownFieldSet(msg)) == 0, f"{where}: unknown fields"
    for fd, value in msg.ListFields():
        assert fd.number < FIRST_OWN_FIELD, f"{where}.{fd.name} is dumper's field {fd.number}"
        if fd.type == fd.TYPE_MESSAGE:
            for i, sub in enumerate(value if fd.is_repeated else [value]):
                _no_dumper_fields(sub, f"{where}.{fd.name}[{i}]")


def _magic(path: Path) -> str | None:
    with open(path, "rb") as f:
        try:
            return fmt.read_magic(f, path)
        except DumperError:
            return None


def check_memory_layout(out: Path, pids: list[int], *, parent: bool = False) -> None:
    """A memory-only set: inventory, pstree, files, then mm, pagemap and
    pages per process; 0700 and 0600."""
    names = {p.name for p in out.iterdir()}
    expected = {"inventory.img", "pstree.img", "files.img"}
    for i, pid in enumerate(pids, 1):
        expected |= {f"mm-{pid}.img", f"pagemap-{pid}.img", f"pages-{i}.img"}
    if parent:
        expected.add("parent")
    assert names == expected
    check_modes(out)


def check_modes(out: Path) -> None:
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def check_complete_set(out: Path, src: Path, *, parent: bool = False) -> None:
    """``out`` holds every CRIU image of ``src`` and nothing else (its
    zstd pages as raw pages-N.img); each image's entries are the source's
    with CRIU's fields only, raw payloads equal, pagemaps with the source's
    pages ids; no dumper field anywhere."""
    src_names = {p.name for p in src.iterdir() if p.name != "parent"}
    raw = {n.replace(".zst.img", ".img") for n in src_names if n.endswith(".zst.img")}
    expected = (src_names - {n for n in src_names if n.endswith(".zst.img")}) | raw | ({"parent"} if parent else set())
    assert {p.name for p in out.iterdir()} == expected
    check_modes(out)
    for name in sorted(expected - {"parent"}):
        magic = _magic(out / name)
        if name.startswith("pages-"):
            assert magic is None
            continue
        assert magic is not None and magic != "ZPAGES", name
        got = read_entries(out / name)
        for i, (msg, _) in enumerate(got):
            _no_dumper_fields(msg, f"{name}[{i}]")
        if magic == "PAGEMAP":
            head = got[0][0]
            assert [f.name for f, _ in head.ListFields()] == ["pages_id"]
            assert head.pages_id == read_msgs(src / name)[0].pages_id
            continue
        want = read_entries(src / name)
        assert [(criu_fields_only(m), x) for m, x in want] == got, name


def exported_memory(out: Path, src: Path, pid: int) -> None:
    ours, theirs = pages_of(src, pid), pages_of(out, pid)
    assert ours.keys() == theirs.keys() and ours == theirs


# --- complete sets, read back


@pytest.mark.parametrize("compress", [True, False], ids=["zstd-source", "raw-source"])
def test_export_round_trip(spawn_target, tmp_path, compress):
    t = spawn_target(LAYOUTS)
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped", compress=compress)
    out = tmp_path / "criu"
    res = export_criu(src, out)
    assert res.out == out and len(res.sets) == 1 and res.bytes > 0
    assert res.complete and res.sets[0].kind == COMPLETE and not res.sets[0].left_out
    check_complete_set(out, src)

    # dumper's reader sees a CRIU set with the same memory
    with open_checkpoint(out) as ck:
        assert ck.is_criu and ck.pids == (t.pid,)
        assert ck.processes[t.pid].threads == (t.pid,) and ck.processes[t.pid].ppid == 0
    ours = pages_of(src, t.pid)
    exported_memory(out, src, t.pid)
    assert res.sets[0].pages_present[t.pid] == len(ours)
    dense, n = t.regions["dense"]
    assert all(ours[dense + i * P] == bytes([(i % 251) + 1]) * P for i in range(n // P))
    assert vma_ranges(out, t.pid) == vma_ranges(src, t.pid, merge_vvar=True)
    assert (out / "pages-1.img").stat().st_size == len(ours) * P


def test_complete_set_keeps_the_sources_ids_and_criu_fields(spawn_target, tmp_path):
    """Nothing is made up: inventory, files.img, mm ids are the source's
    with CRIU's fields only; the raw bytes after pipes-data entries (the
    target's stdin and stdout pipes) are copied."""
    t = spawn_target(LAYOUTS)
    t.command("write dense 0")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "criu"
    export(src, out)
    (inv,) = read_msgs(out / "inventory.img")
    (src_inv,) = read_msgs(src / "inventory.img")
    assert inv == criu_fields_only(src_inv) and inv.HasField("root_ids") and inv.dump_criu_run_id
    assert read_msgs(out / "files.img") == [criu_fields_only(m) for m in read_msgs(src / "files.img")]
    (mm,) = read_msgs(out / f"mm-{t.pid}.img")
    (src_mm,) = read_msgs(src / f"mm-{t.pid}.img")
    assert mm.exe_file_id == src_mm.exe_file_id and [v.shmid for v in mm.vmas] == [v.shmid for v in src_mm.vmas]
    files = {f.id: f for f in read_msgs(out / "files.img")}
    assert files[mm.exe_file_id].reg.name == os.path.realpath(f"/proc/{t.pid}/exe")
    if (src / "pipes-data.img").exists():
        payloads = [x for _, x in read_entries(out / "pipes-data.img")]
        assert payloads == [x for _, x in read_entries(src / "pipes-data.img")]


def test_exported_images_decode_with_criu_messages(spawn_target, tmp_path):
    """The main images parse with CRIU v4.2's message definitions (built
    here, not dumper's), every required field set, no field CRIU lacks."""
    t = spawn_target(LAYOUTS)
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "criu"
    export(src, out)

    (inv,) = decode_as_criu(out / "inventory.img")
    assert inv.img_version == 2 and inv.fdinfo_per_id and inv.root_ids.vm_id
    (ps,) = decode_as_criu(out / "pstree.img")
    assert (ps.pid, ps.ppid, list(ps.threads)) == (t.pid, 0, [t.pid])
    files = decode_as_criu(out / "files.img")
    by_id = {f.id: f for f in files}
    (mm,) = decode_as_criu(out / f"mm-{t.pid}.img")
    assert mm.exe_file_id in by_id and by_id[mm.exe_file_id].reg.name.startswith("/")
    mapped = str(tmp_path / "mapped.bin")
    file_vmas = [v for v in mm.vmas if v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED)]
    assert file_vmas and all(v.shmid in by_id for v in file_vmas)
    assert any(by_id[v.shmid].reg.name == mapped for v in file_vmas)
    assert [v.start for v in mm.vmas] == sorted(v.start for v in mm.vmas)
    known = 0
    for bit in fmt.FLAG_TABLES["mmap.status"].values():
        known |= bit
    assert all(v.status and not v.status & ~known for v in mm.vmas)

    head, *entries = decode_as_criu(out / f"pagemap-{t.pid}.img")
    assert head.pages_id == 1
    for e in entries:
        assert e.HasField("compat_nr_pages") and e.HasField("nr_pages")
        assert e.compat_nr_pages == e.nr_pages > 0 and e.flags == fmt.PE_PRESENT and not e.HasField("in_parent")
    assert [e.vaddr for e in entries] == sorted(e.vaddr for e in entries)
    total = sum(e.nr_pages for e in entries)
    assert (out / "pages-1.img").stat().st_size == total * P
    # raw pages in entry order: the first page of "dense" is where the stream says
    dense, _ = t.regions["dense"]
    off = 0
    for e in entries:
        if e.vaddr <= dense < e.vaddr + e.nr_pages * P:
            off += (dense - e.vaddr) // P
            break
        off += e.nr_pages
    with open(out / "pages-1.img", "rb") as f:
        f.seek(off * P)
        assert f.read(P) == b"\x01" * P


def test_criu_fields_only_keeps_a_newer_crius_fields():
    """Unknown fields below 32 (a CRIU newer than proto/) stay, unknown
    ones from 32 (a newer dumper's) and dumper's known ones go, at every
    depth."""
    tree = pstree_pb2.pstree_entry(pid=5, ppid=1, pgid=5, sid=5, threads=[5, 6])
    # field 6 varint 7, field 9 length-delimited b"ab", field 40 varint 1 (unknown to both)
    tree.MergeFromString(b"\x30\x07" + b"\x4a\x02ab" + b"\xc0\x02\x01")
    inv = inventory_pb2.inventory_entry(img_version=2, dumper_version="x", root_pid=5)
    inv.root_ids.vm_id = 1
    inv.root_ids.MergeFromString(b"\x68\x2a" + b"\x80\x03\x02")  # field 13 = 42, field 48 = 2
    got = criu_fields_only(tree)
    assert sorted((f.field_number, f.data) for f in unknown_fields.UnknownFieldSet(got)) == [(6, 7), (9, b"ab")]
    assert list(got.threads) == [5, 6]
    inv2 = criu_fields_only(inv)
    assert not inv2.HasField("dumper_version") and not inv2.HasField("root_pid")
    assert [(f.field_number, f.data) for f in unknown_fields.UnknownFieldSet(inv2.root_ids)] == [(13, 42)]


# --- sources without process state


def test_memory_only_sources(spawn_target, tmp_path, capsys):
    """A checkpoint from before process state was saved (format 1,
    tests/data/tiny-zst) and a pre-dump: memory images only, as the result
    and the CLI say; the memory is the source's."""
    old = DATA / "tiny-zst"
    out = tmp_path / "old"
    res = export(old, out)
    assert not res.complete and res.restore_command is None and res.sets[0].kind == MEMORY
    assert any(n.startswith("memory only:") and "CRIU cannot restore" in n for n in res.notes)
    check_memory_layout(out, [24924])
    exported_memory(out, old, 24924)
    (inv,) = decode_as_criu(out / "inventory.img")
    assert {f.name: v for f, v in inv.ListFields()} == {"img_version": 2, "fdinfo_per_id": True}
    (ps,) = decode_as_criu(out / "pstree.img")
    assert (ps.pid, ps.ppid, ps.pgid, ps.sid, list(ps.threads)) == (24924, 0, 0, 0, [24924])
    files = decode_as_criu(out / "files.img")  # made up from the VMAs: REG entries
    (mm,) = decode_as_criu(out / "mm-24924.img")
    assert all(f.type == 1 and f.reg.id == f.id for f in files) and mm.exe_file_id in {f.id for f in files}
    assert cli_main(["export", str(old), str(tmp_path / "cli")]) == 0
    text = capsys.readouterr().out
    assert ": memory, pids 24924, 7 pages" in text and "memory only:" in text and "CRIU cannot restore" in text

    t = spawn_target("dense")
    pre = tmp_path / "pre"
    try:
        dump(t.pid, pre, pre_dump=True)
    except DumperError as err:
        pytest.skip(f"no pre-dump here: {err}")
    res = export(pre, tmp_path / "pre-out")
    assert not res.complete and "is a pre-dump" in res.notes[0]
    check_memory_layout(tmp_path / "pre-out", [t.pid])
    exported_memory(tmp_path / "pre-out", pre, t.pid)
    # its files.img and mm ids are the pre-dump's, not made up
    assert read_msgs(tmp_path / "pre-out" / "files.img") == [criu_fields_only(m) for m in read_msgs(pre / "files.img")]


# --- refusals


def _with_inventory(src: Path, dst: Path, **change) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    (inv,) = read_msgs(src / "inventory.img")
    for k, v in change.items():
        getattr(inv, k).extend(v) if isinstance(v, list) else setattr(inv, k, v)
    (dst / "inventory.img").write_bytes(fmt.encode_image("INVENTORY", [inv]))
    return dst


def test_unrestorable_and_incomplete_sources_are_refused(spawn_target, tmp_path, capsys):
    """A checkpoint marked not restorable is refused with its reasons (the
    mark is dumper's field, which the set cannot carry);
    --force-unrestorable exports it, the reasons kept in the result. One
    lacking an image criu restore needs is refused."""
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    reason = inventory_pb2.unrestorable_reason(pid=t.pid, kind="socket", what="fd 7", why="TCP sockets are not saved")
    bad = _with_inventory(src, tmp_path / "bad", unrestorable=[reason])
    with pytest.raises(ExportError, match="marked not restorable") as exc:
        export(bad, tmp_path / "out")
    assert exc.value.details == (f"pid {t.pid} fd 7: socket: TCP sockets are not saved",)
    assert not (tmp_path / "out").exists()
    assert cli_main(["export", str(bad), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"  pid {t.pid} fd 7: socket: TCP sockets are not saved"
    assert err[-1].startswith("dumper: error: ") and "--force-unrestorable" in err[-1]

    res = export(bad, tmp_path / "out", force_unrestorable=True)
    assert res.complete and res.unrestorable == [exc.value.details[0]]
    assert any(n.startswith("NOT restorable as saved") and "TCP sockets" in n for n in res.notes)
    (inv,) = read_msgs(tmp_path / "out" / "inventory.img")
    assert not inv.unrestorable  # dumper's field: not in a set of CRIU's fields

    lacking = tmp_path / "lacking"
    shutil.copytree(src, lacking)
    (lacking / f"fs-{t.pid}.img").unlink()
    with pytest.raises(ExportError, match=rf"lacks images criu restore needs: fs-{t.pid}\.img"):
        export(lacking, tmp_path / "out2")
    os.symlink(src / f"fs-{t.pid}.img", lacking / f"fs-{t.pid}.img")  # never followed: still lacking
    with pytest.raises(ExportError, match=rf"lacks images criu restore needs: fs-{t.pid}\.img"):
        export(lacking, tmp_path / "out2")


def test_files_that_are_not_criu_images_are_left_out(spawn_target, tmp_path):
    """dumper's own images (a compressed pages file no pagemap names) and
    files that are not images are not exported, and the result says so; CRIU's raw
    images (no magic, ``.img``) are copied as they are."""
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    shutil.copy(src / "pages-1.zst.img", src / "pages-9.zst.img")
    (src / "dump.log").write_text("a log\n")
    (src / "ifaddr-9.img").write_bytes(b"raw netlink dump")
    os.symlink("inventory.img", src / "link.img")
    res = export(src, tmp_path / "out")
    left = res.sets[0].left_out
    assert left == {"pages-9.zst.img": "dumper's own ZPAGES image, which CRIU does not read", "dump.log": "not an image",
                    "link.img": "not a regular file"}
    assert (tmp_path / "out" / "ifaddr-9.img").read_bytes() == b"raw netlink dump"
    assert any(n.startswith("left out of ") and "dump.log (not an image)" in n for n in res.notes)


# --- chains


@needs_uffd
def test_incremental_chain_flattened_and_kept(spawn_target, tmp_path):
    t = spawn_target("dense,alt")
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    dump(t.pid, d0, track_mem=True)
    t.command("write dense 3 4 5 200")
    t.command("write alt 0 2 4")
    t.stop()
    r1 = dump(t.pid, d1, parent=d0, thaw="leave-stopped")
    assert r1.pages_parent > 0
    expected = pages_of(d1, t.pid)

    flat = tmp_path / "flat"
    res = export_criu(d1, flat)
    check_complete_set(flat, d1)
    assert pages_of(flat, t.pid) == expected
    assert res.sets[0].pages_present[t.pid] == len(expected) and not res.sets[0].pages_parent
    head, *entries = decode_as_criu(flat / f"pagemap-{t.pid}.img")
    assert all(e.flags == fmt.PE_PRESENT for e in entries)

    kept = tmp_path / "kept"
    res = export_criu(d1, kept, keep_chain=True)
    assert [s.path for s in res.sets] == [kept, kept / "parent"]
    assert [s.kind for s in res.sets] == [COMPLETE, MEMORY]
    check_complete_set(kept, d1, parent=True)
    check_memory_layout(kept / "parent", [t.pid])
    assert (kept / "parent").is_dir() and not (kept / "parent").is_symlink()
    assert res.sets[0].pages_parent[t.pid] == r1.pages_parent
    assert res.sets[0].pages_present[t.pid] == r1.pages_written
    _, *top = decode_as_criu(kept / f"pagemap-{t.pid}.img")
    assert {e.flags for e in top} == {fmt.PE_PRESENT, fmt.PE_PARENT}
    assert pages_of(kept, t.pid) == expected  # PE_PARENT resolved through kept/parent
    assert pages_of(kept / "parent", t.pid) == pages_of(d0, t.pid)


@needs_uffd
def test_flattening_needs_the_parent(spawn_target, tmp_path):
    """Flattening reads PE_PARENT pages from the parent: without it the
    export fails naming it, and nothing is written."""
    t = spawn_target("dense")
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    dump(t.pid, d0, track_mem=True)
    t.command("write dense 3")
    t.stop()
    dump(t.pid, d1, parent=d0, thaw="leave-stopped")
    shutil.rmtree(d0)
    with pytest.raises(ImageError, match="are in the parent checkpoint, which cannot be used"):
        export(d1, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


# --- destination and CLI


def test_destination_rules(spawn_target, tmp_path):
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "out"
    export(src, out)
    before = (out / "pages-1.img").stat().st_ino
    with pytest.raises(ExportError, match="already exists"):
        export(src, out)
    export(src, out, force=True)
    assert (out / "pages-1.img").stat().st_ino != before
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not an image set"):
        export(src, junk, force=True)
    assert (junk / "keep.txt").exists()
    with pytest.raises(ExportError, match="would overwrite"):
        export(src, src, force=True)
    with pytest.raises(ExportError, match="unknown export format"):
        export(src, tmp_path / "x", format="bogus")
    with pytest.raises(DumperError):
        export(tmp_path / "missing", tmp_path / "y")
    assert not any(p.name.startswith((".out.", ".x.", ".y.")) for p in tmp_path.iterdir())


def test_cli_export(spawn_target, tmp_path, capsys):
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "out"
    assert cli_main(["export", "--format", "criu", str(src), str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{out}: complete, pids {t.pid}" in text
    assert f"complete CRIU 4.2 image set: `criu restore -D {out} --shell-job` restores" in text
    assert "restore with --shell-job" in text  # a child of pytest: not a session leader
    assert cli_main(["export", str(src), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["export", "--json", "--force", "--threads", "1", str(src), str(out)]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["complete"] and j["restore_command"] == f"criu restore -D {out} --shell-job" and j["shell_job"]
    assert j["sets"][0]["pids"] == [t.pid] and j["sets"][0]["kind"] == "complete" and j["bytes"] > 0
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    helptext = capsys.readouterr().out
    assert "criu restore -D OUT" in helptext and "--force-unrestorable" in helptext
    assert "memory images only" in helptext and "CRIU cannot restore" in helptext


def test_decode_reads_exported_pstree(spawn_target, tmp_path, capsys):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "ck")
    export(tmp_path / "ck", tmp_path / "criu")
    assert cli_main(["decode", str(tmp_path / "criu" / "pstree.img")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["magic"] == "PSTREE" and out["entries"][0]["pid"] == t.pid


# --- CRIU's own tools (optional)


def crit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([CRIT, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"crit {' '.join(args)} failed: {r.stderr.strip()[-800:]}"
    return r


def nr_pages(e: dict) -> int:
    """An entry's page count as crit decodes it: CRIU 4.2 names field 2
    ``compat_nr_pages`` and field 5 ``nr_pages`` (both written, equal);
    older crit knows field 2 only, as ``nr_pages``."""
    if "compat_nr_pages" in e:
        assert e["compat_nr_pages"] == e["nr_pages"]
    return e["nr_pages"]


def rss_pages(text: str) -> int:
    """Pages counted by ``crit x DIR rss`` (lines "\tADDR / N ...")."""
    lines = text.splitlines()[1:]
    return sum(int(line.split("/")[1].split()[0]) for line in lines if line.startswith("\t") and "/" in line
               and not line.startswith("\t ") and line.split("/")[0].strip())


@needs_crit
def test_crit_reads_exported_sets(spawn_target, tmp_path):
    t = spawn_target(LAYOUTS)
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "criu"
    export(src, out)
    for img in sorted(p for p in out.iterdir() if p.name != "pages-1.img"):
        decoded = json.loads(crit("decode", "-i", str(img)).stdout)
        assert decoded["entries"], img
        crit("show", str(img))
    pm = json.loads(crit("decode", "-i", str(out / f"pagemap-{t.pid}.img")).stdout)
    assert pm["magic"] == "PAGEMAP" and pm["entries"][0] == {"pages_id": 1}
    assert all(nr_pages(e) > 0 and e["flags"] == fmt.PE_PRESENT for e in pm["entries"][1:])
    inv = json.loads(crit("decode", "-i", str(out / "inventory.img")).stdout)["entries"][0]
    assert inv["img_version"] == 2 and inv["fdinfo_per_id"] and "root_ids" in inv and "dumper_version" not in inv
    shown = crit("show", str(out / f"pagemap-{t.pid}.img")).stdout
    assert '"flags": "PE_PRESENT"' in shown

    mems = crit("x", str(out), "mems").stdout
    assert mems.splitlines()[0] == str(t.pid)
    assert str(tmp_path / "mapped.bin") in mems and "[vdso]" in mems and "unknown path" not in mems
    rss = crit("x", str(out), "rss").stdout
    assert rss.splitlines()[0] == str(t.pid) and rss_pages(rss) == len(pages_of(src, t.pid))
    ps = crit("x", str(out), "ps").stdout.splitlines()
    assert ps[1].split()[:3] == [str(t.pid), str(os.getpgid(t.pid)), str(os.getsid(t.pid))]
    fds = crit("x", str(out), "fds").stdout
    assert fds.splitlines()[0] == str(t.pid) and "pipe[" in fds and f"cwd: {os.getcwd()}" in fds


@needs_crit
def test_crit_reads_memory_only_set(tmp_path):
    out = tmp_path / "old"
    export(DATA / "tiny-zst", out)
    for img in sorted(p for p in out.iterdir() if p.name != "pages-1.img"):
        assert json.loads(crit("decode", "-i", str(img)).stdout)["entries"], img
    assert json.loads(crit("decode", "-i", str(out / "inventory.img")).stdout) == {
        "magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": True}]}
    assert "[vdso]" in crit("x", str(out), "mems").stdout
    assert rss_pages(crit("x", str(out), "rss").stdout) == 7
    r = crit("x", str(out), "ps", check=False)  # no core-PID.img in a memory-only set
    assert r.returncode != 0


@needs_crit
@needs_uffd
def test_crit_reads_kept_chain(spawn_target, tmp_path):
    t = spawn_target("dense")
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    dump(t.pid, d0, track_mem=True)
    t.command("write dense 7")
    t.stop()
    dump(t.pid, d1, parent=d0, thaw="leave-stopped")
    out = tmp_path / "kept"
    export(d1, out, keep_chain=True)
    for d in (out, out / "parent"):
        for what in ("mems", "rss"):
            crit("x", str(d), what)
    shown = crit("show", str(out / f"pagemap-{t.pid}.img")).stdout
    assert "PE_PARENT" in shown and "PE_PRESENT" in shown


@needs_crit
def test_crit_decodes_native_images(spawn_target, tmp_path):
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped", compress=False)
    pm = json.loads(crit("decode", "-i", str(src / f"pagemap-{t.pid}.img")).stdout)
    assert pm["magic"] == "PAGEMAP"
    assert all(nr_pages(e) > 0 for e in pm["entries"][1:])
    for name in ("inventory.img", f"mm-{t.pid}.img", "stats-dump"):
        assert json.loads(crit("decode", "-i", str(src / name)).stdout)["entries"]
    # dumper's compressed pages file has its own magic: crit refuses it by name, not by crashing on pages
    zsrc = tmp_path / "z"
    dump(t.pid, zsrc, thaw="leave-stopped")
    r = crit("decode", "-i", str(zsrc / "pages-1.zst.img"), check=False)
    assert r.returncode != 0 and "Unknown magic" in r.stderr


@pytest.fixture(scope="module")
def working_criu():
    """``criu`` if it runs on this kernel (``criu check``), else skip with
    its complaint (CRIU 3.x cannot parse the vDSO of 6.x kernels, for one)."""
    version = subprocess.run([CRIU, "--version"], capture_output=True, text=True).stdout.split()
    r = subprocess.run([CRIU, "check"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        errors = [line.strip() for line in (r.stderr + r.stdout).splitlines() if "Error" in line]
        pytest.skip(f"{CRIU} ({' '.join(version[:2])}) does not work here: {errors[-1] if errors else r.returncode}")
    return CRIU


@needs_criu
def test_differential_against_criu_dump(spawn_target, tmp_path, working_criu):
    """dumper first (the target stays stopped), then ``criu dump
    --leave-running``: the same pages, the same bytes, except the one text
    page CRIU's code injection turns into a private anonymous page and the
    rseq fields the kernel rewrites when that code runs the threads."""
    t = spawn_target(LAYOUTS, new_session=True)
    t.stop()
    ours = tmp_path / "ours"
    dump(t.pid, ours, thaw="leave-stopped")
    theirs = tmp_path / "criu"
    theirs.mkdir()
    r = subprocess.run([working_criu, "dump", "-t", str(t.pid), "-D", str(theirs), "--leave-running", "--shell-job",
                        "-o", "dump.log", "-v4"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        log = (theirs / "dump.log").read_text(errors="replace") if (theirs / "dump.log").exists() else r.stderr
        errors = [line for line in log.splitlines() if "Error" in line]
        pytest.fail(f"criu dump failed: {errors[-5:]}")
    wait_stopped(t.pid)  # CRIU gives it back stopped, as it found it

    a, b = pages_of(ours, t.pid), pages_of(theirs, t.pid)
    assert not a.keys() - b.keys(), "pages dumper selected and CRIU did not"
    extra = sorted(b.keys() - a.keys())
    assert len(extra) <= 1, [hex(x) for x in extra]
    with open_checkpoint(theirs) as ck:
        for addr in extra:
            v = ck.processes[t.pid].vma_at(addr)
            assert v.status & fmt.VMA_FILE_PRIVATE and v.prot & 0x4, "the injected page is in an executable file VMA"
    with open_checkpoint(ours) as ck:  # CRIU's injected code runs: the kernel may rewrite rseq cpu_id
        rseq = ck.rseq_areas(t.pid)
    differ = [hex(x) for x in a if a[x] != b[x] and not only_kernel_written(a[x], b[x], x, rseq)]
    assert not differ
    # VMAs: CRIU's list equals our export's (start, end, prot, pgoff)
    out = tmp_path / "exported"
    export(ours, out)
    mine = [(s, e, p, o) for s, e, p, o, _ in vma_ranges(out, t.pid)]
    criu_vmas = [(s, e, p, o) for s, e, p, o, _ in vma_ranges(theirs, t.pid)]
    assert mine == criu_vmas
    os.kill(t.pid, signal.SIGCONT)


# --- plain criu restore of exported sets (CRIU 4.2 and gcc)

PIPE_TEXT = "unread bytes in the pipe"
GHOST_TEXT = "contents of a deleted file"


@pytest.fixture(scope="module")
def export_target(tmp_path_factory) -> Path:
    """tests/targets/export_target.c, built with gcc (skip without)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("export-target") / "export_target"
    src = Path(__file__).resolve().parent / "targets" / "export_target.c"
    r = subprocess.run([gcc, "-O2", "-pthread", "-Wall", "-o", str(binary), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return binary


def start_target(binary: Path, workdir: Path) -> CTarget:
    t = CTarget([str(binary)], workdir, "export")
    try:
        wait_for(lambda: len(counters(t.log_text(), "count")) >= 3 and len(counters(t.log_text(), "tick")) >= 3,
                 what="the target to make progress")
    except BaseException:
        t.close()
        raise
    return t


def goes_on(t: CTarget, size: int, saved: dict[str, int]) -> None:
    """Each counter's next lines after byte ``size`` of the log continue
    from its saved value."""
    for name, last in saved.items():
        new = wait_for(lambda: (v := counters(t.log_text()[size:], name)) and len(v) >= 3 and v,
                       what=f"{name} to go on after the restore")
        assert new[:3] == [last + 1, last + 2, last + 3], f"{name}: {last} saved, {new[:3]} after the restore"


@pytest.fixture(scope="module")
def exported(export_target, tmp_path_factory):
    """The target, dumped (killed and reaped: its pids are free for the
    restore), and exported; ``(target, checkpoint, OUT, result, tids at dump
    time)``."""
    work = tmp_path_factory.mktemp("exported")
    t = start_target(export_target, work)
    try:
        tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
        ck = work / "ck"
        r = dump(t.pid, ck, thaw="kill")
        t.reap()
    finally:
        t.close()
    assert len(tids) == 2 and not r.unrestorable
    out = work / "out"
    return t, ck, out, export(ck, out), tids


def test_export_lists_every_thread(exported):
    """Every thread in pstree.img and a core-TID.img each (the memory-only
    export of old wrote the main thread alone)."""
    t, ck, out, res, tids = exported
    assert res.complete and not res.shell_job and res.restore_command == f"criu restore -D {out}"
    (entry,) = read_msgs(out / "pstree.img")
    assert (entry.pid, sorted(entry.threads)) == (t.pid, tids)
    for tid in tids:
        (core,) = read_msgs(out / f"core-{tid}.img")
        _no_dumper_fields(core, f"core-{tid}.img")
    for name in ("pipes-data.img", "ghost-file-1.img", "remap-fpath.img"):
        assert (out / name).is_file(), name
    payloads = [x for _, x in read_entries(out / "pipes-data.img")]
    assert PIPE_TEXT.encode() in payloads


def test_plain_criu_restore_of_the_export(exported):
    """``criu restore -D OUT`` alone: the process comes back with its pid
    and both threads, the counters go on from the saved values, the pipe
    still holds its bytes and the deleted file its contents."""
    t, ck, out, res, tids = exported
    before = t.log_text()
    saved = {c: counters(before, c)[-1] for c in ("count", "tick")}
    ctl_w, _, ghost = map(int, next(ln for ln in before.splitlines() if ln.startswith("fds ")).split()[1:])
    with criu_restore(out) as r:
        assert r.pid == t.pid
        assert sorted(int(x) for x in os.listdir(f"/proc/{r.pid}/task")) == tids
        size = len(before.encode())
        goes_on(t, size, saved)
        with open(f"/proc/{r.pid}/fd/{ghost}") as f:
            assert f.read() == GHOST_TEXT
        fd = os.open(f"/proc/{r.pid}/fd/{ctl_w}", os.O_WRONLY)
        try:
            os.write(fd, b"go")
        finally:
            os.close(fd)
        wait_for(lambda: f"drained {PIPE_TEXT}" in t.log_text()[size:], what="the pipe's saved bytes")


@needs_crit
def test_crit_explores_the_export(exported):
    t, ck, out, res, tids = exported
    for img in sorted(p for p in out.iterdir() if p.name.endswith(".img") and not p.name.startswith("pages-")):
        assert json.loads(crit("decode", "-i", str(img)).stdout)["entries"], img
    ps = crit("x", str(out), "ps").stdout.splitlines()
    assert ps[1].split() == [str(t.pid), str(t.pid), str(t.pid), "export_target"]
    fds = crit("x", str(out), "fds").stdout
    assert str(t.log) in fds and "pipe[" in fds and "cwd: " in fds
    mems = crit("x", str(out), "mems").stdout
    assert mems.splitlines()[1].split() == ["exe", str(Path(t.proc.args[0]))]
    rss = crit("x", str(out), "rss").stdout
    assert rss_pages(rss) == sum(res.sets[0].pages_present.values())


@needs_uffd
def test_chain_export_restores_flattened_and_kept(export_target, tmp_path):
    """pre-dump, then dump --parent killing the target: the export with the
    chain flattened and the one with --keep-chain (CRIU follows PE_PARENT
    into OUT/parent) each restore and go on from the final state."""
    t = start_target(export_target, tmp_path)
    try:
        dump(t.pid, tmp_path / "1", pre_dump=True)
        mark = counters(t.log_text(), "count")[-1]
        wait_for(lambda: counters(t.log_text(), "count")[-1] > mark + 20, what="progress after the pre-dump")
        r = dump(t.pid, tmp_path / "2", parent=tmp_path / "1", thaw="kill")
        t.reap()
    finally:
        t.close()
    assert r.pages_parent > 0
    before = t.log_text()
    saved = {c: counters(before, c)[-1] for c in ("count", "tick")}
    flat = export(tmp_path / "2", tmp_path / "flat")
    kept = export(tmp_path / "2", tmp_path / "kept", keep_chain=True)
    assert flat.complete and not flat.sets[0].pages_parent
    assert kept.complete and kept.sets[0].pages_parent[t.pid] == r.pages_parent and kept.sets[1].kind == MEMORY
    for out in (tmp_path / "flat", tmp_path / "kept"):
        size = t.log_size()
        with criu_restore(out) as rr:
            assert rr.pid == t.pid
            goes_on(t, size, saved)


def test_export_of_a_criu_dump_restores(export_target, tmp_path):
    """A set ``criu dump`` wrote passes through: every image copied (its
    entries unchanged, CRIU's own raw payloads included), and it restores."""
    from criu_helpers import criu_binary
    from targets.restore_support import criu_dump

    t = start_target(export_target, tmp_path)
    try:
        criu_dump(criu_binary(), t.pid, tmp_path / "criu", tmp_path)  # CRIU kills it
        t.reap()
    finally:
        t.close()
    before = t.log_text()
    saved = {c: counters(before, c)[-1] for c in ("count", "tick")}
    res = export(tmp_path / "criu", tmp_path / "out")
    assert res.complete and not res.sets[0].left_out
    check_complete_set(tmp_path / "out", tmp_path / "criu")
    for p in (tmp_path / "criu").iterdir():
        if p.name.startswith("pages-"):
            assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()
    size = t.log_size()
    with criu_restore(tmp_path / "out") as r:
        assert r.pid == t.pid
        goes_on(t, size, saved)


def _shmem_pagemap(d: Path, shmid: int, pages_id: int, marks: dict[int, str], salt: int) -> None:
    """A ``pagemap-shmem-SHMID.img`` (zstd pages, ``pages_id``) in ``d``:
    page k of the object PE_PRESENT (bytes of ``salt``) or PE_PARENT."""
    from dumper.image.writer import PagesWriter

    def create(name: str):
        name = fmt.pagemap_shmem_name(shmid) if name.startswith("pagemap-") else name
        return open(os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    with PagesWriter(create, 0, pages_id, page_size=P, compress=True, frame_pages=2, merge=False) as pw:
        for k in sorted(marks):
            if marks[k] == "present":
                pw.add_present(k * P, bytes([salt + k]) * P)
            else:
                pw.add_parent(k * P, 1)


def test_shared_memory_images_pass_through(spawn_target, tmp_path):
    """Images of shared memory objects (what the shmem work adds:
    ``memfd.img``, ``pagemap-shmem-ID.img`` with its own pages file) are
    exported like the rest: memfd.img with CRIU's fields, the pagemap with
    raw pages; flattening resolves its PE_PARENT pages through the parent's
    pagemap of the same name, --keep-chain keeps them."""
    from dumper.image.pb import memfd_pb2

    t = spawn_target("dense")
    t.stop()
    a, b = tmp_path / "a", tmp_path / "b"
    dump(t.pid, a, thaw="leave-stopped")
    shutil.copytree(a, b)
    os.symlink("../a", b / "parent")
    _shmem_pagemap(a, 77, 9, {k: "present" for k in range(4)}, salt=10)
    _shmem_pagemap(b, 77, 9, {0: "parent", 1: "parent", 2: "present", 3: "present"}, salt=20)
    memfd = memfd_pb2.memfd_inode_entry(name="buf", uid=0, gid=0, size=4 * P, shmid=77, seals=0, inode_id=3)
    (b / "memfd.img").write_bytes(fmt.encode_image("MEMFD_INODE", [memfd]))

    res = export(b, tmp_path / "flat")
    out = tmp_path / "flat"
    assert res.complete and res.sets[0].shared_pages == {"pagemap-shmem-77.img": 4}
    check_complete_set(out, b)
    assert read_msgs(out / "memfd.img") == [memfd]
    head, *entries = read_msgs(out / "pagemap-shmem-77.img")
    assert head.pages_id == 9 and [(e.vaddr, e.nr_pages, e.flags) for e in entries] == [(0, 4, fmt.PE_PRESENT)]
    want = bytes([10]) * P + bytes([11]) * P + bytes([22]) * P + bytes([23]) * P
    assert (out / "pages-9.img").read_bytes() == want
    with open_checkpoint(b) as c:  # dumper's reader resolves the object's PE_PARENT pages the same way
        assert b"".join(c.shared.objects[77].chunks(0, 4 * P, "test")) == want

    export(b, tmp_path / "kept", keep_chain=True)
    _, *top = read_msgs(tmp_path / "kept" / "pagemap-shmem-77.img")
    assert [e.flags for e in top] == [fmt.PE_PARENT, fmt.PE_PARENT, fmt.PE_PRESENT, fmt.PE_PRESENT]
    assert (tmp_path / "kept" / "pages-9.img").read_bytes() == want[2 * P :]
    assert (tmp_path / "kept" / "parent" / "pages-9.img").read_bytes() == b"".join(bytes([10 + k]) * P for k in range(4))


def test_lazy_pages_cannot_be_flattened(spawn_target, tmp_path):
    """A PE_LAZY entry has no data in any image: flattening refuses it,
    naming the range; --keep-chain writes it as stored, for CRIU's lazy
    restore."""
    from dumper.image.pb import pagemap_pb2

    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    lazy = pagemap_pb2.pagemap_entry(vaddr=0x10000, compat_nr_pages=2, nr_pages=2, flags=fmt.PE_LAZY)
    (src / "pagemap-shmem-5.img").write_bytes(
        fmt.encode_image("PAGEMAP", [pagemap_pb2.pagemap_head(pages_id=7), lazy]))
    with pytest.raises(ImageError, match=r"pages \[0x10000, 0x12000\) are PE_LAZY only: their data is in no image"):
        export(src, tmp_path / "flat")
    export(src, tmp_path / "kept", keep_chain=True)
    assert read_msgs(tmp_path / "kept" / "pagemap-shmem-5.img")[1:] == [lazy]
    assert (tmp_path / "kept" / "pages-7.img").read_bytes() == b""


@pytest.mark.parametrize("threads", [1, 3])
def test_raw_pages_from_many_reads_of_two_streams(spawn_target, tmp_path, monkeypatch, threads):
    """A flattened pagemap whose pages alternate between the checkpoint
    and its parent, read in many small tasks (frames of 2 pages, reads of
    3): the raw file is the pages in address order, whatever the threads."""
    from dumper.image import rawpages

    monkeypatch.setattr(rawpages, "BATCH_BYTES", 3 * P)
    t = spawn_target("dense")
    t.stop()
    a, b = tmp_path / "a", tmp_path / "b"
    dump(t.pid, a, thaw="leave-stopped")
    shutil.copytree(a, b)
    os.symlink("../a", b / "parent")
    n = 97
    _shmem_pagemap(a, 5, 9, {k: "present" for k in range(n)}, salt=0)
    top = {k: "present" if (k // 7) % 2 else "parent" for k in range(n)}
    _shmem_pagemap(b, 5, 9, top, salt=100)
    export(b, tmp_path / "out", threads=threads)
    got = (tmp_path / "out" / "pages-9.img").read_bytes()
    want = b"".join(bytes([(100 if top[k] == "present" else 0) + k]) * P for k in range(n))
    assert got == want
    _, *entries = read_msgs(tmp_path / "out" / "pagemap-shmem-5.img")
    assert [(e.vaddr, e.nr_pages, e.flags) for e in entries] == [(0, n, fmt.PE_PRESENT)]


def test_a_damaged_image_criu_restore_reads_is_one_answer_everywhere(spawn_target, tmp_path, capfd):
    """An image criu restore reads, replaced by a symlink or a FIFO: show,
    verify, restore and export give one answer. export called a set with a
    symlinked files.img "complete" (leaving files.img out: criu restore
    would fail), a FIFO core-PID.img made it "memory only: no pstree.img"
    (pstree.img was there), and verify said OK for the latter."""
    t = spawn_target("dense")
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    links = tmp_path / "links"
    shutil.copytree(src, links)
    os.unlink(links / fmt.FILES_NAME)
    os.symlink(src / fmt.FILES_NAME, links / fmt.FILES_NAME)
    with pytest.raises(ImageError, match=r"files\.img: is a symbolic link"):
        export(links, tmp_path / "out1")
    fifo = tmp_path / "fifo"
    shutil.copytree(src, fifo)
    os.unlink(fifo / fmt.core_name(t.pid))
    os.mkfifo(fifo / fmt.core_name(t.pid))
    with pytest.raises(ExportError, match=rf"lacks images criu restore needs: core-{t.pid}\.img$"):
        export(fifo, tmp_path / "out2")
    assert cli_main(["verify", str(fifo)]) == 1
    out, err = capfd.readouterr()
    assert out == f"{fifo / fmt.core_name(t.pid)}: not a regular file (criu restore needs it)\n"
    assert err == f"FAILED: {fifo}: 1 problem\n"
    assert cli_main(["verify", str(src)]) == 0  # the intact one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "fifo", "links"]
