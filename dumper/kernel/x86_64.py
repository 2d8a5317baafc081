"""x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).

The one architecture-specific module: anything that names a syscall number or
a register layout lives here.
"""

from __future__ import annotations

import platform

ARCH = platform.machine()

NR_mmap = 9
NR_munmap = 11
NR_ioctl = 16
NR_close = 3
NR_kcmp = 312
NR_userfaultfd = 323
NR_pidfd_open = 434
NR_pidfd_getfd = 438
NR_process_madvise = 440

import ctypes


class user_regs_struct(ctypes.Structure):
    """arch/x86/include/asm/user_64.h: what PTRACE_GETREGS/SETREGS move."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]


# The `syscall` instruction, and where its arguments go (entry_64.S).
SYSCALL_INSN = b"\x0f\x05"
SYSCALL_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def set_syscall(regs: user_regs_struct, nr: int, args: tuple[int, ...], insn_addr: int) -> None:
    """Point ``regs`` at a ``syscall`` instruction with ``nr(args...)`` loaded.

    ``orig_rax = -1`` keeps the kernel's syscall-restart logic away from the
    injected call when the thread was stopped inside a syscall.
    """
    regs.rax = nr
    for name, value in zip(SYSCALL_ARG_REGS, args):
        setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
    regs.rip = insn_addr
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF


def syscall_result(regs: user_regs_struct) -> int:
    """The signed return value of a completed syscall."""
    v = regs.rax
    return v - (1 << 64) if v >= 1 << 63 else v
