"""One safe way to create output (dumper.image.safefs) and the commands that use it.

Issue 15 items 3 (same-user simulation here; the real unprivileged race is in
test_output_attacks.py), 4 (cat -o), 6 (one replacement rule), 12 (PATH_MAX
/ NAME_MAX), 13 (a killed export's temporaries); issue 13 item 14
(dump -D EXISTING_EMPTY_DIR, demo --force, --json on mems/rss/flatten/untrack).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from dumper.dump import dump
from dumper.errors import DumperError, DumpError, DumperWarning
from dumper.export import ExportError, export
from dumper.image import format as fmt
from dumper.image import safefs
from dumper.image.checkpoint import open_checkpoint
from dumper.image.pb import inventory_pb2, mm_pb2, vma_pb2
from dumper.image.reader import read_image, read_zpages_layout
from dumper.image.safefs import OutputDir, OutputFile
from dumper.image.writer import CheckpointWriter
from dumper.scan.features import probe_scan_categories, probe_uffd_wp_async

ROOT = Path(__file__).resolve().parents[1]
PS = os.sysconf("SC_PAGE_SIZE")
needs_uffd = pytest.mark.skipif(not (probe_scan_categories() and probe_uffd_wp_async()),
                                reason="uffd-wp tracking needs userfaultfd WP_ASYNC and PAGEMAP_SCAN (Linux 6.7)")


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dumper", *map(str, args)], capture_output=True, text=True, **kw)


def one_line_error(r) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dumper: error: "), r.stderr
    return lines[0]


def ident(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_ino, st.st_mtime_ns, st.st_mode


def small_checkpoint(dest: Path, root_pid: int = 1, **kw) -> Path:
    with CheckpointWriter(dest, page_size=PS, **kw) as w:
        w.write_inventory(inventory_pb2.inventory_entry(root_pid=root_pid, pids=[root_pid]))
        vma = vma_pb2.vma_entry(start=0x10000, end=0x10000 + 2 * PS, pgoff=0, shmid=0, prot=3, flags=0x22,
                                status=fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE, fd=-1)
        w.write_mm(root_pid, mm_pb2.mm_entry(vmas=[vma]))
        with w.pages_writer(root_pid, 1, compress=False) as pw:
            pw.add_present(0x10000, os.urandom(2 * PS))
        return w.commit()


def root_pid_of(ck: Path) -> int:
    return read_image(ck / fmt.INVENTORY_NAME)[1][0].root_pid


# --- the mechanism -------------------------------------------------------------


def test_files_0600_dirs_0700_whatever_the_umask(tmp_path):
    for umask in (0o777, 0o000):
        old = os.umask(umask)
        try:
            with OutputDir(tmp_path / f"d{umask:o}") as out:
                with out.dir.create("a") as f:
                    f.write(b"x")
                sub = out.dir.mkdir("sub")
                sub.create("b").close()
                out.commit()
            with OutputFile(tmp_path / f"f{umask:o}") as of:
                of.file.write(b"y")
                of.commit()
        finally:
            os.umask(old)
        d = tmp_path / f"d{umask:o}"
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in (d, d / "sub", d / "a", d / "sub" / "b")] == \
            [0o700, 0o700, 0o600, 0o600]
        assert stat.S_IMODE(os.stat(tmp_path / f"f{umask:o}").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["d0", "d777", "f0", "f777"]  # no stage left


def test_stage_swapped_for_a_symlink_redirects_nothing(tmp_path):
    # Issue 15 item 3, as the owner of the parent would do it (the real race,
    # by an unprivileged user, is in test_output_attacks.py).
    victim = tmp_path / "victim"
    victim.mkdir()
    w = CheckpointWriter(tmp_path / "ck", page_size=PS)
    stage = w.tmpdir.parent
    stage.rename(tmp_path / "moved")
    stage.symlink_to(victim)
    w.write_inventory(inventory_pb2.inventory_entry(root_pid=42))
    with w.pages_writer(42, 1, compress=True, threads=1) as pw:
        pw.add_present(0x10000, os.urandom(4 * PS))
    w.link_parent("../nowhere")
    w.commit()
    assert os.listdir(victim) == []
    ck = tmp_path / "ck"
    assert stat.S_ISDIR(os.lstat(ck).st_mode) and root_pid_of(ck) == 42
    assert sorted(os.listdir(ck)) == sorted(["inventory.img", "pages-1.zst.img", "pagemap-42.img", "parent"])
    # the renamed (emptied) stage is the only other thing left
    assert os.listdir(tmp_path / "moved") == []


def test_work_changed_by_someone_else_is_not_installed(tmp_path):
    with OutputDir(tmp_path / "ck") as out:
        out.dir.create(fmt.INVENTORY_NAME).close()
        (out.work_path / "planted").write_text("x")
        with pytest.raises(DumpError, match="changed by someone else"):
            out.commit()
    assert os.listdir(tmp_path) == []


def test_create_never_follows_or_reuses_a_name(tmp_path):
    with OutputDir(tmp_path / "ck") as out:
        os.symlink(tmp_path / "target", out.work_path / "x.img")
        with pytest.raises(DumpError, match="File exists"):
            out.dir.create("x.img")
        with pytest.raises(DumpError, match="bad file name"):
            out.dir.create("../escape")
    assert not (tmp_path / "target").exists() and not (tmp_path / "escape").exists()


# --- one replacement rule (issue 15 item 6; issue 13 item 14) ----------------------


@pytest.mark.parametrize("make, force, outcome", [
    ("empty-dir", False, "filled"),
    ("empty-dir", True, "filled"),
    ("checkpoint", False, "already exists"),
    ("checkpoint", True, "filled"),
    ("full-dir", True, "not empty and not a checkpoint"),
    ("file", True, "is a regular file: refusing"),
    ("symlink-to-checkpoint", True, "is a symbolic link: refusing"),
    ("symlink-to-empty-dir", True, "is a symbolic link: refusing"),
    ("fifo", True, "is a special file: refusing"),
])
def test_one_replacement_rule(tmp_path, make, force, outcome):
    dest = tmp_path / "out"
    other = tmp_path / "other"
    if make == "empty-dir":
        dest.mkdir()
    elif make == "checkpoint":
        small_checkpoint(dest, root_pid=1)
    elif make == "full-dir":
        dest.mkdir()
        (dest / "precious").write_text("keep")
    elif make == "file":
        dest.write_text("keep")
    elif make == "fifo":
        os.mkfifo(dest)
    elif make == "symlink-to-checkpoint":
        small_checkpoint(other, root_pid=1)
        dest.symlink_to(other)
    else:
        other.mkdir()
        dest.symlink_to(other)
    before = ident(dest)
    if outcome == "filled":
        small_checkpoint(dest, root_pid=2, force=force)
        assert stat.S_ISDIR(os.lstat(dest).st_mode) and root_pid_of(dest) == 2
        assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o700
    else:
        with pytest.raises(DumpError, match=outcome):
            small_checkpoint(dest, root_pid=2, force=force)
        assert ident(dest) == before
        if make == "full-dir" or make == "file":
            assert (dest / "precious" if make == "full-dir" else dest).read_text() == "keep"
        if make.startswith("symlink"):
            if make == "symlink-to-checkpoint":
                assert root_pid_of(other) == 1
            else:
                assert os.listdir(other) == []
    assert sorted(os.listdir(tmp_path)) == sorted(n for n in ("out", "other") if (tmp_path / n).exists()
                                                  or os.path.islink(tmp_path / n))


def test_export_and_flatten_follow_the_same_rule(tmp_path):
    # Issue 15 item 6: export --force deleted a regular file OUT and replaced
    # a symlink OUT; flatten/export wrote into OUT inside the source.
    from dumper.dump.flatten import flatten

    src = small_checkpoint(tmp_path / "src", root_pid=1)
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for path in (plain, link):
        before = ident(path)
        with pytest.raises(ExportError, match="refusing to replace"):
            export(src, path, force=True)
        with pytest.raises(DumpError, match="refusing to replace"):
            flatten(src, path, force=True)
        assert ident(path) == before
    assert plain.read_text() == "keep me" and not (tmp_path / "elsewhere").exists()
    src_files = sorted(os.listdir(src))
    for inside in (src / "out", src / "sub" / "deeper"):
        inside.parent.mkdir(exist_ok=True)
        with pytest.raises(ExportError, match="inside .*a checkpoint it reads"):
            export(src, inside)
        with pytest.raises(DumpError, match="inside .*a checkpoint it reads"):
            flatten(src, inside)
    (src / "sub").rmdir()
    with pytest.raises(ExportError, match="would overwrite"):
        export(src, src, force=True)
    assert sorted(os.listdir(src)) == src_files
    # and an empty directory is filled, by both
    for name, run in (("e1", lambda d: export(src, d)), ("e2", lambda d: flatten(src, d))):
        (tmp_path / name).mkdir()
        run(tmp_path / name)
        assert (tmp_path / name / fmt.INVENTORY_NAME).is_file()


def test_replacing_a_checkpoint_is_atomic(tmp_path):
    # With --force the old checkpoint is exchanged for the new one in one
    # step: a reader polling the directory never finds it missing.
    dest = tmp_path / "ck"
    small_checkpoint(dest, root_pid=1)
    missing = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            if not os.path.exists(dest / fmt.INVENTORY_NAME):
                missing.append(time.monotonic())

    t = threading.Thread(target=poll)
    t.start()
    try:
        for i in range(2, 40):
            small_checkpoint(dest, root_pid=i, force=True)
    finally:
        stop.set()
        t.join()
    assert missing == [] and root_pid_of(dest) == 39
    assert os.listdir(tmp_path) == ["ck"]


def test_dest_swapped_between_check_and_exchange_is_put_back(tmp_path, monkeypatch):
    # The entry judged replaceable is a checkpoint; just before the exchange
    # someone puts a symlink there. The exchange takes the symlink: it must
    # be swapped back, nothing replaced, nothing followed.
    dest = tmp_path / "ck"
    small_checkpoint(dest, root_pid=1)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("keep")
    real = safefs.renameat2
    swapped = []

    def racing(olddirfd, oldname, newdirfd, newname, flags):
        if flags == safefs.RENAME_EXCHANGE and not swapped:
            swapped.append(1)
            dest.rename(tmp_path / "old-ck")
            dest.symlink_to(victim)
        return real(olddirfd, oldname, newdirfd, newname, flags)

    monkeypatch.setattr(safefs, "renameat2", racing)
    with pytest.raises(DumpError, match="changed while being replaced"):
        small_checkpoint(dest, root_pid=2, force=True)
    assert swapped and os.readlink(dest) == str(victim)
    assert os.listdir(victim) == ["file"] and (victim / "file").read_text() == "keep"
    assert root_pid_of(tmp_path / "old-ck") == 1
    assert sorted(os.listdir(tmp_path)) == ["ck", "old-ck", "victim"]


def test_without_renameat2_flags_the_same_rules_hold(tmp_path, monkeypatch):
    # NFS and older FUSE answer EINVAL to RENAME_NOREPLACE/RENAME_EXCHANGE.
    def einval(*args):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(safefs, "renameat2", einval)
    dest = tmp_path / "ck"
    small_checkpoint(dest, root_pid=1)
    with pytest.raises(DumpError, match="already exists"):
        small_checkpoint(dest, root_pid=2)
    small_checkpoint(dest, root_pid=3, force=True)
    assert root_pid_of(dest) == 3
    (tmp_path / "empty").mkdir()
    small_checkpoint(tmp_path / "empty", root_pid=4)
    assert root_pid_of(tmp_path / "empty") == 4
    f = tmp_path / "f.bin"
    for data, force in ((b"one", False), (b"two", True)):
        with OutputFile(f, force=force) as out:
            out.file.write(data)
            out.commit()
        assert f.read_bytes() == data
    with pytest.raises(DumpError, match="already exists"):
        OutputFile(f)
    assert sorted(os.listdir(tmp_path)) == ["ck", "empty", "f.bin"]


# --- where output may go ---------------------------------------------------------


def test_parent_writable_by_others_without_sticky_bit(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(DumpError, match="writable by every user and has no sticky bit"):
        small_checkpoint(shared / "ck")
    assert os.listdir(shared) == []
    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename what is ours
    small_checkpoint(shared / "ck")
    os.chmod(shared, 0o775)
    with pytest.warns(DumperWarning, match="writable by its group"):
        small_checkpoint(shared / "ck2")
    assert sorted(os.listdir(shared)) == ["ck", "ck2"]


def test_group_writable_parent_is_one_warning_line_on_the_cli(spawn_target, tmp_path):
    t = spawn_target("dense")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o770)
    r = cli("dump", t.pid, "-D", shared / "ck")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"dumper: warning: {shared} is writable by its group (mode 0770): " \
                               "the group's members can rename or replace ck once written"


def test_too_long_names_are_one_line_for_every_command(spawn_target, tmp_path):
    # Issue 15 item 12: ENAMETOOLONG tracebacks from dump, pre-dump, flatten, export.
    t = spawn_target("dense")
    src = tmp_path / "src"
    dump(t.pid, src)
    addr, _ = t.regions["dense"]
    long_path = tmp_path.joinpath(*["d" * 200] * 25)  # > PATH_MAX (4096)
    long_name = tmp_path / ("n" * 256)  # > NAME_MAX (255)
    for out in (long_path, long_name):
        cmds = [("dump", t.pid, "-D", out), ("flatten", src, out), ("export", src, out),
                ("cat", src, "--addr", hex(addr), "--size", "16", "-o", out)]
        if probe_scan_categories() and probe_uffd_wp_async():
            cmds.append(("pre-dump", t.pid, "-D", out))
        for cmd in cmds:
            line = one_line_error(cli(*cmd))
            assert ("path too long" if out is long_path else "longer than 255 bytes (NAME_MAX)") in line, line
            assert len(line) < 300
    assert sorted(set(os.listdir(tmp_path)) - {"mapped.bin"}) == ["src"]


# --- temporaries of killed runs (issue 15 item 13) ----------------------------------


def starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def stages(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n)


def test_sigkilled_export_leaves_a_stage_the_next_run_removes(tmp_path):
    target = subprocess.Popen([sys.executable, str(ROOT / "examples" / "target.py"), "--dense-mib", "256",
                               "--threads", "0", "--until-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert target.stdout.readline().startswith(b"READY")
        dump(target.pid, tmp_path / "src", level=1)
    finally:
        target.kill()
        target.wait()
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "dumper", "export", str(tmp_path / "src"), str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait until the export is writing its pages, then kill it.
    deadline = time.monotonic() + 60
    pages = None
    while time.monotonic() < deadline and p.poll() is None:
        found = [tmp_path / s / "out" / "pages-1.img" for s in stages(tmp_path)]
        if found and found[0].exists() and found[0].stat().st_size > (8 << 20):
            pages = found[0]
            break
        time.sleep(0.01)
    assert pages is not None, "the export finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    [left] = stages(tmp_path)
    assert left.startswith(f".out.tmp-{p.pid}-")  # the creator's pid in the name
    assert not out.exists()
    # A run into another place leaves it alone; the next run into the same place removes it.
    export(tmp_path / "src", tmp_path / "other")
    assert stages(tmp_path) == [left]
    export(tmp_path / "src", out)
    assert stages(tmp_path) == [] and (out / "pages-1.img").is_file()


def test_stale_cleanup_removes_only_our_dead_stages(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = os.getpid()

    def stage(pid, start, suffix="abcd1234"):
        return tmp_path / f".ck.tmp-{pid}-{start}-{suffix}"

    gone = stage(dead.pid, starttime(me))  # creator gone: removed
    (gone / "ck").mkdir(parents=True)
    (gone / "ck" / "pages-1.zst.img").write_bytes(b"secret")
    reused = stage(me, starttime(me) + 1, "00000001")  # pid reused by another process: removed
    (reused / "ck").mkdir(parents=True)
    live = stage(me, starttime(me), "00000002")  # a run still going: kept
    (live / "ck").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep")
    link = stage(dead.pid, starttime(me), "00000003")  # a symlink named like a stage: not followed
    link.symlink_to(victim)
    odd = stage(dead.pid, starttime(me), "00000004")  # not the shape of a stage: kept
    odd.mkdir()
    (odd / "inventory.img").write_text("a checkpoint renamed here")
    other_name = tmp_path / f".other.tmp-{dead.pid}-{starttime(me)}-abcd1234"  # another NAME: kept
    other_name.mkdir()
    small_checkpoint(tmp_path / "ck")
    assert not gone.exists() and not reused.exists()
    assert live.exists() and os.path.islink(link) and odd.exists() and other_name.exists()
    assert (victim / "data").read_text() == "keep"


# --- cat -o (issue 15 item 4; issue 13 item 14) ---------------------------------------


def test_cat_output_never_follows_a_symlink_and_is_private(spawn_target, tmp_path):
    t = spawn_target("dense")
    ck = tmp_path / "ck"
    dump(t.pid, ck)
    addr, _ = t.regions["dense"]
    secret = tmp_path / "root-only"  # stands for /etc/shadow
    secret.write_text("root:$6$hash")
    os.chmod(secret, 0o600)
    link = tmp_path / "out"
    link.symlink_to(secret)
    for extra in ((), ("--force",)):
        line = one_line_error(cli("cat", ck, "--addr", hex(addr), "--size", 4096, "-o", link, *extra))
        assert "symbolic link" in line or "already exists" in line
        assert secret.read_text() == "root:$6$hash" and os.readlink(link) == str(secret)
    # An existing file is refused without --force, and stays as it was.
    old = tmp_path / "old.bin"
    old.write_bytes(b"user data")
    os.chmod(old, 0o644)
    before = ident(old)
    line = one_line_error(cli("cat", ck, "--addr", hex(addr), "--size", 4096, "-o", old))
    assert "already exists (--force replaces it)" in line and ident(old) == before
    # --force replaces it: a new 0600 file, not the old one's 0644.
    r = cli("cat", ck, "--addr", hex(addr), "--size", 4096, "-o", old, "--force")
    assert r.returncode == 0, r.stderr
    assert old.read_bytes() == bytes([1]) * 4096 and stat.S_IMODE(os.stat(old).st_mode) == 0o600
    new = tmp_path / "new.bin"
    assert cli("cat", ck, "--addr", hex(addr), "--size", 4096, "-o", new).returncode == 0
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
    assert stages(tmp_path) == []


def test_cat_force_failing_after_16_mib_leaves_the_old_file(tmp_path):
    # A 40 MiB range whose frame at +24 MiB is damaged: the first 16 MiB are
    # written before the error. The user's old file must be untouched.
    code = ("import ctypes,os,sys\n"
            "n=40<<20\n"
            "buf=ctypes.create_string_buffer(os.urandom(n), n)\n"
            "print(ctypes.addressof(buf), flush=True)\n"
            "sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        addr = int(p.stdout.readline())
        ck = tmp_path / "ck"
        dump(p.pid, ck, level=1)
    finally:
        p.kill()
        p.wait()
    start = (addr + PS - 1) // PS * PS
    bad = start + (24 << 20)
    zp = ck / fmt.zpages_name(1)
    with open_checkpoint(ck) as c:
        proc = c.process(None)
        e = next(e for e in proc.entries if e.vaddr <= bad < e.end(proc.page_size))
        stream_page = e.pages_off + (bad - e.vaddr) // PS
    with open(zp, "rb") as f:
        lay = read_zpages_layout(f, zp)
    frame = stream_page // lay.head.frame_pages
    data = bytearray(zp.read_bytes())
    data[int(lay.offsets[frame]) + int(lay.sizes[frame]) - 2] ^= 0x40  # its checksum
    zp.write_bytes(bytes(data))
    old = tmp_path / "old.bin"
    old.write_bytes(b"the user's file")
    before = ident(old)
    r = cli("cat", ck, "--addr", hex(start), "--size", 32 << 20, "-o", old, "--force")
    assert "checksum" in one_line_error(r)
    assert ident(old) == before and old.read_bytes() == b"the user's file"
    assert sorted(os.listdir(tmp_path)) == ["ck", "old.bin"]


# --- dump into an existing empty directory; demo --force (issue 13 item 14) ------------


def test_dump_into_an_existing_empty_directory(spawn_target, tmp_path):
    t = spawn_target("dense")
    ck = tmp_path / "ck"
    ck.mkdir()  # as CRIU users do before `criu dump -D ck`
    r = cli("dump", t.pid, "-D", ck)
    assert r.returncode == 0, r.stderr
    addr, _ = t.regions["dense"]
    with open_checkpoint(ck) as c:
        assert c.read(t.pid, addr, 16) == bytes([1]) * 16
    assert stat.S_IMODE(os.stat(ck).st_mode) == 0o700
    # a second dump into it (now a checkpoint) needs --force, as before
    assert "already exists (--force replaces a checkpoint)" in one_line_error(cli("dump", t.pid, "-D", ck))
    assert sorted(set(os.listdir(tmp_path)) - {"mapped.bin"}) == ["ck"]


def test_demo_keep_and_force(tmp_path):
    keep = tmp_path / "demo"
    r = cli("demo", "--dense-mib", "2", "--keep", keep, timeout=120)
    assert r.returncode == 0, r.stderr
    first = os.stat(keep / fmt.INVENTORY_NAME).st_ino
    line = one_line_error(cli("demo", "--dense-mib", "2", "--keep", keep, timeout=120))
    assert "--force replaces a checkpoint" in line
    r = cli("demo", "--dense-mib", "2", "--keep", keep, "--force", timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"-D {keep} --force" in r.stdout and os.stat(keep / fmt.INVENTORY_NAME).st_ino != first
    assert "only applies to --keep" in one_line_error(cli("demo", "--force"))


# --- --json (issue 13 item 14) ------------------------------------------------------


def test_mems_and_rss_json(spawn_target, tmp_path):
    t = spawn_target("dense,zero")
    ck = tmp_path / "ck"
    dump(t.pid, ck)
    addr, length = t.regions["dense"]
    r = cli("mems", ck, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)  # one object, nothing else
    [proc] = m["processes"]
    assert proc["pid"] == t.pid and proc["page_size"] == PS and proc["pages_outside_vmas"] == 0
    with open_checkpoint(ck) as c:
        vmas = c.process(t.pid).vmas
        assert len(proc["vmas"]) == len(vmas)
    dense = next(v for v in proc["vmas"] if int(v["vma"]["start"]) <= addr < int(v["vma"]["end"]))
    assert dense["pages_present"] >= length // PS and dense["pages_other"] == 0
    r = cli("rss", ck, "--json")
    assert r.returncode == 0, r.stderr
    [rp] = json.loads(r.stdout)["processes"]
    covering = [e for e in rp["entries"] if e["vaddr"] <= addr < e["vaddr"] + e["nr_pages"] * PS]
    assert len(covering) == 1 and covering[0]["flags"] == ["PRESENT"]
    assert any(v["start"] <= addr < v["end"] for v in covering[0]["vmas"])
    assert sum(e["nr_pages"] for e in rp["entries"]) == sum(v["pages_present"] for v in proc["vmas"])


@needs_uffd
def test_flatten_and_untrack_json(spawn_target, tmp_path):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "1", track_mem=True)
    t.command("write dense 3")
    dump(t.pid, tmp_path / "2", parent=tmp_path / "1")
    r = cli("flatten", tmp_path / "2", tmp_path / "flat", "--json")
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)
    assert f["dest"] == str(tmp_path / "flat") and f["chain_length"] == 2
    with open_checkpoint(tmp_path / "flat") as c:
        assert f["pages"] == sum(e.nr_pages for e in c.process(t.pid).entries)
    r = cli("untrack", t.pid, "-D", tmp_path / "2", "--json")
    assert r.returncode == 0, r.stderr
    u = json.loads(r.stdout)
    (removed,) = u["removed"]
    assert u["pid"] == t.pid and removed["ranges"] and all(s < e for s, e in removed["ranges"])
    fds = [os.readlink(f"/proc/{t.pid}/fd/{n}") for n in os.listdir(f"/proc/{t.pid}/fd")]
    assert "anon_inode:[userfaultfd]" not in fds and removed["fd"] >= 0
