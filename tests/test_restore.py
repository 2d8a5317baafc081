"""``dumper restore``: CRIU's own ``criu restore`` brings checkpoints back.

Three groups:

* without CRIU: lookup of the binary, the refusals (marked not restorable,
  pre-dump, memory only, missing or damaged images, pids taken), the raw
  image set given to CRIU (checked by a stand-in ``criu`` that records what
  it was given), failure and interruption clean-up;
* with CRIU 4.2 and image sets ``criu dump`` wrote: restored as they are,
  and after their pages were rewritten in dumper's zstd form (one level, and
  a three-level incremental chain), for every test target;
* with CRIU 4.2 and checkpoints ``dumper dump`` wrote: the same targets
  (a failed restore names what ``criu restore`` itself says about the set).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from google.protobuf import json_format

from dumper.errors import CriuFailed, CriuNotFound, ImageError, NotRestorable
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.pb import inventory_pb2, mm_pb2, pstree_pb2, vma_pb2
from dumper.image.reader import read_image
from dumper.image.writer import PagesWriter
from dumper.restore import restore
from dumper.restore import criu as criu_mod
from dumper.restore.checks import check_full_dump
from dumper.restore.criu import find_criu
from targets.restore_support import (
    Target,
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
    subreaper_for_module,
    thread_states,
    to_zstd,
    wait_for,
)
from targets import restore_python

PS = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parents[1]


# --- fixtures


_subreaper = pytest.fixture(scope="module", autouse=True)(subreaper_for_module)


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


def dumper(*args, criu_path: str | None = None, timeout: float = 300, new_session: bool = False,
           stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper", *map(str, args)], capture_output=True, text=True,
                          env=_env(criu_path), cwd=ROOT, timeout=timeout, start_new_session=new_session,
                          stdin=stdin)


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
    with PagesWriter(lambda n: _open_new(d / n), pid, 1, page_size=PS, compress=compress, frame_pages=4,
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
           "listing": listing, "stdin_isatty": os.isatty(0)}, open(record, "w"))
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
if mode == "hang":  # a "restored" child that never reports, and CRIU waiting for it
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    with open(record + ".child", "w") as f:
        f.write(str(child))
    time.sleep(600)
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
    assert "is marked not restorable: the dump did not save 2 resources" in str(e.value)
    assert e.value.details == (f"pid {pid} fd 5: socket: TCP sockets are not saved",
                               f"pid {pid} fd 6: inotify: inotify is not saved")
    assert not fake_criu.ran
    r = dumper("restore", ck)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"  pid {pid} fd 5: socket: TCP sockets are not saved",
        f"  pid {pid} fd 6: inotify: inotify is not saved",
        f"dumper: error: {ck} is marked not restorable: the dump did not save 2 resources criu restore would "
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
    # A flipped byte in raw pages (dump --no-compress): CRIU reads them as
    # they are, so their crc32s are checked first (a fresh-user trial saw
    # `restore` bring back a set `verify` rejects).
    raw = fake_set(tmp_path / "raw", pid, compress=False)
    rp = raw / "pages-1.img"
    data = bytearray(rp.read_bytes())
    data[5 * PS + 17] ^= 0xFF
    rp.write_bytes(bytes(data))
    with pytest.raises(NotRestorable) as e:
        restore(raw, tmp_dir=tmp_path)
    assert str(e.value).startswith(f"{raw} is damaged")
    assert any("do not match their checksum" in d for d in e.value.details), e.value.details
    assert not fake_criu.ran
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


def test_shell_job_and_terminal_as_the_dump_recorded(tmp_path, fake_criu):
    """inventory shell_job decides --shell-job; a saved terminal needs a
    terminal on our stdin, which CRIU then gets (and hands to the process)."""
    pid = _free_pid()
    plain = fake_set(tmp_path / "plain", pid, sid=pid - 1, shell_job=False)
    restore(plain)
    assert "--shell-job" not in fake_criu.record["argv"]  # the dump said no, whatever the sid
    ck = fake_set(tmp_path / "ck", pid, shell_job=True)
    _stub_image(ck / "tty-info.img", 0x59453036)
    r = dumper("restore", ck)
    assert r.returncode == 1
    assert r.stderr == (f"dumper: error: {ck} holds a terminal (a job started from a shell): criu restore "
                        "--shell-job gives the restored process the terminal on its own stdin, so run dumper "
                        "restore from a terminal\n")
    master, slave = os.openpty()
    try:
        r = dumper("restore", ck, stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 0, r.stderr
    rec = fake_criu.record
    assert "--shell-job" in rec["argv"] and rec["stdin_isatty"] is True
    (ck / "tty-info.img").unlink()
    r = dumper("restore", ck)
    assert r.returncode == 0 and fake_criu.record["stdin_isatty"] is False and "--shell-job" in fake_criu.record["argv"]


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


def test_criu_that_never_finishes_is_stopped(tmp_path, fake_criu, monkeypatch):
    """A restored task that stops itself before CRIU's last handshake (a
    SIGSTOP pending in its image does that) leaves CRIU waiting forever:
    --timeout kills CRIU and the tasks under it."""
    monkeypatch.setenv("FAKE_CRIU_MODE", "hang")
    ck = fake_set(tmp_path / "ck", _free_pid())
    t0 = time.monotonic()
    with pytest.raises(CriuFailed, match=r"^criu restore did not finish in 2 s: stopped it and the tasks it had "
                                         r"created"):
        restore(ck, timeout=2)
    assert time.monotonic() - t0 < 30
    child = int(Path(str(fake_criu.record_path) + ".child").read_text())
    wait_for(lambda: proc_state(child) in (None, "Z"), what="the stand-in's child to die")
    reap_zombie_children()
    assert proc_state(child) is None


def test_no_room_for_the_raw_pages(tmp_path, fake_criu, monkeypatch):
    import dumper.restore as restore_pkg

    monkeypatch.setattr(restore_pkg, "_free_bytes", lambda path: 5 * PS)
    ck = fake_set(tmp_path / "ck", _free_pid())
    with pytest.raises(NotRestorable, match=r"the raw pages CRIU reads need 0 MiB in .*, which has 0 MiB free: "
                                            r"name another place with --tmp-dir"):
        restore(ck, tmp_dir=tmp_path)
    assert not fake_criu.ran


# --- restoring real processes: helpers shared by the CRIU and dumper flows

_DIFFER = re.compile(r"^pid \d+: \[(0x[0-9a-f]+), (0x[0-9a-f]+)\) \d+ page\(s\) differ from the checkpoint$")


def assert_memory_matches(ck_dir: Path, pid: int) -> None:
    """``dumper verify CK --pid PID`` on the restored (stopped) process: every
    recorded page equals the live memory, except the rseq fields the kernel
    rewrites when a thread returns to user space (cpu ids, mm_cid)."""
    r = dumper("verify", ck_dir, "--pid", pid, "--max-problems", 100000)
    if r.returncode == 0:
        return
    ranges = []
    for line in r.stdout.splitlines():
        m = _DIFFER.match(line)
        assert m, f"dumper verify --pid: {line}\n{r.stdout}{r.stderr}"
        ranges.append((int(m.group(1), 16), int(m.group(2), 16)))
    import numpy as np

    allowed = rseq_kernel_bytes(rseq_areas(pid).values())
    with open_checkpoint(ck_dir) as ck, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for a, b in ranges:
            old = np.frombuffer(ck.read(None, a, b - a), np.uint8)
            mem.seek(a)
            new = np.frombuffer(mem.read(b - a), np.uint8)
            bad = sorted(set((np.flatnonzero(old != new) + a).tolist()) - allowed)
            assert not bad, f"restored memory differs from the checkpoint outside rseq fields at {bad[0]:#x}" \
                            f" ({len(bad)} bytes)"


# (image, field path, why): fields that differ between the checkpoint and a
# dump of the restored process by the nature of restoring (CRIU 4.2 dump of
# the original vs of the restored process, 8 threads, measured).
ALLOWED_DIFFS = [
    (r"^core-\d+\.img$", r"\.gpregs\.orig_ax$",
     "a thread stopped in a system call is restored at the restart point (ip and ax already rewound in the "
     "image), out of the call: orig_ax -1"),
    (r"^core-\d+\.img$", r"\.captured_gpregs\.(ax|ip|orig_ax)$",
     "dumper's registers as captured (for ELF cores): a thread that was inside a system call is restored at "
     "its restart point, so the next dump captures it elsewhere in the call's path"),
    (r"^core-\d+\.img$", r"\.tc\.flags$",
     "PF_FORKNOEXEC | PF_SUPERPRIV: CRIU forked the task as root and it never exec'd"),
    (r"^core-\d+\.img$", r"\.tc\.(task_state|stop_signo)$",
     "restored stopped (--leave-stopped) from a dump of a running process"),
    (r"^(files|pipes-data|fifo-data)\.img$", r"pipe_id$", "the pipes are new objects: new inode numbers"),
    (r"^ids-\d+\.img$", r"_ns_id$", "namespace ids are numbered per dump"),
]
_NOT_COMPARED = re.compile(r"^(pages-\d+(\.zst)?\.img|stats-\w+|inventory\.img|timens-\d+\.img|.*\.log|parent)$")


def _flatten(value, prefix: str = "") -> dict:
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


_VMA_RUN_FIELDS = ("start", "end", "pgoff", "nr_pages_dumped", "nr_pages_parent")


def _merged_vmas(vmas: list[dict]) -> list[dict]:
    """Adjacent VMAs that differ only in where they start merged into one,
    as the kernel merges the fresh mappings a restore makes (two anonymous
    VMAs the original process had apart, e.g. a library's bss and an mmap
    after it, come back as one)."""
    out: list[dict] = []
    for v in vmas:
        v = dict(v)
        if out:
            a = out[-1]
            same = all(a.get(k) == v.get(k) for k in set(a) | set(v) if k not in _VMA_RUN_FIELDS)
            anon = not int(a.get("shmid", 0) or 0) and not a.get("path")
            contiguous = int(a["end"]) == int(v["start"]) and (
                anon or int(v.get("pgoff", 0)) == int(a.get("pgoff", 0)) + int(a["end"]) - int(a["start"]))
            if same and contiguous:
                a["end"] = v["end"]
                for k in ("nr_pages_dumped", "nr_pages_parent"):
                    if k in a or k in v:
                        a[k] = str(int(a.get(k, 0)) + int(v.get(k, 0)))  # json_format's uint64: a string
                continue
        out.append(v)
    return out


def _merged_entries(entries: list[dict]) -> list[tuple[int, int, int]]:
    """Pagemap entries as ``(vaddr, nr_pages, flags)`` runs, adjacent ones
    with the same flags merged (where an entry ends is the dumper's choice)."""
    out: list[list[int]] = []
    for e in entries:
        nr = int(e.get("nr_pages", e.get("compat_nr_pages", 0)))
        flags = int(e.get("flags", fmt.PE_PARENT if e.get("in_parent") else fmt.PE_PRESENT))
        vaddr = int(e["vaddr"])
        if out and out[-1][2] == flags and out[-1][0] + out[-1][1] * PS == vaddr:
            out[-1][1] += nr
        else:
            out.append([vaddr, nr, flags])
    return [tuple(x) for x in out]


def _decode(path: Path) -> dict | None:
    """Flattened fields of every message of an image (VMAs and pagemap
    entries merged into runs first); None if dumper does not decode this
    image type (yet)."""
    try:
        name, msgs = read_image(path)
    except ImageError as err:
        if "are not read by dumper" in str(err) or "unknown image magic" in str(err):
            return None
        raise
    dicts = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs]
    if name == "MM":
        for d in dicts:
            d["vmas"] = _merged_vmas(d.get("vmas", []))
    elif name == "PAGEMAP":
        head = {k: v for k, v in dicts[0].items() if k not in ("nr_present_pages",)}
        dicts = [head, [list(r) for r in _merged_entries(dicts[1:])]]
    return _flatten(dicts)


def compare_dumps(first: Path, second: Path) -> list[str]:
    """Assert that a dump of the restored process (``second``) holds what the
    checkpoint (``first``) held: the same image files, and in each the same
    fields except :data:`ALLOWED_DIFFS` (orig_ax only to -1). Returns the
    images dumper could not decode (so not compared)."""
    a = {p.name for p in first.iterdir() if not _NOT_COMPARED.match(p.name)}
    b = {p.name for p in second.iterdir() if not _NOT_COMPARED.match(p.name)}
    assert a == b, f"images only in the checkpoint: {sorted(a - b)}, only in the second dump: {sorted(b - a)}"
    undecoded = []
    problems = []
    for name in sorted(a):
        fa, fb = _decode(first / name), _decode(second / name)
        if fa is None or fb is None:
            undecoded.append(name)
            continue
        for key in sorted(set(fa) | set(fb)):
            va, vb = fa.get(key), fb.get(key)
            if va == vb:
                continue
            rule = next((r for r in ALLOWED_DIFFS if re.search(r[0], name) and re.search(r[1], key)), None)
            if rule is None or (key.endswith("orig_ax") and str(vb) not in ("-1", str(2**64 - 1))):
                problems.append(f"{name}{key}: {va!r} -> {vb!r}")
    assert not problems, "the restored process differs from the checkpoint:\n" + "\n".join(problems[:40])
    return undecoded


@dataclass
class Spec:
    """A restore test target: ``command(bins)``; ``counters``: the ``NAME N``
    lines that must resume at the saved value + ``step``; ``stopped``:
    SIGSTOP'd before the dump (then restored stopped without
    --leave-stopped); ``after``: more checks once it runs again."""

    name: str
    command: Callable[[dict], list[str]]
    counters: tuple[str, ...]
    step: int = 1
    stopped: bool = False
    after: Callable | None = None


def _new_text(t: Target, size: int) -> str:
    return t.log_text()[size:]


def _threads_after(t: Target, pid: int, before: str) -> None:
    """SIGUSR1 runs on the sigaltstack; "go" written into pipe A wakes the
    reader, lets the holder read pipe B's saved bytes and the pending
    thread unblock its pending SIGUSR2."""
    assert re.search(r"^pending armed 1$", before, re.M), "SIGUSR2 was not pending at dump time"
    assert "reader " not in before.replace("tid reader", "")
    a_read, a_write, _, _ = map(int, re.search(r"^fds (\d+) (\d+) (\d+) (\d+)$", before, re.M).groups())
    size = len(before.encode())
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: re.search(r"^usr1 1 onstack=1$", _new_text(t, size), re.M), what="the SIGUSR1 handler")
    fd = os.open(f"/proc/{pid}/fd/{a_write}", os.O_WRONLY)
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)
    for line in ("reader 1 got go", "holder drained unread bytes in pipe B", "usr2 delivered 1"):
        wait_for(lambda: re.search(rf"^{line}$", _new_text(t, size), re.M), what=repr(line))


def _python_after(t: Target, pid: int, before: str) -> None:
    lines = re.findall(r"^py (\d+) (\d+)$", _new_text(t, len(before.encode())), re.M)
    want = restore_python.expected(int(i) for i, _ in lines)
    assert [(int(i), int(c)) for i, c in lines] == sorted(want.items())


def _asan_after(t: Target, pid: int, before: str) -> None:
    last = counters(before, "count")[-1]
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: proc_state(pid) in (None, "Z"), what="ASan to end the process")
    status = os.waitpid(pid, 0)[1]
    assert os.waitstatus_to_exitcode(status) == 1
    out = t.output()
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out, out[-3000:]
    at = int(re.search(r"^overflow at count (\d+)$", t.log_text(), re.M).group(1))
    assert at > last


SPECS = {
    "counter": Spec("counter", lambda b: [str(b["counter"])], ("count",)),
    "threads": Spec("threads", lambda b: [str(b["threads"])], ("main", "busy", "holder", "sleeper", "futex", "pending"),
                    after=_threads_after),
    "python": Spec("python", lambda b: python_target_argv(), ("py",), step=restore_python.EVERY, after=_python_after),
    "stopped": Spec("stopped", lambda b: [str(b["counter"])], ("count",), stopped=True),
    "asan": Spec("asan", lambda b: [str(b["asan"])], ("count",), after=_asan_after),
}


def start(spec: Spec, bins, tmp_path: Path) -> Target:
    t = Target(spec.command(bins), tmp_path, spec.name)
    try:
        wait_for(lambda: all(len(counters(t.log_text(), c)) >= 3 for c in spec.counters),
                 what=f"{spec.name} to make progress")
        if spec.stopped:
            os.kill(t.pid, signal.SIGSTOP)
            wait_for(lambda: proc_state(t.pid) == "T", what="SIGSTOP")
    except BaseException:
        t.close()
        raise
    return t


def criu_says(ck: Path, criu) -> str:
    """What ``criu restore`` itself says about ``ck`` (bypassing dumper's
    checks): its exit and the last errors of its log. Reaps and kills
    whatever it restored."""
    import tempfile

    from dumper.restore.criu import log_tail
    from dumper.restore.rawimages import materialise, needs_materialising

    with tempfile.TemporaryDirectory(prefix="criu-says-") as tmp:
        tmp = Path(tmp)
        images = ck
        with open_checkpoint(ck) as c:
            if needs_materialising(c):
                images = tmp / "images"
                images.mkdir()
                materialise(c, images)
        r = subprocess.run([criu.path, "restore", "-D", str(images), "-W", str(tmp), "-d", "-o", "r.log", "-v4",
                            "--pidfile", str(tmp / "pid")], capture_output=True, text=True)
        tail = log_tail(tmp / "r.log", 4)
        if r.returncode == 0 and (tmp / "pid").exists():
            kill_restored(int((tmp / "pid").read_text()))
        time.sleep(0.2)
        reap_zombie_children()
    how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
    return f"criu restore: {how}: " + " | ".join(tail or [r.stderr.strip()[-300:]])


def dumper_restore(ck: Path, criu, restored: list, *args) -> int:
    """``dumper restore CK --json ARGS`` -> the restored pid; a failure names
    what criu restore itself says about the set."""
    r = dumper("restore", ck, "--json", "--timeout", 240, *args, criu_path=criu.path)
    assert r.returncode == 0, f"{r.stderr}\n{criu_says(ck, criu)}"
    pid = json.loads(r.stdout)["pid"]
    restored.append(pid)
    return pid


class Maker:
    """How a checkpoint is made: ``dump(t, dest)`` kills the target;
    ``second(pid, dest)`` dumps the restored process and leaves it stopped."""

    def __init__(self, kind: str, criu, tmp_path: Path) -> None:
        self.kind, self.criu, self.tmp = kind, criu, tmp_path

    @property
    def _extra(self) -> list[str]:
        return {"dumper-raw": ["--no-compress"], "dumper-fork": ["--copy", "fork"]}.get(self.kind, [])

    def dump(self, t: Target, dest: Path) -> Path:
        if self.kind.startswith("criu"):
            raw = dest if self.kind == "criu" else self.tmp / "criu-raw"
            criu_dump(self.criu.path, t.pid, raw, self.tmp)
            self.first = raw
            if self.kind == "criu-zstd":
                to_zstd(raw, dest)
        else:
            # --copy fork leaves the process stopped, then it is killed: a fork is refused with --kill
            thaw = ["--leave-stopped"] if self.kind == "dumper-fork" else ["--kill"]
            r = dumper("dump", t.pid, "-D", dest, *thaw, *self._extra)
            assert r.returncode == 0, r.stderr
            if self.kind == "dumper-fork":
                assert "copy-on-write child" in r.stdout, r.stdout
                os.kill(t.pid, signal.SIGKILL)
            self.first = dest
        return dest

    def second(self, pid: int, dest: Path) -> Path:
        if self.kind.startswith("criu"):
            criu_dump(self.criu.path, pid, dest, self.tmp, "--leave-running")
        else:
            r = dumper("dump", pid, "-D", dest, *self._extra)
            assert r.returncode == 0, r.stderr
        return dest


def restore_flow(spec: Spec, maker: Maker, bins, tmp_path: Path, restored: list) -> dict[str, int]:
    """The issue's protocol: dump (killing the target), restore stopped,
    compare memory and a second dump with the checkpoint, SIGCONT, prove it
    goes on from the saved state, then the target's own checks."""
    t = start(spec, bins, tmp_path)
    try:
        ck = maker.dump(t, tmp_path / "ck")
        t.reap()
    finally:
        t.close()
    before = t.log_text()
    last = {c: counters(before, c)[-1] for c in spec.counters}

    pid = dumper_restore(ck, maker.criu, restored, *([] if spec.stopped else ["--leave-stopped"]))
    assert pid == t.pid
    states = wait_for(lambda: (s := thread_states(pid)) and set(s.values()) == {"T"} and s, what="a stopped restore")
    assert len(states) == (8 if spec.name == "threads" else 1)
    assert_memory_matches(ck, pid)
    undecoded = compare_dumps(maker.first, maker.second(pid, tmp_path / "again"))
    assert set(thread_states(pid).values()) == {"T"} and t.log_text() == before

    os.kill(pid, signal.SIGCONT)
    size = len(before.encode())
    for c in spec.counters:
        new = wait_for(lambda: (v := counters(_new_text(t, size), c)) and len(v) >= 2 and v,
                       what=f"{spec.name}: {c} to go on after the restore")
        assert new[0] == last[c] + spec.step, f"{c}: {last[c]} saved, {new[:3]} after the restore"
        assert new == list(range(new[0], new[0] + spec.step * len(new), spec.step))
    if spec.after:
        spec.after(t, pid, before)
    assert not undecoded, f"dumper cannot decode {undecoded}: not compared with the second dump"
    return last


# --- with CRIU: image sets criu dump wrote


@pytest.mark.slow
@pytest.mark.parametrize("target", list(SPECS))
def test_restore_criu_dump_through_zstd(target, criu, bins, tmp_path, restored):
    """criu dump, pages rewritten as dumper's pages-N.zst.img, dumper restore
    writes the raw pages back for CRIU."""
    restore_flow(SPECS[target], Maker("criu-zstd", criu, tmp_path), bins, tmp_path, restored)


@pytest.mark.slow
def test_restore_criu_dump_as_it_is(criu, bins, tmp_path, restored):
    """A raw set goes to criu restore directly: nothing is written into it,
    and it restores twice (after the first restored process is reaped)."""
    t = start(SPECS["counter"], bins, tmp_path)
    ck = tmp_path / "ck"
    try:
        criu_dump(criu.path, t.pid, ck, tmp_path)
        t.reap()
    finally:
        t.close()
    before = {p.name: p.stat().st_mtime_ns for p in ck.iterdir()}
    saved = counters(t.log_text(), "count")[-1]
    for _ in range(2):
        size = t.log_size()
        r = dumper("restore", ck, criu_path=criu.path)
        assert r.returncode == 0, r.stderr
        pid = int(re.match(r"restored pid (\d+) from ", r.stdout).group(1))
        restored.append(pid)
        assert pid == t.pid and {p.name: p.stat().st_mtime_ns for p in ck.iterdir()} == before
        new = wait_for(lambda: (v := counters(_new_text(t, size), "count")) and len(v) >= 3 and v, what="progress")
        assert new[0] == saved + 1
        kill_restored(pid)


@pytest.mark.slow
def test_restore_criu_dump_chain(criu, bins, tmp_path, restored):
    """A three-level chain (zstd <- raw <- zstd) made from a criu dump:
    CRIU follows the materialised parent directories and PE_PARENT entries."""
    t = start(SPECS["counter"], bins, tmp_path)
    try:
        criu_dump(criu.path, t.pid, tmp_path / "criu", tmp_path)
        t.reap()
    finally:
        t.close()
    top = make_chain(tmp_path / "criu", tmp_path / "chain")
    with open_checkpoint(top) as ck:
        assert len(ck.parent_paths) == 2 and ck.process().nr_pages_parent > 0
        assert ck.parent.process().nr_pages_parent > 0
    saved, size = counters(t.log_text(), "count")[-1], t.log_size()
    pid = dumper_restore(top, criu, restored, "--leave-stopped")
    assert pid == t.pid
    wait_for(lambda: proc_state(pid) == "T", what="a stopped restore")
    assert_memory_matches(top, pid)
    os.kill(pid, signal.SIGCONT)
    new = wait_for(lambda: (v := counters(_new_text(t, size), "count")) and len(v) >= 3 and v, what="progress")
    assert new[0] == saved + 1


@pytest.mark.slow
def test_restore_shell_job(criu, bins, tmp_path, restored):
    """A root task that is not a session leader needs --shell-job at dump,
    and at restore from another session: without it CRIU recreates the old
    process group with a helper task whose pid exists. dumper restore adds
    it from pstree.img; without it the failure names the cause."""
    # A session of its own (the suite's may be led from outside a pid
    # namespace, which CRIU refuses): a leader that spawns the counter and
    # stays, so the counter's group id names a live process at restore.
    leader = subprocess.Popen([sys.executable, "-c", _SESSION_LEADER, str(bins["counter"]), str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    pid = int(leader.stdout.readline())
    try:
        _restore_shell_job(criu, leader, pid, tmp_path, restored)
    finally:
        if leader.poll() is None and os.path.exists(f"/proc/{pid}"):
            try:
                if os.getsid(pid) == leader.pid:  # the original counter, not a restored one
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        leader.stdin.close()
        leader.wait(30)


_SESSION_LEADER = r"""
import os, subprocess, sys
counter, workdir = sys.argv[1], sys.argv[2]
r, w = os.pipe()
with open(os.path.join(workdir, "counter.out"), "ab") as out:
    p = subprocess.Popen([counter, str(w), os.path.join(workdir, "counter.log")], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, pass_fds=(w,))
os.close(w)
assert os.read(r, 16) == b"READY\n"
print(p.pid, flush=True)
p.wait()  # reaped as soon as criu dump kills it: its pid must be free for the restore
sys.stdin.read()
"""


def _restore_shell_job(criu, leader, pid: int, tmp_path: Path, restored: list[int]) -> None:
    log = tmp_path / "counter.log"
    assert os.getsid(pid) == leader.pid != pid
    wait_for(lambda: len(counters(log.read_text(), "count")) >= 3, what="progress")
    old_sid, pgid = os.getsid(pid), os.getpgid(pid)
    assert old_sid == pgid == leader.pid
    ck = tmp_path / "ck"
    criu_dump(criu.path, pid, ck, tmp_path, "--shell-job")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the dumped counter to be reaped by its leader")
    r = dumper("restore", ck, "--no-shell-job", "--json", criu_path=criu.path, new_session=True)
    if r.returncode == 0:
        restored.append(json.loads(r.stdout)["pid"])
    assert r.returncode == 1
    assert f"Can't fork for {pgid}: File exists" in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"dumper: error: criu restore failed (exit status 1): CRIU recreates the checkpoint's session and process "
        f"group {pgid} "
        f"with a helper task, and pid {pgid} exists here: --shell-job makes the restored process join the current "
        "session and group instead; the end of its log is above")
    time.sleep(0.2)
    reap_zombie_children()
    saved, size = counters(log.read_text(), "count")[-1], log.stat().st_size
    r = dumper("restore", ck, "--json", criu_path=criu.path, new_session=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    restored.append(out["pid"])
    assert out["shell_job"] is True and out["pid"] == pid
    assert os.getsid(pid) not in (old_sid, pid)  # --shell-job: it joined the restoring dumper's session
    new = wait_for(lambda: (v := counters(log.read_bytes()[size:].decode(errors="replace"), "count")) and len(v) >= 3 and v, what="progress")
    assert new[0] == saved + 1


def test_restore_refuses_while_the_original_runs(criu, bins, tmp_path):
    t = start(SPECS["counter"], bins, tmp_path)
    try:
        criu_dump(criu.path, t.pid, tmp_path / "ck", tmp_path, "--leave-running")
        r = dumper("restore", tmp_path / "ck", criu_path=criu.path)
        assert r.returncode == 1
        assert r.stderr.splitlines()[0] == f"  pid {t.pid} is in use by 'restore_counter', state S" or \
            r.stderr.splitlines()[0] == f"  pid {t.pid} is in use by 'restore_counter', state R"
        assert "criu restore recreates the checkpoint's original pids" in r.stderr
    finally:
        t.close()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["counter", "threads", "python", "asan"])
def test_restore_dumper_memory_with_criu_process_images(target, criu, bins, tmp_path, restored):
    """dumper dump's memory images (pagemap, zstd pages) in CRIU's image set
    of the same stopped process: dumper restore writes the raw pages back
    and CRIU brings the process back from dumper's pages. (The other images
    come from CRIU until dumper writes them: its inventory has no root_ids
    yet, "No kIDs provided", and its mm no reg-file ids, "No entry for
    reg-file-ID 0".)"""
    spec = SPECS[target]
    t = start(spec, bins, tmp_path)
    try:
        os.kill(t.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(t.pid) == "T", what="SIGSTOP")
        criu_dump(criu.path, t.pid, tmp_path / "criu", tmp_path, "--leave-running")
        r = dumper("dump", t.pid, "-D", tmp_path / "dumper")
        assert r.returncode == 0, r.stderr
    finally:
        t.close()
    ck = tmp_path / "ck"
    ck.mkdir()
    for src, names in ((tmp_path / "criu", lambda n: not n.startswith(("pagemap-", "pages-"))),
                       (tmp_path / "dumper", lambda n: n.startswith(("pagemap-", "pages-")))):
        for p in src.iterdir():
            if names(p.name):
                os.link(p, ck / p.name)
    assert (ck / "pages-1.zst.img").exists() and not (ck / "pages-1.img").exists()
    before = t.log_text()
    last = {c: counters(before, c)[-1] for c in spec.counters}
    pid = dumper_restore(ck, criu, restored)
    assert pid == t.pid
    wait_for(lambda: (s := thread_states(pid)) and set(s.values()) == {"T"}, what="a stopped restore")
    assert_memory_matches(ck, pid)
    os.kill(pid, signal.SIGCONT)
    size = len(before.encode())
    for c in spec.counters:
        new = wait_for(lambda: (v := counters(_new_text(t, size), c)) and len(v) >= 2 and v, what=f"{c} to go on")
        assert new[0] == last[c] + spec.step
    if spec.after:
        spec.after(t, pid, before)


# --- with CRIU: checkpoints dumper dump wrote (issue 10's dump side)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(SPECS))
def test_restore_dumper_dump(target, criu, bins, tmp_path, restored):
    restore_flow(SPECS[target], Maker("dumper", criu, tmp_path), bins, tmp_path, restored)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["counter", "threads", "python"])
def test_restore_dumper_dump_copied_from_a_forked_snapshot(target, criu, bins, tmp_path, restored):
    """``--copy fork``: pages read from the copy-on-write child after the
    thaw (here the kill) bring the process back as it was at the freeze."""
    restore_flow(SPECS[target], Maker("dumper-fork", criu, tmp_path), bins, tmp_path, restored)


@pytest.mark.slow
def test_restore_dumper_dump_no_compress(criu, bins, tmp_path, restored):
    """A --no-compress checkpoint goes to CRIU as it is, and plain
    ``criu restore -D DIR`` accepts it without dumper."""
    saved = restore_flow(SPECS["counter"], Maker("dumper-raw", criu, tmp_path), bins, tmp_path, restored)["count"]
    kill_restored(restored[-1])
    log = tmp_path / "counter.log"
    size = log.stat().st_size
    r = subprocess.run([criu.path, "restore", "-D", str(tmp_path / "ck"), "-d", "-o", str(tmp_path / "plain.log"),
                        "--pidfile", str(tmp_path / "plain.pid")], capture_output=True, text=True)
    assert r.returncode == 0, (tmp_path / "plain.log").read_text()[-2000:]
    restored.append(int((tmp_path / "plain.pid").read_text()))
    new = wait_for(lambda: (v := counters(log.read_text()[size:], "count")) and len(v) >= 3 and v, what="progress")
    assert new[0] == saved + 1  # from the checkpoint's counter again


@pytest.mark.slow
def test_restore_dumper_chain(criu, bins, tmp_path, restored):
    """pre-dump, then dump --parent --kill: the chain restores to the final
    state (CRIU reads PE_PARENT pages from the pre-dump)."""
    t = start(SPECS["counter"], bins, tmp_path)
    try:
        r = dumper("pre-dump", t.pid, "-D", tmp_path / "1")
        assert r.returncode == 0, r.stderr
        mark = counters(t.log_text(), "count")[-1]
        wait_for(lambda: counters(t.log_text(), "count")[-1] > mark + 20, what="progress after the pre-dump")
        r = dumper("dump", t.pid, "-D", tmp_path / "2", "--parent", tmp_path / "1", "--kill")
        assert r.returncode == 0, r.stderr
        t.reap()
    finally:
        t.close()
    with open_checkpoint(tmp_path / "2") as ck:
        assert ck.parent_paths and ck.process().nr_pages_parent > 0
    saved, size = counters(t.log_text(), "count")[-1], t.log_size()
    r = dumper("restore", tmp_path / "1", criu_path=criu.path)
    assert r.returncode == 1 and "is a pre-dump" in r.stderr
    pid = dumper_restore(tmp_path / "2", criu, restored, "--leave-stopped")
    assert pid == t.pid
    wait_for(lambda: proc_state(pid) == "T", what="a stopped restore")
    assert_memory_matches(tmp_path / "2", pid)
    os.kill(pid, signal.SIGCONT)
    new = wait_for(lambda: (v := counters(_new_text(t, size), "count")) and len(v) >= 3 and v, what="progress")
    assert new[0] == saved + 1


def _ns_clocks(pid: int) -> dict[str, int]:
    """CLOCK_MONOTONIC and CLOCK_BOOTTIME as ``pid`` sees them (ns): the
    host's plus its time namespace's offsets."""
    offsets = {"monotonic": 0, "boottime": 0}
    with open(f"/proc/{pid}/timens_offsets") as f:
        for line in f:
            name, sec, nsec = line.split()
            offsets[name] = int(sec) * 10**9 + int(nsec)
    return {"monotonic": time.clock_gettime_ns(time.CLOCK_MONOTONIC) + offsets["monotonic"],
            "boottime": time.clock_gettime_ns(time.CLOCK_BOOTTIME) + offsets["boottime"]}


def test_a_restored_process_checkpoints_and_restores_again(criu, bins, tmp_path, restored):
    """criu restore puts what it restores in a new time namespace (its clocks
    continue from the dump). Dumping that process again was marked not
    restorable ("time namespace: differs from the dumper's"), so a migrated
    process could not migrate twice. Now the time namespace is saved as
    CRIU saves it: timens-ID.img with the clocks as the process sees them,
    ID the time_ns_id of its ids image; a second restore continues."""
    t = start(SPECS["counter"], bins, tmp_path)
    try:
        r = dumper("dump", t.pid, "-D", tmp_path / "ck1", "--kill")
        assert r.returncode == 0, r.stderr
        t.reap()
    finally:
        t.close()
    pid = dumper_restore(tmp_path / "ck1", criu, restored, "--leave-stopped")
    assert os.stat(f"/proc/{pid}/ns/time").st_ino != os.stat("/proc/self/ns/time").st_ino
    # verify --pid on the restored process (a later start time: it was refused as "the pid was reused")
    r = dumper("verify", tmp_path / "ck1", "--pid", pid)
    assert r.returncode == 0 and f"note: pid {pid} started after the dump" in r.stdout, r.stdout + r.stderr
    assert "a restored process" in r.stdout
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: counters(t.log_text(), "count")[-1] > 10, what="progress after the first restore")
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(pid) == "T", what="SIGSTOP")
    before = _ns_clocks(pid)
    r = dumper("dump", pid, "-D", tmp_path / "ck2")
    after = _ns_clocks(pid)
    assert r.returncode == 0 and "not restorable" not in r.stderr + r.stdout, r.stderr
    with open_checkpoint(tmp_path / "ck2") as ck:
        assert list(ck.inventory.unrestorable) == []
        root_time = ck.inventory.root_ids.time_ns_id
    ids = read_image(tmp_path / "ck2" / fmt.ids_name(pid))[1][0]
    assert ids.time_ns_id != root_time
    assert sorted(p.name for p in (tmp_path / "ck2").glob("timens-*.img")) == [f"timens-{ids.time_ns_id}.img"]
    (te,) = read_image(tmp_path / "ck2" / fmt.timens_name(ids.time_ns_id))[1]
    for name in ("monotonic", "boottime"):
        ts = getattr(te, name)
        assert before[name] <= ts.tv_sec * 10**9 + ts.tv_nsec <= after[name], name
    kill_restored(pid)
    saved, size = counters(t.log_text(), "count")[-1], t.log_size()
    pid = dumper_restore(tmp_path / "ck2", criu, restored)
    wait_for(lambda: proc_state(pid) == "T", what="a stopped restore (it was dumped stopped)")
    os.kill(pid, signal.SIGCONT)
    new = wait_for(lambda: (v := counters(_new_text(t, size), "count")) and len(v) >= 3 and v, what="progress")
    assert new[0] == saved + 1


@pytest.mark.slow
@pytest.mark.parametrize("kind,reason", [("tcp", "socket"), ("inotify", "inotify"), ("child", "child")])
def test_dumper_dump_not_restorable_is_refused(kind, reason, criu, bins, tmp_path):
    """A process holding what dumper does not save (a TCP socket, an inotify
    descriptor, a child left out with --single): the dump completes and
    marks the checkpoint; dumper restore refuses it with the reasons."""
    t = Target([str(bins["unrestorable"])], tmp_path, kind, args=(kind,))
    try:
        # A child is part of a tree dump: only --single leaves it outside.
        r = dumper("dump", t.pid, "-D", tmp_path / "ck", *(["--single"] if kind == "child" else []))
        assert r.returncode == 0, r.stderr
        assert proc_state(t.pid) in ("R", "S")
    finally:
        t.close()
    with open_checkpoint(tmp_path / "ck") as ck:
        kinds = [x.kind for x in ck.inventory.unrestorable]
    assert any(reason in k for k in kinds), kinds
    r = dumper("restore", tmp_path / "ck", criu_path=criu.path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1].startswith(f"dumper: error: {tmp_path / 'ck'} is marked not restorable")
    assert any(reason in line for line in lines[:-1]), r.stderr


def _open_new(path):
    """A new 0600 file for a test's PagesWriter."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return open(fd, "wb")
