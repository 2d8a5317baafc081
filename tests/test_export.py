"""``dumper export --format criu``: CRIU image sets from checkpoints.

Real dumps of spawned targets are exported and read back three ways:

- with dumper's own reader (:mod:`dumper.image.checkpoint`), which must give
  exactly the memory of the source checkpoint (chains flattened, or kept);
- with protobuf message classes built here from CRIU v4.2's images/*.proto
  field numbers and types (not dumper's .proto files): every entry decodes,
  carries every required field and no field CRIU does not know;
- with CRIU's own ``crit`` and ``criu`` when they are on PATH (skipped with
  the reason otherwise): ``crit decode``/``show``/``x mems``/``x rss`` on
  the exported sets and on dumper's native images, and a differential
  against ``criu dump`` of the same stopped target.
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

from dumper.cli import main as cli_main
from dumper.cli.verify import only_kernel_written
from dumper.dump import dump
from dumper.errors import DumperError
from dumper.export import ExportError, export, export_criu
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.kernel.libc import PAGE_SIZE
from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

P = PAGE_SIZE
LAYOUTS = "dense,sparse,zero,file"
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
    # only the REG member of the file_entry union: an export writes no other
    "file_entry": [(1, "type", "fd_types", REQ), (2, "id", U32, REQ), (3, "reg", "reg_file_entry", OPT)],
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


def check_set_layout(out: Path, pids: list[int], *, parent: bool = False) -> None:
    names = {p.name for p in out.iterdir()}
    expected = {"inventory.img", "pstree.img", "files.img"}
    for i, pid in enumerate(pids, 1):
        expected |= {f"mm-{pid}.img", f"pagemap-{pid}.img", f"pages-{i}.img"}
    if parent:
        expected.add("parent")
    assert names == expected
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


# --- round trips


@pytest.mark.parametrize("compress", [True, False], ids=["zstd-source", "raw-source"])
def test_export_round_trip(spawn_target, tmp_path, compress):
    t = spawn_target(LAYOUTS)
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped", compress=compress)
    out = tmp_path / "criu"
    res = export_criu(src, out)
    assert res.out == out and len(res.sets) == 1 and res.bytes > 0
    check_set_layout(out, [t.pid])

    # dumper's reader sees a CRIU set with the same memory
    with open_checkpoint(out) as ck:
        assert ck.is_criu and ck.pids == (t.pid,)
        assert ck.processes[t.pid].threads == (t.pid,) and ck.processes[t.pid].ppid == 0
    ours, theirs = pages_of(src, t.pid), pages_of(out, t.pid)
    assert ours.keys() == theirs.keys() and ours == theirs
    assert res.sets[0].pages_present[t.pid] == len(ours)
    dense, n = t.regions["dense"]
    assert all(ours[dense + i * P] == bytes([(i % 251) + 1]) * P for i in range(n // P))
    # same VMAs, [vvar] pieces merged as CRIU lists them
    assert vma_ranges(out, t.pid) == vma_ranges(src, t.pid, merge_vvar=True)
    assert (out / "pages-1.img").stat().st_size == len(ours) * P


def test_exported_images_decode_with_criu_messages(spawn_target, tmp_path):
    t = spawn_target(LAYOUTS)
    t.stop()
    src = tmp_path / "ck"
    dump(t.pid, src, thaw="leave-stopped")
    out = tmp_path / "criu"
    export(src, out)

    (inv,) = decode_as_criu(out / "inventory.img")
    assert {f.name: v for f, v in inv.ListFields()} == {"img_version": 2, "fdinfo_per_id": True}
    (ps,) = decode_as_criu(out / "pstree.img")
    assert (ps.pid, ps.ppid, list(ps.threads)) == (t.pid, 0, [t.pid])

    files = decode_as_criu(out / "files.img")
    by_id = {f.id: f for f in files}
    assert all(f.type == 1 and f.reg.id == f.id for f in files)  # REG
    (mm,) = decode_as_criu(out / f"mm-{t.pid}.img")
    assert mm.exe_file_id in by_id and by_id[mm.exe_file_id].reg.name.startswith("/")
    mapped = str(tmp_path / "mapped.bin")
    file_vmas = [v for v in mm.vmas if v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED)]
    assert file_vmas and all(v.shmid in by_id for v in file_vmas)
    assert any(by_id[v.shmid].reg.name == mapped for v in file_vmas)
    assert all(v.fd == -1 for v in mm.vmas)
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
    check_set_layout(flat, [t.pid])
    assert pages_of(flat, t.pid) == expected
    assert res.sets[0].pages_present[t.pid] == len(expected) and not res.sets[0].pages_parent
    head, *entries = decode_as_criu(flat / f"pagemap-{t.pid}.img")
    assert all(e.flags == fmt.PE_PRESENT for e in entries)

    kept = tmp_path / "kept"
    res = export_criu(d1, kept, keep_chain=True)
    assert [s.path for s in res.sets] == [kept, kept / "parent"]
    check_set_layout(kept, [t.pid], parent=True)
    check_set_layout(kept / "parent", [t.pid])
    assert (kept / "parent").is_dir() and not (kept / "parent").is_symlink()
    assert res.sets[0].pages_parent[t.pid] == r1.pages_parent
    assert res.sets[0].pages_present[t.pid] == r1.pages_written
    _, *top = decode_as_criu(kept / f"pagemap-{t.pid}.img")
    assert {e.flags for e in top} == {fmt.PE_PRESENT, fmt.PE_PARENT}
    assert pages_of(kept, t.pid) == expected  # PE_PARENT resolved through kept/parent
    assert pages_of(kept / "parent", t.pid) == pages_of(d0, t.pid)


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
    assert "CRIU cannot restore from it" in text and "memory only" in text
    assert cli_main(["export", str(src), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["export", "--json", "--force", str(src), str(out)]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["sets"][0]["pids"] == [t.pid] and j["bytes"] > 0
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    helptext = capsys.readouterr().out
    assert "memory only" in helptext and "CRIU cannot restore" in helptext


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
    assert json.loads(crit("decode", "-i", str(out / "inventory.img")).stdout) == {
        "magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": True}]}
    shown = crit("show", str(out / f"pagemap-{t.pid}.img")).stdout
    assert '"flags": "PE_PRESENT"' in shown

    mems = crit("x", str(out), "mems").stdout
    assert mems.splitlines()[0] == str(t.pid)
    assert str(tmp_path / "mapped.bin") in mems and "[vdso]" in mems and "unknown path" not in mems
    rss = crit("x", str(out), "rss").stdout.splitlines()
    assert rss[0] == str(t.pid)
    counted = sum(int(line.split("/")[1].split()[0]) for line in rss[1:] if line.startswith("\t") and "/" in line
                  and not line.startswith("\t ") and line.split("/")[0].strip())
    assert counted == len(pages_of(src, t.pid))


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
    page CRIU's code injection turns into a private anonymous page."""
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


def test_decode_reads_exported_pstree(spawn_target, tmp_path, capsys):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "ck")
    export(tmp_path / "ck", tmp_path / "criu")
    assert cli_main(["decode", str(tmp_path / "criu" / "pstree.img")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["magic"] == "PSTREE" and out["entries"][0]["pid"] == t.pid
