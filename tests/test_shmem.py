"""Shared memory saved once, pages shared copy-on-write saved once (issue 11).

Real processes (tests/targets/shmem_targets.c): a pre-fork server (a parent
and 4 workers sharing a shared anonymous buffer and a memfd, each worker with
private data of its own and memory inherited from the parent and never
written), a SysV segment attached by two processes, a sealed memfd, a 1 TiB
sparse shared anonymous mapping. Each is dumped, read back with the readers
(``cat``, ``verify --pid`` on the whole tree, ``show``), and, where CRIU
can restore it, restored with CRIU 4.2 and shown to go on: the shared buffer
still shared, private data intact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.dump import dump
from dumper.errors import CriuNotFound, ImageError, NotRestorable
from dumper.image import format as fmt
from dumper.image.checkpoint import open_checkpoint
from dumper.image.reader import read_image
from targets.restore_support import (
    Target,
    kill_restored,
    proc_state,
    reap_zombie_children,
    subreaper_for_module,
    wait_for,
)

P = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "targets" / "shmem_targets.c"
F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x2, 0x4, 0x8
F_GET_SEALS = 1034


# --- fixtures


_subreaper = pytest.fixture(scope="module", autouse=True)(subreaper_for_module)


@pytest.fixture(scope="session")
def shmem_bin(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("shmem-targets") / "shmem_targets"
    r = subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(SOURCE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


class Tree:
    """A shmem_targets process tree in a session (and process group) of its own."""

    def __init__(self, binary: Path, workdir: Path, mode: str, *args) -> None:
        self.t = Target([str(binary)], workdir, mode, args=(mode, *map(str, args)))
        self.pid = self.t.pid
        self.info = json.loads(self.t.output().splitlines()[0])

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.t.reap()
        except Exception:
            pass
        # the workers are ours once their parent is gone (we are a subreaper)
        def gone():
            reap_zombie_children()
            return not [p for p in self.pids() if proc_state(p) is not None]

        wait_for(gone, what="the tree to die")

    def pids(self) -> list[int]:
        return [self.pid, *(w["pid"] for w in self.info.get("workers", []))] + (
            [self.info["child"]] if "child" in self.info else [])


@pytest.fixture
def tree(shmem_bin, tmp_path):
    made: list[Tree] = []

    def make(mode: str, *args) -> Tree:
        t = Tree(shmem_bin, tmp_path, mode, *args)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill()


def live(pid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def same_as_live(path: Path, pid: int, addr: int, size: int, step: int = 4 << 20) -> bool:
    """Whether file ``path`` holds the ``size`` bytes at ``addr`` of ``pid``
    (compared in slices: this process's memory stays small)."""
    if path.stat().st_size != size:
        return False
    with open(path, "rb") as f:
        for off in range(0, size, step):
            n = min(step, size - off)
            if f.read(n) != live(pid, addr + off, n):
                return False
    return True


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dumper", *map(str, args)], capture_output=True, text=True, **kw)


def image_bytes(d: Path, prefix: str = "pages-") -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.name.startswith(prefix))


def u64(data: bytes, slot: int) -> int:
    return int.from_bytes(data[8 * slot:8 * slot + 8], "little")


# --- the pre-fork server

SHARED_MIB, INHERITED_MIB, PRIVATE_MIB, WORKERS = 64, 32, 2, 4


def test_prefork_server_shared_buffer_and_inherited_memory_saved_once(tree, tmp_path):
    t = tree("prefork", SHARED_MIB, INHERITED_MIB, PRIVATE_MIB, WORKERS)
    info = t.info
    ck = tmp_path / "ck"
    res = dump(t.pid, ck, thaw="leave-stopped")
    assert sorted(res.pids) == sorted(t.pids())
    # every worker's private data, the inherited memory and the shared buffer read back
    # as they are in the (stopped) processes
    for w in info["workers"]:
        for addr, size in ((w["private"], info["private_size"]), (info["inherited"], info["inherited_size"]),
                           (info["shared"], info["shared_size"]), (info["memfd"], MIB)):
            out = tmp_path / f"cat-{w['pid']}-{addr:x}"
            r = cli("cat", ck, "--addr", addr, "--size", size, "--pid", w["pid"], "-o", out)
            assert r.returncode == 0, r.stderr
            assert same_as_live(out, w["pid"], addr, size), f"pid {w['pid']} at {addr:#x}"
            out.unlink()
    # default pid: the root
    got = subprocess.run([sys.executable, "-m", "dumper", "cat", ck, "--addr", str(info["shared"]), "--size", "64"],
                         capture_output=True).stdout
    assert got == live(t.pid, info["shared"], 64)
    # verify --pid ROOT checks the whole (stopped) tree, shared objects included
    r = cli("verify", ck, "--pid", t.pid, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"], doc["problems"][:5]

    with open_checkpoint(ck) as c:
        objs = {o.kind: o for o in c.shared.objects.values()}
        assert set(objs) == {"anon", "memfd"}
        anon, mfd = objs["anon"], objs["memfd"]
        # the shared buffer once: every page of it (written before the fork), one object
        assert anon.size == SHARED_MIB * MIB and anon.nr_pages == SHARED_MIB * MIB // P
        assert sorted({pid for pid, _ in c.shared.mapped_by(anon)}) == sorted(t.pids())
        # the memfd: 2 MiB, the mapped MiB plus 4 pages written with pwrite only (never mapped)
        assert mfd.name == "prefork-memfd" and mfd.size == 2 * MIB
        offs = {int(v) for v, n in zip(mfd.entries.vaddr, mfd.entries.nr_pages) for v in range(v, v + n * P, P)}
        assert offs == set(range(0, MIB, P)) | {MIB + k * 64 * P for k in range(4)}
        # the inherited memory once: in the root's stream; each worker refers to it (PE_COW)
        root = c.process(t.pid)
        inh = (info["inherited"], info["inherited"] + info["inherited_size"])
        for w in info["workers"]:
            proc = c.process(w["pid"])
            cow = proc.entries[proc.entries.mask(fmt.PE_COW)]
            cow_inh = sum(max(0, min(e.end(P), inh[1]) - max(e.vaddr, inh[0])) for e in cow) // P
            assert cow_inh == info["inherited_size"] // P
            assert proc.nr_pages_present < (info["private_size"] + info["inherited_size"] // 4) // P
        assert root.entries.mask(fmt.PE_COW).sum() == 0
    # sizes, as ratios to the raw sizes: CRIU's way would store the inherited
    # memory 5 times; the image holds it (and the shared buffer) once
    raw_once = (SHARED_MIB + 2 + INHERITED_MIB + WORKERS * PRIVATE_MIB) * MIB
    raw_copies = (SHARED_MIB + 2 + (WORKERS + 1) * INHERITED_MIB + WORKERS * PRIVATE_MIB) * MIB
    total = image_bytes(ck)
    assert total / raw_once < 1.08, (total, raw_once)  # random data: zstd cannot shrink it
    assert total / raw_copies < 0.62
    r = cli("show", ck)
    assert r.returncode == 0 and "shared copy-on-write" in r.stdout and "shmem" in r.stdout


def test_prefork_without_compression_is_criu_layout(tree, tmp_path):
    t = tree("prefork", 4, 4, 1, 2)
    ck = tmp_path / "raw"
    dump(t.pid, ck, thaw="leave-stopped", compress=False)
    names = sorted(p.name for p in ck.iterdir())
    assert not [n for n in names if n.startswith("cow-")]  # CRIU reads this set itself
    with open_checkpoint(ck) as c:
        for pid in c.pids:
            assert not c.process(pid).entries.mask(fmt.PE_COW).any()
        for w in t.info["workers"]:  # every worker holds the inherited memory itself, as CRIU's would
            a = t.info["inherited"]
            assert c.read(w["pid"], a, 4 * MIB) == live(w["pid"], a, 4 * MIB)
    for n in names:
        if n.startswith("pagemap-shmem-"):
            _, msgs = read_image(ck / n)
            assert not msgs[0].HasField("compression") or msgs[0].compression == fmt.COMPRESSION_NONE


def test_prefork_differential_with_criu(tree, tmp_path):
    """The shared memory images CRIU 4.2 writes for the same stopped tree and
    ours, decoded: the same objects, names, sizes, seals, modes, the same
    VMA marks, the same pages in pagemap-shmem."""
    from criu_helpers import criu_binary

    criu = criu_binary()
    t = tree("prefork", 4, 2, 1, 2)
    ours = tmp_path / "ours"
    dump(t.pid, ours, thaw="leave-stopped", compress=False)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    r = subprocess.run([criu, "dump", "-t", str(t.pid), "-D", str(theirs), "--leave-stopped", "-o", "dump.log"],
                       capture_output=True, text=True)
    assert r.returncode == 0, (theirs / "dump.log").read_text()[-3000:]

    def inodes(d):
        return sorted((m.name, m.size, m.shmid, m.seals, m.mode, m.uid, m.gid) for m in read_image(d / "memfd.img")[1])

    assert inodes(ours) == inodes(theirs)

    def shm_vmas(d, pid):
        mm = read_image(d / fmt.mm_name(pid))[1][0]
        return [(v.start, v.end, v.pgoff, v.prot, v.flags, v.status, v.fdflags) for v in mm.vmas
                if v.status & fmt.VMA_AREA_MEMFD]

    for pid in t.pids():
        assert shm_vmas(ours, pid) == shm_vmas(theirs, pid) and shm_vmas(ours, pid)

    def shmem_pages(d):
        out = {}
        with open_checkpoint(d) as c:
            for o in c.shared.objects.values():
                out[o.shmid] = [(e.vaddr, e.nr_pages) for e in o.entries if e.flags & fmt.PE_PRESENT]
                out[o.shmid] = (sum(n for _, n in out[o.shmid]),
                                b"".join(o.chunks(0, -(-o.size // P) * P, "test")))
        return out

    a, b = shmem_pages(ours), shmem_pages(theirs)
    assert a.keys() == b.keys()
    for k in a:
        # the counters page moved while CRIU dumped? no: the tree is stopped
        assert a[k] == b[k], k


# --- restore with CRIU 4.2


@pytest.fixture(scope="module")
def criu():
    from dumper.restore import find_criu

    try:
        return find_criu()
    except CriuNotFound as err:
        pytest.skip(f"needs CRIU >= 4.0: {err}")


def _kill_restored_tree(pids):
    for pid in pids:
        kill_restored(pid)
    reap_zombie_children()


def test_prefork_server_restores_with_criu(tree, tmp_path, criu):
    from dumper.restore import restore

    t = tree("prefork", 16, 8, 1, WORKERS)
    info = t.info
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="kill")
    t.kill()  # pids must be free for CRIU
    pids = t.pids()
    res = restore(ck, criu=criu, timeout=120)
    try:
        assert res.pid == t.pid and res.materialised
        for pid in pids:
            assert proc_state(pid) in ("R", "S"), pid
        with open_checkpoint(ck) as c:
            # private data intact (checked against the checkpoint)
            for w in info["workers"]:
                got = live(w["pid"], w["private"], info["private_size"])
                assert got == c.read(w["pid"], w["private"], info["private_size"])
                assert live(w["pid"], info["inherited"], info["inherited_size"]) == c.read(
                    w["pid"], info["inherited"], info["inherited_size"])
            # the memfd object came back whole, pages only the object held included
            (mfd,) = [o for o in c.shared.objects.values() if o.kind == "memfd"]
            fd = os.open(f"/proc/{t.pid}/fd/{info['memfd_fd']}", os.O_RDONLY)
            try:
                assert os.fstat(fd).st_size == 2 * MIB
                saved = b"".join(mfd.chunks(MIB, MIB, "test"))
                assert os.pread(fd, MIB, MIB) == saved and saved.strip(b"\0")
            finally:
                os.close(fd)
        # every process goes on, and the buffer is still shared: each worker's
        # counter (written by that worker only) moves as seen through every
        # other process's mapping
        def counters(pid):
            return [u64(live(pid, info["shared"], 8 * (WORKERS + 1)), i) for i in range(WORKERS + 1)]

        before = {pid: counters(pid) for pid in pids}
        wait_for(lambda: all(counters(p)[i] > before[p][i] for p in pids for i in range(WORKERS + 1)),
                 what="every counter to move in every mapping")
        snap = [counters(p) for p in pids]
        for i in range(WORKERS + 1):  # one object: the same values whoever reads them (monotonic)
            lo = min(s[i] for s in snap)
            assert all(s[i] >= lo for s in snap)
        marker = b"written-by-the-test-through-worker-1"
        fd = os.open(f"/proc/{info['workers'][0]['pid']}/mem", os.O_RDWR)
        try:
            os.pwrite(fd, marker, info["shared"] + 5 * P)
        finally:
            os.close(fd)
        for pid in pids:
            assert live(pid, info["shared"] + 5 * P, len(marker)) == marker
        # memfd counters too
        mem = [u64(live(pids[-1], info["memfd"], 8 * (WORKERS + 1)), i) for i in range(WORKERS + 1)]
        wait_for(lambda: all(u64(live(pids[0], info["memfd"], 8 * (WORKERS + 1)), i) > mem[i]
                             for i in range(WORKERS + 1)), what="memfd counters to move")
    finally:
        _kill_restored_tree(pids)


def test_sealed_memfd_dump_and_restore(tree, tmp_path, criu):
    import fcntl

    from dumper.restore import restore

    t = tree("sealed")
    info = t.info
    assert info["seals"] == F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    inodes = {m.name: m for m in read_image(ck / fmt.MEMFD_INODE_NAME)[1]}
    sealed, grow = inodes["sealed-memfd"], inodes["grow-sealed"]
    assert sealed.seals == info["seals"] and sealed.size == 3 * P
    assert grow.seals == info["gseals"] and grow.size == 2 * P
    files = [e.memfd for e in read_image(ck / fmt.FILES_NAME)[1] if e.type == 18]
    # the mapping comes first (flags 0), then each descriptor (its flags and position), as CRIU
    assert sorted((f.inode_id, f.pos) for f in files) == sorted(
        [(grow.inode_id, 0), (sealed.inode_id, 3 * P), (grow.inode_id, 0)])
    with open_checkpoint(ck) as c:
        assert c.read(t.pid, info["gaddr"], 2 * P) == bytes(P) + b"g" * P
        (obj,) = [o for o in c.shared.objects.values() if o.name == "sealed-memfd"]
        assert b"".join(obj.chunks(0, 3 * P, "test")) == b"a" * P + b"b" * P + b"c" * P  # held by a descriptor only
        assert not c.inventory.unrestorable
    os.kill(t.pid, signal.SIGKILL)
    t.kill()
    res = restore(ck, criu=criu, timeout=60)
    try:
        for fd_no, seals, size, data in ((info["fd"], info["seals"], 3 * P, b"a" * P + b"b" * P + b"c" * P),
                                         (info["gfd"], info["gseals"], 2 * P, bytes(P) + b"g" * P)):
            fd = os.open(f"/proc/{res.pid}/fd/{fd_no}", os.O_RDONLY)
            try:
                assert fcntl.fcntl(fd, F_GET_SEALS) == seals
                assert os.fstat(fd).st_size == size and os.pread(fd, size, 0) == data
            finally:
                os.close(fd)
        assert live(res.pid, info["gaddr"] + P, P) == b"g" * P
    finally:
        _kill_restored_tree([res.pid])


def test_write_sealed_memfd_mapped_shared_is_marked_unrestorable(tree, tmp_path):
    """CRIU 4.2 maps a memfd before sealing it again, and F_SEAL_WRITE then
    fails (EBUSY) -- for its own dumps of this process too: the dump says so."""
    t = tree("sealed-mapped")
    ck = tmp_path / "ck"
    res = dump(t.pid, ck, thaw="resume")
    assert len(res.unrestorable) == 1 and "F_SEAL_WRITE" in res.unrestorable[0]
    with open_checkpoint(ck) as c:
        assert c.read(t.pid, t.info["addr"], 3 * P) == b"a" * P + b"b" * P + b"c" * P
    with pytest.raises(Exception, match="F_SEAL_WRITE"):
        dump(t.pid, tmp_path / "refused", restorable=True)
    assert not (tmp_path / "refused").exists()


# --- SysV, and the 1 TiB sparse object


def test_sysv_segment_attached_by_two_processes(tree, tmp_path):
    t = tree("sysv")
    info = t.info
    ck = tmp_path / "ck"
    res = dump(t.pid, ck, thaw="leave-stopped")
    assert any("doesn't live in IPC ns" in u for u in res.unrestorable)
    with open_checkpoint(ck) as c:
        for pid in (t.pid, info["child"]):
            assert c.read(pid, info["addr"] + 2 * P, P) == b"S" * P
            assert c.read(pid, info["addr"] + 5 * P, P) == b"T" * P
            assert c.read(pid, info["addr"], P) == bytes(P)
        (obj,) = c.shared.objects.values()
        assert obj.kind == "sysv" and obj.shmid == info["shmid"] and obj.nr_pages == 2 and obj.size == MIB
        mm = c.process(info["child"]).vmas
        v = next(v for v in mm if v.start == info["addr"])
        assert v.status == fmt.VMA_AREA_REGULAR | fmt.VMA_ANON_SHARED | fmt.VMA_AREA_SYSVIPC and v.shmid == info["shmid"]
    segs = [m for n in ck.iterdir() if n.name.startswith("ipcns-shm-") for m in read_image(n)[1]]
    assert len(segs) == 1 and segs[0].in_pagemaps and segs[0].size == MIB and segs[0].desc.id == info["shmid"]
    r = cli("show", ck)
    assert r.returncode == 0 and "sysv" in r.stdout
    try:
        from dumper.restore import restore

        with pytest.raises(NotRestorable, match="marked not restorable"):
            restore(ck)
    except CriuNotFound:
        pass


def test_sparse_terabyte_shared_mapping(tree, tmp_path):
    t = tree("sparse")
    info = t.info
    ck = tmp_path / "ck"
    t0 = time.monotonic()
    res = dump(t.pid, ck, thaw="leave-stopped")
    took = time.monotonic() - t0
    # O(populated): the benchmark measures it; here only "not O(size)" (1 TiB
    # page by page would take minutes), with room for a loaded machine
    assert took < 20, took
    with open_checkpoint(ck) as c:
        (obj,) = c.shared.objects.values()
        assert obj.size == 1 << 40 and obj.nr_pages == 1000
        for k in (0, 1, 500, 999):
            a = info["addr"] + k * 262139 * P
            assert c.read(t.pid, a, 2) == bytes([(k & 0xFF) ^ 0x5A, 0])
        assert c.read(t.pid, info["addr"] + P, 16) == bytes(16)
    assert res.frozen_ns < 10e9
    r = cli("verify", ck, "--pid", t.pid)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the readers


def test_shared_file_mapping_contents_live_in_the_file(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"F" * 4 * P)
    code = ("import mmap, os, sys, time\n"
            "f = open(sys.argv[1], 'r+b')\n"
            "m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)\n"
            "print(id(m), flush=True)\n"
            "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        p.stdout.readline()
        ck = tmp_path / "ck"
        dump(p.pid, ck, thaw="resume")
        r = cli("show", ck, "--all-vmas")
        line = next(ln for ln in r.stdout.splitlines() if str(data) in ln)
        assert "skipped" in line and "contents live in the file" in line
        with open_checkpoint(ck) as c:
            v = next(v for v in c.process().vmas if v.path == str(data))
            with pytest.raises(ImageError, match="contents live in the file"):
                c.read(p.pid, v.start, 16)
            assert not c.shared.objects
    finally:
        p.kill()
        p.wait()


def test_damaged_cow_reference_is_reported(tree, tmp_path):
    from dumper.image.pb import zpages_pb2

    t = tree("prefork", 2, 4, 1, 1)
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    w = t.info["workers"][0]["pid"]
    path = ck / fmt.cow_name(w)
    refs = read_image(path)[1]
    assert refs
    bad = zpages_pb2.cow_ref_entry()
    bad.CopyFrom(refs[0])
    bad.pages_off = 1 << 40  # past the owner's stream
    path.chmod(0o600)
    path.write_bytes(fmt.encode_image("COW_REFS", [bad, *refs[1:]]))
    r = cli("verify", ck)
    assert r.returncode == 1 and "beyond the" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = cli("cat", ck, "--pid", w, "--addr", t.info["inherited"], "--size", 16)
    assert r.returncode == 1 and "beyond the" in r.stderr and r.stderr.count("\n") == 1


def test_flatten_export_and_diff_keep_shared_memory(tree, tmp_path):
    t = tree("prefork", 4, 4, 1, 2)
    info = t.info
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    flat, exported = tmp_path / "flat", tmp_path / "exported"
    assert cli("flatten", ck, flat).returncode == 0
    assert cli("export", ck, exported).returncode == 0
    w = info["workers"][1]["pid"]
    for d in (flat, exported):
        r = cli("verify", d)
        assert r.returncode == 0, r.stdout + r.stderr
        r = cli("diff", ck, d, "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 0 and doc["same"], doc
        assert {s["shmid"] for s in doc["shared"]} == {o for o in _shmids(ck)}
        r = cli("diff", ck, d, "--pid", w, "--json")  # one process of the tree: its COW pages are its own
        assert r.returncode == 0 and json.loads(r.stdout)["same"], r.stdout
        with open_checkpoint(d) as c:
            assert c.read(w, info["shared"], 4 * MIB) == live(w, info["shared"], 4 * MIB)
            assert c.read(w, info["inherited"], 4 * MIB) == live(w, info["inherited"], 4 * MIB)
            assert not c.process(w).entries.mask(fmt.PE_COW).any()  # CRIU's layout / a standalone copy
    # CRIU's own reader finds the objects the way it finds its own
    names = sorted(p.name for p in exported.iterdir())
    assert "memfd.img" in names and sum(n.startswith("pagemap-shmem-") for n in names) == 2
    # the tree runs on: a second dump differs in the counters page of the shared objects
    os.killpg(t.pid, signal.SIGCONT)
    time.sleep(0.2)
    ck2 = tmp_path / "ck2"
    dump(t.pid, ck2, thaw="leave-stopped")
    r = cli("diff", ck, ck2, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1
    assert all(s["differ"]["ranges"] == [[0, P]] for s in doc["shared"]), doc["shared"]
    os.killpg(t.pid, signal.SIGCONT)


def _shmids(ck: Path) -> set[int]:
    with open_checkpoint(ck) as c:
        return set(c.shared.objects)


# --- after the merge with export2/elfcore: CRIU's layout and cores of a tree


def test_prefork_export_restores_with_plain_criu(tree, tmp_path):
    """``export --format criu`` of the pre-fork tree (compressed, pages
    shared copy-on-write stored once): every process's own raw pages file
    holds the inherited memory again (CRIU reads one per process), no
    ``cow-PID.img`` in the set, and plain ``criu restore`` brings the tree
    back with the buffer still shared and the data intact."""
    from criu_helpers import criu_binary, criu_restore

    from dumper.export import export

    criu_binary()  # skips without CRIU
    t = tree("prefork", 8, 4, 1, 2)
    info = t.info
    pids = t.pids()
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="kill")
    t.kill()
    out = tmp_path / "out"
    res = export(ck, out)
    assert res.complete
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith("cow-") or n.endswith(".zst.img")]
    assert {n for n in res.sets[0].left_out if n.startswith("cow-")} == {fmt.cow_name(w["pid"])
                                                                         for w in info["workers"]}
    inh = info["inherited_size"] // P
    with open_checkpoint(ck) as c, open_checkpoint(out) as o:
        for pid in pids:
            assert not o.process(pid).entries.mask(fmt.PE_COW).any()
            assert o.process(pid).pages.nr_pages == res.sets[0].pages_present[pid] >= inh
            assert o.read(pid, info["inherited"], info["inherited_size"]) == c.read(
                pid, info["inherited"], info["inherited_size"])
        for w in info["workers"]:
            assert c.process(w["pid"]).nr_pages_present < inh  # stored once in the checkpoint
            assert o.read(w["pid"], w["private"], info["private_size"]) == c.read(
                w["pid"], w["private"], info["private_size"])
        assert o.read(t.pid, info["shared"] + P, 8 * P) == c.read(t.pid, info["shared"] + P, 8 * P)
        private = {w["pid"]: c.read(w["pid"], w["private"], info["private_size"]) for w in info["workers"]}
    with criu_restore(out, *(["--shell-job"] if res.shell_job else [])) as r:
        assert r.pid == t.pid
        for pid in pids:
            assert proc_state(pid) in ("R", "S"), pid
        for w in info["workers"]:
            assert live(w["pid"], w["private"], info["private_size"]) == private[w["pid"]]

        def counters(pid):
            return [u64(live(pid, info["shared"], 8 * 3), i) for i in range(3)]

        before = {pid: counters(pid) for pid in pids}
        # each process's counter, written by that process only, moves in every other's mapping
        wait_for(lambda: all(counters(p)[i] > before[p][i] for p in pids for i in range(3)),
                 what="every counter to move in every mapping")


def test_core_of_a_prefork_worker_holds_shared_and_inherited_memory(tree, tmp_path, shmem_bin):
    """The ELF core of a worker (``export --format elf --pid``): the shared
    buffer and the memfd mapping hold the object's bytes (the kernel's own
    core would: MMF_DUMP_ANON_SHARED), and the inherited memory, stored once
    in the parent's stream (PE_COW), is in the worker's core -- gdb reads
    each as the stopped worker holds it."""
    import re

    from dumper.export.elf import export_elf

    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed")
    t = tree("prefork", 4, 4, 1, 2)
    info = t.info
    w = info["workers"][1]
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    with open_checkpoint(ck) as c:
        assert c.process(w["pid"]).entries.mask(fmt.PE_COW).any()
    core = tmp_path / "core"
    res = export_elf(ck, core, pid=w["pid"])
    assert not [n for n in res.cores[0].notes if "shared mappings have no bytes" in n]
    places = {"shared": info["shared"] + 3 * P + 8, "memfd": info["memfd"] + 5 * P,
              "inherited": info["inherited"] + info["inherited_size"] - 16, "private": w["private"] + 24}
    cmds = [f"x/2gx {a:#x}" for a in places.values()]
    argv = [gdb, "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex", "echo MARK\\n"]
    for cmd in cmds:
        argv += ["-ex", cmd]
    r = subprocess.run(argv + [str(shmem_bin), str(core)], capture_output=True, text=True, timeout=300)
    got = [int(x, 16) for x in re.findall(r":\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", r.stdout.split("MARK\n", 1)[-1])
           for x in x]
    want = [u64(live(w["pid"], a, 16), k) for a in places.values() for k in (0, 1)]
    assert got == want, (r.stdout[-2000:], r.stderr[-2000:])
    assert all(want)  # random data, not holes read as zeros


def test_verify_pid_root_checks_the_whole_live_tree(tree, tmp_path):
    """``verify --pid ROOT`` freezes and compares the whole tree: a byte a
    worker changed after the dump (not the root) and a byte changed in the
    shared buffer are both reported; the unchanged tree verifies clean."""
    t = tree("prefork", 4, 4, 1, 2)
    info = t.info
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    r = cli("verify", ck, "--pid", t.pid)
    assert r.returncode == 0, r.stdout + r.stderr
    w = info["workers"][1]
    for pid, addr in ((w["pid"], w["private"] + 7 * P), (t.pid, info["shared"] + 9 * P)):
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        try:
            old = os.pread(fd, 1, addr)
            os.pwrite(fd, bytes([old[0] ^ 0xFF]), addr)
        finally:
            os.close(fd)
    r = cli("verify", ck, "--pid", t.pid, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and not doc["ok"]
    problems = "\n".join(doc["problems"])
    assert f"pid {w['pid']}" in problems and f"{w['private'] + 7 * P:#x}" in problems, problems
    assert "shared anonymous memory" in problems and f"{9 * P:#x}" in problems, problems
    assert proc_state(t.pid) == "T" and all(proc_state(x["pid"]) == "T" for x in info["workers"])


def test_readers_with_pid_on_a_tree(tree, tmp_path):
    """mems, rss, show and cat with ``--pid`` on a worker of the tree (and
    without, the root): the shared buffer's VMA counts the object's pages,
    the worker's inherited memory is PE_COW pages (stored in the root's
    stream) and cat reads them as the worker holds them."""
    t = tree("prefork", 4, 4, 1, 2)
    info = t.info
    w = info["workers"][0]
    ck = tmp_path / "ck"
    dump(t.pid, ck, thaw="leave-stopped")
    shared_pages, inh_pages = info["shared_size"] // P, info["inherited_size"] // P
    inh = (info["inherited"], info["inherited"] + info["inherited_size"])

    def one(doc, pid):
        (proc,) = [p for p in doc["processes"] if p["pid"] == pid]
        return proc

    for pid in (t.pid, w["pid"]):
        args = ["--pid", pid] if pid != t.pid else []
        r = cli("mems", ck, "--json", *args)
        assert r.returncode == 0, r.stderr
        proc = one(json.loads(r.stdout), pid)
        vmas = proc["vmas"]
        sv = next(v for v in vmas if int(v["vma"]["start"]) == info["shared"])
        assert sv["pages_shared"] == shared_pages and sv["shmid"] is not None
        iv = [v for v in vmas if int(v["vma"]["start"]) <= inh[0] < int(v["vma"]["end"])]
        (iv,) = iv
        if pid == t.pid:  # the root stores the inherited memory
            assert iv["pages_present"] >= inh_pages and iv["pages_cow"] == 0
        else:  # a worker refers to it
            assert iv["pages_cow"] >= inh_pages
        r = cli("rss", ck, "--json", *args)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        flags = {f for e in one(doc, pid)["entries"] if e["vaddr"] < inh[1] and e["vaddr"] + e["nr_pages"] * P > inh[0]
                 for f in e["flags"]}
        assert flags == ({"COW"} if pid != t.pid else {"PRESENT"}), flags
        (obj,) = [o for o in doc["shared"] if o["kind"] == "anon"]
        assert sorted({m["pid"] for m in obj["mapped_by"]}) == sorted(t.pids())
        r = cli("show", ck, "--json", *args)
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)["processes"]
        assert [p["pid"] for p in shown] == ([pid] if args else [t.pid, *sorted(x["pid"] for x in info["workers"])])
        if pid != t.pid:
            assert shown[0]["pages_cow"] >= inh_pages
        r = subprocess.run([sys.executable, "-m", "dumper", "cat", str(ck), "--addr", str(inh[0] + P), "--size", "64",
                            *map(str, args)], capture_output=True)
        assert r.returncode == 0 and r.stdout == live(pid, inh[0] + P, 64)
    for cmd in ("mems", "rss", "show"):  # a pid not in the tree: one line
        r = cli(cmd, ck, "--pid", 1)
        assert r.returncode == 1 and "no process 1 in this checkpoint" in r.stderr and r.stderr.count("\n") == 1


def test_prefork_chain_over_a_pre_dump_verifies_and_restores(tree, tmp_path, criu):
    """A pre-dump of the tree (which saves no shared object: the dump over
    it saves them whole) then ``dump --parent``: the chain verifies, the
    --keep-chain export carries memfd.img in its memory-only parent set,
    and ``dumper restore`` brings the tree back sharing its buffer."""
    from dumper.export import export
    from dumper.restore import restore

    t = tree("prefork", 4, 4, 1, 2)
    info = t.info
    pids = t.pids()
    pre, top = tmp_path / "pre", tmp_path / "top"
    dump(t.pid, pre, pre_dump=True, thaw="resume")
    assert not [p for p in pre.iterdir() if p.name.startswith("pagemap-shmem-")]
    dump(t.pid, top, parent=pre, thaw="kill")
    t.kill()
    for d in (pre, top):
        r = cli("verify", d)
        assert r.returncode == 0, r.stdout + r.stderr
    kept = tmp_path / "kept"
    res = export(top, kept, keep_chain=True)
    assert [s.kind for s in res.sets] == ["complete", "memory"]
    assert (kept / "parent" / fmt.MEMFD_INODE_NAME).is_file()
    from dumper.image.criuset import criu_fields_only

    assert read_image(kept / "parent" / fmt.MEMFD_INODE_NAME)[1] == [
        criu_fields_only(m) for m in read_image(pre / fmt.MEMFD_INODE_NAME)[1]]
    res = restore(top, criu=criu, timeout=120)
    try:
        assert res.pid == t.pid and res.levels == 2

        def counters(pid):
            return [u64(live(pid, info["shared"], 8 * 3), i) for i in range(3)]

        before = {pid: counters(pid) for pid in pids}
        wait_for(lambda: all(counters(p)[i] > before[p][i] for p in pids for i in range(3)),
                 what="every counter to move in every mapping")
    finally:
        _kill_restored_tree(pids)


def test_no_module_is_imported_while_the_tree_is_frozen(tree, tmp_path):
    """The tree's own phases (pages shared copy-on-write, shared memory
    objects found and copied) load their code before the freeze too, as
    test_dump holds for a single process: an import costs milliseconds of
    every process's frozen time."""
    from test_dump import _IMPORTS_WHILE_FROZEN

    t = tree("prefork", 4, 4, 1, 2)
    r = subprocess.run([sys.executable, "-c", _IMPORTS_WHILE_FROZEN, "dump", str(t.pid), "-D", str(tmp_path / "ck")],
                       capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["rc"] == 0, r.stderr
    assert out["loaded"] == []
    with open_checkpoint(tmp_path / "ck") as c:  # it did take the tree's paths
        assert len(c.pids) == 3 and c.shared.objects
        assert any(c.process(p).entries.mask(fmt.PE_COW).any() for p in c.pids)
