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
* one deadline (``stop_timeout``) bounds the whole freeze. A thread that
  does not stop at once and sits in uninterruptible sleep (state D; a vfork
  parent waits there until its child execs or exits, wchan ``kernel_clone``)
  makes the threads that did stop run again ("parked": PTRACE_CONT, still
  seized) while it is waited for; they are interrupted again once it stops.
  So a thread that cannot stop stalls the others for a moment only, and the
  timeout names it by tid, state and wchan;
* a group whose leader exited (``pthread_exit`` in main: the leader is a
  zombie, other threads live) is a live process: the zombie leader is
  recorded, never seized (ptrace_attach() refuses exit_state tasks), and the
  other threads are frozen;
* a target already in job-control stop (state T) traps at once with the stop
  signal instead of SIGTRAP (kernel/signal.c do_jobctl_trap()); PTRACE_DETACH
  puts it back into that stop, because __ptrace_unlink() (kernel/ptrace.c)
  re-arms JOBCTL_STOP_PENDING while SIGNAL_STOP_STOPPED holds.

Times follow CRIU's dump stats (criu/seize.c, cr-dump.c): *freezing* runs
from the first seize to the moment every thread is stopped and the thread
list is stable (:attr:`Freezer.stopped_ns`); *frozen* from then until the
last thread is let go again (:attr:`Freezer.resumed_ns`).

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
import sys
import threading
import time
from typing import Iterator

from ..errors import AccessDenied, FreezeTimeout, KernelError, NoSuchProcess, ProcessError, RefusedTarget
from .. import interrupts
from ..kernel import ptrace
from .process import Process

__all__ = ["Freezer", "raise_on_termination", "THAW_MODES", "check_target", "thread_state", "wchan"]

THAW_MODES = ("resume", "leave-stopped", "kill")

PF_EXITING = 0x00000004  # include/linux/sched.h

# Job-control stop signals: the WSTOPSIG of a PTRACE_EVENT_STOP in group-stop.
_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_SEIZED = "seized"  # PTRACE_INTERRUPT sent, stop not collected yet
_STOPPED = "stopped"  # in PTRACE_EVENT_STOP: frozen
_EXITED = "exited"  # a zombie group leader whose exit report we still owe a wait
_PARKED = "parked"  # stopped once, let run again (PTRACE_CONT) while another thread is waited for

# Where a vfork parent waits for its child (kernel/fork.c wait_for_vfork_done(),
# inlined into kernel_clone on recent kernels; _do_fork before 5.10).
_VFORK_WCHANS = frozenset({"kernel_clone", "wait_for_vfork_done", "_do_fork", "do_fork"})

_STATE_NAMES = {"R": "running", "S": "sleeping", "D": "uninterruptible sleep", "T": "stopped",
                "t": "stopped by a tracer", "Z": "zombie", "X": "dead", "I": "idle"}


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
    if interrupts.in_hook():
        return  # raised here it would be dropped again: the hook's resend thread sends it after
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

    A signal ignored when this is entered stays ignored (``nohup``, a
    background job of a script: SIGHUP or SIGINT were ignored on purpose).
    Must be entered in the main thread (``signal.signal`` raises ValueError
    otherwise). The previous handlers are restored on exit.
    """
    old = {s: signal.signal(s, _on_termination) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    global _previous_hook
    _previous_hook = interrupts.install()
    try:
        yield
    finally:
        sys.unraisablehook = _previous_hook
        for s, h in old.items():
            signal.signal(s, h)


_previous_hook = sys.unraisablehook


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


def thread_state(pid: int, tid: int) -> str | None:
    """One-letter state of thread ``tid`` of ``pid`` (proc(5)); None if gone."""
    st = _read_stat(f"/proc/{pid}/task/{tid}/stat")
    return st[0] if st else None


def wchan(pid: int, tid: int) -> str:
    """Where thread ``tid`` sleeps in the kernel (/proc/PID/task/TID/wchan), or ""."""
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan", "rb") as f:
            w = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return "" if w == "0" else w


def _children(pid: int, tid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def check_target(target: int | Process) -> Process:
    """The Process a Freezer of ``target`` would freeze (a thread id names its
    group), checked the way the Freezer checks it: NoSuchProcess,
    ZombieProcess, NoMemoryMap, RefusedTarget (this process or an ancestor)."""
    proc = target if isinstance(target, Process) else Process(target)
    with proc.translate("status"):
        tgid = _tgid(proc.pid)
    if tgid != proc.pid:
        proc = Process(tgid)
    if proc.pid == os.getpid():
        raise RefusedTarget(proc.pid, "refusing to freeze the dumper itself")
    if proc.pid in _ancestors():
        raise RefusedTarget(proc.pid, "refusing to freeze an ancestor of the dumper")
    proc.check_has_mm()
    return proc


def _tgid(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    return pid


class Freezer:
    """Freeze all threads of a process with ptrace; a context manager.

    ``Freezer(pid)`` or ``Freezer(Process(pid))``: a thread id names its whole
    thread group. Construction checks the target (:func:`check_target`) and
    raises :class:`~dumper.errors.NoSuchProcess` (no such pid),
    :class:`~dumper.errors.ZombieProcess`, :class:`~dumper.errors.NoMemoryMap`
    (kernel thread) or :class:`~dumper.errors.RefusedTarget` (the dumper
    itself, one of its threads, or any ancestor: freezing those deadlocks).

    ``with Freezer(pid) as fz:`` freezes on entry and, on any exit
    (exceptions, KeyboardInterrupt, SystemExit included), thaws with
    ``"resume"`` unless :meth:`thaw` was called. Not reusable.

    After :meth:`freeze`:

    * ``threads``: sorted tuple of the frozen thread ids (a zombie leader is
      not among them: see ``leader_exited``);
    * ``states``: ``{tid: state letter}`` of every thread as found just
      before it was seized (the zombie leader's "Z" included);
    * ``was_stopped``: the target was in job-control stop before we came;
    * ``leader_exited``: the group leader is a zombie, other threads live;
    * ``signals``: ``(tid, signo)`` caught in signal-delivery-stop while
      seizing and re-injected;
    * ``started_ns`` / ``stopped_ns`` / ``resumed_ns``: ``time.monotonic_ns()``
      when the freeze began / every thread was stopped (freezing done) /
      the last thread was let go; ``freezing_ns``, ``frozen_time_ns``.

    ``stop_timeout`` (seconds) bounds the whole freeze: a thread that does
    not stop by then raises :class:`~dumper.errors.FreezeTimeout`.

    All methods must be called from the thread that called :meth:`freeze`
    (RuntimeError otherwise).
    """

    def __init__(self, target: int | Process, *, stop_timeout: float = 5.0) -> None:
        proc = check_target(target)
        self.process = proc
        self.pid = proc.pid
        self.stop_timeout = stop_timeout

        self.threads: tuple[int, ...] = ()
        self.states: dict[int, str] = {}
        self.was_stopped = False
        self.stop_signo = signal.SIGSTOP  # the job-control stop's signal, once one is seen
        self.leader_exited = False
        self.signals: list[tuple[int, int]] = []
        self.started_ns: int | None = None
        self.stopped_ns: int | None = None
        self.resumed_ns: int | None = None
        self.thaw_mode: str | None = None
        self._tracees: dict[int, str] = {}
        self._group_stopped: set[int] = set()
        self._vfork: set[int] = set()
        self._tracer: int | None = None
        self._deadline = 0.0

    # -- state ---------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self.stopped_ns is not None and self.resumed_ns is None

    @property
    def freezing_ns(self) -> int | None:
        """Nanoseconds from the first seize to every thread stopped."""
        if self.stopped_ns is None or self.started_ns is None:
            return None
        return self.stopped_ns - self.started_ns

    @property
    def frozen_time_ns(self) -> int | None:
        """Nanoseconds from every thread stopped to the last one let go.

        While still frozen, up to now; None before :meth:`freeze`.
        """
        if self.stopped_ns is None:
            return None
        end = self.resumed_ns if self.resumed_ns is not None else time.monotonic_ns()
        return end - self.stopped_ns

    @property
    def main_tid(self) -> int:
        """The thread to act as: the leader, or the lowest frozen thread if it exited."""
        if self.pid in self.threads or not self.threads:
            return self.pid
        return self.threads[0]

    @property
    def pending(self) -> tuple[int, ...]:
        """Threads still attached after a failed freeze (they never stopped):
        :meth:`thaw` lets them go once they stop; the tracer's exit does too."""
        return tuple(t for t, s in self._tracees.items() if s != _STOPPED) if self.resumed_ns else ()

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
        ptrace is refused (other user, already traced, Yama), FreezeTimeout
        if a thread does not stop within ``stop_timeout`` seconds of the
        start (uninterruptible sleep, or a vfork parent). On any error or
        interruption every thread seized so far is let go again at once,
        except one that never stopped: PTRACE_DETACH needs a stopped tracee,
        so it stays attached (its stop request pending) until :meth:`thaw`
        finds it stopped, or the tracer thread exits, which detaches it
        without stopping it (kernel/ptrace.c __ptrace_unlink() clears the
        pending trap).
        """
        if self._tracer is not None:
            raise RuntimeError("a Freezer freezes once")
        self._tracer = threading.get_native_id()
        self.started_ns = time.monotonic_ns()
        self._deadline = time.monotonic() + self.stop_timeout
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
        self.stopped_ns = time.monotonic_ns()
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
                state = thread_state(self.pid, tid)
                if state is None:
                    exiting.add(tid)
                    continue
                self.states[tid] = state
                if state in ("Z", "X"):  # a zombie leader: recorded, never seized
                    exiting.add(tid)
                    continue
                if state == "D" and wchan(self.pid, tid) in _VFORK_WCHANS:
                    self._vfork.add(tid)
                if self._seize(tid):
                    self._tracees[tid] = _SEIZED
                else:
                    exiting.add(tid)
            self._collect()
        st = _read_stat(f"{self.process.path}/stat")
        if (
            _STOPPED not in self._tracees.values()
            or st is None
            or st[0] == "X"
            or not self.process.same_process()
        ):
            raise NoSuchProcess(self.pid, "process exited while being frozen")
        self.leader_exited = st[0] == "Z" or self._tracees.get(self.pid) == _EXITED
        if self.leader_exited:
            self.states[self.pid] = "Z"

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

    def _poll_one(self, tid: int) -> bool:
        """Collect and handle one pending report of ``tid``; True if there was one."""
        try:
            status = _poll(tid)
            if status is None:
                st = _read_stat(f"{self.process.path}/task/{tid}/stat")
                if st is None or (st[0] in ("Z", "X") and tid == self.pid):
                    status = _poll(tid)  # it may have turned zombie after the poll
                    if status is None:
                        raise _Gone
            if status is None:
                return False
        except _Gone:
            if tid == self.pid and os.path.exists(f"{self.process.path}/stat"):
                self._tracees[tid] = _EXITED  # reported once its threads are reaped
            else:
                self._tracees.pop(tid, None)
            return True
        self._handle(tid, status)
        return True

    def _handle(self, tid: int, status: int) -> None:
        """Act on one waitpid status of a thread not yet (or no longer) stopped."""
        if not os.WIFSTOPPED(status):  # exited or killed
            self._tracees.pop(tid, None)
            return
        sig = os.WSTOPSIG(status)
        event = ptrace.stop_event(status)
        if event == ptrace.PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:  # group-stop in effect (do_jobctl_trap)
                self.was_stopped = True
                self.stop_signo = sig
                self._group_stopped.add(tid)
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

    def _collect(self) -> None:
        """Wait until no thread is SEIZED or PARKED, parking stopped threads
        while a thread in uninterruptible sleep is waited for."""
        grace = min(0.05, self.stop_timeout / 4)
        start = time.monotonic()
        next_check = start + grace
        pause = 20e-6
        while True:
            moved = False
            for tid in [t for t, s in self._tracees.items() if s in (_SEIZED, _PARKED)]:
                moved |= self._poll_one(tid)
            seized = [t for t, s in self._tracees.items() if s == _SEIZED]
            if not seized:
                parked = [t for t, s in self._tracees.items() if s == _PARKED]
                if not parked:
                    return
                for tid in parked:  # the stuck thread stopped: stop the others again
                    self._interrupt(tid)
                continue
            now = time.monotonic()
            if now > self._deadline:
                raise self._timeout(seized)
            if (now >= next_check or set(seized) <= self._vfork) and _PARKED not in self._tracees.values():
                next_check = now + 0.01
                if all(thread_state(self.pid, t) == "D" for t in seized):
                    self._park()
            if not moved:
                time.sleep(pause)
                pause = min(pause * 2, 2e-3)

    def _park(self) -> None:
        """Let the stopped threads run (still seized) while a stuck one is awaited."""
        for tid, s in list(self._tracees.items()):
            if s == _STOPPED and tid not in self._group_stopped:
                try:
                    ptrace.cont(tid, 0)
                except OSError as err:
                    if err.errno != errno.ESRCH:
                        raise KernelError(err.errno, "ptrace(PTRACE_CONT)", f"tid {tid}") from err
                self._tracees[tid] = _PARKED

    def _interrupt(self, tid: int) -> None:
        try:
            ptrace.interrupt(tid)
        except OSError as err:
            if err.errno != errno.ESRCH:
                raise KernelError(err.errno, "ptrace(PTRACE_INTERRUPT)", f"tid {tid}") from err
        self._tracees[tid] = _SEIZED

    def _timeout(self, stuck: list[int]) -> FreezeTimeout:
        parts = []
        for tid in stuck:
            state = thread_state(self.pid, tid) or "?"
            where = wchan(self.pid, tid)
            who = f"thread {tid}" + (" (the main thread)" if tid == self.pid else "")
            what = f"state {state}"
            if state in _STATE_NAMES:
                what += f", {_STATE_NAMES[state]}"
            if where in _VFORK_WCHANS or tid in self._vfork:
                kids = _children(self.pid, tid)
                what += " in vfork, waiting for its child" + (f" {kids[-1]}" if kids else "") + " to exec or exit"
            if where:
                what += f"; wchan {where}"
            parts.append(f"{who} ({what})")
        return FreezeTimeout(
            self.pid,
            f"{', '.join(parts)} did not stop within {self.stop_timeout:g} s; the process was let go "
            "as it was. Try again once it has left that state, or allow more time (--freeze-timeout)",
        )

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
        :meth:`freeze` could not let go (they had not stopped yet; see
        :attr:`pending`). A target that died meanwhile is not an error.
        Raises ValueError for an unknown mode, RuntimeError from the wrong
        thread or before :meth:`freeze`, KernelError if the target does not
        reach the asked state within ``stop_timeout`` seconds.
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
        pause = 20e-6
        try:
            while True:
                status = _poll(tid)
                if status is not None:
                    if not os.WIFSTOPPED(status):
                        break
                    continue  # a stop reported before the kill took effect
                st = _read_stat(f"{self.process.path}/task/{tid}/stat")
                if st is None or time.monotonic() > deadline:
                    if st is None:
                        _poll(tid)
                    break
                time.sleep(pause)
                pause = min(pause * 2, 2e-3)
        except _Gone:
            pass
        self._tracees.pop(tid, None)

    def _release(self) -> None:
        """Detach every stopped tracee. Best effort: it never raises for a
        thread that vanished.

        Parked threads (running, still seized) are interrupted and detached
        once stopped, within a short bounded wait. A thread that never
        stopped is polled once: it stays in ``_tracees`` (see
        :attr:`pending`) for a later call, or the tracer thread's exit.
        """
        parked = [t for t, s in self._tracees.items() if s == _PARKED]
        for tid in parked:
            self._interrupt(tid)
        until = time.monotonic() + min(1.0, self.stop_timeout)
        while parked and time.monotonic() < until:
            for tid in parked:
                if self._tracees.get(tid) == _SEIZED:
                    self._poll_one(tid)
            parked = [t for t in parked if self._tracees.get(t) == _SEIZED]
            if parked:
                time.sleep(1e-4)
        for tid in self._reap_order():
            if self._tracees.get(tid) == _SEIZED:
                self._poll_one(tid)
            if self._tracees.get(tid) == _EXITED:
                try:  # a zombie leader: its report comes when the group dies
                    status = _poll(tid)
                except _Gone:
                    status = 0
                if status is not None:
                    self._tracees.pop(tid, None)
                continue
            if self._tracees.get(tid) != _STOPPED:
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
