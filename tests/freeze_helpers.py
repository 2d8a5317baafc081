"""Real target processes for tests/test_freeze.py.

Each target is ``sys.executable -c CODE`` and prints READY once set up. A
counter target bumps 64-bit counters in a file-backed MAP_SHARED page the
test maps too, so the test can watch it run without talking to it.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)

# Counter slots: 0 = main thread, 1..N = worker threads.
SLOT_USR1 = 60  # SIGUSR1 handler runs
NSLOTS = 64

COUNTER_TARGET = r"""
import ctypes, mmap, signal, sys, threading, time
f = open(sys.argv[1], "r+b")
mm = mmap.mmap(f.fileno(), 4096)
c = (ctypes.c_uint64 * 64).from_buffer(mm)
nthreads = int(sys.argv[2])

def on_usr1(signum, frame):
    c[60] += 1

signal.signal(signal.SIGUSR1, on_usr1)

def worker(i):
    while True:          # mostly asleep in nanosleep: an interruptible syscall
        c[i] += 1
        time.sleep(0.0005)

for i in range(1, nthreads + 1):
    threading.Thread(target=worker, args=(i,), daemon=True).start()
print("READY", flush=True)
while True:              # the main thread spins: running in user space
    c[0] += 1
"""

# Threads that live for a moment, created as fast as two spawners can.
CHURN_TARGET = r"""
import threading
def spawn():
    while True:
        threading.Thread(target=int).start()
threading.Thread(target=spawn, daemon=True).start()
print("READY", flush=True)
spawn()
"""

# Freezes argv[1] then sleeps: a tracer the test can SIGKILL.
TRACER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from dumper.proc.freeze import Freezer
fz = Freezer(int(sys.argv[1])).freeze()
print("FROZEN", flush=True)
time.sleep(60)
"""

# Tries to freeze argv[1]; prints the exception's class name, or OK.
TRY_FREEZE = r"""
import sys
sys.path.insert(0, sys.argv[2])
from dumper.proc.freeze import Freezer
try:
    with Freezer(int(sys.argv[1])):
        pass
except Exception as e:
    print(type(e).__name__, e, flush=True)
else:
    print("OK", flush=True)
"""


def proc_state(pid: int, tid: int | None = None) -> str | None:
    """One-letter state from /proc/PID[/task/TID]/stat; None if gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def thread_states(pid: int) -> dict[int, str | None]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return {}
    return {int(t): proc_state(pid, int(t)) for t in tids}


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def wait_until(pred, timeout: float = 2.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


class Spawned:
    """A child ``python -c code args...``; ``close()`` kills and reaps it."""

    def __init__(self, code: str, *args: str, ready: str = "READY", user=None) -> None:
        cmd = [sys.executable, "-c", code, *map(str, args)]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        if ready:
            line = self.proc.stdout.readline().strip()
            if line != ready:
                self.close()
                raise RuntimeError(f"child printed {line!r}, not {ready!r}")

    def readline(self) -> str:
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()  # ECHILD (a Freezer reaped it in "kill" mode) is handled by Popen
        self.proc.stdout.close()


class CounterTarget(Spawned):
    """COUNTER_TARGET with ``nthreads`` workers; ``counters()`` reads the page."""

    def __init__(self, tmp_path: Path, nthreads: int = 4) -> None:
        path = tmp_path / f"counters-{time.monotonic_ns()}"
        path.write_bytes(b"\0" * 4096)
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 4096)
        self.nthreads = nthreads
        super().__init__(COUNTER_TARGET, path, nthreads)

    def counters(self) -> tuple[int, ...]:
        """Main thread and worker counters, slots 0..nthreads."""
        return struct.unpack_from(f"<{self.nthreads + 1}Q", self._map)

    def slot(self, i: int) -> int:
        return struct.unpack_from("<Q", self._map, 8 * i)[0]

    def all_move(self, timeout: float = 2.0) -> None:
        """Wait until every counter has moved."""
        before = self.counters()
        wait_until(
            lambda: all(b != a for b, a in zip(before, self.counters())),
            timeout,
            "every counter to move",
        )

    def close(self) -> None:
        super().close()
        self._map.close()
        self._file.close()


def kernel_thread_pid() -> int:
    """pid 2 (kthreadd) if it is a kernel thread here, else any kernel thread;
    the test is skipped where /proc shows none."""
    PF_KTHREAD = 0x00200000
    candidates = [2] + sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2 :].split()[6]) & PF_KTHREAD:
            return pid
    pytest.skip("no kernel thread visible in /proc (a pid namespace of its own, with its own /proc)")

# The main thread blocks in posix_spawn's vfork until someone writes to the
# FIFO argv[1]: glibc's child opens it (a file action) before it execs, and the
# parent waits for the exec uninterruptibly (TASK_KILLABLE).
VFORK_TARGET = r"""
import os, sys, time
print("READY", flush=True)
os.posix_spawn("/bin/true", ["true"], {}, file_actions=[(os.POSIX_SPAWN_OPEN, 3, sys.argv[1], os.O_RDONLY, 0)])
print("SPAWNED", flush=True)
time.sleep(60)
"""
