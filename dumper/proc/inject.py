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
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

from ..errors import KernelError, UnsupportedKernel
from ..kernel import ptrace, x86_64
from .freeze import Freezer

__all__ = ["Injector"]


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
        self.tid = tid or freezer.main_tid
        self.insn = _find_syscall_insn(freezer)
        self.saved = x86_64.user_regs_struct()
        ptrace.getregs(self.tid, self.saved)
        self.signals: list[int] = []
        self._dirty = False

    def syscall(self, nr: int, *args: int) -> int:
        """Run syscall ``nr(args)`` in the target; returns its raw result
        (a negative errno on failure, as the kernel returns it)."""
        regs = x86_64.user_regs_struct()
        ctypes.pointer(regs)[0] = self.saved
        x86_64.set_syscall(regs, nr, args, self.insn)
        self._dirty = True
        ptrace.setregs(self.tid, regs)
        sig = 0
        while True:
            ptrace._ptrace(ptrace.PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP", self.tid, None, sig)
            _, status = os.waitpid(self.tid, ptrace.WALL)
            if not os.WIFSTOPPED(status):
                raise KernelError(errno.ESRCH, "injected syscall", f"thread {self.tid} exited")
            stopsig = os.WSTOPSIG(status)
            if stopsig == signal.SIGTRAP:
                break
            # Another signal arrived first: keep it for after (not delivered
            # into the injected call), step again.
            self.signals.append(stopsig)
            sig = 0
        done = x86_64.user_regs_struct()
        ptrace.getregs(self.tid, done)
        if done.rip != self.insn + len(x86_64.SYSCALL_INSN):
            raise KernelError(errno.EFAULT, "injected syscall", f"thread stopped at {done.rip:#x}")
        return x86_64.syscall_result(done)

    def restore(self) -> None:
        """Put the saved registers back and re-send signals held back."""
        if self._dirty:
            ptrace.setregs(self.tid, self.saved)
            self._dirty = False
        for sig in self.signals:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.freezer.pid, sig)
        self.signals.clear()

    def __enter__(self) -> Injector:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
