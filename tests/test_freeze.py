"""Freezer on real processes: every thread stops, and the target always comes back."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from dumper.errors import AccessDenied, FreezeTimeout, KernelError, NoMemoryMap, NoSuchProcess, RefusedTarget, ZombieProcess
from dumper.kernel import ptrace
from dumper.proc.freeze import Freezer, raise_on_termination
from dumper.proc.process import Process
from freeze_helpers import (
    CHURN_TARGET,
    ROOT,
    SLOT_USR1,
    TRACER,
    TRY_FREEZE,
    VFORK_TARGET,
    CounterTarget,
    Spawned,
    kernel_thread_pid,
    proc_state,
    thread_states,
    tracer_pid,
    wait_until,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ptrace is Linux")


@pytest.fixture
def spawn(tmp_path):
    """``spawn(Class, *args)``; every child is SIGKILLed and reaped after the test."""
    made = []

    def make(cls=CounterTarget, *args, **kw):
        child = cls(tmp_path, *args, **kw) if cls is CounterTarget else cls(*args, **kw)
        made.append(child)
        return child

    yield make
    for child in reversed(made):
        child.close()


@pytest.fixture
def target(spawn):
    """A running CounterTarget: main thread + 4 workers."""
    return spawn(CounterTarget)


def assert_still(t: CounterTarget, gap: float = 0.2) -> None:
    a = t.counters()
    time.sleep(gap)
    assert t.counters() == a, "a counter moved while frozen"


def assert_released(pid: int) -> None:
    """Nobody traces it and no thread is in a ptrace stop ('t')."""
    assert tracer_pid(pid) == 0
    assert "t" not in thread_states(pid).values()


# -- freeze and thaw -------------------------------------------------------------


def test_every_thread_stops_and_runs_again(target):
    target.all_move()
    with Freezer(target.pid) as fz:
        assert fz.frozen
        assert fz.threads == tuple(sorted(thread_states(target.pid)))
        assert len(fz.threads) == 5
        assert set(thread_states(target.pid).values()) == {"t"}
        assert not fz.was_stopped
        assert_still(target)
    assert not fz.frozen and fz.thaw_mode == "resume"
    assert_released(target.pid)
    target.all_move()


def test_accepts_a_process_and_a_thread_id(target):
    worker_tid = sorted(thread_states(target.pid))[1]
    for arg in (Process(target.pid), worker_tid):
        with Freezer(arg) as fz:
            assert fz.pid == target.pid and len(fz.threads) == 5
            assert_still(target, 0.05)
        target.all_move()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, ValueError])
def test_exit_thaws_on_any_exception(target, exc):
    with pytest.raises(exc):
        with Freezer(target.pid):
            raise exc()
    assert_released(target.pid)
    target.all_move()


def test_threads_created_while_seizing(spawn):
    churn = spawn(Spawned, CHURN_TARGET)
    time.sleep(0.05)
    for _ in range(15):
        with Freezer(churn.pid) as fz:
            # frozen: the thread set cannot change any more
            assert fz.threads == tuple(sorted(thread_states(churn.pid)))
            assert set(thread_states(churn.pid).values()) == {"t"}
        assert_released(churn.pid)


def test_frozen_time_covers_the_freeze(target):
    fz = Freezer(target.pid)
    assert fz.frozen_time_ns is None
    t0 = time.monotonic_ns()
    fz.freeze()
    time.sleep(0.2)
    fz.thaw()
    t1 = time.monotonic_ns()
    assert 200_000_000 <= fz.frozen_time_ns <= t1 - t0
    assert t0 <= fz.stopped_ns < fz.resumed_ns <= t1
    fz.thaw()  # again: a no-op
    assert fz.resumed_ns <= t1


# -- stopped targets and thaw modes ------------------------------------------------


def test_already_stopped_target_stays_stopped(target):
    os.kill(target.pid, signal.SIGSTOP)
    wait_until(lambda: set(thread_states(target.pid).values()) == {"T"}, what="SIGSTOP")
    with Freezer(target.pid) as fz:
        assert fz.was_stopped
        assert len(fz.threads) == 5
    assert_released(target.pid)
    time.sleep(0.05)  # give a wrongly resumed thread time to show it
    assert set(thread_states(target.pid).values()) == {"T"}
    assert_still(target, 0.1)
    os.kill(target.pid, signal.SIGCONT)
    target.all_move()


def test_sigcont_while_frozen_is_not_lost(target):
    os.kill(target.pid, signal.SIGSTOP)
    wait_until(lambda: proc_state(target.pid) == "T", what="SIGSTOP")
    with Freezer(target.pid) as fz:
        os.kill(target.pid, signal.SIGCONT)
        assert_still(target, 0.1)
    assert fz.was_stopped
    target.all_move()  # the continue took effect at thaw


def test_leave_stopped(target):
    fz = Freezer(target.pid).freeze()
    fz.thaw("leave-stopped")
    assert_released(target.pid)
    assert set(thread_states(target.pid).values()) == {"T"}
    assert_still(target, 0.1)
    os.kill(target.pid, signal.SIGCONT)
    target.all_move()


def test_kill(target):
    fz = Freezer(target.pid).freeze()
    fz.thaw("kill")
    assert proc_state(target.pid) in (None, "Z")
    target.proc.wait(timeout=2)


def test_bad_thaw_calls(target):
    fz = Freezer(target.pid)
    with pytest.raises(RuntimeError):
        fz.thaw()
    with fz:
        with pytest.raises(ValueError):
            fz.thaw("pause")
        with pytest.raises(RuntimeError):
            fz.freeze()
    target.all_move()


def test_other_thread_is_refused(target):
    with Freezer(target.pid) as fz:
        errors = []

        def other():
            try:
                fz.thaw()
            except RuntimeError as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and "tracer thread" in str(errors[0])
        assert fz.frozen
    target.all_move()


# -- the dumper dies; signals --------------------------------------------------------


def test_killed_tracer_lets_the_target_go(spawn, target):
    tracer = spawn(Spawned, TRACER, target.pid, ROOT, ready="FROZEN")
    assert tracer_pid(target.pid) == tracer.pid
    assert_still(target)
    os.kill(tracer.pid, signal.SIGKILL)
    tracer.proc.wait()
    target.all_move()
    assert_released(target.pid)


def test_already_traced_target_is_access_denied(spawn, target):
    tracer = spawn(Spawned, TRACER, target.pid, ROOT, ready="FROZEN")
    with pytest.raises(AccessDenied, match=f"already traced by pid {tracer.pid}"):
        Freezer(target.pid).freeze()
    assert tracer_pid(target.pid) == tracer.pid


def test_signal_sent_while_frozen_is_delivered_after(target):
    with Freezer(target.pid):
        os.kill(target.pid, signal.SIGUSR1)
        time.sleep(0.1)
        assert target.slot(SLOT_USR1) == 0
    wait_until(lambda: target.slot(SLOT_USR1) == 1, what="the SIGUSR1 handler")


def test_signal_delivery_stop_while_seizing_is_reinjected(target, monkeypatch):
    """A signal met before the interrupt stop is delivered, not swallowed."""
    real_interrupt = ptrace.interrupt

    def interrupt(tid):
        if tid == target.pid:  # the spinning main thread: it dequeues at once
            os.kill(tid, signal.SIGUSR1)
            time.sleep(0.05)  # now in signal-delivery-stop
        real_interrupt(tid)

    monkeypatch.setattr(ptrace, "interrupt", interrupt)
    with Freezer(target.pid) as fz:
        assert (target.pid, signal.SIGUSR1) in fz.signals
        assert len(fz.threads) == 5
        assert_still(target, 0.1)
    wait_until(lambda: target.slot(SLOT_USR1) == 1, what="the SIGUSR1 handler")


def test_no_signal_lost_across_many_freezes(target):
    """Ping-pong SIGUSR1 (one in flight at a time) while freezing over and over."""
    stop = threading.Event()
    failures = []

    def pinger():
        n = 0
        while not stop.is_set():
            n += 1
            os.kill(target.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 1.0
            while target.slot(SLOT_USR1) < n:
                if time.monotonic() > deadline:
                    failures.append((n, target.slot(SLOT_USR1)))
                    return
                time.sleep(0.0002)

    t = threading.Thread(target=pinger)
    t.start()
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            with Freezer(target.pid):
                time.sleep(0.002)
            time.sleep(0.002)
    finally:
        stop.set()
        t.join()
    assert not failures, f"signal lost: sent {failures[0][0]}, handled {failures[0][1]}"
    assert target.slot(SLOT_USR1) > 10


def test_raise_on_termination_thaws(target):
    with pytest.raises(SystemExit) as info:
        with raise_on_termination(), Freezer(target.pid):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises before this ends
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    target.all_move()


def test_termination_waits_for_the_thaw(target, monkeypatch):
    """A SIGINT that arrives mid-thaw is raised after every thread is detached."""
    real_detach = ptrace.detach
    calls = []

    def detach(tid, sig=0):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # let the handler run now, mid-thaw
        calls.append(tid)
        real_detach(tid, sig)

    monkeypatch.setattr(ptrace, "detach", detach)
    with raise_on_termination():
        fz = Freezer(target.pid).freeze()
        with pytest.raises(KeyboardInterrupt):
            fz.thaw()
    assert sorted(calls) == list(fz.threads)
    assert_released(target.pid)
    target.all_move()


def test_thread_that_never_stops_times_out_and_is_let_go_later(spawn, tmp_path):
    """A vfork parent ignores PTRACE_INTERRUPT until its child execs."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = spawn(Spawned, VFORK_TARGET, fifo)
    wait_until(lambda: proc_state(t.pid) == "D", what="the vfork wait")
    fz = Freezer(t.pid, stop_timeout=0.1)
    with pytest.raises(FreezeTimeout, match=f"thread {t.pid} .*state D.* in vfork.* did not stop within 0.1 s"):
        fz.freeze()
    assert fz.pending == (t.pid,)
    assert tracer_pid(t.pid) == os.getpid()  # still attached: it never stopped
    os.close(os.open(fifo, os.O_WRONLY))  # the child execs; the parent traps
    wait_until(lambda: proc_state(t.pid) == "t", what="the late interrupt stop")
    fz.thaw()
    assert_released(t.pid)
    assert t.readline() == "SPAWNED"


# -- the target goes away; bad targets ----------------------------------------------


def test_exit_while_seizing_is_no_such_process(target, monkeypatch):
    real_interrupt = ptrace.interrupt
    calls = []

    def interrupt(tid):
        calls.append(tid)
        if len(calls) == 2:
            os.kill(target.pid, signal.SIGKILL)
        real_interrupt(tid)

    monkeypatch.setattr(ptrace, "interrupt", interrupt)
    fz = Freezer(target.pid)
    with pytest.raises(NoSuchProcess, match="exited while being frozen"):
        fz.freeze()
    assert not fz._tracees
    target.proc.wait(timeout=2)
    assert proc_state(target.pid) is None


def test_nonexistent_pid():
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with pytest.raises(NoSuchProcess):
        Freezer(pid_max + 1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(NoSuchProcess):
        Freezer(gone.pid)


def test_zombie():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: proc_state(child.pid) == "Z", what="the child to exit")
        with pytest.raises(ZombieProcess):
            Freezer(child.pid)
    finally:
        child.wait()


def test_kernel_thread():
    with pytest.raises(NoMemoryMap):
        Freezer(kernel_thread_pid())


def test_self_and_ancestors_are_refused():
    helper = threading.Thread(target=time.sleep, args=(0.5,))
    helper.start()
    try:
        for pid in (os.getpid(), helper.native_id, os.getppid(), 1):
            with pytest.raises(RefusedTarget):
                Freezer(pid)
    finally:
        helper.join()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop to uid 65534"
)
def test_unprivileged_seize_is_access_denied(spawn, target):
    out = spawn(Spawned, TRY_FREEZE, target.pid, ROOT, ready="", user=65534)
    line = out.readline()
    out.proc.wait(timeout=5)
    assert line.startswith("AccessDenied"), line
    assert_released(target.pid)


# -- whole trees (issue 11 "The tree"), through the warden ----------------------------

from pathlib import Path  # noqa: E402

from dumper.proc.warden import Warden  # noqa: E402

TREE = str(Path(__file__).parent / "targets" / "tree.py")


class TreeTarget:
    """tests/targets/tree.py MODE in a session of its own; close() kills the group."""

    def __init__(self, tmp_path, mode: str) -> None:
        import json

        self.counter_file = tmp_path / f"tree-counters-{mode}"
        self.counter_file.write_bytes(b"\0" * 4096)
        self.proc = subprocess.Popen([sys.executable, TREE, mode, str(self.counter_file)], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.pid = self.proc.pid
        first = self.proc.stdout.readline().strip()
        self.info = json.loads(first) if first.startswith("{") else {}
        if first != "READY":
            assert self.proc.stdout.readline().strip() == "READY"

    def slot(self, i: int) -> int:
        return int.from_bytes(self.counter_file.read_bytes()[8 * i : 8 * i + 8], "little")

    def moves(self, i: int) -> None:
        a = self.slot(i)
        wait_until(lambda: self.slot(i) != a, 5, f"counter {i} to move")

    def close(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def tree_target(tmp_path):
    made = []

    def make(mode):
        t = TreeTarget(tmp_path, mode)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _children_of(pid: int) -> set[int]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out |= {int(c) for c in f.read().split()}
        except OSError:
            pass
    return out


def test_tree_freeze_children_grandchildren_zombie_stopped(tree_target):
    t = tree_target("shape")
    wait_until(lambda: proc_state(t.info["stopped"]) == "T", what="the stopped child")
    live = [t.pid, *t.info["children"], *t.info["grandchildren"]]
    with Warden() as w:
        tree = w.freeze(t.pid, tree=True)
        assert set(tree.processes) == {*live, t.info["zombie"], t.info["stopped"]}
        assert list(tree.processes)[0] == t.pid  # parents before children
        z = tree.processes[t.info["zombie"]]
        assert z.zombie and z.threads == (z.pid,) and z.states == ("Z",) and z.ppid == t.pid
        assert tracer_pid(t.info["zombie"]) == 0  # recorded, never seized
        s = tree.processes[t.info["stopped"]]
        assert s.was_stopped and not s.zombie
        assert all(tree.processes[c].ppid == t.pid for c in t.info["children"])
        assert {tree.processes[g].ppid for g in t.info["grandchildren"]} == set(t.info["children"])
        for pid in live + [t.info["stopped"]]:
            p = tree.processes[pid]
            assert p.pgid == os.getpgid(t.pid) and p.sid == os.getsid(t.pid)
            assert tracer_pid(pid) == w.pid and set(thread_states(pid).values()) == {"t"}
        frozen = [t.slot(i) for i in range(5)]
        time.sleep(0.1)
        assert [t.slot(i) for i in range(5)] == frozen
        w.thaw("resume")
    for pid in live:
        assert tracer_pid(pid) == 0
    for i in range(5):
        t.moves(i)
    assert proc_state(t.info["stopped"]) == "T"  # stopped before, stopped after
    assert proc_state(t.info["zombie"]) == "Z"


def test_tree_leave_stopped_and_single(tree_target):
    t = tree_target("shape")
    with Warden() as w:
        tree = w.freeze(t.pid, tree=False)  # --single: the root alone
        assert list(tree.processes) == [t.pid]
        assert tracer_pid(t.info["children"][0]) == 0
        t.moves(1)
    with Warden() as w:
        tree = w.freeze(t.pid)
        w.thaw("leave-stopped")
    for pid in [t.pid, *t.info["children"], *t.info["grandchildren"]]:
        assert proc_state(pid) == "T" and tracer_pid(pid) == 0


def test_tree_that_forks_and_exits_during_the_freeze(tree_target):
    """Consistent every time: whatever is in the tree is frozen, and every
    child of a frozen process is in the tree; nothing stays traced after."""
    t = tree_target("churn")
    seen = set()
    for _ in range(15):
        with Warden() as w:
            tree = w.freeze(t.pid)
            members = set(tree.processes)
            seen |= members
            for pid, p in tree.processes.items():
                if p.zombie:
                    assert proc_state(pid) == "Z"
                    continue
                assert tracer_pid(pid) == w.pid
                assert set(thread_states(pid).values()) == {"t"}
                assert _children_of(pid) <= members, "a child of a frozen process is missing"
            w.thaw()
        for pid in members:
            st = proc_state(pid)
            assert st is None or st == "Z" or tracer_pid(pid) == 0
    assert len(seen) > 15  # the tree really changed between freezes


def test_main_thread_exited_freeze_and_read_memory(tree_target):
    """pthread_exit() in main: the leader is a zombie, the worker runs. It is
    frozen, recorded as found, and its memory read through the live thread."""
    t = tree_target("pthread_exit")
    wait_until(lambda: proc_state(t.pid) == "Z", what="the main thread to exit")
    proc = Process(t.pid)
    assert proc.leader_exited
    worker = proc.mm_tid()
    assert worker != t.pid
    assert proc.file_path("mem") == f"/proc/{t.pid}/task/{worker}/mem"
    with Warden() as w:
        for given in (t.pid, worker):  # a worker's tid names the same process
            tree = w.freeze(given, tree=False)
            p = tree.processes[t.pid]
            assert p.threads == (t.pid, worker) and p.states[0] == "Z" and p.states[1] in "RS"
            assert tracer_pid(t.pid) == 0  # the zombie leader is never seized...
            with open(f"/proc/{t.pid}/task/{worker}/status") as f:
                assert f"TracerPid:\t{w.pid}\n" in f.read()  # ...the live thread is
            assert proc_state(t.pid, worker) == "t"
            fd = proc.open("mem")
            try:
                assert os.pread(fd, 4096, t.info["addr"]) == b"\x5a" * 4096
            finally:
                os.close(fd)
            assert any(v.start <= t.info["addr"] < v.end for v in proc.vmas())
            w.thaw()
    t.moves(0)


def test_main_thread_exited_dump(tree_target, tmp_path):
    from dumper.dump import dump
    from dumper.image.checkpoint import open_checkpoint

    t = tree_target("pthread_exit")
    wait_until(lambda: proc_state(t.pid) == "Z", what="the main thread to exit")
    dump(t.pid, tmp_path / "ck")
    with open_checkpoint(tmp_path / "ck") as ck:
        assert bytes(ck.read(t.pid, t.info["addr"], 4096)) == b"\x5a" * 4096
    t.moves(0)


# -- a vfork parent with a worker thread (issue 13 item 4) ------------------------

VFORK_WORKER_TARGET = r"""
import ctypes, mmap, os, sys, threading, time
f = open(sys.argv[2], "r+b")
c = (ctypes.c_uint64 * 64).from_buffer(mmap.mmap(f.fileno(), 4096))
def worker():
    while True:
        c[1] += 1
        time.sleep(0.0005)
threading.Thread(target=worker, daemon=True).start()
print("READY", flush=True)
# glibc's posix_spawn through ctypes, which lets go of the GIL (os.posix_spawn
# keeps it, and the worker would stall for that reason alone).
libc = ctypes.CDLL(None)
actions = ctypes.create_string_buffer(256)  # posix_spawn_file_actions_t (80 bytes on glibc x86_64)
libc.posix_spawn_file_actions_init(actions)
libc.posix_spawn_file_actions_addopen(actions, 3, os.fsencode(sys.argv[1]), os.O_RDONLY, 0)
pid = ctypes.c_int()
argv = (ctypes.c_char_p * 2)(b"/bin/true", None)
libc.posix_spawn(ctypes.byref(pid), b"/bin/true", actions, None, argv, None)
print("SPAWNED", flush=True)
time.sleep(60)
"""


@pytest.fixture
def vfork_target(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    counters = tmp_path / "vfork-counters"
    counters.write_bytes(b"\0" * 4096)
    t = Spawned(VFORK_WORKER_TARGET, fifo, counters)
    wait_until(lambda: proc_state(t.pid, t.pid) == "D", what="the vfork wait")
    t.counter = lambda: int.from_bytes(counters.read_bytes()[8:16], "little")
    yield t
    # Let the vfork child go (it waits to open the FIFO), then kill everything.
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if proc_state(t.pid) else None
    t.close()
    if fd is not None:
        os.close(fd)


def test_vfork_parent_is_refused_in_time_and_the_worker_runs(vfork_target):
    t = vfork_target
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.monotonic(), t.counter()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    with Warden() as w:
        sampler.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(FreezeTimeout) as info:
                w.freeze(t.pid, tree=True, stop_timeout=1.5)
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            sampler.join()
    msg = str(info.value)
    assert elapsed < 1.5 + 0.75, f"refused after {elapsed:.2f} s for a 1.5 s timeout"
    assert elapsed >= 1.5
    assert f"thread {t.pid} (the main thread) (state D, uninterruptible sleep in vfork" in msg
    assert "did not stop within 1.5 s" in msg and "--freeze-timeout" in msg
    assert "thaw()" not in msg
    # The worker ran during the wait: its counter moved in the middle of it.
    mid = [c for ts, c in samples if t0 + 0.3 < ts < t0 + 1.3]
    assert len(mid) >= 2 and mid[-1] > mid[0], "the worker was kept stopped while the main thread was awaited"
    assert tracer_pid(t.pid) == 0  # the warden exited: nothing stays attached
    assert proc_state(t.pid, t.pid) == "D"


def test_vfork_parent_cli_message(vfork_target, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dumper", "dump", str(vfork_target.pid), "-D", str(tmp_path / "ck"),
                        "--freeze-timeout", "0.5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dumper: error: thread ")
    assert f"thread {vfork_target.pid} (the main thread) (state D" in lines[0] and "within 0.5 s" in lines[0]
    assert not (tmp_path / "ck").exists()
