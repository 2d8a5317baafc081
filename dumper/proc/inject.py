"""Run system calls inside a frozen target thread (x86_64 only).

How (ptrace(2); like CRIU's compel, without a parasite blob):

* the thread is already in a ptrace stop (see :mod:`dumper.proc.freeze`);
  its registers are saved with PTRACE_GETREGS;
* a ``syscall`` instruction already present in the target's ``[vdso]`` is
  used, so no code is written into the target;
* for each call the registers are loaded (``orig_rax = -1`` so a syscall the
  thread was stopped in is not restarted on top of ours) and the thread is
  single-stepped over the instruction; the kernel reports the step as a
  SIGTRAP signal-delivery-stop, with the result in ``rax``;
* :meth:`Injector.restore` puts the saved registers back exactly. The thread
  is then in a signal-delivery stop: when it is let go (with no signal), the
  kernel applies its usual syscall-restart rules to the restored registers,
  so an interrupted ``read`` or ``nanosleep`` resumes as if nothing happened.

Many calls at once (:meth:`Injector.syscalls`): each ptrace round trip costs
a quarter of a millisecond of frozen time, so a list of calls can run as one
straight-line program instead -- ``mov`` the number and arguments, ``syscall``,
store ``rax`` in a result slot, ..., ``int3`` -- written into a read+exec
mapping the caller injected for it (/proc/PID/mem writes through the missing
PROT_WRITE, as a debugger's breakpoints do: no writable and executable
mapping exists at any time) and run with one PTRACE_CONT up to the
``int3``'s SIGTRAP. The caller unmaps it before the thaw. Where exec memory
is refused (an SELinux execmem policy), the calls go one by one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
from collections.abc import Sequence

from ..errors import KernelError, UnsupportedKernel
from ..kernel import ptrace, x86_64
from .freeze import Freezer

__all__ = ["Injector", "assemble"]

# MOV r64, imm64 (REX.W B8+r) for rax and the syscall argument registers
# rdi, rsi, rdx, r10, r8, r9 (Intel SDM vol. 2, MOV); rbx holds the slot address.
_MOV_RAX = b"\x48\xb8"
_MOV_ARGS = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9")
_MOV_RBX = b"\x48\xbb"
_STORE_RAX_AT_RBX = b"\x48\x89\x03"  # mov [rbx], rax
_MASK = (1 << 64) - 1
_NEW_TASK_EVENTS = frozenset({ptrace.PTRACE_EVENT_CLONE, ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK})
# Signals an instruction raises itself: resumed, the injected code would
# fault again at once, for ever.
_FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE})
_REQUEST_NAMES = {ptrace.PTRACE_SINGLESTEP: "PTRACE_SINGLESTEP", ptrace.PTRACE_CONT: "PTRACE_CONT"}


def assemble(calls: Sequence[tuple[int, Sequence[int]]], results: int) -> bytes:
    """x86-64 code that makes ``calls`` (``(nr, args)``, up to 6 args each)
    in order, stores each raw result (8 bytes) at ``results + 8 * i`` and
    ends with ``int3``. Clobbers rax, rbx, rcx, r11 and the argument
    registers (all restored by the injector afterwards)."""
    out = bytearray()
    for i, (nr, args) in enumerate(calls):
        if len(args) > len(_MOV_ARGS):
            raise ValueError(f"syscall {nr}: {len(args)} arguments, at most 6")
        out += _MOV_RAX + struct.pack("<Q", nr & _MASK)
        for mov, value in zip(_MOV_ARGS, args):
            out += mov + struct.pack("<Q", value & _MASK)
        out += x86_64.SYSCALL_INSN + _MOV_RBX + struct.pack("<Q", (results + 8 * i) & _MASK) + _STORE_RAX_AT_RBX
    return bytes(out + x86_64.INT3)


_AT_SYSINFO_EHDR = 33  # include/uapi/linux/auxvec.h: where the kernel mapped [vdso]
_VDSO_SCAN = 4 * 4096  # the x86_64 vDSO text is 1-2 pages


def _find_syscall_insn(freezer: Freezer) -> int:
    """Address of a ``syscall`` instruction in the target's [vdso].

    The vDSO's address comes from the process's auxiliary vector, so no VMA
    list is parsed (64,000 VMAs made that the slowest part of a freeze)."""
    proc = freezer.process
    words = proc.auxv()
    base = next((words[i + 1] for i in range(0, len(words) - 1, 2) if words[i] == _AT_SYSINFO_EHDR), 0)
    if base:
        fd = proc.open("mem")
        try:
            text = b""
            for off in range(0, _VDSO_SCAN, 4096):  # stop at the first page past its end
                try:
                    text += os.pread(fd, 4096, base + off)
                except OSError:
                    break
        finally:
            os.close(fd)
        at = text.find(x86_64.SYSCALL_INSN)
        if at >= 0:
            return base + at
    raise UnsupportedKernel("syscall injection", "no syscall instruction found in the target's [vdso]")


def _raised_by_the_cpu(tid: int) -> bool:
    """Whether the signal ``tid`` is stopped with came from an instruction
    (si_code > 0: SEGV_MAPERR, BUS_ADRERR...), not from kill() or a queue."""
    try:
        return ptrace.getsiginfo(tid).si_code > 0
    except OSError:
        return False


class Injector:
    """Issue syscalls as thread ``tid`` of a frozen process (default: the main
    thread, or the lowest live thread if the main thread exited).

    Use as a context manager: registers are restored on exit, whatever
    happened. Raises UnsupportedKernel on other architectures.
    """

    def __init__(self, freezer: Freezer, tid: int | None = None) -> None:
        if x86_64.ARCH != "x86_64":
            raise UnsupportedKernel("syscall injection", f"only x86_64 is supported, not {x86_64.ARCH}")
        if not freezer.frozen:
            raise RuntimeError("the process must be frozen first")
        self.freezer = freezer
        self._attach(tid or freezer.main_tid, _find_syscall_insn(freezer))

    def _attach(self, tid: int, insn: int) -> None:
        """Save ``tid``'s registers (it must run 64-bit code) and start clean."""
        self.tid = tid
        self.insn = insn
        self.saved = x86_64.user_regs_struct()
        ptrace.getregs(tid, self.saved)
        if self.saved.cs != x86_64.USER_CS:
            raise UnsupportedKernel("syscall injection", f"thread {tid} runs 32-bit code (code segment "
                                    f"{self.saved.cs:#x})")
        self.signals: list[int] = []
        self.new_tasks: list[int] = []  # pids of tasks the injected calls created (PTRACE_EVENT_CLONE/FORK)
        self._sigmask: int | None = None  # the mask to put back, when SIGTRAP was blocked
        self._dirty = False
        self._running = False  # a syscall_start() not waited for yet

    @classmethod
    def tracee(cls, tid: int, insn: int) -> Injector:
        """An injector for a task this process traces and keeps stopped
        outside any freeze (a snapshot child, :mod:`dumper.proc.snapshot`);
        ``insn``: the address of a ``syscall`` instruction in it. Signals
        that arrive while it runs injected calls are dropped, not re-sent:
        such a task must never act on one."""
        if x86_64.ARCH != "x86_64":
            raise UnsupportedKernel("syscall injection", f"only x86_64 is supported, not {x86_64.ARCH}")
        self = cls.__new__(cls)
        self.freezer = None
        self._attach(tid, insn)
        return self

    def run_code(self, regs, end: int, *, faults: frozenset[int] = frozenset()) -> tuple[object, int]:
        """Run code already in the task from ``regs`` (PTRACE_CONT) until the
        ``int3`` that ends at ``end``; returns the registers there and 0, or,
        if it stopped on a signal in ``faults`` first (SIGSEGV: a page it
        could not touch), the registers at that instruction and the signal,
        which is not delivered. KernelError if it stopped anywhere else."""
        self._resume(regs, ptrace.PTRACE_CONT)
        return self._wait_for_trap(ptrace.PTRACE_CONT, end, "injected code", faults=faults, again_at=regs.rip)

    def syscall(self, nr: int, *args: int) -> int:
        """Run syscall ``nr(args)`` in the target; returns its raw result
        (a negative errno on failure, as the kernel returns it)."""
        self.syscall_start(nr, *args)
        return self.syscall_wait()

    def syscall_start(self, nr: int, *args: int) -> None:
        """Start syscall ``nr(args)`` in the target and return at once, so
        the tracer works while the target's thread runs it; :meth:`syscall_wait`
        must be called before any other request to this thread."""
        regs = x86_64.user_regs_struct()
        ctypes.pointer(regs)[0] = self.saved
        x86_64.set_syscall(regs, nr, args, self.insn)
        self._resume(regs, ptrace.PTRACE_SINGLESTEP)
        self._running = True

    def syscall_wait(self) -> int:
        """The raw result of the call :meth:`syscall_start` started."""
        self._running = False
        done, _ = self._wait_for_trap(ptrace.PTRACE_SINGLESTEP, self.insn + len(x86_64.SYSCALL_INSN),
                                      "injected syscall", again_at=self.insn)
        return x86_64.syscall_result(done)

    def syscalls(self, calls: Sequence[tuple[int, Sequence[int]]], *, code: int | None = None,
                 code_size: int = 0, results: int = 0) -> list[int]:
        """Run ``calls`` (``(nr, args)``) in order; their raw results.

        With ``code`` (the address of a read+exec mapping of ``code_size``
        bytes the caller mapped in the target) and ``results`` (8 writable
        bytes per call there), they run as one program (see the module
        docstring); otherwise one round trip each. A call's failure is its
        negative result, not an exception: the calls after it run anyway.
        """
        if code is None or not calls:
            return [self.syscall(nr, *args) for nr, args in calls]
        blob = assemble(calls, results)
        if len(blob) > code_size:
            half = len(calls) // 2
            return (self.syscalls(calls[:half], code=code, code_size=code_size, results=results)
                    + self.syscalls(calls[half:], code=code, code_size=code_size, results=results + 8 * half))
        fd = self.freezer.process.open("mem", os.O_RDWR)
        try:
            if os.pwrite(fd, blob, code) != len(blob):
                raise KernelError(errno.EIO, "writing injected code", f"thread {self.tid}")
            regs = x86_64.user_regs_struct()
            ctypes.pointer(regs)[0] = self.saved
            regs.rip = code
            regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # no syscall restart on top of ours
            self._run_until_trap(regs, ptrace.PTRACE_CONT, code + len(blob), "injected code")
            raw = os.pread(fd, 8 * len(calls), results)
        finally:
            os.close(fd)
        return [v - (1 << 64) if v >= 1 << 63 else v for v in struct.unpack(f"<{len(calls)}Q", raw)]

    def _run_until_trap(self, regs, request: int, end: int, what: str):
        """Load ``regs``, resume with ``request`` (PTRACE_SINGLESTEP or
        PTRACE_CONT) until the SIGTRAP that ends the injected code, and
        return the registers there. Other signals that arrive first are kept
        for after (not delivered into the injected code). KernelError unless
        the thread stopped at ``end``."""
        self._resume(regs, request)
        return self._wait_for_trap(request, end, what, again_at=regs.rip)[0]

    def _resume(self, regs, request: int) -> None:
        if not self._dirty:
            self._unblock_sigtrap()
        self._dirty = True
        ptrace.setregs(self.tid, regs)
        ptrace._ptrace(request, _REQUEST_NAMES[request], self.tid, None, 0)

    def _unblock_sigtrap(self) -> None:
        """Our traps (the single-step's, the ``int3``'s) are forced signals:
        with SIGTRAP blocked, the kernel would unblock it and reset its
        handler to SIG_DFL for good (kernel/signal.c force_sig_info_to_task),
        and the process would die of the next one. So it is unblocked while
        we run, and the mask put back by :meth:`restore` (as CRIU's compel
        does). An ignored SIGTRAP is reset all the same: README, Known limits."""
        mask = ptrace.getsigmask(self.tid)
        bit = 1 << (signal.SIGTRAP - 1)
        if mask & bit:
            ptrace.setsigmask(self.tid, mask & ~bit)
            self._sigmask = mask

    def _wait_for_trap(self, request: int, end: int, what: str, *, faults: frozenset[int] = frozenset(),
                       again_at: int | None = None):
        """Wait for the trap that ends what runs (at ``end``), holding other
        signals. ``again_at``: where the code starts; a trap there means it
        did not run (a trap left pending by a stop: a SIGSTOP or SIGCONT came
        meanwhile), or a single-stepped syscall ran and was rewound for a
        restart (kernel/fork.c returns ERESTARTNOINTR with a signal pending):
        it is resumed again."""
        stopsig = 0
        retries = 0
        while True:
            _, status = os.waitpid(self.tid, ptrace.WALL)
            if not os.WIFSTOPPED(status):
                raise KernelError(errno.ESRCH, what, f"thread {self.tid} exited")
            if ptrace.stop_event(status) in _NEW_TASK_EVENTS:
                # a clone/fork the caller asked to trace (PTRACE_O_TRACECLONE/FORK):
                # the syscall is half done; note the child and let it finish
                self.new_tasks.append(ptrace.geteventmsg(self.tid))
                ptrace._ptrace(request, _REQUEST_NAMES[request], self.tid, None, 0)
                continue
            stopsig = os.WSTOPSIG(status)
            # Ours only if the CPU raised it: a SIGTRAP or SIGSEGV someone sent
            # with kill() (the process group's, one pending at the freeze) is
            # held for after, like any other signal.
            by_cpu = (stopsig == signal.SIGTRAP or stopsig in faults or stopsig in _FAULTS) and \
                _raised_by_the_cpu(self.tid)
            if by_cpu and (stopsig == signal.SIGTRAP or stopsig in faults):
                if stopsig == signal.SIGTRAP and again_at is not None and retries < 1000:
                    at = x86_64.user_regs_struct()
                    ptrace.getregs(self.tid, at)
                    if at.rip == again_at:
                        retries += 1
                        ptrace._ptrace(request, _REQUEST_NAMES[request], self.tid, None, 0)
                        continue
                break
            if by_cpu:  # a fault of the injected code: resumed, it would fault again
                regs = x86_64.user_regs_struct()
                ptrace.getregs(self.tid, regs)
                raise KernelError(errno.EFAULT, what, f"thread {self.tid} got {signal.Signals(stopsig).name} at "
                                  f"{regs.rip:#x} (not delivered)")
            self.signals.append(stopsig)
            ptrace._ptrace(request, _REQUEST_NAMES[request], self.tid, None, 0)
        done = x86_64.user_regs_struct()
        ptrace.getregs(self.tid, done)
        if stopsig in faults:
            return done, stopsig
        if done.rip != end:
            raise KernelError(errno.EFAULT, what, f"thread stopped at {done.rip:#x}, not {end:#x}")
        return done, 0

    def restore(self) -> None:
        """Put the saved registers back and re-send signals held back."""
        if self._running:  # an exception between syscall_start() and syscall_wait()
            self.syscall_wait()
        if self._dirty:
            ptrace.setregs(self.tid, self.saved)
            self._dirty = False
        if self._sigmask is not None:
            ptrace.setsigmask(self.tid, self._sigmask)
            self._sigmask = None
        for sig in self.signals if self.freezer is not None else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.freezer.pid, sig)
        self.signals.clear()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
