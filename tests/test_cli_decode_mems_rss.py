"""``dumper decode``, ``mems`` and ``rss`` on dumper's images and on a CRIU-written set.

The CRIU set (:func:`build_criu_dir`) is made with the raw framing helpers
and CRIU's fields only: inventory without dumper's fields, pagemap entries
with field 2 (and one with CRIU 4.2's field 5), ``in_parent`` and absent
flags, raw ``pages-N.img``, a ``pstree.img``, pids known only from file
names. test_hostile_images.py mutates it too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format, message_factory

from dumper import cli
from dumper.cli import decode as decode_cmd
from dumper.cli import mems as mems_cmd
from dumper.cli import rss as rss_cmd
from dumper.image import format as fmt
from dumper.image import read_image
from dumper.image.pb import core_pb2, inventory_pb2, mm_pb2, opts_pb2, pagemap_pb2, stats_pb2, vma_pb2, zpages_pb2
from dumper.image.pretty import message_to_dict

DATA = Path(__file__).parent / "data"
PS = 4096

R, W, X = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x01, 0x02, 0x20, 0x100
REG = fmt.VMA_AREA_REGULAR


# --- a CRIU-written image directory


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pstree_entry(pid: int, ppid: int, threads: list[int]) -> bytes:
    """CRIU's pstree_entry {pid=1, ppid=2, pgid=3, sid=4, threads=5}, by hand
    (dumper has no .proto for it)."""
    out = b""
    for field, value in ((1, pid), (2, ppid), (3, pid), (4, pid)):
        out += _varint(field << 3) + _varint(value)
    for t in threads:
        out += _varint(5 << 3) + _varint(t)
    return out


def _vma(start, end, prot, flags, status, *, shmid=0, pgoff=0):
    return vma_pb2.vma_entry(start=start, end=end, pgoff=pgoff, shmid=shmid, prot=prot, flags=flags,
                             status=status, fd=-1)


def _mm(vmas):
    mm = mm_pb2.mm_entry(**{f.name: 0 for f in mm_pb2.mm_entry.DESCRIPTOR.fields if f.is_required})
    mm.mm_saved_auxv.extend([33, 0x7FFD00001000, 0, 0])
    mm.vmas.extend(vmas)
    mm.dumpable = 1
    return mm


def _page(pid: int, k: int) -> bytes:
    return bytes([pid, k]) * (PS // 2)


CRIU_VMAS_1 = [
    _vma(0x400000, 0x401000, R | X, MAP_PRIVATE, REG | fmt.VMA_FILE_PRIVATE, shmid=5),
    _vma(0x401000, 0x403000, R | W, MAP_PRIVATE, REG | fmt.VMA_FILE_PRIVATE, shmid=5, pgoff=0x1000),
    _vma(0x600000, 0x640000, R | W, MAP_PRIVATE | MAP_ANONYMOUS, REG | fmt.VMA_ANON_PRIVATE | fmt.VMA_AREA_HEAP),
    _vma(0x7F0000000000, 0x7F0000010000, R | W, MAP_PRIVATE | MAP_ANONYMOUS, REG | fmt.VMA_ANON_PRIVATE),
    _vma(0x7F0000010000, 0x7F0000012000, R | W, MAP_SHARED | MAP_ANONYMOUS, REG | fmt.VMA_ANON_SHARED, shmid=77),
    _vma(0x7F0000020000, 0x7F0000021000, R, MAP_SHARED, REG | fmt.VMA_FILE_SHARED, shmid=6, pgoff=0x2000),
    _vma(0x7FFD00000000, 0x7FFD00021000, R | W, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN,
         REG | fmt.VMA_AREA_STACK | fmt.VMA_ANON_PRIVATE),
    _vma(0x7FFF00000000, 0x7FFF00004000, R, MAP_PRIVATE, REG | fmt.VMA_AREA_VVAR),
    _vma(0x7FFF00004000, 0x7FFF00006000, R | X, MAP_PRIVATE | MAP_ANONYMOUS,
         REG | fmt.VMA_AREA_VDSO | fmt.VMA_ANON_PRIVATE),
    _vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, X, MAP_PRIVATE, fmt.VMA_AREA_VSYSCALL),
    # CRIU 4.2 appends MADV_GUARD_INSTALL ranges as pseudo-VMAs, overlapping the others
    _vma(0x7F000000F000, 0x7F0000010000, 0, MAP_PRIVATE | MAP_ANONYMOUS, fmt.VMA_AREA_GUARD),
]

# (vaddr, fields): CRIU's reader rules apply (criu/pagemap.c)
CRIU_PAGEMAP_1 = [
    (0x400000, dict(compat_nr_pages=3)),  # no flags: PE_PRESENT; spans two VMAs
    (0x600000, dict(compat_nr_pages=3, flags=fmt.PE_PRESENT)),
    (0x7F0000000000, dict(compat_nr_pages=4, in_parent=True)),  # legacy PE_PARENT
    (0x7F0000004000, dict(compat_nr_pages=2, flags=fmt.PE_LAZY)),
    (0x7F0000006000, dict(compat_nr_pages=4, flags=fmt.PE_LAZY | fmt.PE_PRESENT)),
    (0x7FFD0001F000, dict(compat_nr_pages=0, nr_pages=2, flags=fmt.PE_PRESENT)),  # CRIU 4.2 field 5
    (0x7FFF00004000, dict(compat_nr_pages=2, flags=fmt.PE_PRESENT)),
]
CRIU_PRESENT_1 = 3 + 3 + 4 + 2 + 2


def build_criu_dir(dest: Path) -> Path:
    """A two-process image directory as CRIU writes it (pids 100 and 101;
    pages ids 1 and 2); returns ``dest``."""
    dest.mkdir(parents=True)
    inv = inventory_pb2.inventory_entry(
        img_version=2, fdinfo_per_id=True, ns_per_id=True, lsmtype=inventory_pb2.NO_LSM,
        root_ids=core_pb2.task_kobj_ids_entry(vm_id=1, files_id=2, fs_id=3, sighand_id=4),
        dump_criu_run_id="criu-run-1",
    )
    (dest / "inventory.img").write_bytes(fmt.encode_image("INVENTORY", [inv]))
    pstree = fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(fmt.PSTREE_MAGIC)
    for pid, ppid in ((100, 0), (101, 100)):
        payload = _pstree_entry(pid, ppid, [pid])
        pstree += fmt.U32.pack(len(payload)) + payload
    (dest / "pstree.img").write_bytes(pstree)
    # a core image with no entry (CRIU's core-PID.img holds one)
    (dest / "core-100.img").write_bytes(fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(fmt.CORE_MAGIC))

    (dest / "mm-100.img").write_bytes(fmt.encode_image("MM", [_mm(CRIU_VMAS_1)]))
    entries = [pagemap_pb2.pagemap_entry(vaddr=v, **f) for v, f in CRIU_PAGEMAP_1]
    (dest / "pagemap-100.img").write_bytes(fmt.encode_image("PAGEMAP", [pagemap_pb2.pagemap_head(pages_id=1)] + entries))
    (dest / "pages-1.img").write_bytes(b"".join(_page(100, k) for k in range(CRIU_PRESENT_1)))

    mm2 = _mm([_vma(0x500000, 0x510000, R | W, MAP_PRIVATE | MAP_ANONYMOUS, REG | fmt.VMA_ANON_PRIVATE)])
    (dest / "mm-101.img").write_bytes(fmt.encode_image("MM", [mm2]))
    pm2 = [pagemap_pb2.pagemap_head(pages_id=2), pagemap_pb2.pagemap_entry(vaddr=0x508000, compat_nr_pages=2)]
    (dest / "pagemap-101.img").write_bytes(fmt.encode_image("PAGEMAP", pm2))
    (dest / "pages-2.img").write_bytes(_page(101, 0) + _page(101, 1))
    return dest


@pytest.fixture
def criu_dir(tmp_path):
    return build_criu_dir(tmp_path / "criu")


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _tiny(kind: str) -> tuple[Path, int]:
    d = DATA / f"tiny-{kind}"
    (mm,) = d.glob("mm-*.img")
    return d, int(mm.stem.split("-")[1])


# --- decode


def test_decode_pagemap_like_crit(capsys):
    d, pid = _tiny("zst")
    rc, out, _ = _run(capsys, "decode", str(d / f"pagemap-{pid}.img"))
    assert rc == 0 and out.count("\n") == 1  # one line, as crit decode without --pretty
    img = json.loads(out)
    assert img["magic"] == "PAGEMAP"
    head, first = img["entries"][0], img["entries"][1]
    assert head == {"pages_id": 1, "pages_file": "pages-1.zst.img", "compression": "ZSTD", "page_size": 4096,
                    "nr_present_pages": head["nr_present_pages"]}
    assert first == {"vaddr": 0x10000000, "compat_nr_pages": 4, "flags": fmt.PE_PRESENT, "nr_pages": 4,
                     "pages_off": 0}


def test_decode_pretty_hex_and_flags(capsys):
    d, pid = _tiny("zst")
    rc, out, _ = _run(capsys, "decode", "--pretty", str(d / f"pagemap-{pid}.img"))
    assert rc == 0 and out.startswith('{\n    "magic": "PAGEMAP"')
    first = json.loads(out)["entries"][1]
    assert first["vaddr"] == "0x10000000" and first["flags"] == "PE_PRESENT" and first["nr_pages"] == 4

    rc, out, _ = _run(capsys, "decode", "--pretty", str(d / f"mm-{pid}.img"))
    mm = json.loads(out)["entries"][0]
    vma = next(v for v in mm["vmas"] if v["start"] == "0x10000000")
    assert vma["end"] == "0x10004000" and vma["pgoff"] == "0x0"
    assert vma["prot"] == "PROT_READ | PROT_WRITE"
    assert vma["flags"] == "MAP_PRIVATE | MAP_ANONYMOUS"
    assert vma["status"] == "VMA_AREA_REGULAR | VMA_ANON_PRIVATE"
    assert vma["fd"] == -1 and vma["dumped"] is True and vma["nr_pages_dumped"] == 4
    assert mm["mm_start_code"].startswith("0x")


@pytest.mark.parametrize("name", ["inventory.img", "stats-dump", "pages-1.zst.img"])
def test_decode_other_images(capsys, name):
    d, pid = _tiny("zst")
    rc, out, _ = _run(capsys, "decode", "--pretty", str(d / name))
    assert rc == 0
    img = json.loads(out)
    if name == "inventory.img":
        (inv,) = img["entries"]
        assert img["magic"] == "INVENTORY" and inv["img_version"] == 2 and inv["pids"] == [pid]
        assert inv["dumper_format_version"] == 1 and inv["compression"] == "ZSTD"
    elif name == "stats-dump":
        (st,) = img["entries"]
        assert img["magic"] == "STATS" and st["dump"]["pages_written"] == 7
    else:
        head, index = img["entries"]
        assert img["magic"] == "ZPAGES" and head["frame_pages"] == fmt.FRAME_PAGES and head["compression"] == "ZSTD"
        assert index["nr_pages"] == 7 and len(index["frame_size"]) == 1
        assert isinstance(index["frame_size"][0], int)


def test_decode_matches_message_to_dict(capsys):
    # the plain form is MessageToDict's, with 64-bit integers as numbers
    d, pid = _tiny("raw")
    for name in ("inventory.img", f"mm-{pid}.img", f"pagemap-{pid}.img", "stats-dump"):
        img = decode_cmd.decode(d / name)
        _, msgs = read_image(d / name)
        for got, msg in zip(img["entries"], msgs, strict=True):
            ref = json_format.MessageToDict(msg, preserving_proto_field_name=True)
            assert json.dumps(got, sort_keys=True) == json.dumps(_ints(ref), sort_keys=True)


def _ints(value):
    """MessageToDict's 64-bit strings back to numbers (what decode prints)."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _all_message_types():
    mods = (core_pb2, inventory_pb2, mm_pb2, pagemap_pb2, stats_pb2, vma_pb2, zpages_pb2)
    for mod in mods:
        for desc in mod.DESCRIPTOR.message_types_by_name.values():
            yield desc


def test_pretty_follows_every_option_in_the_descriptors():
    # GIVEN every field of every message with a (dumper) option, set to 5
    seen = {"hex": 0, "flags": 0}
    for desc in _all_message_types():
        for field in desc.fields:
            opts = field.GetOptions().Extensions[opts_pb2.dumper]
            if not (opts.hex or opts.flags):
                continue
            msg = message_factory.GetMessageClass(desc)()
            if field.is_repeated:
                getattr(msg, field.name).append(5)
            else:
                setattr(msg, field.name, 5)
            # WHEN printed pretty
            got = message_to_dict(msg, pretty=True)[field.name]
            got = got[0] if field.is_repeated else got
            # THEN the option decides the form
            if opts.flags:
                assert opts.flags in fmt.FLAG_TABLES, f"{desc.name}.{field.name}: unknown table {opts.flags}"
                assert got == fmt.format_flags(5, opts.flags)
                seen["flags"] += 1
            else:
                assert got == "0x5"
                seen["hex"] += 1
            assert message_to_dict(msg)[field.name] in (5, [5])
    assert seen["flags"] >= 4 and seen["hex"] >= 10


def test_pretty_unknown_bits_and_zero():
    e = pagemap_pb2.pagemap_entry(vaddr=0, compat_nr_pages=1, flags=fmt.PE_PRESENT | fmt.PE_LAZY | 0x40)
    d = message_to_dict(e, pretty=True)
    assert d == {"vaddr": "0x0", "compat_nr_pages": 1, "flags": "PE_LAZY | PE_PRESENT | 0x40"}
    e.flags = 0
    assert message_to_dict(e, pretty=True)["flags"] == "0"


def test_decode_raw_pages_is_refused(capsys, criu_dir):
    for p in (DATA / "tiny-raw" / "pages-1.img", criu_dir / "pages-1.img"):
        rc, out, err = _run(capsys, "decode", str(p))
        assert rc == 1 and out == ""
        assert err == f"dumper: error: {p} at offset 0: not a CRIU or dumper image: no image magic at the start " \
                      f"({int.from_bytes(p.read_bytes()[:4], 'little'):#010x}); pages-N.img files hold raw page bytes only\n"


def test_decode_a_file_that_is_no_image_says_so_plainly(capsys, tmp_path):
    # GIVEN a text file (as /etc/passwd), not named like a pages file
    p = tmp_path / "passwd"
    p.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    # WHEN decoded; THEN one line says it is no image, with no talk of pages
    rc, out, err = _run(capsys, "decode", str(p))
    assert rc == 1 and out == ""
    assert err == f"dumper: error: {p} at offset 0: not a CRIU or dumper image: no image magic at the start (0x746f6f72)\n"


def test_decode_criu_images(capsys, criu_dir):
    rc, out, _ = _run(capsys, "decode", str(criu_dir / "pagemap-100.img"))
    img = json.loads(out)
    assert img["entries"][0] == {"pages_id": 1}
    assert img["entries"][1] == {"vaddr": 0x400000, "compat_nr_pages": 3}
    assert img["entries"][3] == {"vaddr": 0x7F0000000000, "compat_nr_pages": 4, "in_parent": True}
    rc, out, _ = _run(capsys, "decode", "--pretty", str(criu_dir / "inventory.img"))
    inv = json.loads(out)["entries"][0]
    assert inv["lsmtype"] == "NO_LSM" and inv["root_ids"]["vm_id"] == 1 and "dumper_format_version" not in inv
    # a core image without entries decodes as such
    rc, out, _ = _run(capsys, "decode", str(criu_dir / "core-100.img"))
    assert rc == 0 and json.loads(out) == {"magic": "CORE", "entries": []}
    # an image type dumper has no schema for (sockets): one line, exit 1
    sk = criu_dir / "inetsk.img"
    sk.write_bytes(fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(fmt.INETSK_MAGIC))
    rc, out, err = _run(capsys, "decode", str(sk))
    assert rc == 1 and err == f"dumper: error: {sk} at offset 4: CRIU INETSK images are not read by dumper\n"


def test_decode_missing_file(capsys, tmp_path):
    rc, out, err = _run(capsys, "decode", str(tmp_path / "nope.img"))
    assert rc == 1 and out == "" and err.count("\n") == 1 and "cannot open" in err


# --- mems


def test_mems_dumper_image(capsys):
    d, pid = _tiny("zst")
    rc, out, _ = _run(capsys, "mems", str(d))
    lines = out.splitlines()
    assert rc == 0 and lines[0] == str(pid)
    assert "\t10000000-10004000                   rw-        4" in lines
    assert any(line.endswith(" [vdso]") and " r-x        2 " in line for line in lines)
    assert any("skipped [vvar]  [vvar: provided by the kernel]" in line for line in lines)
    assert any(line.startswith("\tffffffffff600000-ffffffffff601000   --x  skipped [vsyscall] *") for line in lines)
    stack = next(line for line in lines if line.endswith("[stack]"))
    assert stack.split()[2] == "1"


def test_mems_criu_image(capsys, criu_dir):
    rc, out, _ = _run(capsys, "mems", str(criu_dir))
    assert rc == 0
    assert out.splitlines() == [
        "100",
        "\t00400000-00401000                   r-x        1 file #5",
        "\t00401000-00403000                   rw-        2 file #5 + 0x1000",
        "\t00600000-00640000                   rw-        3 [heap]",
        "\t7f0000000000-7f0000010000           rw-     4+6p",
        "\t7f0000010000-7f0000012000           rw-       0s shmem[1]",  # its shared memory object stores none
        "\t7f0000020000-7f0000021000           r--        0 file #6 + 0x2000 (s)",
        "\t7ffd00000000-7ffd00021000           rw-        2 [stack]",
        "\t7fff00000000-7fff00004000           r--        0 [vvar]",
        "\t7fff00004000-7fff00006000           r-x        2 [vdso]",
        "\tffffffffff600000-ffffffffff601000   --x        0 [vsyscall] *",
        "\t7f000000f000-7f0000010000           ---    guard [guard] *",
        "101",
        "\t00500000-00510000                   rw-        2",
    ]


def test_mems_counts_pages_outside_vmas(capsys, criu_dir):
    pm = [pagemap_pb2.pagemap_head(pages_id=2), pagemap_pb2.pagemap_entry(vaddr=0x50F000, compat_nr_pages=2)]
    (criu_dir / "pagemap-101.img").write_bytes(fmt.encode_image("PAGEMAP", pm))
    rc, out, _ = _run(capsys, "mems", str(criu_dir))
    assert rc == 0 and out.splitlines()[-2:] == [
        "\t00500000-00510000                   rw-        1",
        "\t(1 pagemap pages outside every VMA)",
    ]


# --- rss


def test_rss_dumper_image(capsys):
    d, pid = _tiny("raw")
    rc, out, _ = _run(capsys, "rss", str(d))
    lines = out.splitlines()
    assert rc == 0 and lines[0] == str(pid)
    assert lines[1] == "\t10000000 / 4            PRESENT      10000000 / 4"
    assert lines[2].endswith(" / 2        [vdso]") and " / 2        PRESENT      " in lines[2]
    assert lines[3].endswith(" / 33       [stack]")


def test_rss_criu_image(capsys, criu_dir):
    rc, out, _ = _run(capsys, "rss", str(criu_dir))
    assert rc == 0
    pad = "\t" + " " * 37
    assert out.splitlines() == [
        "100",
        "\t400000 / 3              PRESENT      00400000 / 1        file #5",
        pad + "00401000 / 2        file #5 + 0x1000",
        "\t600000 / 3              PRESENT      00600000 / 64       [heap]",
        "\t7f0000000000 / 4        PARENT       7f0000000000 / 16",
        "\t7f0000004000 / 2        LAZY         ~",
        "\t7f0000006000 / 4        LAZY|PRESENT ~",
        "\t7ffd0001f000 / 2        PRESENT      7ffd00000000 / 33       [stack]",
        "\t7fff00004000 / 2        PRESENT      7fff00004000 / 2        [vdso]",
        "101",
        "\t508000 / 2              PRESENT      00500000 / 16",
    ]


def test_rss_entry_outside_vmas(capsys, criu_dir):
    pm = [pagemap_pb2.pagemap_head(pages_id=2), pagemap_pb2.pagemap_entry(vaddr=0x900000, compat_nr_pages=1)]
    (criu_dir / "pagemap-101.img").write_bytes(fmt.encode_image("PAGEMAP", pm))
    (criu_dir / "pages-2.img").write_bytes(_page(101, 0))  # one PE_PRESENT page, as the pagemap says
    rc, out, _ = _run(capsys, "rss", str(criu_dir))
    assert out.splitlines()[-1] == "\t900000 / 1              PRESENT      (outside every VMA)"


# --- errors: one line, exit 1


@pytest.mark.parametrize("cmd", ["mems", "rss"])
def test_not_a_checkpoint(capsys, tmp_path, cmd):
    rc, out, err = _run(capsys, cmd, str(tmp_path / "nope"))
    assert (rc, out, err) == (1, "", f"dumper: error: {tmp_path / 'nope'}: not a checkpoint directory\n")
    (tmp_path / "empty").mkdir()
    rc, out, err = _run(capsys, cmd, str(tmp_path / "empty"))
    assert rc == 1 and err.count("\n") == 1 and "inventory.img: cannot open" in err


@pytest.mark.parametrize("cmd", ["mems", "rss"])
def test_overlapping_vmas_are_corrupt(capsys, criu_dir, cmd):
    vmas = [_vma(0x500000, 0x510000, R, MAP_PRIVATE, REG), _vma(0x508000, 0x520000, R, MAP_PRIVATE, REG)]
    (criu_dir / "mm-101.img").write_bytes(fmt.encode_image("MM", [_mm(vmas)]))
    rc, out, err = _run(capsys, cmd, str(criu_dir))
    assert (rc, out) == (1, "")
    assert err == f"dumper: error: {criu_dir / 'mm-101.img'} at offset 8: VMA 1 at 0x508000 overlaps or " \
                  "precedes the previous VMA\n"


@pytest.mark.parametrize("cmd", ["mems", "rss"])
def test_newer_format_version_is_refused(capsys, tmp_path, cmd):
    d, _ = _tiny("zst")
    shutil.copytree(d, tmp_path / "c")
    _, (inv,) = read_image(tmp_path / "c" / "inventory.img")
    inv.dumper_format_version = fmt.DUMPER_FORMAT_VERSION + 1
    (tmp_path / "c" / "inventory.img").write_bytes(fmt.encode_image("INVENTORY", [inv]))
    rc, out, err = _run(capsys, cmd, str(tmp_path / "c"))
    assert (rc, out) == (1, "")
    assert err.startswith(f"dumper: error: {tmp_path / 'c' / 'inventory.img'} at offset 4: dumper format version ")


def test_hostile_path_cannot_break_lines(capsys, criu_dir):
    v = _vma(0x500000, 0x510000, R, MAP_PRIVATE, REG | fmt.VMA_FILE_PRIVATE, shmid=1)
    v.path = "/tmp/evil\n\x1b[2Jname"
    (criu_dir / "mm-101.img").write_bytes(fmt.encode_image("MM", [_mm([v])]))
    rc, out, _ = _run(capsys, "mems", str(criu_dir))
    assert rc == 0 and out.splitlines()[-1] == "\t00500000-00510000                   r--        2 /tmp/evil\\n\\x1b[2Jname"


# --- the modules run alone, and the real entry point


@pytest.mark.parametrize("mod, argv", [(decode_cmd, ["--pretty", "inventory.img"]), (mems_cmd, ["."]), (rss_cmd, ["."])])
def test_module_main(capsys, monkeypatch, mod, argv):
    monkeypatch.chdir(DATA / "tiny-zst")
    assert mod.main(argv) == 0
    assert capsys.readouterr().out


def test_entry_point_error_is_one_line(tmp_path):
    p = tmp_path / "garbage.img"
    p.write_bytes(fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(fmt.MM_MAGIC) + b"\xff\xff\xff\x7f")
    r = subprocess.run([sys.executable, "-m", "dumper", "decode", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"dumper: error: {p} at offset 8: entry size 2147483647 exceeds the {fmt.MAX_ENTRY_SIZE}-byte limit\n"


# --- issue 13 item 8: CRIU's files.img (4.x) and reg-files.img (3.x)


@pytest.mark.parametrize("which", ["files.img", "reg-files.img"])
def test_criu_file_names_and_untouched_file_pages(capsys, tmp_path, which):
    from dumper.errors import ImageError
    from dumper.image.checkpoint import open_checkpoint
    from dumper.image.criu_files import _classes

    d = build_criu_dir(tmp_path / "criu")
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"A" * 4096 + b"B" * 4096)
    mm = _mm(CRIU_VMAS_1[:2] + [_vma(0x410000, 0x412000, R, MAP_PRIVATE, REG | fmt.VMA_FILE_PRIVATE, shmid=5)]
             + CRIU_VMAS_1[2:])
    (d / "mm-100.img").write_bytes(fmt.encode_image("MM", [mm]))
    file_entry, reg_file_entry = _classes()
    reg = reg_file_entry(id=5, flags=0, pos=0, name=str(lib), size=8192, mode=0o100644)
    if "fown" in reg.DESCRIPTOR.fields_by_name:  # required in the generated schema
        for f in ("uid", "euid", "signum", "pid_type", "pid"):
            setattr(reg.fown, f, 0)
    if which == "files.img":
        msgs = [file_entry(type=1, id=5, reg=reg)]
        (d / which).write_bytes(fmt.encode_image("FILES", msgs))
    else:
        (d / which).write_bytes(fmt.encode_image("REG_FILES", [reg]))
    rc, out, _ = _run(capsys, "mems", str(d))
    assert rc == 0 and f"\t00410000-00412000                   r--        0 {lib}" in out.splitlines()
    assert f"file #5" not in out
    rc, out, _ = _run(capsys, "show", str(d), "--all-vmas")
    line = next(x for x in out.splitlines() if "0x410000" in x)
    assert rc == 0 and str(lib) in line and "skipped" not in line
    with open_checkpoint(d) as ck:
        assert ck.read(100, 0x411000, 4096) == b"B" * 4096
    lib.write_bytes(b"A" * 4096)  # truncated: size differs from files.img
    with open_checkpoint(d) as ck:
        with pytest.raises(ImageError, match=r"size 8192 bytes at the dump, now 4096") as ei:
            ck.read(100, 0x410000, 16)
        assert ei.value.path == str(lib)
    lib.unlink()
    rc, out, err = _run(capsys, "cat", str(d), "--addr", "0x410000", "--size", "16")
    assert rc == 1 and out == "" and f"{lib}: is gone" in err
