"""Issue 15 item 3, attacked for real: an unprivileged user who owns the parent
of ``-D`` (or OUT) races root's dump, flatten, export and cat -o.

The user (created by the test and removed after) renames every temporary
directory root makes in their directory and puts a symlink to a root-owned
victim directory in its place, over and over, while root writes a real
checkpoint. Before the fix, root's image files landed in the victim
directory and ``-D`` ended up as the attacker's symlink. Now: nothing is
created outside root's own temporary directory, and ``-D`` is either root's
complete checkpoint or absent (the command failed with one line).
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dumper.cli.cat import hexdump_lines
from dumper.dump import dump
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd to create an unprivileged attacker")


@pytest.fixture
def attacker_user():
    """``(uid, gid)`` of a fresh unprivileged system user, removed afterwards."""
    name = f"dumpert{secrets.token_hex(4)}"
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                        name], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"useradd failed: {r.stderr.strip()}")
    try:
        import pwd

        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def arena(attacker_user):
    """``(attacker_dir, victim_dir, base)``: a directory the attacker owns (the
    parent of the output), and an empty root-owned directory the attacker's
    symlinks point at, both in a root-owned 0755 base under /tmp."""
    uid, gid = attacker_user
    base = Path(tempfile.mkdtemp(prefix="dumper-attack-", dir="/tmp"))
    os.chmod(base, 0o755)
    mine = base / "attacker"
    mine.mkdir()
    os.chown(mine, uid, gid)
    os.chmod(mine, 0o755)
    victim = base / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    try:
        yield mine, victim, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Swapper:
    """A forked process running as the attacker: renames every directory
    named like a temporary (``.NAME.tmp-*``) or one it moved before to a new
    name, and puts a symlink to ``victim`` where a temporary was."""

    def __init__(self, uid: int, gid: int, parent: Path, victim: Path) -> None:
        self.stop_r, self.stop_w = os.pipe()
        self.report_r, report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the attacker
            code = 1
            try:
                os.close(self.stop_w)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                swaps = self._run(str(parent), str(victim))
                os.write(report_w, str(swaps).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(report_w)
        os.close(self.stop_r)

    def _run(self, parent: str, victim: str) -> int:
        planted = n = 0
        while not select.select([self.stop_r], [], [], 0)[0]:
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                if not (name.startswith(".") and ".tmp-" in name) and not name.startswith("moved-"):
                    continue
                path = os.path.join(parent, name)
                try:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        continue
                    n += 1
                    os.rename(path, os.path.join(parent, f"moved-{n}"))
                    if not name.startswith("moved-"):
                        os.symlink(victim, path)
                        planted += 1
                except OSError:
                    continue
        return planted

    def stop(self) -> int:
        """Stop the attacker; the number of temporaries it replaced by a symlink."""
        os.close(self.stop_w)
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with os.fdopen(self.report_r, "rb") as f:
            return int(f.read() or b"0")


def root_files_outside(base: Path, allowed: Path) -> list[str]:
    """Files (not directories) owned by root under ``base`` but not under ``allowed``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        if Path(dirpath) == allowed or allowed in Path(dirpath).parents:
            continue
        for n in filenames:
            p = os.path.join(dirpath, n)
            if Path(p) == allowed:
                continue
            st = os.lstat(p)
            if st.st_uid == 0 and not stat.S_ISLNK(st.st_mode):
                found.append(p)
    return found


@pytest.fixture(scope="module")
def big_target():
    """The example process with 16 MiB of dense memory (half random)."""
    p = subprocess.Popen([sys.executable, str(ROOT / "examples" / "target.py"), "--dense-mib", "16",
                          "--threads", "0", "--until-eof"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().startswith(b"READY")
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


@pytest.mark.parametrize("command", ["dump", "flatten", "export", "cat"])
def test_temporary_directory_swap_redirects_nothing(command, attacker_user, arena, big_target, tmp_path):
    uid, gid = attacker_user
    mine, victim, base = arena
    pid = big_target.pid
    src = tmp_path / "src"  # root's own source checkpoint, out of the attacker's reach
    dump(pid, src)
    with open_checkpoint(src) as ck:
        big = max(ck.process(pid).entries, key=lambda e: e.nr_pages)  # the dense region
        probe_addr = big.vaddr
        expected = ck.read(pid, probe_addr, 4096)
        cat_size = min(big.nr_pages * 4096, 2 << 20)
        # cat -o --hexdump of 2 MiB: 128 Ki lines formatted, a wide window
        cat_expected = "".join(line + "\n" for line in hexdump_lines(ck.read(pid, probe_addr, cat_size),
                                                                     probe_addr)).encode()
    out = mine / "ck"
    cmd = {
        # the dump slowed down (level 12, one thread) so the race has a wide window
        "dump": ["dump", str(pid), "-D", str(out), "--compress-level", "12", "--threads", "1"],
        "flatten": ["flatten", str(src), str(out)],
        "export": ["export", str(src), str(out)],
        "cat": ["cat", str(src), "--addr", hex(probe_addr), "--size", str(cat_size), "--hexdump", "-o", str(out)],
    }[command]
    swapper = Swapper(uid, gid, mine, victim)
    try:
        r = subprocess.run([sys.executable, "-m", "dumper", *cmd], capture_output=True, text=True, timeout=300)
    finally:
        swaps = swapper.stop()
    assert swaps >= 1, "the attacker never swapped a temporary directory: the test proved nothing"
    # Nothing was created where the symlinks point, nor anywhere but the output.
    assert os.listdir(victim) == []
    assert root_files_outside(base, out) == []
    if r.returncode == 0:
        st = os.lstat(out)
        assert st.st_uid == 0 and not stat.S_ISLNK(st.st_mode)
        if command == "cat":
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert out.read_bytes() == cat_expected
        else:
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
            assert (out / fmt.INVENTORY_NAME).is_file()
            with open_checkpoint(out) as ck:
                assert ck.read(pid, probe_addr, 4096) == expected
            if command != "export":  # (an exported set names the target's deleted file: verify says so)
                v = subprocess.run([sys.executable, "-m", "dumper", "verify", str(out)], capture_output=True,
                                   text=True)
                assert v.returncode == 0, v.stdout + v.stderr
    else:
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not os.path.lexists(out), r.stderr
    if command == "dump":
        with open(f"/proc/{pid}/stat", "rb") as f:
            assert f.read().rsplit(b")", 1)[1].split()[0] in (b"S", b"R")


def test_stale_cleanup_never_touches_another_users_directories(attacker_user, arena):
    # A directory named like a dead run's temporary but owned by another
    # user, or one holding that user's files, is not ours: it stays.
    uid, gid = attacker_user
    mine, victim, base = arena
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        start = int(f.read().rsplit(b")", 1)[1].split()[19])
    theirs = mine / f".ck.tmp-{dead.pid}-{start}-abcd1234"
    (theirs / "ck").mkdir(parents=True)
    (theirs / "ck" / "data").write_text("theirs")
    for p in (theirs, theirs / "ck", theirs / "ck" / "data"):
        os.chown(p, uid, gid)
    ours_with_theirs = mine / f".ck.tmp-{dead.pid}-{start}-abcd1235"  # ours, but holding their directory
    (ours_with_theirs / "ck").mkdir(parents=True)
    (ours_with_theirs / "ck" / "data").write_text("theirs too")
    os.chown(ours_with_theirs / "ck", uid, gid)
    os.chown(ours_with_theirs / "ck" / "data", uid, gid)
    r = subprocess.run([sys.executable, "-m", "dumper", "export", str(ROOT / "tests" / "data" / "tiny-zst"),
                        str(mine / "ck")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (theirs / "ck" / "data").read_text() == "theirs"
    assert (ours_with_theirs / "ck" / "data").read_text() == "theirs too"
