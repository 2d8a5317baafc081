"""Freeze every thread of a process with ptrace, and always give it back.

How (ptrace(2), "Attaching and detaching", "Group-stop", "PTRACE_EVENT_STOP"):

* each thread is attached with PTRACE_SEIZE, which does not stop it, then
  PTRACE_INTERRUPT makes it trap into a PTRACE_EVENT_STOP that
  ``waitpid(tid, __WALL)`` collects (Linux >= 3.4);
* ``/proc/PID/task`` is listed again until no new thread shows up: a thread
  that is not stopped yet may clone, and a stopped one cannot;
* a signal-delivery-stop that arrives before the interrupt stop is resumed
  with ``PTRACE_CONT(tid, sig)``, so the signal is delivered as it would have
  been, and the wait goes on for the event stop;
* a target already in job-control stop (state T) traps at once with the stop
  signal instead of SIGTRAP (kernel/signal.c do_jobctl_trap()); PTRACE_DETACH
  puts it back into that stop, because __ptrace_unlink() (kernel/ptrace.c)
  re-arms JOBCTL_STOP_PENDING while SIGNAL_STOP_STOPPED holds.

The tracer is the *OS thread* that called :meth:`Freezer.freeze`: every later
ptrace request and waitpid must come from that thread (kernel/ptrace.c
ptrace_check_attach() wants ``child->parent == current``), so the methods
check it. When the tracer thread exits, even by SIGKILL, the kernel detaches
its tracees (kernel/ptrace.c exit_ptrace()) and they run again: a crashed
dumper never leaves its target frozen. PTRACE_O_EXITKILL is *not* used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from typing import Iterator

from ..errors import AccessDenied, KernelError, NoSuchProcess, ProcessError, RefusedTarget
from ..kernel import ptrace
from .process import Process

__all__ = ["Freezer", "raise_on_termination", "THAW_MODES"]

THAW_MODES = ("resume", "leave-stopped", "kill")

PF_EXITING = 0x00000004  # include/linux/sched.h

# Job-control stop signals: the WSTOPSIG of a PTRACE_EVENT_STOP in group-stop.
_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_SEIZED = "seized"  # PTRACE_INTERRUPT sent, stop not collected yet
_STOPPED = "stopped"  # in PTRACE_EVENT_STOP: frozen
_EXITED = "exited"  # a zombie group leader whose exit report we still owe a wait


class _Gone(Exception):
    """Internal: the waited-for thread exited or is no longer our tracee."""


# -- termination signals as exceptions, deferred while a thaw runs -----------

_critical = 0  # > 0 while a Freezer detaches/kills: termination waits
_deferred: list[int] = []


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _on_termination(signum: int, frame) -> None:
    if _critical:
        _deferred.append(signum)
        return
    _raise_for(signum)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Hold signals of :func:`raise_on_termination` until the block ends."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
    if not _critical and _deferred:
        signum = _deferred[0]
        _deferred.clear()
        _raise_for(signum)


@contextlib.contextmanager
def raise_on_termination(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turn SIGINT into KeyboardInterrupt and the others into SystemExit(128+sig).

    So ``finally`` blocks and :meth:`Freezer.__exit__` run when the dumper is
    asked to stop. While a Freezer thaws or releases its target, the exception
    is held back until that is done. Put it outside the Freezer so it covers
    the thaw::

        with raise_on_termination(), Freezer(pid) as fz:
            ...

    Must be entered in the main thread (``signal.signal`` raises ValueError
    otherwise). The previous handlers are restored on exit.
    """
    old = {s: signal.signal(s, _on_termination) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- helpers -----------------------------------------------------------------


def _read_stat(path: str) -> tuple[str, int, int] | None:
    """(state, ppid, flags) from a /proc stat file, None if it is gone."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1]), int(rest[6])


def _ancestors() -> set[int]:
    """Pids of every ancestor of this process, up to (and with) pid 1."""
    out = set()
    pid = os.getppid()
    while pid > 0 and pid not in out:
        out.add(pid)
        st = _read_stat(f"/proc/{pid}/stat")
        pid = st[1] if st else 0
    return out


def _poll(tid: int) -> int | None:
    """waitpid(tid, __WALL | WNOHANG): the status, None if nothing to report.

    Raises _Gone on ECHILD (not our tracee, or already reaped).
    """
    try:
        pid, status = os.waitpid(tid, ptrace.WALL | os.WNOHANG)
    except ChildProcessError:
        raise _Gone from None
    return status if pid else None


def _tgid(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    return pid


class Freezer:
    """Freeze all threads of a process with ptrace; a context manager.

    ``Freezer(pid)`` or ``Freezer(Process(pid))``: a thread id names its whole
    thread group. Construction checks the target and raises
    :class:`~dumper.errors.NoSuchProcess` (no such pid),
    :class:`~dumper.errors.ZombieProcess`, :class:`~dumper.errors.NoMemoryMap`
    (kernel thread) or :class:`~dumper.errors.RefusedTarget` (the dumper
    itself, one of its threads, or any ancestor: freezing those deadlocks).

    ``with Freezer(pid) as fz:`` freezes on entry and, on any exit
    (exceptions, KeyboardInterrupt, SystemExit included), thaws with
    ``"resume"`` unless :meth:`thaw` was called. Not reusable.

    After :meth:`freeze`:

    * ``threads``: sorted tuple of the frozen thread ids;
    * ``was_stopped``: the target was in job-control stop before we came;
    * ``signals``: ``(tid, signo)`` caught in signal-delivery-stop while
      seizing and re-injected;
    * ``stopped_ns`` / ``resumed_ns``: ``time.monotonic_ns()`` when the first
      thread stopped / the last thread was let go; ``frozen_time_ns``.

    ``stop_timeout`` (seconds) bounds each wait for a thread to stop or die.

    All methods must be called from the thread that called :meth:`freeze`
    (RuntimeError otherwise).
    """

    def __init__(self, target: int | Process, *, stop_timeout: float = 5.0) -> None:
        proc = target if isinstance(target, Process) else Process(target)
        with proc.translate("status"):
            tgid = _tgid(proc.pid)
        if tgid != proc.pid:
            proc = Process(tgid)
        self.process = proc
        self.pid = proc.pid
        self.stop_timeout = stop_timeout
        if self.pid == os.getpid():
            raise RefusedTarget(self.pid, "refusing to freeze the dumper itself")
        if self.pid in _ancestors():
            raise RefusedTarget(self.pid, "refusing to freeze an ancestor of the dumper")
        proc.check_has_mm()

        self.threads: tuple[int, ...] = ()
        self.was_stopped = False
        self.signals: list[tuple[int, int]] = []
        self.stopped_ns: int | None = None
        self.resumed_ns: int | None = None
        self.thaw_mode: str | None = None
        self._tracees: dict[int, str] = {}
        self._tracer: int | None = None

    # -- state ---------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self.stopped_ns is not None and self.resumed_ns is None

    @property
    def frozen_time_ns(self) -> int | None:
        """Nanoseconds from the first thread stopped to the last one let go.

        While still frozen, up to now; None before :meth:`freeze`.
        """
        if self.stopped_ns is None:
            return None
        end = self.resumed_ns if self.resumed_ns is not None else time.monotonic_ns()
        return end - self.stopped_ns

    def _check_thread(self) -> None:
        if self._tracer is not None and threading.get_native_id() != self._tracer:
            raise RuntimeError(
                f"ptrace calls for pid {self.pid} must come from the tracer thread "
                f"{self._tracer}, not {threading.get_native_id()} (ptrace(2))"
            )

    # -- freeze --------------------------------------------------------------

    def freeze(self) -> Freezer:
        """Seize and stop every thread; returns self.

        Raises NoSuchProcess if the process exits meanwhile, AccessDenied if
        ptrace is refused (other user, already traced, Yama), KernelError
        (ETIMEDOUT) if a thread does not stop within ``stop_timeout`` seconds
        (uninterruptible sleep, or a vfork parent). On any error or
        interruption every thread seized so far is let go again, except one
        that never stopped: PTRACE_DETACH needs a stopped tracee, so it stays
        attached until :meth:`thaw` is called after it stops (or this thread
        exits).
        """
        if self._tracer is not None:
            raise RuntimeError("a Freezer freezes once")
        self._tracer = threading.get_native_id()
        st = _read_stat(f"{self.process.path}/stat")
        self.was_stopped = st is not None and st[0] == "T"
        try:
            self._seize_all()
        except BaseException:
            with _uninterruptible():
                self._release()
            self.stopped_ns = self.stopped_ns or time.monotonic_ns()
            self.resumed_ns = time.monotonic_ns()
            raise
        self.threads = tuple(sorted(t for t, s in self._tracees.items() if s == _STOPPED))
        return self

    def _seize_all(self) -> None:
        exiting: set[int] = set()
        while True:
            try:
                listed = set(self.process.threads())
            except NoSuchProcess as err:
                raise NoSuchProcess(self.pid, "process exited while being frozen") from err
            new = sorted(listed - self._tracees.keys() - exiting)
            if not new:
                break
            for tid in new:
                if self._seize(tid):
                    self._tracees[tid] = _SEIZED
                else:
                    exiting.add(tid)
            for tid in new:
                if self._tracees.get(tid) == _SEIZED:
                    self._wait_stop(tid)
        st = _read_stat(f"{self.process.path}/stat")
        if (
            _STOPPED not in self._tracees.values()
            or self._tracees.get(self.pid) == _EXITED
            or st is None
            or st[0] in ("Z", "X")
            or not self.process.same_process()
        ):
            raise NoSuchProcess(self.pid, "process exited while being frozen")

    def _seize(self, tid: int) -> bool:
        """Seize and interrupt ``tid``; False if it vanished or is exiting."""
        try:
            ptrace.seize(tid)
        except OSError as err:
            if err.errno == errno.ESRCH:
                return False
            if err.errno == errno.EPERM:
                # ptrace_attach() answers EPERM for a PF_EXITING task too.
                st = _read_stat(f"{self.process.path}/task/{tid}/stat")
                if st is None or st[0] in ("Z", "X") or st[2] & PF_EXITING:
                    return False
                raise self._access_denied(tid) from err
            raise KernelError(err.errno, "ptrace(PTRACE_SEIZE)", f"tid {tid} of pid {self.pid}") from err
        try:
            ptrace.interrupt(tid)
        except OSError as err:
            if err.errno != errno.ESRCH:  # ESRCH: it died; waitpid tells
                self._tracees[tid] = _SEIZED
                raise KernelError(err.errno, "ptrace(PTRACE_INTERRUPT)", f"tid {tid}") from err
        return True

    def _access_denied(self, tid: int) -> ProcessError:
        msg = f"ptrace(PTRACE_SEIZE) of thread {tid} refused"
        try:
            tracer = int(self.process.status().get("TracerPid", "0"))
        except (ProcessError, ValueError):
            tracer = 0
        if tracer:
            msg += f": already traced by pid {tracer}"
        else:
            msg += " (need the same uid or CAP_SYS_PTRACE; see also /proc/sys/kernel/yama/ptrace_scope)"
        return AccessDenied(self.pid, msg)

    def _waitpid(self, tid: int, deadline: float) -> int:
        """Next waitpid status of tracee ``tid``; polls so it can time out.

        Raises _Gone if it is no longer waitable (reaped, or a zombie group
        leader whose other threads live on: never reported to us).
        """
        pause = 20e-6
        while True:
            status = _poll(tid)
            if status is not None:
                return status
            st = _read_stat(f"{self.process.path}/task/{tid}/stat")
            if st is None or (st[0] in ("Z", "X") and tid == self.pid):
                # It may have turned zombie after the poll above: ask again.
                status = _poll(tid)
                if status is not None:
                    return status
                raise _Gone
            if time.monotonic() > deadline:
                raise KernelError(
                    errno.ETIMEDOUT,
                    "waitpid",
                    f"thread {tid} of pid {self.pid} did not stop within {self.stop_timeout} s "
                    f"(state {st[0]}: uninterruptible sleep, or a vfork parent?); it stays "
                    "attached to this thread until it stops and thaw() is called, or this thread exits",
                )
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)

    def _wait_stop(self, tid: int) -> None:
        """Wait for ``tid``'s PTRACE_EVENT_STOP; re-inject signals met on the way."""
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                status = self._waitpid(tid, deadline)
            except _Gone:
                if tid == self.pid and os.path.exists(f"{self.process.path}/stat"):
                    self._tracees[tid] = _EXITED  # reported once its threads are reaped
                else:
                    del self._tracees[tid]
                return
            if not os.WIFSTOPPED(status):  # exited or killed
                del self._tracees[tid]
                return
            sig = os.WSTOPSIG(status)
            event = ptrace.stop_event(status)
            if event == ptrace.PTRACE_EVENT_STOP:
                if self.stopped_ns is None:
                    self.stopped_ns = time.monotonic_ns()
                if sig in _STOP_SIGNALS:  # group-stop in effect (do_jobctl_trap)
                    self.was_stopped = True
                self._tracees[tid] = _STOPPED
                return
            if event == 0:  # signal-delivery-stop: deliver it as it would have been
                self.signals.append((tid, sig))
            else:  # an event we did not ask for: pass it on, no signal
                sig = 0
            try:
                ptrace.cont(tid, sig)
            except OSError as err:
                if err.errno != errno.ESRCH:  # ESRCH: killed meanwhile; waitpid tells
                    raise KernelError(err.errno, "ptrace(PTRACE_CONT)", f"tid {tid}") from err

    # -- thaw ----------------------------------------------------------------

    def thaw(self, mode: str = "resume") -> None:
        """Let the target go. ``mode``:

        * ``"resume"``: detach every thread; it runs again, or stays in
          job-control stop if it was stopped before (or got SIGSTOP while
          frozen), exactly as if we had never come;
        * ``"leave-stopped"``: SIGSTOP it while still frozen, then detach:
          it ends in state T and runs no code in between (CRIU
          --leave-stopped); returns once every thread is in state T;
        * ``"kill"``: SIGKILL it while still frozen (no code runs after the
          freeze); collect the ptrace exit reports of the threads, which we
          must, or the real parent never learns of the exit; returns once it
          is gone from /proc or a zombie. If we are its real parent as well,
          that wait also reaps it.

        Calling it again is a no-op, except that it retries threads a failed
        :meth:`freeze` could not let go (they had not stopped yet). A target
        that died meanwhile is not an error. Raises ValueError for an unknown
        mode, RuntimeError from the wrong thread or before :meth:`freeze`,
        KernelError if the target does not reach the asked state within
        ``stop_timeout`` seconds.
        """
        if mode not in THAW_MODES:
            raise ValueError(f"thaw mode must be one of {THAW_MODES}, not {mode!r}")
        if self._tracer is None:
            raise RuntimeError("thaw() before freeze()")
        self._check_thread()
        if self.resumed_ns is not None:
            if self._tracees:  # left over by a freeze() that timed out
                with _uninterruptible():
                    self._release()
            return
        with _uninterruptible():
            self.thaw_mode = mode
            if mode == "kill":
                self._signal(signal.SIGKILL)
                for tid in self._reap_order():
                    self._reap(tid)
                self.resumed_ns = time.monotonic_ns()
                self._await_state(("Z", "X"), "kill(SIGKILL)")
                return
            if mode == "leave-stopped":
                self._signal(signal.SIGSTOP)  # pending until a detached thread dequeues it
            self._release()
            self.resumed_ns = time.monotonic_ns()
            if mode == "leave-stopped":
                self._await_state(("T",), "kill(SIGSTOP)")

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _reap_order(self) -> list[int]:
        # A group leader is reported only after its other threads are reaped.
        return sorted(self._tracees, key=lambda t: (t == self.pid, t))

    def _reap(self, tid: int) -> None:
        """Collect the exit report of a dying tracee (bounded wait)."""
        deadline = time.monotonic() + self.stop_timeout
        try:
            while os.WIFSTOPPED(self._waitpid(tid, deadline)):
                pass  # a stop reported before the kill took effect
        except (_Gone, KernelError):
            pass
        self._tracees.pop(tid, None)

    def _release(self) -> None:
        """Detach every tracee, first collecting the stop of those not stopped yet.

        Best effort: it never raises for a thread that vanished. A thread that
        does not stop within ``stop_timeout`` stays traced (and is kept in
        ``_tracees`` for a later thaw()) until the tracer thread exits.
        """
        for tid in self._reap_order():
            if self._tracees.get(tid) == _SEIZED:
                try:
                    self._wait_stop(tid)
                except KernelError:
                    continue
            if self._tracees.get(tid) == _EXITED:
                self._reap(tid)
            if tid not in self._tracees:
                continue
            try:
                ptrace.detach(tid)
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise KernelError(err.errno, "ptrace(PTRACE_DETACH)", f"tid {tid}") from err
                self._reap(tid)  # not stopped any more: SIGKILLed while frozen
            self._tracees.pop(tid, None)

    def _await_state(self, states: tuple[str, ...], what: str) -> None:
        """Wait until every thread is in one of ``states`` (or the process is gone)."""
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                tids = os.listdir(f"{self.process.path}/task")
            except FileNotFoundError:
                return
            stats = [_read_stat(f"{self.process.path}/task/{t}/stat") for t in tids]
            if all(st is None or st[0] in states or st[0] in ("Z", "X") for st in stats):
                return
            if time.monotonic() > deadline:
                raise KernelError(errno.ETIMEDOUT, what, f"pid {self.pid} not in state {'/'.join(states)}")
            time.sleep(1e-3)

    # -- context manager -------------------------------------------------------

    def __enter__(self) -> Freezer:
        return self.freeze()

    def __exit__(self, *exc) -> None:
        if self._tracer is not None and self.resumed_ns is None:
            self.thaw("resume")

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("thawed" if self.resumed_ns else "new")
        return f"Freezer(pid={self.pid}, {state}, threads={len(self.threads) or len(self._tracees)})"
