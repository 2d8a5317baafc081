"""dump --copy fork: the frozen target forks, pages are read from the
copy-on-write child after the thaw (dumper.dump.snapshot). The image must
be the memory at the freeze whatever the target writes afterwards, and the
target must be left as found: no child, no zombie, running, untraced."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dumper.dump import dump
from dumper.image.checkpoint import open_checkpoint
from dumper.kernel.libc import PAGE_SIZE as P
from dumper.kernel.x86_64 import ARCH
from live_memory import differing_pages

pytestmark = pytest.mark.skipif(ARCH != "x86_64", reason="the fork is injected: x86_64 only")

N = 16384  # pages of the writer's mapping (64 MiB)

# Sweeps the mapping again and again, writing the sweep number at the start
# of every page, and reports each sweep's first number on request (SIGUSR1
# prints the current sweep). At any instant the mapping holds one boundary:
# pages [0, k) have sweep g + 1, pages [k, N) sweep g.
WRITER = textwrap.dedent(f"""
    import ctypes, mmap, signal, sys
    n = {N}
    m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    g = 1
    for i in range(0, n * 4096, 4096):
        m[i:i + 8] = g.to_bytes(8, "little")
    signal.signal(signal.SIGUSR1, lambda *a: print(g, flush=True))
    for sig in (signal.SIGTRAP, signal.SIGSEGV):  # sent with kill() by a test: ignored
        signal.signal(sig, lambda *a: None)
    print(base, flush=True)
    while True:
        g += 1
        for i in range(0, n * 4096, 4096):
            m[i:i + 8] = g.to_bytes(8, "little")
""")


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _status(pid: int, field: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(None, 1)[1].strip()
    raise KeyError(field)


def _sweeps(ck, pid: int, base: int) -> list[int]:
    with open_checkpoint(ck) as c:
        data = c.read(pid, base, N * P)
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, N * P, P)]


@pytest.fixture
def writer():
    p = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        p.base = int(p.stdout.readline())
        yield p
    finally:
        p.kill()
        p.wait()


def _left_as_found(p) -> None:
    assert _children(p.pid) == []  # killed and reaped: no child, no zombie
    assert _status(p.pid, "TracerPid") == "0"
    assert _status(p.pid, "State")[0] in "RS"


def test_the_image_is_the_memory_at_the_freeze_whatever_is_written_after(writer, tmp_path):
    time.sleep(0.2)
    r = dump(writer.pid, tmp_path / "ck", copy="fork")
    assert r.copy == "fork" and r.pages_unreadable == 0
    sweeps = _sweeps(tmp_path / "ck", writer.pid, writer.base)
    # One instant: a run of sweep g + 1 then a run of sweep g (or one sweep
    # throughout). Pages read from the running process would show later sweeps.
    g = sweeps[-1]
    k = sweeps.index(g)
    assert set(sweeps[:k]) <= {g + 1} and set(sweeps[k:]) == {g}, sorted(set(sweeps))[:8]
    # it kept running and writing meanwhile, and was left as found
    writer.send_signal(signal.SIGUSR1)
    assert int(writer.stdout.readline()) > g + 1
    _left_as_found(writer)


@pytest.mark.parametrize("read", ["window", "proc-mem"])
def test_pages_written_while_the_child_is_read_stay_out_of_the_image(writer, tmp_path, monkeypatch, read):
    """The same with the target running during a slow read: the child
    copies one slot of its window at a time with a pause after each
    (``window``), or every page is read from /proc/CHILD/mem one page per
    call (``proc-mem``, where the window cannot be made)."""
    from dumper.dump import snapshot

    calls = []
    if read == "window":
        orig = snapshot._Window._take_pending

        def slow(self):  # the copies outlast many sweeps
            calls.append(1)
            orig(self)
            time.sleep(0.05)

        monkeypatch.setattr(snapshot._Window, "_take_pending", slow)
        least = N * P // snapshot.WINDOW_SLOT_BYTES
    else:
        monkeypatch.setattr(snapshot.ForkSnapshot, "use_window", False)
        orig = snapshot.ForkSnapshot.readinto

        def slow(self, view, addr):  # one page at a time: the read outlasts many sweeps
            got = 0
            while got < len(view):
                calls.append(addr + got)
                k = orig(self, view[got:got + P], addr + got)
                got += k
                if k < P:
                    break
            return got

        monkeypatch.setattr(snapshot.ForkSnapshot, "readinto", slow)
        least = N
    t0 = time.monotonic()
    r = dump(writer.pid, tmp_path / "ck", copy="fork")
    took = time.monotonic() - t0
    assert r.copy == "fork" and len(calls) >= least and r.pages_unreadable == 0
    assert r.copy_read == ("window" if read == "window" else "/proc/PID/mem")
    sweeps = _sweeps(tmp_path / "ck", writer.pid, writer.base)
    g = sweeps[-1]
    k = sweeps.index(g)
    assert set(sweeps[:k]) <= {g + 1} and set(sweeps[k:]) == {g}
    writer.send_signal(signal.SIGUSR1)
    now = int(writer.stdout.readline())
    assert now > g + 1, f"the target did not run during the {took:.1f} s dump"
    _left_as_found(writer)


@pytest.mark.parametrize(("sig", "copy"), [(signal.SIGTRAP, "fork"), (signal.SIGSEGV, "fork"),
                                           (signal.SIGTRAP, "frozen")],
                         ids=["SIGTRAP-fork", "SIGSEGV-fork", "SIGTRAP-frozen"])
def test_signals_sent_to_the_process_group_do_not_break_the_dump(writer, tmp_path, monkeypatch, sig, copy):
    """The snapshot child is in the process's group and runs its copies for
    the whole read: a SIGTRAP sent to the group was taken for the end of a
    copy (the dump failed), a SIGSEGV for a page it could not read (the rest
    read the slow way) -- a trial. And a SIGTRAP pending at the freeze was
    taken for the end of an injected syscall, in every copy mode. Signals
    someone sent are not ours: the child drops them (it never acts on one),
    the process gets its own after the thaw."""
    import threading

    from dumper.dump import snapshot

    rests = []
    orig_rest, orig_take = snapshot._Window._read_rest, snapshot._Window._take_pending
    monkeypatch.setattr(snapshot._Window, "_read_rest", lambda self, *a: rests.append(1) or orig_rest(self, *a))
    monkeypatch.setattr(snapshot._Window, "_take_pending", lambda self: (orig_take(self), time.sleep(0.03)))
    stop = threading.Event()

    def storm():
        while not stop.is_set():
            os.killpg(writer.pid, sig)
            time.sleep(0.002)

    th = threading.Thread(target=storm)
    th.start()
    try:
        r = dump(writer.pid, tmp_path / "ck", copy=copy)
    finally:
        stop.set()
        th.join()
    assert r.copy == copy and r.pages_unreadable == 0 and not rests
    sweeps = _sweeps(tmp_path / "ck", writer.pid, writer.base)
    g = sweeps[-1]
    k = sweeps.index(g)
    assert set(sweeps[:k]) <= {g + 1} and set(sweeps[k:]) == {g}
    _left_as_found(writer)


SIGTRAP_BLOCKED = textwrap.dedent("""
    import signal, sys, time
    data = bytearray(80 << 20)
    data[::4096] = b"x" * (len(data) // 4096)
    signal.signal(signal.SIGTRAP, lambda *a: print("trapped", flush=True))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTRAP})
    print("READY", flush=True)
    sys.stdin.readline()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTRAP})
    time.sleep(5)
""")


def _sig_bits(pid: int) -> tuple[int, int]:
    return int(_status(pid, "SigBlk"), 16), int(_status(pid, "SigCgt"), 16)


@pytest.mark.parametrize("copy", ["fork", "frozen"])
def test_a_blocked_sigtrap_keeps_its_handler(tmp_path, copy):
    """Our traps (single-step, int3) are forced signals: with SIGTRAP
    blocked, the kernel unblocked it and reset its handler to SIG_DFL for
    good, so the next SIGTRAP killed the process (a trial). SIGTRAP is now
    unblocked while we inject and the mask put back: the process keeps its
    handler and its mask."""
    p = subprocess.Popen([sys.executable, "-c", SIGTRAP_BLOCKED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        bit = 1 << (signal.SIGTRAP - 1)
        before = _sig_bits(p.pid)
        assert before[0] & bit and before[1] & bit
        r = dump(p.pid, tmp_path / "ck", copy=copy)
        assert r.copy == copy
        assert _sig_bits(p.pid) == before
        os.kill(p.pid, signal.SIGTRAP)  # pending while blocked, handled once unblocked
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "trapped"
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_sigstop_and_sigcont_during_the_dump(writer, tmp_path):
    """A process throttled with SIGSTOP/SIGCONT (cpulimit) while it is
    dumped: an injected syscall the stop interrupted is rewound for a
    restart (or never ran) and reported at its first byte; it is stepped
    again, not taken for a failure (a trial: every dump failed, and the
    failed one left its snapshot child a zombie)."""
    import threading

    stop = threading.Event()

    def throttle():
        while not stop.is_set():
            os.kill(writer.pid, signal.SIGSTOP)
            time.sleep(0.003)
            os.kill(writer.pid, signal.SIGCONT)
            time.sleep(0.005)

    th = threading.Thread(target=throttle)
    th.start()
    try:
        for copy in ("fork", "frozen"):
            r = dump(writer.pid, tmp_path / copy, copy=copy)
            assert r.copy == copy and r.pages_unreadable == 0
    finally:
        stop.set()
        th.join()
        os.kill(writer.pid, signal.SIGCONT)
    time.sleep(0.1)
    _left_as_found(writer)


def test_the_snapshot_child_killed_during_the_read_is_said_so(writer, tmp_path, monkeypatch):
    """Someone kills the snapshot child while it copies (kill -9, the OOM
    killer): the dump fails saying so, not with a ptrace error (a trial),
    and leaves nothing behind."""
    from dumper.dump import snapshot
    from dumper.errors import NoSuchProcess

    calls = []
    orig = snapshot._Window._take_pending

    def kill_at_second(self):
        calls.append(1)
        if len(calls) == 2:
            os.kill(self.snap.child, signal.SIGKILL)
            time.sleep(0.05)
        orig(self)

    monkeypatch.setattr(snapshot._Window, "_take_pending", kill_at_second)
    with pytest.raises(NoSuchProcess, match="snapshot process was killed"):
        dump(writer.pid, tmp_path / "ck", copy="fork")
    assert not (tmp_path / "ck").exists()
    _left_as_found(writer)


@pytest.mark.parametrize("window", [True, False], ids=["window", "proc-mem"])
def test_pages_the_child_cannot_touch_are_read_through_proc_mem(spawn_target, tmp_path, monkeypatch, window):
    """Pages of a PROT_NONE VMA: the child's copy stops at the first one
    (SIGSEGV, never delivered) and the rest of that slot is read through
    /proc/CHILD/mem, which reads them (FOLL_FORCE); the image holds their
    bytes, not zeros."""
    from dumper.dump import snapshot

    monkeypatch.setattr(snapshot.ForkSnapshot, "use_window", window)
    rests = []
    orig = snapshot._Window._read_rest
    monkeypatch.setattr(snapshot._Window, "_read_rest", lambda self, *a: rests.append(a[2]) or orig(self, *a))
    t = spawn_target("dense,zero")
    t.command("mprotect dense none")
    a, n = t.regions["dense"]
    r = dump(t.pid, tmp_path / "ck", copy="fork", thaw="leave-stopped")
    assert r.copy == "fork" and r.pages_unreadable == 0 and r.copy_read == ("window" if window else "/proc/PID/mem")
    assert bool(rests) == window  # the child stopped short, and only there
    with open_checkpoint(tmp_path / "ck") as c:
        assert [c.read(t.pid, a + i * P, P)[:8] for i in range(n // P)] == [
            bytes([i % 251 + 1]) * 8 for i in range(n // P)]
    os.kill(t.pid, signal.SIGCONT)


def test_a_stopped_target_stays_stopped(spawn_target, tmp_path):
    t = spawn_target("dense")
    os.kill(t.pid, signal.SIGSTOP)
    try:
        r = dump(t.pid, tmp_path / "ck", copy="fork")
        assert r.copy == "fork" and r.was_stopped
        assert _status(t.pid, "State")[0] == "T" and _children(t.pid) == []
        assert _status(t.pid, "TracerPid") == "0"
    finally:
        os.kill(t.pid, signal.SIGCONT)


def test_leave_stopped_after_a_fork(spawn_target, tmp_path):
    t = spawn_target("dense")
    r = dump(t.pid, tmp_path / "ck", copy="fork", thaw="leave-stopped")
    assert r.copy == "fork" and r.reap_ns > 0
    assert _status(t.pid, "State")[0] == "T" and _children(t.pid) == []
    os.kill(t.pid, signal.SIGCONT)
    assert t.command("write dense 1") == []  # and it runs on


def test_a_userfaultfd_target_is_copied_frozen(spawn_target, tmp_path):
    # A fork would wait for the (frozen) monitor of a context with UFFD_FEATURE_EVENT_FORK.
    t = spawn_target("dense,uffd")
    r = dump(t.pid, tmp_path / "ck", copy="fork")
    assert r.copy == "frozen"
    assert any("userfaultfd" in n and "copied while frozen" in n for n in r.notes), r.notes
    assert _children(t.pid) == []


SECCOMP_TARGET = textwrap.dedent("""
    import ctypes, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    # one BPF instruction, BPF_RET|BPF_K SECCOMP_RET_ALLOW: a filter that allows everything
    insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000))
    prog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(insn))
    buf = ctypes.create_string_buffer(prog)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, buf, 0, 0):  # NO_NEW_PRIVS, SECCOMP filter
        sys.exit("seccomp: " + str(ctypes.get_errno()))
    data = bytearray(8 << 20)
    print("READY", flush=True)
    sys.stdin.read()
""")


def test_a_seccomp_filtered_target_is_copied_frozen(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", SECCOMP_TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        assert _status(p.pid, "Seccomp") == "2"
        r = dump(p.pid, tmp_path / "ck", copy="fork")
        assert r.copy == "frozen"
        assert any("seccomp" in n for n in r.notes), r.notes
        assert _children(p.pid) == []
    finally:
        p.kill()
        p.wait()


def test_auto_forks_only_where_it_pays(spawn_target, writer, tmp_path):
    small = spawn_target("dense")  # 1 MiB: the copy costs less than a fork and a reap
    assert dump(small.pid, tmp_path / "small").copy == "frozen"
    assert dump(writer.pid, tmp_path / "big").copy == "fork"  # 64 MiB
    assert dump(writer.pid, tmp_path / "frozen", copy="frozen").copy == "frozen"


@pytest.mark.parametrize("sig,group", [(signal.SIGKILL, False), (signal.SIGKILL, True), (signal.SIGINT, False),
                                       (signal.SIGTERM, False)],
                         ids=["SIGKILL", "SIGKILL-process-group", "SIGINT", "SIGTERM"])
def test_the_child_is_released_when_the_dumper_dies_or_is_interrupted(writer, tmp_path, sig, group):
    """A signal to the dumper while it reads the snapshot: its warden (the
    tracer) kills the child and reaps it inside the target -- on SIGKILL by
    itself (also when the whole process group is killed: `kill -9 -PGID`, a
    CI timeout; the warden has a session of its own), on SIGINT/SIGTERM as
    the dumper unwinds."""
    code = textwrap.dedent(f"""
        import sys
        from dumper.dump import dump, snapshot
        orig = snapshot.ForkSnapshot.write_run
        def stall(self, pw, start, end):
            print("CHILD", self.child, flush=True)
            sys.stdin.read()  # killed here
        snapshot.ForkSnapshot.write_run = stall
        dump({writer.pid}, {str(tmp_path / "ck")!r}, copy="fork")
    """)
    d = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=group)
    try:
        line = d.stdout.readline()
        assert line.startswith("CHILD"), line
        child = int(line.split()[1])
        assert _children(writer.pid) == [child]
        if group:
            os.killpg(d.pid, sig)
        else:
            d.send_signal(sig)
        _, err = d.communicate(timeout=30)
        assert d.returncode == -sig or (sig != signal.SIGKILL and d.returncode != 0), (d.returncode, err)
        if sig != signal.SIGKILL:  # unwound: everything undone before it exits
            assert _children(writer.pid) == [] and "left behind" not in err, err
        deadline = time.monotonic() + 10
        while _children(writer.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _left_as_found(writer)
        assert not os.path.exists(f"/proc/{child}")
        assert not (tmp_path / "ck").exists()
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()


def test_no_fork_when_the_process_is_killed_at_the_thaw(spawn_target, tmp_path):
    # The orphaned child would hold the pid (its session and group id) until
    # its new parent reaps it, and `criu restore` needs that pid at once.
    t = spawn_target("dense", new_session=True)
    r = dump(t.pid, tmp_path / "ck", copy="fork", thaw="kill")
    assert r.copy == "frozen"
    assert any("killed at the thaw" in n for n in r.notes), r.notes


@pytest.mark.skipif(not __import__("shutil").which("unshare"), reason="needs unshare(1)")
def test_a_target_in_its_own_pid_namespace(tmp_path):
    """clone returns the child's pid in the target's namespace, the tracer
    sees another: each is used where it means something (wait4 inside,
    ptrace and kill outside)."""
    code = "import sys; data = bytearray(b'x' * (8 << 20)); print('READY', flush=True); sys.stdin.read()"
    u = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert u.stdout.readline().strip() == "READY"
        (pid,) = _children(u.pid)
        assert _status(pid, "NSpid").split()[-1] == "1"  # pid 1 in its namespace
        r = dump(pid, tmp_path / "ck", copy="fork", thaw="leave-stopped")
        assert r.copy == "fork" and r.pages_unreadable == 0
        assert _children(pid) == [] and _status(pid, "State")[0] == "T"
        with open_checkpoint(tmp_path / "ck") as c:
            pages = {vaddr: bytes(data) for vaddr, data in c.iter_pages(pid)}
        assert pages and not differing_pages(tmp_path / "ck", pid, pages)
        os.kill(pid, signal.SIGCONT)
    finally:
        os.killpg(u.pid, signal.SIGKILL)
        u.wait()


def _limited_memcg(tmp_name: str, limit: int, where: str):
    """A memory cgroup with a child cgroup, ``limit`` bytes on the child
    (``where="leaf"``) or on the parent: (the child's cgroup.procs path, the
    directories to remove, deepest first), or skip."""
    import uuid

    for root, limit_file in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
                             ("/sys/fs/cgroup", "memory.max"), ("/sys/fs/cgroup/unified", "memory.max")):
        if not os.path.exists(os.path.join(root, "cgroup.procs")):
            continue
        d = os.path.join(root, f"{tmp_name}-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(d)
        except OSError:
            continue
        made = [d]
        try:
            if limit_file == "memory.max":  # v2: the controller must be enabled for the child
                with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory")
            leaf = os.path.join(d, "c")
            os.mkdir(leaf)
            made.insert(0, leaf)
            with open(os.path.join(leaf if where == "leaf" else d, limit_file), "w") as f:
                f.write(str(limit))
            return os.path.join(leaf, "cgroup.procs"), made
        except OSError:
            for x in made:
                os.rmdir(x)
    pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")


@pytest.mark.parametrize("where", ["leaf", "parent"])
def test_a_target_near_its_memory_cgroup_limit_is_copied_frozen(tmp_path, where):
    """Pages it writes while the child lives would be copied and charged to
    its cgroup: a fork there could push it into its OOM killer. A limit on
    a parent cgroup (a systemd slice, a pod) binds as much as one on its own."""
    procs, made = _limited_memcg("dumper-test", 160 << 20, where)
    # every page written, no temporary copy (the cgroup would OOM-kill it)
    code = ("import sys; data = bytearray(100 << 20); data[::4096] = b'x' * (25600); "
            "print('READY', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); exec(sys.argv[1])", code],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        with open(procs, "w") as f:
            f.write(str(p.pid))
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "READY"
        from dumper.proc.snapshot import memcg_headroom

        assert memcg_headroom(p.pid) < 100 << 20
        r = dump(p.pid, tmp_path / "ck")  # auto
        assert r.copy == "frozen"
        r = dump(p.pid, tmp_path / "ck2", copy="fork")
        assert r.copy == "frozen" and any("memory cgroup" in n for n in r.notes), r.notes
    finally:
        p.kill()
        p.wait()
        for d in made:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.05)


def test_auto_weighs_the_fork_against_the_copy(monkeypatch):
    """A fork copies every VMA: 64,000 one-page VMAs holding 250 MiB fork
    for longer than their pages copy (measured: ~200 ms vs ~70 ms here),
    while 25 VMAs with the same pages fork in a tenth of the copy."""
    from dumper.dump import snapshot
    from dumper.dump.snapshot import why_not
    from dumper.proc.maps import Vma

    monkeypatch.setattr(snapshot, "memcg_headroom", lambda pid: None)  # whatever cgroup the tests run in

    def vmas(n):
        return [Vma(0x10000 + i * P, 0x10000 + (i + 1) * P, "rw-p", 0, 0, 0, 0, "") for i in range(n)]

    common = dict(tree=False, pre_dump=False, pre_copy=False, thaw="resume", pid=os.getpid())
    assert "VMAs take longer to fork" in why_not("auto", vmas=vmas(64024), expected=250 << 20, **common)
    assert why_not("auto", vmas=vmas(25), expected=250 << 20, **common) is None
    assert why_not("fork", vmas=vmas(64024), expected=250 << 20, **common) is None  # asked for: forked
    assert "less than 64 MiB" in why_not("auto", vmas=vmas(25), expected=32 << 20, **common)


def test_the_process_exits_while_its_snapshot_is_read(writer, tmp_path, monkeypatch):
    """The checkpoint is the memory at the freeze: a process that dies right
    after the thaw is still saved, and its orphaned snapshot child (exit
    signal now SIGCHLD: kernel/exit.c reparent_leader) is killed and left
    to its new parent to reap."""
    from dumper.dump import snapshot

    orig = snapshot.ForkSnapshot.write_run
    seen = {}

    def kill_first(self, pw, start, end):
        if not seen:
            seen["child"] = self.child
            writer.kill()
            writer.wait()
        return orig(self, pw, start, end)

    monkeypatch.setattr(snapshot.ForkSnapshot, "write_run", kill_first)
    r = dump(writer.pid, tmp_path / "ck", copy="fork")
    assert r.copy == "fork" and r.pages_unreadable == 0
    assert r.exited_after_thaw and any("exited while its pages were read" in n for n in r.notes), r.notes
    sweeps = _sweeps(tmp_path / "ck", writer.pid, writer.base)
    g = sweeps[-1]
    assert set(sweeps) <= {g, g + 1}
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{seen['child']}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{seen['child']}")


SETNS_TARGET = textwrap.dedent("""
    import ctypes, os, signal, sys
    libc = ctypes.CDLL(None, use_errno=True)
    data = bytearray(80 << 20)
    data[::4096] = b"x" * (len(data) // 4096)
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    tries = failed = 0
    signal.signal(signal.SIGUSR1, lambda *a: print(tries, failed, flush=True))
    print("READY", flush=True)
    while True:
        tries += 1
        if libc.setns(fd, 0x00020000):  # CLONE_NEWNS: EINVAL while another task shares its fs_struct
            failed += 1
""")


def test_the_snapshot_child_shares_no_fs_struct_with_the_process(tmp_path):
    """With CLONE_FS the child would share cwd/root/umask: the process's
    setns(CLONE_NEWNS) fails with EINVAL while it lives (fs->users != 1),
    and a setuid exec would lose its privileges."""
    p = subprocess.Popen([sys.executable, "-c", SETNS_TARGET], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        r = dump(p.pid, tmp_path / "ck", copy="fork")
        assert r.copy == "fork"
        p.send_signal(signal.SIGUSR1)
        tries, failed = map(int, p.stdout.readline().split())
        assert tries > 1000 and failed == 0
    finally:
        p.kill()
        p.wait()
