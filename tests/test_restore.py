"""``dumper restore``: CRIU's own ``criu restore`` brings checkpoints back.

Three groups:

* without CRIU: lookup of the binary, the refusals (marked not restorable,
  pre-dump, memory only, missing or damaged images, pids taken), the raw
  image set given to CRIU (checked by a stand-in ``criu`` that records what
  it was given), failure and interruption clean-up;
* with CRIU 4.2 and image sets ``criu dump`` wrote: restored as they are,
  and after their pages were rewritten in dumper's zstd form (one level, and
  a three-level incremental chain), for every test target;
* with CRIU 4.2 and checkpoints ``dumper dump`` wrote: the same targets.
  They need the process-state images (core, pstree, ids, fs, files...) that
  issue 10 adds to the dump; until a dump writes them, these tests xfail
  with the reason and what ``criu restore`` itself says about the set.

For each target the protocol is the issue's: dump killing the process,
restore (``--leave-stopped``), compare the restored memory with the
checkpoint (``dumper verify --pid``; only the kernel-written rseq fields
may differ), dump the restored process again and compare the images (only
fields a restore changes by nature may differ, see :data:`ALLOWED_DIFFS`),
then SIGCONT and prove it goes on from the saved state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import zstandard
from google.protobuf import json_format

from dumper.errors import CriuFailed, CriuNotFound, ImageError, NotRestorable, RestoreError
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.pb import inventory_pb2, mm_pb2, pstree_pb2, vma_pb2
from dumper.image.reader import read_image
from dumper.image.writer import PagesWriter, open_private
from dumper.restore import restore
from dumper.restore import criu as criu_mod
from dumper.restore.criu import find_criu
from targets.restore_support import (
    Target,
    become_subreaper,
    build_targets,
    counters,
    criu_dump,
    kill_restored,
    make_chain,
    proc_state,
    python_target_argv,
    reap_zombie_children,
    rseq_areas,
    rseq_kernel_bytes,
    thread_states,
    to_zstd,
    wait_for,
)
from targets import restore_python

PS = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parents[1]


# --- fixtures


@pytest.fixture(scope="module", autouse=True)
def _subreaper():
    """Restored processes become our children when CRIU exits, so they can
    be reaped (this machine's init does not reap)."""
    become_subreaper()
    yield
    reap_zombie_children()


@pytest.fixture(scope="session")
def criu():
    try:
        return find_criu()
    except CriuNotFound as err:
        pytest.skip(f"needs CRIU >= 4.0: {err}")


@pytest.fixture(scope="session")
def bins(tmp_path_factory):
    try:
        return build_targets(tmp_path_factory.mktemp("restore-targets"))
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture
def restored():
    """Pids of restored processes, killed and reaped after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        kill_restored(pid)
    reap_zombie_children()


def _env(criu_path: str | None = None) -> dict:
    env = dict(os.environ)
    if criu_path:
        env["DUMPER_CRIU"] = criu_path
    return env


def dumper(*args, criu_path: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper", *map(str, args)], capture_output=True, text=True,
                          env=_env(criu_path), cwd=ROOT, timeout=timeout)


# --- a small image set made by hand (no CRIU needed)


def _free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        limit = int(f.read())
    pid = limit - 1000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


VMA_START = 0x10000000
VMA_PAGES = 64


def _page(k: int, salt: int = 0) -> bytes:
    return bytes([(k * 13 + salt + 1) & 0xFF]) * PS


def _stub_image(path: Path, magic: int) -> None:
    path.write_bytes(fmt.U32.pack(fmt.IMG_COMMON_MAGIC) + fmt.U32.pack(magic))


def fake_set(d: Path, pid: int, *, threads=(), compress=True, sid=None, parent: Path | None = None,
             present=range(0, 16), in_parent=(), salt=0, full=True, **inventory) -> Path:
    """A one-process image set: CRIU's inventory (plus ``inventory``
    fields), pstree, stub core/ids/fs images (``full``), one anonymous VMA
    of 64 pages, pages ``present`` of it PE_PRESENT, ``in_parent`` pages
    PE_PARENT."""
    d.mkdir(parents=True)
    inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True, **inventory)
    (d / "inventory.img").write_bytes(fmt.encode_image("INVENTORY", [inv]))
    tids = [pid, *threads]
    if full:
        tree = pstree_pb2.pstree_entry(pid=pid, ppid=0, pgid=sid or pid, sid=sid or pid, threads=tids)
        (d / "pstree.img").write_bytes(fmt.encode_image("PSTREE", [tree]))
        for t in tids:
            _stub_image(d / f"core-{t}.img", fmt.CORE_MAGIC)
        _stub_image(d / f"ids-{pid}.img", fmt.IDS_MAGIC)
        _stub_image(d / f"fs-{pid}.img", 0x48313138)
    vma = vma_pb2.vma_entry(start=VMA_START, end=VMA_START + VMA_PAGES * PS, pgoff=0, shmid=0, prot=3,
                            flags=0x22, status=fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_PRIVATE, fd=-1)
    mm = mm_pb2.mm_entry(vmas=[vma])
    from dumper.image.writer import fill_required

    fill_required(mm)
    (d / f"mm-{pid}.img").write_bytes(fmt.encode_image("MM", [mm]))
    if parent is not None:
        os.symlink(os.path.relpath(parent, d), d / "parent")
    marks = {k: "present" for k in present} | {k: "parent" for k in in_parent}
    with PagesWriter(lambda n: open_private(d / n), pid, 1, page_size=PS, compress=compress, frame_pages=4,
                     threads=2) as pw:
        for k in sorted(marks):
            if marks[k] == "present":
                pw.add_present(VMA_START + k * PS, _page(k, salt))
            else:
                pw.add_parent(VMA_START + k * PS, 1)
    return d


FAKE_CRIU = r'''#!{python}
import hashlib, json, os, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print(os.environ.get("FAKE_CRIU_VERSION", "Version: 4.2"))
    sys.exit(int(os.environ.get("FAKE_CRIU_VERSION_RC", "0")))
def opt(name):
    return args[args.index(name) + 1] if name in args else None
images = opt("-D")
listing = {}
for root, dirs, files in os.walk(images):
    for n in dirs + files:
        p = os.path.join(root, n)
        st = os.lstat(p)
        e = {"mode": st.st_mode, "nlink": st.st_nlink}
        if n.startswith("pages-") and os.path.isfile(p):
            e["sha256"] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        listing[os.path.relpath(p, images)] = e
record = os.environ["FAKE_CRIU_RECORD"]
json.dump({"argv": args, "cwd": os.getcwd(), "images": images, "images_mode": os.stat(images).st_mode,
           "listing": listing}, open(record, "w"))
mode = os.environ.get("FAKE_CRIU_MODE", "ok")
if mode == "fail":
    with open(opt("-o"), "w") as f:
        f.write("(00.000001) Info: starting\n(00.000002) Error (criu/util.c:1534): rlimit: Can't setup "
                "RLIMIT_NOFILE for self: Operation not permitted\n(00.000003) Error (criu/cr-restore.c:1): "
                "fake failure one\n(00.000004) Error (criu/cr-restore.c:2): Restoring FAILED.\n")
    sys.exit(1)
if mode == "sleep":
    open(record + ".sleeping", "w").close()
    time.sleep(60)
    sys.exit(0)
with open(opt("--pidfile"), "w") as f:
    f.write("4242")
'''


@pytest.fixture
def fake_criu(tmp_path, monkeypatch):
    """A stand-in ``criu`` (Version 4.2) that records its arguments and the
    image directory it was given into ``record``; FAKE_CRIU_MODE=fail|sleep."""
    path = tmp_path / "fake-criu"
    path.write_text(FAKE_CRIU.replace("{python}", sys.executable))
    path.chmod(0o755)
    record = tmp_path / "fake-criu.json"
    monkeypatch.setenv("FAKE_CRIU_RECORD", str(record))
    monkeypatch.setenv("DUMPER_CRIU", str(path))

    class Fake:
        def __init__(self):
            self.path = path
            self.record_path = record

        @property
        def record(self) -> dict:
            return json.loads(record.read_text())

        @property
        def ran(self) -> bool:
            return record.exists()

    return Fake()


# --- finding CRIU


def _script(path: Path, version_line: str, rc: int = 0) -> Path:
    path.write_text(f"#!/bin/sh\necho '{version_line}'\nexit {rc}\n")
    path.chmod(0o755)
    return path


def test_find_criu_order(tmp_path, monkeypatch):
    """--criu, then DUMPER_CRIU, then the source tree's build, then PATH."""
    a = _script(tmp_path / "a", "Version: 4.2")
    b = _script(tmp_path / "b", "Version: 4.1")
    c = _script(tmp_path / "c", "Version: 4.0")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "criu", "Version: 4.3.1")
    env = {"DUMPER_CRIU": str(b), "PATH": str(bindir)}
    monkeypatch.setattr(criu_mod, "source_tree_criu", lambda: c)
    found = find_criu(a, environ=env)
    assert (found.path, found.version, found.source) == (str(a), (4, 2), "--criu")
    found = find_criu(environ=env)
    assert (found.path, found.version, found.source) == (str(b), (4, 1), "DUMPER_CRIU")
    found = find_criu(environ={"PATH": str(bindir)})
    assert (found.path, found.version, found.source) == (str(c), (4, 0), "source tree")
    monkeypatch.setattr(criu_mod, "source_tree_criu", lambda: None)
    found = find_criu(environ={"PATH": str(bindir)})
    assert (found.path, found.version, found.source, found.version_text) == (
        str(bindir / "criu"), (4, 3, 1), "PATH", "4.3.1")


def test_find_criu_refuses_old_missing_and_broken(tmp_path, monkeypatch):
    monkeypatch.setattr(criu_mod, "source_tree_criu", lambda: None)
    old = _script(tmp_path / "old", "Version: 3.17.1")
    with pytest.raises(CriuNotFound) as e:
        find_criu(old, environ={})
    msg = str(e.value)
    assert f"--criu {old} is CRIU 3.17.1, older than 4.0" in msg and ".ci/build-criu" in msg
    with pytest.raises(CriuNotFound, match=r"DUMPER_CRIU /nonexistent/criu: no such file: build CRIU 4.2"):
        find_criu(environ={"DUMPER_CRIU": "/nonexistent/criu", "PATH": ""})
    with pytest.raises(CriuNotFound, match=r"^no CRIU found \(tried --criu, DUMPER_CRIU, build/criu-4.2/criu/criu, "
                                           r"PATH\): build CRIU 4.2 with .ci/build-criu"):
        find_criu(environ={"PATH": str(tmp_path / "empty")})
    broken = _script(tmp_path / "broken", "criu: cannot start", rc=1)
    with pytest.raises(CriuNotFound, match=r"is not a working CRIU \(`--version` exited 1: criu: cannot start\)"):
        find_criu(broken, environ={})
    noexec = tmp_path / "noexec"
    noexec.write_text("")
    with pytest.raises(CriuNotFound, match="is not an executable file"):
        find_criu(noexec, environ={})


def test_cli_says_how_to_get_criu(tmp_path):
    old = _script(tmp_path / "old", "Version: 3.17")
    ck = fake_set(tmp_path / "ck", _free_pid())
    r = dumper("restore", ck, "--criu", old)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"dumper: error: --criu {old} is CRIU 3.17, older than 4.0") and ".ci/build-criu" in r.stderr


# --- refusals (nothing runs CRIU)


def test_refuses_checkpoint_marked_unrestorable(tmp_path, fake_criu):
    pid = _free_pid()
    reasons = [
        inventory_pb2.unrestorable_reason(pid=pid, kind="socket", what="fd 5", why="TCP sockets are not saved"),
        inventory_pb2.unrestorable_reason(pid=pid, kind="inotify", what="fd 6", why="inotify is not saved"),
    ]
    ck = fake_set(tmp_path / "ck", pid, unrestorable=reasons)
    with pytest.raises(NotRestorable) as e:
        restore(ck)
    assert "is marked not restorable: the dump did not save 2 resource(s)" in str(e.value)
    assert e.value.details == (f"pid {pid} fd 5: socket: TCP sockets are not saved",
                               f"pid {pid} fd 6: inotify: inotify is not saved")
    assert not fake_criu.ran
    r = dumper("restore", ck)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"  pid {pid} fd 5: socket: TCP sockets are not saved",
        f"  pid {pid} fd 6: inotify: inotify is not saved",
        f"dumper: error: {ck} is marked not restorable: the dump did not save 2 resource(s) criu restore would "
        "need (listed above)",
    ]


def test_refuses_pre_dump_and_memory_only(tmp_path, fake_criu):
    pid = _free_pid()
    pre = fake_set(tmp_path / "pre", pid, pre_dump=True, dumper_format_version=1)
    with pytest.raises(NotRestorable, match=r"is a pre-dump \(pages only, no process state\): restore the dump "
                                            r"taken with --parent"):
        restore(pre)
    mem = fake_set(tmp_path / "mem", pid, full=False)
    with pytest.raises(NotRestorable, match=r"holds memory images only \(no pstree.img"):
        restore(mem)
    assert not fake_criu.ran


def test_refuses_missing_images(tmp_path, fake_criu):
    pid = _free_pid()
    ck = fake_set(tmp_path / "ck", pid, threads=(pid + 1,))
    (ck / f"core-{pid + 1}.img").unlink()
    (ck / f"fs-{pid}.img").unlink()
    with pytest.raises(NotRestorable) as e:
        restore(ck)
    assert str(e.value) == f"{ck} lacks images criu restore needs: core-{pid + 1}.img, fs-{pid}.img"
    assert not fake_criu.ran


def test_refuses_damaged_sets(tmp_path, fake_criu):
    pid = _free_pid()
    # A flipped byte in a zstd frame: found when the frames are decompressed.
    ck = fake_set(tmp_path / "ck", pid)
    zp = ck / "pages-1.zst.img"
    data = bytearray(zp.read_bytes())
    data[40] ^= 0xFF
    zp.write_bytes(bytes(data))
    with pytest.raises(NotRestorable) as e:
        restore(ck, tmp_dir=tmp_path)
    assert str(e.value).startswith(f"{ck} is damaged")
    assert any("pages-1.zst.img at offset" in d and "frame 0" in d for d in e.value.details), e.value.details
    assert not fake_criu.ran
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dumper-restore-")]
    # A PE_PARENT range the parent does not hold: found by the structural verify.
    parent = fake_set(tmp_path / "p1", pid, present=range(0, 4), full=False)
    child = fake_set(tmp_path / "p2", pid, parent=parent, present=range(8, 16), in_parent=range(0, 6))
    with pytest.raises(NotRestorable) as e:
        restore(child)
    assert str(e.value).startswith(f"{child} is damaged")
    assert any("PE_PARENT pages [0x10004000, 0x10006000) are not in the parent" in d for d in e.value.details)
    assert not fake_criu.ran


def test_refuses_taken_pids(tmp_path, fake_criu, zombie):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ck = fake_set(tmp_path / "ck", sleeper.pid)
        with pytest.raises(NotRestorable) as e:
            restore(ck)
        assert e.value.details == (f"pid {sleeper.pid} is in use by 'sleep', state S",)
        assert "recreates the checkpoint's original pids and 1 of them are taken now" in str(e.value)
        own = os.getpid()
        ck2 = fake_set(tmp_path / "ck2", zombie, threads=(own,))
        with pytest.raises(NotRestorable) as e:
            restore(ck2)
        assert e.value.details[0].startswith(f"pid {zombie} is in use by 'python")
        assert e.value.details[0].endswith(f"a zombie its parent {own} has not reaped")
        assert e.value.details[1].startswith(f"thread id (of pid {zombie}) {own} is in use by")
        assert not fake_criu.ran
    finally:
        sleeper.kill()
        sleeper.wait()


# --- the image set CRIU is given (stand-in criu)


def _raw_sha(ck_dir: Path, pid: int) -> str:
    with open_checkpoint(ck_dir) as ck:
        p = ck.process(pid)
        return hashlib.sha256(p.pages.read_pages(0, p.pages.nr_pages)).hexdigest()


def test_zstd_chain_is_materialised_for_criu(tmp_path, fake_criu):
    """Three levels (zstd, raw, zstd): raw pages-1.img at every level, in
    nested private ``parent`` directories, PE_PARENT entries kept, other
    images linked; the temporary copy is gone afterwards."""
    pid = _free_pid()
    l1 = fake_set(tmp_path / "c" / "1", pid, present=range(0, 16), full=False, salt=1)
    l2 = fake_set(tmp_path / "c" / "2", pid, compress=False, parent=l1, present=range(8, 16), in_parent=range(0, 8),
                  full=False, salt=2)
    l3 = fake_set(tmp_path / "c" / "3", pid, parent=l2, present=range(12, 20), in_parent=range(0, 12), salt=3)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = restore(l3, tmp_dir=tmp, leave_stopped=True)
    assert result.pid == 4242 and result.materialised and result.levels == 3
    assert result.pages_bytes == (16 + 8) * PS  # levels 1 and 3 are compressed
    rec = fake_criu.record
    images = Path(rec["images"])
    assert images.parent.parent == tmp and images.parent.name.startswith("dumper-restore-")
    assert stat.S_IMODE(rec["images_mode"]) == 0o700
    listing = rec["listing"]
    assert {"parent", "parent/parent"} <= set(listing)
    for name in ("parent", "parent/parent"):
        assert stat.S_ISDIR(listing[name]["mode"]) and stat.S_IMODE(listing[name]["mode"]) == 0o700
    for level, prefix in ((l3, ""), (l2, "parent/"), (l1, "parent/parent/")):
        raw = listing[f"{prefix}pages-1.img"]
        assert stat.S_ISREG(raw["mode"]) and raw["sha256"] == _raw_sha(level, pid)
        assert f"{prefix}pages-1.zst.img" not in listing
        assert f"{prefix}pagemap-{pid}.img" in listing and f"{prefix}inventory.img" in listing
    assert stat.S_IMODE(listing["pages-1.img"]["mode"]) == 0o600
    assert listing["pages-1.img"]["nlink"] == 1 and listing[f"pagemap-{pid}.img"]["nlink"] == 2  # linked
    assert listing["parent/pages-1.img"]["nlink"] == 2  # level 2 is raw already: linked, not rewritten
    assert f"core-{pid}.img" in listing and "parent/parent/parent" not in listing
    argv = rec["argv"]
    assert argv[:2] == ["restore", "-D"] and "-d" in argv and "--leave-stopped" in argv
    assert "--shell-job" not in argv
    assert argv[argv.index("-W") + 1] == rec["cwd"] == str(images.parent)
    assert list(tmp.iterdir()) == []


def test_raw_checkpoint_is_given_to_criu_as_it_is(tmp_path, fake_criu):
    pid = _free_pid()
    ck = fake_set(tmp_path / "ck", pid, compress=False, sid=pid - 1)
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in ck.iterdir()}
    result = restore(ck, criu_args=["--tcp-established"])
    assert result.pid == 4242 and not result.materialised and result.pages_bytes == 0
    rec = fake_criu.record
    assert rec["images"] == str(ck)
    assert "--shell-job" in rec["argv"]  # the root task was not a session leader
    assert rec["argv"][-1] == "--tcp-established"
    log_dir = Path(rec["argv"][rec["argv"].index("-W") + 1])
    assert not log_dir.exists() and Path(rec["argv"][rec["argv"].index("-o") + 1]).parent == log_dir
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in ck.iterdir()}
    assert after == before
    restore(ck, shell_job=False)
    assert "--shell-job" not in fake_criu.record["argv"]


def test_cli_json_and_own_options(tmp_path, fake_criu):
    ck = fake_set(tmp_path / "ck", _free_pid())
    r = dumper("restore", ck, "--json", "--leave-stopped", "--", "--tcp-close")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pid"] == 4242 and out["leave_stopped"] is True and out["criu_version"] == "4.2"
    assert out["dir"] == str(ck) and out["criu"] == str(fake_criu.path) and out["materialised"] is True
    assert fake_criu.record["argv"][-1] == "--tcp-close"
    r = dumper("restore", ck)
    assert r.returncode == 0 and r.stdout.startswith(f"restored pid 4242 from {ck}: running; CRIU 4.2, ")
    r = dumper("restore", ck, "--", "-D", "/elsewhere")
    assert r.returncode == 1
    assert r.stderr == "dumper: error: CRIU option -D (the image directory) is set by dumper restore; leave it out\n"


def test_criu_failure_shows_log_and_cleans_up(tmp_path, fake_criu, monkeypatch):
    monkeypatch.setenv("FAKE_CRIU_MODE", "fail")
    ck = fake_set(tmp_path / "ck", _free_pid())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    keep = tmp_path / "criu.log"
    with pytest.raises(CriuFailed) as e:
        restore(ck, tmp_dir=tmp, log=keep)
    assert str(e.value) == "criu restore failed (exit status 1); the end of its log is above"
    assert e.value.details == ("(00.000003) Error (criu/cr-restore.c:1): fake failure one",
                               "(00.000004) Error (criu/cr-restore.c:2): Restoring FAILED.")
    assert list(tmp.iterdir()) == []
    assert "fake failure one" in keep.read_text() and stat.S_IMODE(keep.stat().st_mode) == 0o600
    r = dumper("restore", ck, "--tmp-dir", tmp)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-3:] == [
        "  (00.000003) Error (criu/cr-restore.c:1): fake failure one",
        "  (00.000004) Error (criu/cr-restore.c:2): Restoring FAILED.",
        "dumper: error: criu restore failed (exit status 1); the end of its log is above",
    ]
    assert list(tmp.iterdir()) == []


def test_interrupt_removes_the_temporary_copy(tmp_path, fake_criu, monkeypatch):
    monkeypatch.setenv("FAKE_CRIU_MODE", "sleep")
    ck = fake_set(tmp_path / "ck", _free_pid())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "dumper", "restore", str(ck), "--tmp-dir", str(tmp)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        wait_for(lambda: Path(str(fake_criu.record_path) + ".sleeping").exists(), what="the stand-in criu")
        assert len(list(tmp.iterdir())) == 1
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and err.endswith("dumper: interrupted\n"), err
    assert list(tmp.iterdir()) == []
    Path(str(fake_criu.record_path) + ".sleeping").unlink()
    p = subprocess.Popen([sys.executable, "-m", "dumper", "restore", str(ck), "--tmp-dir", str(tmp)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        wait_for(lambda: Path(str(fake_criu.record_path) + ".sleeping").exists(), what="the stand-in criu")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM
    assert list(tmp.iterdir()) == []


def test_no_room_for_the_raw_pages(tmp_path, fake_criu, monkeypatch):
    import dumper.restore as restore_pkg

    monkeypatch.setattr(restore_pkg, "_free_bytes", lambda path: 5 * PS)
    ck = fake_set(tmp_path / "ck", _free_pid())
    with pytest.raises(NotRestorable, match=r"the raw pages CRIU reads need 0 MiB in .*, which has 0 MiB free: "
                                            r"name another place with --tmp-dir"):
        restore(ck, tmp_dir=tmp_path)
    assert not fake_criu.ran
