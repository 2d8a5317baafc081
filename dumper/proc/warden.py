"""The warden: a separate tracer process that owns every ptrace request of a
dump session and always gives the target back.

Why a separate process. A thread being made to run injected system calls
(:mod:`dumper.proc.inject`) spends moments in a SIGTRAP signal-delivery-stop
(a single step, or the ``int3`` that ends a batch of calls run from a
temporary code mapping) with borrowed registers. If its tracer dies then, the
kernel detaches it (kernel/ptrace.c exit_ptrace()) and it resumes with those
registers, or dies of the pending SIGTRAP (the stop's exit_code is not
cleared on tracer death; only a PTRACE_EVENT_STOP is harmless to leave).
No order of requests inside the dumper closes that window against SIGKILL,
or against SIGINT/SIGTERM arriving between two requests. So the dumper
never traces: it forks (or spawns) this process before it starts any thread,
and asks it, over a socketpair, to freeze, to run functions that make ptrace
requests (:meth:`Warden.call`), and to thaw.

Shape::

    with Warden(stop_timeout=5.0) as w:
        tree = w.freeze(pid, tree=True)      # FrozenTree (dumper.proc.tree)
        res = w.call(func, *args)            # func(ctx, *args) runs in the warden
        w.keep()                             # success: forget the undo actions
        w.thaw("resume")                     # or "leave-stopped", "kill"
        w.frozen_ns

``func`` is a module-level function (pickled by reference); it gets a
:class:`WardenContext` whose ``freezer(pid)``, ``freeze(pid)``,
``injector(pid, tid)`` and ``on_abort(func, *args)`` give it the frozen
processes and a way to register an undo action.

Safety argument: every state the target can be in when either process dies.

1. *The dumper dies or is interrupted, at any instant* (SIGKILL, SIGINT,
   SIGTERM, SIGHUP, an exception). The warden ignores SIGINT, SIGTERM, SIGHUP
   and SIGQUIT, so a terminal's Ctrl-C (sent to the whole process group)
   reaches only the dumper. The warden handles one request at a time; a
   request in flight is finished first, so every injected sequence ends with
   the thread's registers restored (Injector is a context manager) and the
   scratch and code mappings unmapped, whatever the dumper does meanwhile. Then:

   - an interrupted dumper (KeyboardInterrupt/SystemExit or any exception
     reaching ``Warden.__exit__``) sends "finish, abort"; a killed one
     closes the socket by dying, which the warden reads as end of file. Both
     take the same path: the undo actions registered with ``on_abort`` run,
     newest first, while the target is frozen (re-frozen if it was thawed
     already, e.g. a pre-dump that failed while copying), then every process
     still frozen is thawed to the state it was found in (running or
     job-control stopped), and the warden exits;
   - an undo that fails is reported as a "left behind" line naming what was
     left and the command that removes it (to the dumper if it is still
     there, else on the warden's standard error); what undo removes was
     recorded *before* it was created (the tracking state file), so the
     record is there for ``dumper untrack`` whatever happens.

   A message is sent with termination signals blocked, so the dumper never
   leaves half a request; a reply the dumper stopped waiting for is read
   and dropped before the next request.

2. *The warden dies.* It ignores the termination signals above and is never
   the target of a signal the dumper sends. Only a SIGKILL aimed at the
   warden itself (or the OOM killer) ends it. Then the kernel detaches its
   tracees: threads in PTRACE_EVENT_STOP (frozen, not being injected into)
   and seized threads not yet stopped resume unharmed (__ptrace_unlink()
   clears the pending trap); only a thread caught in the middle of an
   injected system call is at risk -- the same window CRIU's compel has, now
   reachable only by killing the warden by its pid. The dumper sees the
   socket close and raises WardenError.

3. *Both are fine, a freeze fails* (a thread that cannot stop: vfork
   parent, D state). The Freezer lets every stopped thread go at once; a
   thread that never stopped stays seized with its stop request pending.
   The warden polls such threads while idle and detaches them as soon as
   they stop; when it exits, the kernel detaches the rest harmlessly.

Start-up: ``os.fork()`` unless another Python thread runs (then a fresh
interpreter, as forking can leave the child a lock another thread held; see
:func:`_fork_safe`). ``python -m benchmarks warden`` measured here, in a
process that has loaded what ``dumper dump`` loads: fork 3 ms on an idle
machine, 13 ms with the two cores loaded 3x over; spawn 100 ms and 420 ms.
A call is one round trip of two pickled messages over a socketpair: about
50 us.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import Any, Callable

from ..errors import DumperError, NoSuchProcess, WardenError
from .freeze import THAW_MODES, Freezer, _uninterruptible
from .inject import Injector
from .tree import FrozenTree, freeze_tree, thaw_tree

__all__ = ["Warden", "WardenContext", "WardenError"]

_TERMINATION = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PR_SET_NAME = 15  # include/uapi/linux/prctl.h

# -- framing: magic, sequence number, length, then a pickle -------------------
#
# A reply carries the sequence number of its request. The dumper may be
# interrupted (a signal handler raising) at any bytecode, also between a
# write and the next statement, or between the two reads of a frame: it then
# cannot know whether its request went out or how much of a reply it read.
# So it never tracks that: it reads frames until the one numbered like its
# request, dropping older ones, and a frame that does not start with the
# magic means the stream lost its place -- the connection is broken, which
# both sides treat as the end of the session (the warden aborts: safe).

_MAGIC = b"DWRD"
_HEADER = struct.Struct("<4sQQ")  # magic, seq, length of the pickle


class _Broken(Exception):
    """Internal: end of file, or a stream that lost its place."""


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray(n)
    got = 0
    while got < n:
        try:
            k = os.readv(fd, [memoryview(buf)[got:]])
        except (ConnectionResetError, BrokenPipeError):
            raise _Broken from None
        if k == 0:
            raise _Broken
        got += k
    return bytes(buf)


def _read_frame(fd: int) -> tuple[int, bytes]:
    """(seq, pickle) of the next frame; _Broken at end of file or on a bad magic."""
    magic, seq, size = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if magic != _MAGIC:
        raise _Broken
    return seq, _read_exact(fd, size)


def _take_frame(sock: socket.socket) -> tuple[int, bytes]:
    """Like :func:`_read_frame`, consuming the frame in one recv(2): an
    exception raised between two statements loses a whole frame at worst,
    never the stream's place. The header is peeked first (nothing consumed);
    MSG_WAITALL then takes all of it (the caller blocks termination signals,
    so the call is not cut short)."""
    try:
        head = sock.recv(_HEADER.size, socket.MSG_PEEK | socket.MSG_WAITALL)
        if len(head) < _HEADER.size:
            raise _Broken(f"end of file after {len(head)} bytes")
        magic, seq, size = _HEADER.unpack(head)
        if magic != _MAGIC:
            raise _Broken("the stream lost its place")
        frame = sock.recv(_HEADER.size + size, socket.MSG_WAITALL)
    except (ConnectionResetError, BrokenPipeError):
        raise _Broken from None
    if len(frame) < _HEADER.size + size:
        raise _Broken(f"a frame cut short: {len(frame)} of {_HEADER.size + size} bytes")
    return seq, frame[_HEADER.size :]


def _write_frame(fd: int, seq: int, data: bytes) -> None:
    """Write one frame (one write(2) unless the kernel takes less); _Broken if the peer is gone."""
    frame = memoryview(_HEADER.pack(_MAGIC, seq, len(data)) + data)
    sent = 0
    try:
        while sent < len(frame):
            sent += os.write(fd, frame[sent:])
    except (BrokenPipeError, ConnectionResetError):
        raise _Broken from None


def _unwrap(reply: tuple) -> Any:
    """An ("ok", result) reply's result; an error reply's exception raised."""
    if reply[0] == "ok":
        return reply[1]
    raise _unpack_exc(reply[1])


def _dumps(msg: Any) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def _pack_exc(err: BaseException) -> tuple:
    tb = traceback.format_exc()
    try:
        data = pickle.dumps(err)
        back = pickle.loads(data)
        if type(back) is type(err) and str(back) == str(err):
            return ("pickle", data, tb)
    except Exception:  # noqa: BLE001 - fall back to the text
        pass
    return ("text", f"{type(err).__module__}.{type(err).__qualname__}", str(err), tb)


def _unpack_exc(packed: tuple) -> BaseException:
    if packed[0] == "pickle":
        err = pickle.loads(packed[1])
        tb = packed[2]
    else:
        err = WardenError(f"{packed[1]}: {packed[2]}")
        tb = packed[3]
    if not isinstance(err, DumperError) and hasattr(err, "add_note"):
        err.add_note("raised in the warden process:\n" + tb)
    return err


# -- the warden's side --------------------------------------------------------


def _tgid_or(pid: int) -> int:
    """The thread group of thread ``pid`` (itself if unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return pid


class WardenContext:
    """What a function run by :meth:`Warden.call` (or an undo action) gets.

    All ptrace requests go through the Freezers and Injectors it hands out;
    they belong to the warden's only thread.
    """

    def __init__(self, session: _Session) -> None:
        self._s = session

    def freezer(self, pid: int) -> Freezer:
        """The Freezer of frozen process ``pid``; WardenError if it is not frozen."""
        fz = self._s.freezers.get(pid) or self._s.freezers.get(_tgid_or(pid))
        if fz is None or not fz.frozen:
            raise WardenError(f"pid {pid} is not frozen in this session")
        return fz

    def freeze(self, pid: int) -> Freezer:
        """The Freezer of ``pid``, freezing it alone first if it is not frozen
        (an undo action after the thaw). It is thawed ("resume") with the rest."""
        fz = self._s.freezers.get(pid)
        if fz is not None and fz.frozen:
            return fz
        fz = Freezer(pid, stop_timeout=self._s.stop_timeout)
        fz.freeze()
        self._s.freezers[fz.pid] = fz
        return fz

    def thaw(self, pid: int, mode: str = "resume") -> None:
        """Let ``pid`` go again now, alone (``mode`` as :meth:`Warden.thaw`);
        nothing if it is not frozen."""
        fz = self._s.freezers.pop(pid, None) or self._s.freezers.pop(_tgid_or(pid), None)
        if fz is not None and fz.frozen:
            fz.thaw(mode)

    def injector(self, pid: int, tid: int | None = None) -> Injector:
        """An Injector into thread ``tid`` (default: the main thread, or a live
        one if it exited) of frozen ``pid``; use it with ``with``: registers
        are restored on exit."""
        return Injector(self.freezer(pid), tid)

    def on_abort(self, func: Callable, *args, **kwargs) -> tuple:
        """Run ``func(ctx, *args, **kwargs)`` in the warden if the session
        ends without :meth:`Warden.keep` (newest first, target frozen). It
        raises to report what it could not undo (its message is shown).
        Returns a token for :meth:`forget`."""
        token = (func, args, kwargs)
        self._s.undo.append(token)
        return token

    def forget(self, token: tuple) -> None:
        """Drop an undo action whose work is already undone (a scratch
        mapping unmapped): left registered, an abort after the thaw ran it on
        a process no longer frozen and reported a bogus "left behind" line."""
        for i in range(len(self._s.undo) - 1, -1, -1):
            if self._s.undo[i] is token:
                del self._s.undo[i]
                return

    @property
    def trees(self) -> list[FrozenTree]:
        return list(self._s.trees)


class _Session:
    def __init__(self, client_pid: int, stop_timeout: float) -> None:
        self.client_pid = client_pid
        self.stop_timeout = stop_timeout
        self.freezers: dict[int, Freezer] = {}
        self.trees: list[FrozenTree] = []
        self.undo: list[tuple[Callable, tuple, dict]] = []
        self.lingering: list[Freezer] = []
        self.finished = False
        self.ctx = WardenContext(self)

    def freeze(self, pid: int, tree: bool, stop_timeout: float | None) -> FrozenTree:
        if pid in self.freezers and self.freezers[pid].frozen:
            raise WardenError(f"pid {pid} is already frozen in this session")
        attempts: list[Freezer] = []
        try:
            frozen, freezers = freeze_tree(
                pid, tree=tree, stop_timeout=self.stop_timeout if stop_timeout is None else stop_timeout,
                exclude=frozenset({self.client_pid, os.getpid()}), attempts=attempts)
        finally:
            self.lingering.extend(f for f in attempts if f.pending)
        self.freezers.update(freezers)
        self.trees.append(frozen)
        return frozen

    def thaw(self, mode: str) -> tuple[int, int]:
        if mode not in THAW_MODES:
            raise ValueError(f"thaw mode must be one of {THAW_MODES}, not {mode!r}")
        started = time.monotonic_ns()
        errors = thaw_tree(list(self.freezers.values()), mode)
        done = time.monotonic_ns()
        self.freezers.clear()
        if errors:
            raise errors[0]
        return started, done

    def call(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        return func(self.ctx, *args, **kwargs)

    def retry_lingering(self) -> None:
        for fz in list(self.lingering):
            with _uninterruptible():
                try:
                    fz.thaw()
                except Exception:  # noqa: BLE001 - retried later, or the exit detaches
                    continue
            if not fz.pending:
                self.lingering.remove(fz)

    def finish(self, abort: bool) -> list[str]:
        """Undo (if ``abort``), thaw everything; returns the "left behind" lines."""
        if self.finished:
            return []
        self.finished = True
        left: list[str] = []
        if abort:
            while self.undo:
                func, args, kwargs = self.undo.pop()
                try:
                    func(self.ctx, *args, **kwargs)
                except Exception as err:  # noqa: BLE001 - report it and go on undoing
                    left.append(str(err))
        self.undo.clear()
        for err in thaw_tree(list(self.freezers.values()), "resume"):
            if not isinstance(err, NoSuchProcess):
                left.append(f"thawing: {err}")
        self.freezers.clear()
        self.retry_lingering()
        return left


def _serve(sock: socket.socket, client_pid: int, stop_timeout: float) -> None:
    """The warden's loop; returns when the session is over."""
    session = _Session(client_pid, stop_timeout)
    fd = sock.fileno()
    left: list[str] = []
    reported = False

    def reply(seq: int, msg: Any) -> None:
        _write_frame(fd, seq, _dumps(msg))

    try:
        reply(0, ("ready", os.getpid()))
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while True:
            if not poller.poll(10 if session.lingering else None):
                session.retry_lingering()
                continue
            seq, raw = _read_frame(fd)  # _Broken: the dumper is gone
            try:
                op, args = pickle.loads(raw)
            except (AttributeError, ImportError) as err:  # a function the warden cannot import
                reply(seq, ("err", _pack_exc(WardenError(
                    f"the warden cannot decode the request: {type(err).__name__}: {err} "
                    "(functions passed to call() must be importable module-level functions)"))))
                continue
            except Exception:  # noqa: BLE001 - not a request: the stream is lost
                break
            if op == "finish":
                left = session.finish(abort=args[0])
                reply(seq, ("ok", left))
                reported = True
                break
            try:
                if op == "freeze":
                    value = session.freeze(*args)
                elif op == "call":
                    value = session.call(*args)
                elif op == "keep":
                    session.undo.clear()
                    value = None
                elif op == "thaw":
                    value = session.thaw(*args)
                elif op == "path":
                    sys.path[:] = args[0]
                    value = None
                else:
                    raise WardenError(f"unknown request {op!r}")
                msg = ("ok", value)
            except BaseException as err:  # noqa: BLE001 - every failure goes back to the dumper
                msg = ("err", _pack_exc(err))
            try:
                data = _dumps(msg)
            except Exception as err:  # noqa: BLE001 - a result that cannot be pickled
                data = _dumps(("err", _pack_exc(WardenError(f"cannot send the result back: {err}"))))
            _write_frame(fd, seq, data)
    except _Broken:
        pass
    finally:
        left = left or session.finish(abort=True)
        if left and not reported:
            for line in left:
                print(f"dumper (warden): left behind: {line}", file=sys.stderr, flush=True)


def _become_warden() -> None:
    for sig in _TERMINATION:
        signal.signal(sig, signal.SIG_IGN)
    try:
        # A session of its own: a SIGKILL to the dumper's process group
        # (`kill -9 -PGID`, a CI timeout) must leave the warden alive to
        # undo what it did inside the target (an injection under way, a
        # snapshot child) before it goes.
        os.setsid()
    except OSError:
        pass
    try:
        from ..kernel.libc import libc

        libc.prctl(PR_SET_NAME, b"dumper-warden", 0, 0, 0)
    except Exception:  # noqa: BLE001 - only a name for ps
        pass


def _forked_main(sock: socket.socket, peer: socket.socket, client_pid: int, stop_timeout: float,
                 unblock: set | None = None) -> None:
    """In the forked child: never returns into the dumper's code. ``unblock``:
    the signal mask to restore once termination signals are ignored."""
    code = 0
    try:
        _become_warden()
        if unblock is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblock)
        import gc

        gc.freeze()  # inherited objects must never be finalized here (their fds are closed below)
        peer.close()
        keep = {sock.fileno(), 2}
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        keep |= {0, 1}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        _serve(sock, client_pid, stop_timeout)
    except BaseException:  # noqa: BLE001
        code = 1
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _spawned_main() -> None:
    """Entry point of a spawned warden: ``argv = [fd, client_pid, stop_timeout]``."""
    _become_warden()
    fd, client_pid, stop_timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    _serve(socket.socket(fileno=fd), client_pid, stop_timeout)  # a "path" request sets sys.path


def _fork_safe() -> bool:
    """No other *Python* thread runs here.

    Threads that never run Python (OpenBLAS's pool, started when numpy is
    imported; zstd's workers) are no obstacle: the forked warden calls none
    of their libraries, and glibc's fork() keeps malloc consistent. A Python
    thread might hold a lock the child needs (an I/O buffer, a module lock),
    so then the warden is spawned instead.
    """
    me = threading.get_ident()
    return not any(t.ident != me and t.is_alive() for t in threading.enumerate())


# -- the dumper's side --------------------------------------------------------


class Warden:
    """The dumper's handle on its tracer process; a context manager.

    ``Warden(stop_timeout=5.0)``: ``stop_timeout`` (seconds) bounds each
    freeze (the CLI's ``--freeze-timeout``). ``start``: "auto" (fork when
    no other Python thread runs, else spawn), "fork" or "spawn".
    ``on_leftover(line)`` is called for each thing an aborted session could
    not undo (default: print "dumper: warning: left behind: ..." on stderr);
    they are kept in :attr:`leftovers` too.

    ``__exit__`` ends the session: without :meth:`keep` (or when an exception
    is passing) the undo actions run; whatever is still frozen is thawed
    ("resume"); the warden exits. It never leaves a target frozen.

    Methods raise what the warden raised (DumperError kinds with their own
    type and message), WardenError if the warden is gone. Thread-safe (one
    request at a time).
    """

    def __init__(self, stop_timeout: float = 5.0, *, start: str = "auto",
                 on_leftover: Callable[[str], None] | None = None) -> None:
        if start not in ("auto", "fork", "spawn"):
            raise ValueError(f"start must be auto, fork or spawn, not {start!r}")
        self.stop_timeout = stop_timeout
        self.start_method = start
        self.on_leftover = on_leftover
        self.pid: int | None = None
        self.leftovers: list[str] = []
        self.trees: list[FrozenTree] = []
        self.thaw_started_ns: int | None = None
        self.thaw_done_ns: int | None = None
        self.start_ns = 0  # how long start() took
        self._sock: socket.socket | None = None
        self._popen: subprocess.Popen | None = None
        self._seq = 0
        self._broken = False
        self._kept = False
        self._lock = threading.Lock()
        self._pending: int | None = None  # sequence number of a call_soon() request not yet answered
        self._replies: dict[int, Any] = {}  # call_soon() replies read while draining

    # -- life cycle ------------------------------------------------------------

    def start(self) -> Warden:
        """Start the tracer process (done by ``with``)."""
        if self._sock is not None:
            raise RuntimeError("the warden is already started")
        t0 = time.monotonic_ns()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        method = self.start_method
        if method == "auto":
            method = "fork" if _fork_safe() else "spawn"
        me = os.getpid()
        try:
            if method == "fork":
                # Termination signals stay blocked across the fork: the child
                # ignores them before it unblocks them (a Ctrl-C to the group
                # must not run the dumper's handler in the child, where it
                # printed a traceback from Python's own after-fork code);
                # the parent takes a pending one once the child exists.
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION)
                try:
                    with warnings.catch_warnings():  # 3.12+ warns about any OS thread (see _fork_safe)
                        warnings.simplefilter("ignore", DeprecationWarning)
                        pid = os.fork()
                    if pid == 0:
                        _forked_main(theirs, ours, me, self.stop_timeout, unblock=old)  # never returns
                    self.pid = pid
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
            else:
                code = "from dumper.proc.warden import _spawned_main; _spawned_main()"
                self._popen = subprocess.Popen(
                    [sys.executable, "-c", code, str(theirs.fileno()), str(me), repr(self.stop_timeout)],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
                self.pid = self._popen.pid
        finally:
            theirs.close()
        self._sock = ours
        try:
            seq, body = _read_frame(ours.fileno())
            hello = pickle.loads(body)
            if seq != 0 or hello[0] != "ready":
                raise _Broken
            if method == "spawn":
                self._exchange(("path", (list(sys.path),)))  # functions import as they do here
        except _Broken:
            self.close()
            raise WardenError("the warden process did not start") from None
        except BaseException:  # interrupted while it starts: it must not outlive us unreaped
            self.close(abort=True)
            raise
        self.start_ns = time.monotonic_ns() - t0
        return self

    def __enter__(self) -> Warden:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(abort=exc_type is not None)

    def close(self, abort: bool = False) -> list[str]:
        """End the session (see the class doc); returns the "left behind" lines."""
        if self._sock is None:
            return self.leftovers
        try:
            if not self._broken:
                try:
                    with self._lock:
                        reply = self._exchange(("finish", (abort or not self._kept,)))
                    if reply[0] == "ok":
                        self.leftovers = list(reply[1])
                except WardenError:
                    pass  # gone: it finished on its own (end of file is an abort)
        finally:
            self._sock.close()
            self._sock = None
            self._reap()
        for line in self.leftovers:
            if self.on_leftover is not None:
                self.on_leftover(line)
            else:
                print(f"dumper: warning: left behind: {line}", file=sys.stderr, flush=True)
        return self.leftovers

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.wait()
        elif self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass

    # -- requests ----------------------------------------------------------------

    def freeze(self, pid: int, tree: bool = True, *, stop_timeout: float | None = None) -> FrozenTree:
        """Freeze ``pid`` and (``tree``) its descendants; see :mod:`dumper.proc.tree`.

        Raises the Freezer's errors (NoSuchProcess, ZombieProcess,
        AccessDenied, RefusedTarget, FreezeTimeout...); nothing stays frozen then.
        """
        frozen = self._request("freeze", (pid, tree, stop_timeout))
        self.trees.append(frozen)
        return frozen

    def call(self, func: Callable, *args, **kwargs) -> Any:
        """Run module-level ``func(ctx, *args, **kwargs)`` in the warden; its result."""
        return self._request("call", (func, args, kwargs))

    def call_soon(self, func: Callable, *args, **kwargs) -> Callable[[], Any]:
        """Start :meth:`call` and return at once, so this process works while
        the warden does (ptrace round trips with the frozen target). Returns
        a function that waits for the result (or raises the error). The
        warden serves requests in order: any other request first waits for
        this one to be answered."""
        with self._lock:
            self._drain()
            seq = self._send(("call", (func, args, kwargs)))
            self._pending = seq

        def result() -> Any:
            with self._lock:
                if seq in self._replies:
                    reply = self._replies.pop(seq)
                elif self._pending == seq:
                    reply = self._receive(seq)
                    self._pending = None
                else:
                    raise WardenError(f"the reply to request {seq} was lost (an interrupted wait)")
            return _unwrap(reply)

        return result

    def keep(self) -> None:
        """The session succeeded: forget the undo actions (what they undo stays)."""
        self._request("keep", ())
        self._kept = True

    def thaw(self, mode: str = "resume") -> None:
        """Thaw every frozen process with ``mode`` ("resume", "leave-stopped",
        "kill"); returns when done."""
        if mode not in THAW_MODES:
            raise ValueError(f"thaw mode must be one of {THAW_MODES}, not {mode!r}")
        self.thaw_started_ns, self.thaw_done_ns = self._request("thaw", (mode,))

    @property
    def frozen_ns(self) -> int | None:
        """CRIU's frozen_time: every thread stopped (end of freezing) -> the
        thaw done (criu/cr-dump.c stops TIME_FROZEN after
        pstree_switch_state()); up to now while frozen; None before a freeze."""
        if not self.trees:
            return None
        start = min(t.stopped_ns for t in self.trees)
        end = self.thaw_done_ns if self.thaw_done_ns is not None else time.monotonic_ns()
        return end - start

    @property
    def freezing_ns(self) -> int | None:
        """CRIU's freezing_time of the first freeze: start -> every thread stopped."""
        return self.trees[0].freezing_ns if self.trees else None

    # -- plumbing ----------------------------------------------------------------

    def _request(self, op: str, args: tuple) -> Any:
        with self._lock:
            if self._sock is None:
                raise WardenError("the warden is not running")
            self._drain()
            reply = self._exchange((op, args))
        return _unwrap(reply)

    def _drain(self) -> None:
        """Read the answer to a pending :meth:`call_soon` request (kept for its
        result function). Caller holds the lock."""
        if self._pending is not None:
            seq, self._pending = self._pending, None
            self._replies[seq] = self._receive(seq)

    def _gone(self, how: str = "") -> WardenError:
        self._broken = True
        return WardenError(f"the warden process (pid {self.pid}) went away or its connection broke off"
                           + (f" ({how})" if how else ""))

    def _exchange(self, msg: Any) -> Any:
        """Send ``msg`` and return the reply numbered like it (see the framing notes).

        Termination signals are blocked in this thread while bytes move, so
        the kernel does not cut a write or read short; a handler may still
        raise between two statements (a signal another thread received), and
        the sequence numbers make that harmless.
        """
        return self._receive(self._send(msg))

    def _send(self, msg: Any) -> int:
        """Send ``msg`` as the next request; its sequence number."""
        if self._broken:
            raise self._gone()
        try:
            data = _dumps(msg)
        except Exception as err:  # noqa: BLE001 - a lambda, a local function, an open file...
            raise WardenError(f"cannot send this request to the warden: {err} (functions passed to "
                              "call() must be importable module-level functions, arguments picklable)") from err
        self._seq += 1
        seq = self._seq
        fd = self._sock.fileno()
        # pthread_sigmask runs handlers already due, which may raise: read the
        # mask first (changing nothing), so the finally always restores it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION)
            _write_frame(fd, seq, data)
        except _Broken:
            raise self._gone("writing") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return seq

    def _receive(self, seq: int) -> Any:
        """The reply to request ``seq``; earlier replies (of interrupted waits) are dropped."""
        fd = self._sock.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            poller.poll()  # interruptible: the reply then stays queued and is dropped by number later
            old = signal.pthread_sigmask(signal.SIG_BLOCK, ())
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION)
                got, body = _take_frame(self._sock)
            except _Broken as err:
                raise self._gone(f"reading: {err}") from None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            if got == seq:
                return pickle.loads(body)
            if got > seq:
                raise self._gone(f"reply {got} to request {seq}")

    def __repr__(self) -> str:
        return f"Warden(pid={self.pid}, {'running' if self._sock else 'stopped'})"
