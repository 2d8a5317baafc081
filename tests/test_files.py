"""Open files: collection from real processes (dumper.proc.fds), CRIU images
(dumper.dump.files), differential against ``criu dump`` and restore by
``criu restore``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from dumper.errors import NoSuchProcess
from dumper.kernel import fcntl as kf
from dumper.proc.fds import collect_fds, collect_path, read_umask
from dumper.proc.process import Process

from files_helpers import (
    DATA_POS,
    DATA_SIZE,
    EFD_COUNTER,
    FIFO_BYTES,
    GHOST_POS,
    GHOST_SIZE,
    LOG_POS,
    PIPE_BYTES,
    PIPE_SIZE,
    SPARSE_OFF,
    SPARSE_SIZE,
    FdsTarget,
    build_target,
    letters,
    pattern,
)


@pytest.fixture(scope="session")
def fds_exe(tmp_path_factory):
    return build_target(tmp_path_factory.mktemp("fds-bin"))


@pytest.fixture
def fds_target(fds_exe, tmp_path):
    """``fds_target(*args)`` -> a running FdsTarget in a fresh directory."""
    made: list[FdsTarget] = []

    def spawn(*args: str, name: str = "t") -> FdsTarget:
        t = FdsTarget(fds_exe, tmp_path / f"{name}{len(made)}", *args)
        made.append(t)
        return t

    yield spawn
    for t in made:
        t.close()


def by_fd(fds):
    return {f.fd: f for f in fds}


# --- collection --------------------------------------------------------------


def test_collect_each_kind_with_its_values(fds_target):
    t = fds_target()
    t.stop()
    fds = by_fd(collect_fds(Process(t.pid)))
    n = t.fds
    d = str(t.dir)

    assert sorted(fds) == sorted([0, 1, 2, *n.values()])
    assert all(f.unrestorable is None for f in fds.values()), [f.unrestorable for f in fds.values()]

    log = fds[n["log"]]
    assert (log.kind, log.path, log.pos, log.cloexec) == ("reg", f"{d}/log", LOG_POS, False)
    assert log.flags & (kf.O_ACCMODE | kf.O_APPEND) == kf.O_WRONLY | kf.O_APPEND
    assert log.flags & kf.O_CLOEXEC == 0  # the descriptor's bit is in cloexec, as CRIU keeps it
    dup = fds[n["log_dup"]]
    assert (dup.ino, dup.pos, dup.flags) == (log.ino, log.pos, log.flags)

    data = fds[n["data"]]
    assert (data.kind, data.pos, data.cloexec, data.file.size) == ("reg", DATA_POS, True, DATA_SIZE)
    assert data.flags & kf.O_ACCMODE == kf.O_RDWR
    assert (data.file.deleted, data.file.ghost, data.file.build_id) == (False, None, None)
    assert stat.S_IMODE(data.file.mode) == 0o600

    ghost = fds[n["ghost"]]
    assert (ghost.path, ghost.pos, ghost.file.deleted, ghost.file.nlink) == (f"{d}/ghost", GHOST_POS, True, 0)
    assert ghost.file.ghost.read_all() == pattern(GHOST_SIZE, 13, 5)
    assert stat.S_IMODE(ghost.file.mode) == 0o640  # 0644 & ~umask 027

    sparse = fds[n["sparse"]]
    assert sparse.file.ghost.size == SPARSE_SIZE
    assert [(off, len(b)) for off, b in sparse.file.ghost.extents] == [(0, 8192), (SPARSE_OFF, 4096)]
    assert sparse.file.ghost.extents[1][1] == pattern(4096, 13, 5)

    null = fds[n["devnull"]]
    assert (null.kind, null.path, null.cloexec, null.flags & kf.O_ACCMODE) == ("chr", "/dev/null", True, kf.O_WRONLY)
    urandom = fds[n["urandom"]]
    assert (urandom.kind, urandom.path) == ("chr", "/dev/urandom")
    assert urandom.flags & kf.O_NONBLOCK

    dirfd = fds[n["dir"]]
    assert (dirfd.kind, dirfd.path) == ("dir", d)
    assert dirfd.flags & kf.O_DIRECTORY

    pr, pw = fds[n["pipe_r"]], fds[n["pipe_w"]]
    assert (pr.kind, pw.kind) == ("pipe", "pipe")
    assert pr.pipe.pipe_id == pw.pipe.pipe_id == pr.ino
    assert pr.pipe.data == letters(PIPE_BYTES, "a")
    assert pr.pipe.size == pw.pipe.size == PIPE_SIZE
    assert pw.pipe.data is None  # a write end is not read from (CRIU: dump_one_pipe_data)
    assert pr.flags & kf.O_NONBLOCK and not pw.flags & kf.O_NONBLOCK

    fr, fw = fds[n["fifo_r"]], fds[n["fifo_w"]]
    assert (fr.kind, fr.path, fw.path) == ("fifo", f"{d}/fifo", f"{d}/fifo")
    assert fr.pipe.data == letters(FIFO_BYTES, "A") and fw.pipe.data is None
    assert fr.pipe.pipe_id == fw.pipe.pipe_id == os.stat(f"{d}/fifo").st_ino
    assert (fr.cloexec, fw.cloexec) == (False, True)

    efd = fds[n["efd"]]
    assert (efd.kind, efd.eventfd_counter, efd.cloexec) == ("eventfd", EFD_COUNTER, True)
    assert efd.flags & (kf.O_ACCMODE | kf.O_NONBLOCK) == kf.O_RDWR | kf.O_NONBLOCK

    opath = fds[n["opath"]]
    assert (opath.kind, opath.path, opath.flags & kf.O_PATH) == ("reg", f"{d}/data", kf.O_PATH)

    assert all(f.fown.pid == 0 and f.fown.signum == 0 for f in fds.values())

    # Nothing was consumed or moved: the target finds its bytes and positions.
    t.cont()
    rep = t.report()
    assert (rep["pipe_bytes"], rep["pipe_ok"]) == (str(PIPE_BYTES), "1")
    assert (rep["fifo_bytes"], rep["fifo_ok"]) == (str(FIFO_BYTES), "1")
    assert rep["efd_counter"] == str(EFD_COUNTER)
    assert (rep["pos_data"], rep["pos_ghost"], rep["pos_sparse"]) == (str(DATA_POS), str(GHOST_POS), "7")
    assert (rep["ghost_ok"], rep["sparse_ok"]) == ("1", "1")


def test_collect_cwd_root_exe_umask(fds_target, fds_exe):
    t = fds_target()
    t.stop()
    p = Process(t.pid)
    cwd, root, exe = collect_path(p, "cwd"), collect_path(p, "root"), collect_path(p, "exe")
    assert (cwd.path, stat.S_ISDIR(cwd.mode), cwd.reason) == (str(t.dir), True, None)
    assert (root.path, root.reason) == ("/", None)
    assert exe.path == str(fds_exe)
    assert exe.build_id and len(exe.build_id) == 20  # gcc's default sha1 build-id
    assert read_umask(p) == 0o027


def test_collect_owner_and_signal(fds_target):
    """F_SETOWN_EX / F_SETSIG live in the open file description: read them
    through our copy of it."""
    import fcntl

    t = fds_target()
    # Give the target's log descriptor an owner through /proc: a new open file
    # description would not do, so use pidfd_getfd and set it on the shared one.
    from dumper.kernel.pidfd import pidfd_getfd, pidfd_open

    pidfd = pidfd_open(t.pid)
    copy = pidfd_getfd(pidfd, t.fds["data"])
    try:
        fcntl.fcntl(copy, fcntl.F_SETOWN, t.pid)
        fcntl.fcntl(copy, fcntl.F_SETSIG, 10)
    finally:
        os.close(copy)
        os.close(pidfd)
    t.stop()
    f = by_fd(collect_fds(Process(t.pid)))[t.fds["data"]]
    assert (f.fown.pid, f.fown.pid_type, f.fown.signum) == (t.pid, kf.F_OWNER_PID, 10)
    assert (f.fown.uid, f.fown.euid) == (os.getuid(), os.geteuid())


def test_collect_unrestorable_kinds_named(fds_target):
    t = fds_target("--bad")
    t.stop()
    fds = by_fd(collect_fds(Process(t.pid)))
    tcp, ino, sfd = fds[t.fds["tcp"]], fds[t.fds["inotify"]], fds[t.fds["signalfd"]]
    assert (tcp.kind, tcp.unrestorable) == ("socket", "TCP socket (IPv4)")
    assert (ino.kind, ino.unrestorable) == ("inotify", "inotify")
    assert (sfd.kind, sfd.unrestorable) == ("signalfd", "signalfd")
    # the others are unaffected
    assert fds[t.fds["pipe_r"]].unrestorable is None


EDGE_TARGET = textwrap.dedent(
    """
    import os, sys, time
    d = sys.argv[1]
    os.mkdir(d + "/gone"); gone = os.open(d + "/gone", os.O_RDONLY | os.O_DIRECTORY); os.rmdir(d + "/gone")
    os.mkfifo(d + "/f"); fifo = os.open(d + "/f", os.O_RDWR); os.unlink(d + "/f")
    big = os.open(d + "/big", os.O_RDWR | os.O_CREAT); os.write(big, b"x" * 20000); os.unlink(d + "/big")
    with open(d + "/linked", "w") as f: f.write("y")
    os.link(d + "/linked", d + "/other"); linked = os.open(d + "/linked", os.O_RDONLY); os.unlink(d + "/linked")
    with open(d + "/renamed", "w") as f: f.write("z")
    swapped = os.open(d + "/renamed", os.O_RDONLY)
    with open(d + "/new", "w") as f: f.write("w")
    os.rename(d + "/new", d + "/renamed")  # the name now belongs to another file; ours shows as deleted
    os.mkdir(d + "/cwd"); os.chdir(d + "/cwd"); os.rmdir(d + "/cwd")
    print(gone, fifo, big, linked, swapped, flush=True)
    time.sleep(600)
    """
)


def test_collect_paths_a_restore_cannot_reopen(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", EDGE_TARGET, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        gone, fifo, big, linked, swapped = map(int, proc.stdout.readline().split())
        p = Process(proc.pid)
        fds = by_fd(collect_fds(p, ghost_limit=8192))
        assert fds[gone].kind == "dir" and "deleted directory" in fds[gone].unrestorable
        assert fds[fifo].kind == "fifo" and "deleted FIFO" in fds[fifo].unrestorable
        assert "ghost limit" in fds[big].unrestorable and fds[big].file.ghost is None
        assert "still has links elsewhere" in fds[linked].unrestorable
        # nlink 0 after the rename over it: an ordinary ghost, contents kept
        assert fds[swapped].unrestorable is None and fds[swapped].file.ghost.read_all() == b"z"
        cwd = collect_path(p, "cwd")
        assert cwd.deleted and "deleted directory" in cwd.reason
        assert by_fd(collect_fds(p))[big].file.ghost.read_all() == b"x" * 20000  # under the default limit
    finally:
        proc.kill()
        proc.wait()


def test_collect_gone_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    p = Process(proc.pid)
    proc.wait()
    with pytest.raises(NoSuchProcess):
        collect_fds(p)


# --- images ------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from criu_helpers import criu_binary, criu_dump, criu_restore, read_entries, read_msgs  # noqa: E402

FILES_IMAGES = ("files.img", "pipes-data.img", "fifo-data.img", "remap-fpath.img", "tty-info.img")


def files_images(d: Path) -> list[str]:
    """Names of the images a FileTable writes, found in ``d``."""
    return sorted(
        p.name
        for p in d.iterdir()
        if p.name in FILES_IMAGES or p.name.startswith(("fdinfo-", "fs-", "ghost-file-"))
    )


def dump_ours(pids: list[int], dest: Path):
    """Our images for the frozen tree ``pids`` (root first), in CRIU's order
    per process (criu/cr-dump.c dump_one_task: mapped files, descriptors,
    exe, fs). Returns (table, {pid: fdinfo list}, {pid: {vma start: id}},
    {pid: exe id})."""
    from dumper.dump.files import FileTable, write_fdinfo
    from dumper.image.writer import CheckpointWriter

    table = FileTable()
    fdinfos, maps, exes = {}, {}, {}
    for pid in pids:
        p = Process(pid)
        maps[pid] = {v.start: table.mapped_file(pid, v) for v in p.vmas() if v.path.startswith("/")}
        fdinfos[pid] = table.add_process(pid, collect_fds(p))
        exes[pid] = table.exe_file(pid)
        table.fs_entry(pid)
    with CheckpointWriter(dest) as w:
        table.write(w)
        for pid in pids:
            write_fdinfo(w, pid, fdinfos[pid])  # named by pid here; the restore test renames
        w.commit()
    return table, fdinfos, maps, exes


_ID_FIELDS = {"id", "regf_id", "tty_info_id"}


def _renumbered(msg, ids: dict[int, int]):
    """A copy of a file_entry with every file id in it (its own, its
    sub-message's, a FIFO's or terminal's regf_id) replaced through ``ids``."""
    m = type(msg)()
    m.CopyFrom(msg)
    m.id = ids[m.id]
    for fd, sub in m.ListFields():
        if fd.message_type is None:
            continue
        for name in ("id", "regf_id"):
            if name in sub.DESCRIPTOR.fields_by_name and sub.HasField(name):
                setattr(sub, name, ids[getattr(sub, name)])
    return m


def criu_ids_of(criu_dir: Path, pid: int):
    from dumper.image import format as fmt

    (ids,) = read_msgs(criu_dir / fmt.ids_name(pid))
    (mm,) = read_msgs(criu_dir / fmt.mm_name(pid))
    return ids, mm


def id_map(criu_dir: Path, ours_dir: Path, pids, maps, exes) -> dict[int, int]:
    """CRIU's file id -> ours, from every place that names one; asserts
    that it is one-to-one."""
    from dumper.image import format as fmt

    pairs: list[tuple[int, int]] = []
    for pid in pids:
        ids, mm = criu_ids_of(criu_dir, pid)
        theirs = read_msgs(criu_dir / fmt.fdinfo_name(ids.files_id))
        ours = read_msgs(ours_dir / fmt.fdinfo_name(pid))
        assert [(e.fd, e.type, e.flags) for e in theirs] == [(e.fd, e.type, e.flags) for e in ours]
        pairs += [(a.id, b.id) for a, b in zip(theirs, ours)]
        file_vmas = [v for v in mm.vmas if v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED)]
        assert sorted(v.start for v in file_vmas) == sorted(s for s, i in maps[pid].items() if i)
        pairs += [(v.shmid, maps[pid][v.start]) for v in file_vmas]
        pairs.append((mm.exe_file_id, exes[pid]))
        (fs_c,) = read_msgs(criu_dir / fmt.fs_name(pid))
        (fs_o,) = read_msgs(ours_dir / fmt.fs_name(pid))
        assert fs_c.umask == fs_o.umask
        pairs += [(fs_c.cwd_id, fs_o.cwd_id), (fs_c.root_id, fs_o.root_id)]
    theirs = {e.id: e for e in read_msgs(criu_dir / "files.img")}
    ours = {e.id: e for e in read_msgs(ours_dir / "files.img")}
    for c, o in list(pairs):  # ids named only inside files.img: a FIFO's or terminal's path
        for sub in ("fifo", "tty"):
            if theirs[c].HasField(sub) and ours[o].HasField(sub):
                pairs.append((getattr(theirs[c], sub).regf_id, getattr(ours[o], sub).regf_id))
    mapping = dict(pairs)
    assert len(mapping) == len(set(pairs)), f"one CRIU id maps to two of ours: {sorted(set(pairs))}"
    assert len(set(mapping.values())) == len(mapping), "two CRIU ids map to one of ours"
    assert set(mapping) == set(theirs) and set(mapping.values()) == set(ours)
    return mapping


def test_id_renumbering_helper_renames_every_file_id():
    from dumper.image.pb import fdinfo_pb2, fifo_pb2

    e = fdinfo_pb2.file_entry(type=fdinfo_pb2.FIFO, id=3, fifo=fifo_pb2.fifo_entry(id=3, pipe_id=9, regf_id=4))
    r = _renumbered(e, {3: 30, 4: 40})
    assert (r.id, r.fifo.id, r.fifo.regf_id, r.fifo.pipe_id) == (30, 30, 40, 9)


@pytest.mark.parametrize("tree", ["single", "fork"])
def test_differential_with_criu_dump(fds_target, tmp_path, tree):
    """Our files/fdinfo/fs/pipes-data/fifo-data/remap/ghost images against
    ``criu dump --leave-running`` of the same stopped process (tree),
    decoded, field by field.

    Differ by nature: nothing here. File ids would differ if files were
    added in another order than CRIU's (they are mapped, not compared); in
    CRIU's order they come out equal, which is asserted too.
    """
    criu_binary()
    t = fds_target(*(["--fork"] if tree == "fork" else []))
    pids = [t.pid] + ([t.fds["child"]] if tree == "fork" else [])
    for pid in reversed(pids):
        os.kill(pid, 19)  # SIGSTOP: a consistent tree for both dumpers
    from files_helpers import wait_state

    for pid in pids:
        wait_state(pid, "T")
    ours_dir, criu_dir = tmp_path / "ours", tmp_path / "criu"
    table, fdinfos, maps, exes = dump_ours(pids, ours_dir)  # first: CRIU's reads would set atimes
    criu_dump(t.pid, criu_dir)
    assert table.unrestorable == []

    mapping = id_map(criu_dir, ours_dir, pids, maps, exes)
    assert all(k == v for k, v in mapping.items()), "CRIU's order gives CRIU's ids"

    theirs = {e.id: e for e in read_msgs(criu_dir / "files.img")}
    ours = {e.id: e for e in read_msgs(ours_dir / "files.img")}
    for cid, e in theirs.items():
        assert _renumbered(e, mapping) == ours[mapping[cid]], f"file {cid}"

    for name in ("pipes-data.img", "fifo-data.img"):
        assert read_entries(criu_dir / name) == read_entries(ours_dir / name), name
    (pd,) = read_entries(ours_dir / "pipes-data.img")  # one pipe, saved once for all its ends
    assert (pd[0].bytes, pd[0].size, pd[1]) == (PIPE_BYTES, PIPE_SIZE, letters(PIPE_BYTES, "a"))

    rt, ro = read_msgs(criu_dir / "remap-fpath.img"), read_msgs(ours_dir / "remap-fpath.img")
    assert [(mapping[r.orig_id], r.remap_id, r.remap_type) for r in rt] == [
        (r.orig_id, r.remap_id, r.remap_type) for r in ro
    ]
    ghosts = [n for n in files_images(criu_dir) if n.startswith("ghost-file-")]
    assert ghosts == [n for n in files_images(ours_dir) if n.startswith("ghost-file-")] and len(ghosts) == 2
    for name in ghosts:
        assert read_entries(criu_dir / name) == read_entries(ours_dir / name), name

    if tree == "fork":  # inherited descriptors: one file_entry for both processes
        parent, child = ({e.fd: e.id for e in fdinfos[pid]} for pid in pids)
        assert parent == child


def swap_in_ours(criu_dir: Path, ours_dir: Path, dest: Path, pids, maps, exes) -> Path:
    """CRIU's image set with every files image replaced by ours: files,
    fdinfo (renamed to CRIU's files_id), fs, pipes/fifo data, remaps, ghosts,
    tty-info; mm's exe_file_id and file VMA shmids set to our ids."""
    import shutil

    from dumper.image import format as fmt

    shutil.copytree(criu_dir, dest)
    for name in files_images(dest):
        (dest / name).unlink()
    for name in files_images(ours_dir):
        if not name.startswith("fdinfo-"):
            shutil.copy(ours_dir / name, dest / name)
    for pid in pids:
        ids, mm = criu_ids_of(criu_dir, pid)
        shutil.copy(ours_dir / fmt.fdinfo_name(pid), dest / fmt.fdinfo_name(ids.files_id))
        mm.exe_file_id = exes[pid]
        for v in mm.vmas:
            if v.status & (fmt.VMA_FILE_PRIVATE | fmt.VMA_FILE_SHARED):
                v.shmid = maps[pid][v.start]
        (dest / fmt.mm_name(pid)).write_bytes(fmt.encode_image("MM", [mm]))
    return dest


def _comparable(f):
    """What a restore must give back of a descriptor. CRIU 4.2's restore
    opens with ``flags & ~O_TMPFILE`` (criu/files-reg.c
    do_open_reg_noseek_flags), and O_TMPFILE includes O_DIRECTORY: a
    directory comes back without that open-time-only flag."""
    return (
        f.fd, f.kind, f.path, f.flags & ~kf.O_DIRECTORY, f.cloexec, f.pos,
        f.pipe.data if f.pipe else None, f.pipe.size if f.pipe else None, f.eventfd_counter,
        f.file.ghost.read_all() if f.file and f.file.ghost else None,
        f.file.deleted if f.file else None, stat.S_IMODE(f.file.mode) if f.file else None,
    )


@pytest.mark.parametrize("tree", ["single", "fork"])
def test_criu_restores_our_files_images(fds_target, tmp_path, tree):
    """criu restore of CRIU's own core/mm/pages/pstree/ids/inventory images
    with our files, fdinfo, fs, pipes/fifo data, remap and ghost images
    swapped in: the process continues with its descriptors."""
    from dumper.kernel.kcmp import KCMP_FILE, kcmp
    from files_helpers import wait_gone, wait_state

    criu_binary()
    t = fds_target(*(["--fork"] if tree == "fork" else []))
    pids = [t.pid] + ([t.fds["child"]] if tree == "fork" else [])
    for pid in reversed(pids):
        os.kill(pid, 19)
    for pid in pids:
        wait_state(pid, "T")
    before = {pid: [_comparable(f) for f in collect_fds(Process(pid))] for pid in pids}
    _, fdinfos, maps, exes = dump_ours(pids, tmp_path / "ours")
    criu_dump(t.pid, tmp_path / "criu")
    for pid in pids[1:]:  # killed first: auto-reaped (the target ignores SIGCHLD)
        os.kill(pid, 9)
    t.close()  # killed and reaped: CRIU restores the same pids
    for pid in pids[1:]:
        wait_gone(pid)
    rest = swap_in_ours(tmp_path / "criu", tmp_path / "ours", tmp_path / "restore", pids, maps, exes)

    with criu_restore(rest) as r:
        assert r.pid == t.pid
        for pid in pids:
            wait_state(pid, "T")  # dumped stopped, restored stopped
        after = {pid: [_comparable(f) for f in collect_fds(Process(pid))] for pid in pids}
        for pid in pids:
            assert after[pid] == before[pid]
        if tree == "fork":  # the child's inherited descriptors are the parent's again, not copies
            for e in fdinfos[pids[1]]:
                assert kcmp(pids[0], pids[1], KCMP_FILE, e.fd, e.fd) == 0, f"fd {e.fd}"
        for pid in pids:
            os.kill(pid, 18)  # SIGCONT
        rep = t.report()
        n = t.fds
        assert (rep["pipe_bytes"], rep["pipe_ok"], rep["pipe_size"]) == (str(PIPE_BYTES), "1", str(PIPE_SIZE))
        assert (rep["fifo_bytes"], rep["fifo_ok"]) == (str(FIFO_BYTES), "1")
        assert (rep["efd_read"], rep["efd_counter"]) == ("8", str(EFD_COUNTER))
        assert (rep["pos_data"], rep["pos_ghost"], rep["pos_sparse"]) == (str(DATA_POS), str(GHOST_POS), "7")
        assert (rep["ghost_ok"], rep["sparse_ok"], rep["sparse_size"]) == ("1", "1", str(SPARSE_SIZE))
        assert rep["sparse_nlink"] == "0"  # restored as a deleted file again
        after_line = f"after {t.pid}\n"
        assert rep["pos_log"] == str(LOG_POS + len(after_line))  # appends continue at the end
        assert (t.dir / "log").read_text() == "".join(f"line {i}\n" for i in range(10)) + after_line
        assert (rep["cwd"], rep["umask"]) == (str(t.dir), "27")
        orig = {fd: flags for fd, _, _, flags, *_ in before[t.pid]}
        cloexec = {fd: c for fd, _, _, _, c, *_ in before[t.pid]}
        for name, fd in n.items():
            if name == "child":
                continue
            assert int(rep[f"fl_{name}"]) == orig[fd], name  # O_DIRECTORY is out of both
            assert int(rep[f"fd_{name}"]) == int(cloexec[fd]), name
        if tree == "fork":
            crep = t.report(pids[1])
            assert crep["pipe_bytes"] == "-1"  # the parent emptied the shared pipe
            child_line = f"after {pids[1]}\n"
            assert crep["pos_log"] == str(LOG_POS + len(after_line) + len(child_line))  # one shared position


# --- terminals: a job started from a shell -----------------------------------

SHELL = textwrap.dedent(
    """
    import os, sys, fcntl, termios, time
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)   # the pty on stdin is our controlling terminal
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        os.execvp(sys.argv[1], sys.argv[1:])
    os.setpgid(pid, pid)
    os.tcsetpgrp(0, pid)                    # the job runs in the foreground
    print(pid, flush=True)
    os.waitpid(pid, 0)                      # reap it when it is killed
    time.sleep(600)
    """
)


@pytest.fixture
def shell_job():
    """A job (``sleep``) started by a "shell" that owns a pseudo-terminal:
    the job's stdin/stdout/stderr are the pty slave, its session leader and
    the pty master are outside it -- the case of ``criu --shell-job``.
    Yields (job pid, shell pid, slave path, master fd)."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    shell = subprocess.Popen([sys.executable, "-c", SHELL, "sleep", "600"], stdin=slave, stdout=subprocess.PIPE,
                             stderr=slave, text=True)
    os.close(slave)
    job = None
    try:
        job = int(shell.stdout.readline())
        yield job, shell.pid, path, master
    finally:
        if job is not None:  # the shell reaps it (a test may have done this already)
            try:
                os.kill(job, 9)
            except ProcessLookupError:
                pass
            from files_helpers import wait_gone

            wait_gone(job)
        shell.kill()
        shell.wait()
        os.close(master)


def test_shell_job_terminal_differential_and_restore(shell_job, tmp_path):
    """What CRIU writes for a job's terminal under --shell-job, and ours;
    then criu restore --shell-job gives the job the terminal on criu's stdin."""
    from files_helpers import wait_gone, wait_state

    job, shell, slave, master = shell_job
    os.kill(job, 19)
    wait_state(job, "T")
    table, fdinfos, maps, exes = dump_ours([job], tmp_path / "ours")
    assert table.needs_shell_job and table.unrestorable == []
    criu_dump(job, tmp_path / "criu", "--shell-job")

    (ti_c,), (ti_o,) = read_msgs(tmp_path / "criu/tty-info.img"), read_msgs(tmp_path / "ours/tty-info.img")
    index = int(slave.rsplit("/", 1)[1])
    assert (ti_o.id, ti_o.type, ti_o.pty.index, ti_o.sid, ti_o.pgrp) == (index << 1, 1, index, shell, job)
    for t in (ti_c, ti_o):  # differ by nature: CRIU copies 32 bytes into 19 words, the rest is its heap
        for e in (t.termios, t.termios_locked):
            del e.c_cc[8:]
    assert ti_c == ti_o
    mapping = id_map(tmp_path / "criu", tmp_path / "ours", [job], maps, exes)
    theirs = {e.id: e for e in read_msgs(tmp_path / "criu/files.img")}
    ours = {e.id: e for e in read_msgs(tmp_path / "ours/files.img")}
    for cid, e in theirs.items():
        assert _renumbered(e, mapping) == ours[mapping[cid]], f"file {cid}"

    os.kill(job, 9)
    wait_gone(job)  # the shell reaps it
    rest = swap_in_ours(tmp_path / "criu", tmp_path / "ours", tmp_path / "restore", [job], maps, exes)
    m2, s2 = os.openpty()  # the terminal the restore runs on
    try:
        with criu_restore(rest, "--shell-job", stdin=os.ttyname(s2)) as r:
            assert r.pid == job
            for fd in (0, 2):  # stdout is the shell's pipe to us
                assert os.readlink(f"/proc/{job}/fd/{fd}") == os.ttyname(s2)
            restored = by_fd(collect_fds(Process(job)))
            assert restored[0].tty.termios == by_fd_termios(tmp_path)  # settings carried over
    finally:
        os.close(m2)
        os.close(s2)


def by_fd_termios(tmp_path):
    """The termios the dump saved (first 17 + 19 bytes), rebuilt from ours."""
    (ti,) = read_msgs(tmp_path / "ours/tty-info.img")
    t = ti.termios
    cc = b"".join(w.to_bytes(4, "little") for w in t.c_cc[:8])[:19]
    return b"".join(v.to_bytes(4, "little") for v in (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag)) + bytes([t.c_line]) + cc


# --- what is not saved --------------------------------------------------------


def test_table_lists_what_it_does_not_save(fds_target):
    from dumper.dump.files import FileTable, Unrestorable

    t = fds_target("--bad")
    t.stop()
    table = FileTable()
    fdinfos = table.add_process(t.pid, collect_fds(Process(t.pid)))
    bad = {t.fds["tcp"]: "socket", t.fds["inotify"]: "inotify", t.fds["signalfd"]: "signalfd"}
    assert {e.fd for e in fdinfos} == {0, 1, 2} | {v for k, v in t.fds.items() if k != "child"} - set(bad)
    assert table.unrestorable == [
        Unrestorable(t.pid, "socket", f"fd {t.fds['tcp']}", "TCP socket (IPv4)"),
        Unrestorable(t.pid, "inotify", f"fd {t.fds['inotify']}", "inotify"),
        Unrestorable(t.pid, "signalfd", f"fd {t.fds['signalfd']}", "signalfd"),
    ]
    assert str(table.unrestorable[0]) == f"pid {t.pid} fd {t.fds['tcp']} (socket): TCP socket (IPv4)"


SHM_TARGET = textwrap.dedent(
    """
    import mmap, os, sys, time
    anon = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED)
    anon[:5] = b"hello"
    mfd = os.memfd_create("shared-thing")
    os.ftruncate(mfd, 1 << 16)
    mem = mmap.mmap(mfd, 1 << 16, flags=mmap.MAP_SHARED)
    master, slave = os.openpty()
    print(mfd, master, slave, flush=True)
    time.sleep(600)
    """
)


def test_shared_memory_and_pty_pairs_not_saved(tmp_path):
    from dumper.dump.files import FileTable

    proc = subprocess.Popen([sys.executable, "-c", SHM_TARGET], stdout=subprocess.PIPE, text=True)
    try:
        mfd, master, slave = map(int, proc.stdout.readline().split())
        p = Process(proc.pid)
        table = FileTable()
        shared = [v for v in p.vmas() if v.path.split(" ")[0] in ("/dev/zero", "/memfd:shared-thing")]
        assert len(shared) == 2
        assert [table.mapped_file(proc.pid, v) for v in shared] == [0, 0]
        lib = next(v for v in p.vmas() if v.path.startswith("/") and not v.shared)
        assert table.mapped_file(proc.pid, lib) > 0
        table.add_process(proc.pid, collect_fds(p))
        by_what = {u.what: u for u in table.unrestorable}
        assert by_what[f"fd {mfd}"].kind == "memfd"
        assert "pty pairs are not saved" in by_what[f"fd {master}"].why
        assert "its master is in the checkpoint" in by_what[f"fd {slave}"].why
        assert sum(u.kind == "shared memory" for u in table.unrestorable) == len(shared)
    finally:
        proc.kill()
        proc.wait()


def test_collect_zombie_refused(zombie):
    from dumper.errors import ZombieProcess

    with pytest.raises(ZombieProcess):
        collect_fds(Process(zombie))


def test_file_on_a_detached_mount_not_saved(tmp_path):
    """A file whose mount was detached (umount -l) is out of the mount table:
    no restore can reach it."""
    m = tmp_path / "m"
    m.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "none", str(m)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    proc = None
    try:
        (m / "f").write_text("x")
        code = "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); print(fd, flush=True); time.sleep(600)"
        proc = subprocess.Popen([sys.executable, "-c", code, str(m / "f")], stdout=subprocess.PIPE, text=True)
        fd = int(proc.stdout.readline())
        subprocess.run(["umount", "-l", str(m)], check=True)
        f = by_fd(collect_fds(Process(proc.pid)))[fd]
        assert f.kind == "reg" and "is not in the process's mount table" in f.unrestorable
    finally:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)
        if proc is not None:
            proc.kill()
            proc.wait()


def test_mapping_gone_is_a_dumper_error(fds_target):
    from dumper.dump.files import FileTable
    from dumper.errors import KernelError
    from dumper.proc.maps import Vma

    t = fds_target()
    gone = Vma(start=0x10000, end=0x11000, perms="r--p", pgoff=0, dev_major=0, dev_minor=0, inode=1, path="/x")
    with pytest.raises(KernelError, match="map_files/10000-11000"):
        FileTable().mapped_file(t.pid, gone)


def test_held_file_lock_not_saved(tmp_path):
    """criu dump refuses a process holding file locks (without --file-locks);
    we save none, so such a descriptor is a reason."""
    code = textwrap.dedent(
        """
        import fcntl, os, sys, time
        a = os.open(sys.argv[1] + "/a", os.O_RDWR | os.O_CREAT); fcntl.flock(a, fcntl.LOCK_EX)
        b = os.open(sys.argv[1] + "/b", os.O_RDWR | os.O_CREAT); fcntl.lockf(b, fcntl.LOCK_SH)
        c = os.open(sys.argv[1] + "/c", os.O_RDWR | os.O_CREAT)
        print(a, b, c, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        a, b, c = map(int, proc.stdout.readline().split())
        fds = by_fd(collect_fds(Process(proc.pid)))
        assert "FLOCK  ADVISORY  WRITE".split() == fds[a].unrestorable.split("(")[1].split(")")[0].split()
        assert "POSIX ADVISORY READ" in fds[b].unrestorable
        assert fds[c].unrestorable is None
    finally:
        proc.kill()
        proc.wait()
