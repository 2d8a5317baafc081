"""Dumping trees as they are (issue 11, "The tree"): a tree that forks and
exits children without pause during the dump, and a root whose parent is
outside the tree (the shell-job case: its session leader is not dumped).

Consistent means: every process of ``pstree.img`` that is not a zombie has
its core, mm and pagemap images and is in the inventory; nothing of the
tree is left stopped or traced after any dump, successful or refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.dump import dump
from dumper.errors import CriuNotFound, DumperError
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.reader import read_image
from targets.restore_support import kill_restored, proc_state, reap_zombie_children, subreaper_for_module, wait_for

HERE = Path(__file__).resolve().parent
TREE = HERE / "targets" / "tree.py"


_subreaper = pytest.fixture(scope="module", autouse=True)(subreaper_for_module)


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _group(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid:
                    out.append(int(name))
            except ProcessLookupError:
                pass
    return out


def _assert_released(pgid: int) -> None:
    """No process of the group is traced, or stopped (t/T), but zombies
    (the tree churns: a child may exit between two reads of /proc)."""
    for pid in _group(pgid):
        st = _status(pid)
        if not st or st.get("State", "").startswith("Z"):
            continue
        assert st.get("TracerPid", "0").strip() == "0", f"pid {pid} still traced: {st}"
        try:
            state = proc_state(pid)
        except (ProcessLookupError, FileNotFoundError):
            continue  # exited since
        assert state not in ("t", "T"), f"pid {pid} left stopped"


def test_dump_of_a_tree_that_forks_and_exits_children(tmp_path):
    counters = tmp_path / "counters"
    counters.write_bytes(bytes(4096))
    p = subprocess.Popen([sys.executable, str(TREE), "churn", str(counters)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        done = refused = 0
        seen: set[int] = set()
        for i in range(8):
            ck = tmp_path / f"ck{i}"
            try:
                res = dump(p.pid, ck, thaw="resume")
            except DumperError as err:  # a clear reason, one line, nothing left behind
                refused += 1
                assert "\n" not in str(err) and "Traceback" not in str(err)
                assert not ck.exists()
            else:
                done += 1
                tree = read_image(ck / fmt.PSTREE_NAME)[1]
                pids = [e.pid for e in tree]
                seen |= set(pids)
                assert pids[0] == p.pid and len(pids) == len(set(pids))
                with open_checkpoint(ck) as c:
                    live = set(c.pids)
                    assert set(res.pids) == live and live <= set(pids)
                    for e in tree:
                        cores = [fmt.core_name(t) for t in e.threads]
                        assert all((ck / n).exists() for n in cores), e.pid
                        if e.pid in live:  # not a zombie: its memory images
                            assert (ck / fmt.mm_name(e.pid)).exists() and (ck / fmt.pagemap_name(e.pid)).exists()
                        assert e.ppid in pids or e.pid == p.pid  # every parent is in the tree
                r = subprocess.run([sys.executable, "-m", "dumper", "verify", str(ck)], capture_output=True, text=True)
                assert r.returncode == 0, r.stdout + r.stderr
            _assert_released(p.pid)
        assert done >= 1, f"every dump refused ({refused})"
        assert len(seen) > 2  # children were really there
        assert proc_state(p.pid) in ("R", "S")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        time.sleep(0.1)
        reap_zombie_children()


def test_root_whose_parent_is_outside_the_tree_restores_as_a_shell_job(tmp_path):
    """A worker of a pre-fork server dumped alone: its parent and session
    leader are not in the checkpoint. pstree records no parent for it, the
    inventory says shell_job, and `dumper restore` passes --shell-job: the
    restored worker lives in the restorer's session, its shared buffer
    (now its own) and private data intact, and it goes on."""
    import shutil

    from dumper.restore import find_criu, restore

    try:
        criu = find_criu()
    except CriuNotFound as err:
        pytest.skip(f"needs CRIU >= 4.0: {err}")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    binary = tmp_path / "shmem_targets"
    r = subprocess.run([gcc, "-O2", "-o", str(binary), str(HERE / "targets" / "shmem_targets.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from targets.restore_support import Target

    t = Target([str(binary)], tmp_path, "server", args=("prefork", "2", "2", "1", "2"))
    info = json.loads(t.output().splitlines()[0])
    worker = info["workers"][0]
    try:
        ck = tmp_path / "ck"
        res = dump(worker["pid"], ck, thaw="leave-stopped")
        assert res.pids == [worker["pid"]]
        (entry,) = read_image(ck / fmt.PSTREE_NAME)[1]
        assert entry.ppid == 0 and entry.sid == t.pid != entry.pid
        with open_checkpoint(ck) as c:
            assert c.inventory.shell_job
            private = c.read(worker["pid"], worker["private"], info["private_size"])
            shared = c.read(worker["pid"], info["shared"], info["shared_size"])
    finally:
        os.killpg(t.pid, signal.SIGKILL)
        t.reap()
        def gone():
            reap_zombie_children()  # the workers are ours once the server is gone (we are a subreaper)
            return proc_state(worker["pid"]) is None and proc_state(info["workers"][1]["pid"]) is None

        wait_for(gone, what="the workers to go")
    res = restore(ck, criu=criu, timeout=60)
    try:
        assert res.pid == worker["pid"] and res.shell_job
        assert os.getsid(res.pid) == os.getsid(0)  # the restorer's session, as criu --shell-job gives
        fd = os.open(f"/proc/{res.pid}/mem", os.O_RDONLY)
        try:
            assert os.pread(fd, info["private_size"], worker["private"]) == private
            page = os.pread(fd, len(shared), info["shared"])
            assert page[4096:] == shared[4096:]  # the counters page moves on
            slot = 1  # the first worker's counter
            before = int.from_bytes(page[8 * slot:8 * slot + 8], "little")
            wait_for(lambda: int.from_bytes(os.pread(fd, 8, info["shared"] + 8 * slot), "little") > before,
                     what="the restored worker to bump its counter")
        finally:
            os.close(fd)
    finally:
        kill_restored(res.pid)
        reap_zombie_children()


ZOMBIE_PARENT = r"""
import os, sys, time
ready, log = int(sys.argv[1]), sys.argv[2]
child = os.fork()
if child == 0:
    os._exit(3)
while open(f"/proc/{child}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] != b"Z":
    time.sleep(0.01)
os.write(ready, b"READY\n")
os.close(ready)
n = 0
while True:
    with open(log, "a") as f:
        f.write(f"tick {n}\n")
    n += 1
    time.sleep(0.05)
"""


def _exit_code(pid: int) -> int:
    """Field 52 of /proc/PID/stat: the wait status of a zombie."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[49])


def test_a_zombie_child_is_part_of_the_tree_not_a_reason_against_restore(tmp_path):
    """A parent that has not reaped its exited child: the zombie is recorded
    in pstree.img (CRIU restores zombies), so it is not "a child process
    outside the checkpoint" (it was reported so), and criu restore brings the
    parent back running with its zombie child and the child's exit code."""
    from dumper.restore import find_criu, restore
    from targets.restore_support import Target

    t = Target([sys.executable, "-c", ZOMBIE_PARENT], tmp_path, "zparent")
    with open(f"/proc/{t.pid}/task/{t.pid}/children") as f:
        (child,) = [int(c) for c in f.read().split()]
    assert proc_state(child) == "Z"
    try:
        ck = tmp_path / "ck"
        res = dump(t.pid, ck, thaw="leave-stopped")
        assert res.pids == [t.pid]
        tree = [(e.pid, e.ppid) for e in read_image(ck / fmt.PSTREE_NAME)[1]]
        assert tree == [(t.pid, 0), (child, t.pid)]
        with open_checkpoint(ck) as c:
            assert [(r.kind, r.what) for r in c.inventory.unrestorable] == []
        shown = subprocess.run([sys.executable, "-m", "dumper", "show", str(ck)], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert f"process {child}: zombie, exited with status 3, not reaped by {t.pid}" in shown.stdout, shown.stdout
    finally:
        t.close()
        wait_for(lambda: (reap_zombie_children(), proc_state(child) is None)[1], what="the zombie to go")
    try:
        criu = find_criu()
    except CriuNotFound as err:
        pytest.skip(f"needs CRIU >= 4.0: {err}")
    r = restore(ck, criu=criu, timeout=60)
    try:
        assert r.pid == t.pid
        assert proc_state(child) == "Z" and _exit_code(child) == 3 << 8
        size = t.log_size()
        wait_for(lambda: t.log_size() > size, what="the restored parent to write on")
    finally:
        kill_restored(r.pid)
        reap_zombie_children()
