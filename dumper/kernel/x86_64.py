"""x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).

The one architecture-specific module: anything that names a syscall number or
a register layout lives here.
"""

from __future__ import annotations

import platform

ARCH = platform.machine()

NR_close = 3
NR_mmap = 9
NR_munmap = 11
NR_rt_sigaction = 13
NR_mincore = 27
NR_ioctl = 16
NR_getitimer = 36
NR_ftruncate = 77
NR_clone = 56
NR_wait4 = 61
NR_sigaltstack = 131
NR_prctl = 157
NR_arch_prctl = 158
NR_get_robust_list = 274
NR_timer_gettime = 224
NR_timer_getoverrun = 225
NR_exit_group = 231
NR_kcmp = 312
NR_memfd_create = 319
NR_userfaultfd = 323
NR_membarrier = 324
NR_pidfd_open = 434
NR_close_range = 436
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


# The 64-bit user code segment (arch/x86/include/asm/segment.h __USER_CS); a
# thread of a 64-bit process that far-jumped to __USER32_CS (0x23) runs
# 32-bit code, where our instructions mean something else.
USER_CS = 0x33

# The `syscall` instruction, and where its arguments go (entry_64.S).
SYSCALL_INSN = b"\x0f\x05"
# `rep movsb`: copies rcx bytes from [rsi] to [rdi]; after a fault the three
# registers tell how far it got (Intel SDM vol. 2, REP/MOVS: restartable).
REP_MOVSB = b"\xf3\xa4"
INT3 = b"\xcc"
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


# -- floating point and TLS (arch/x86/include/uapi/asm/ldt.h, asm/user_64.h,
#    asm/fpu/types.h; Intel SDM vol. 1 ch. 13 for the XSAVE layout) ----------

GDT_ENTRY_TLS_MIN = 12  # arch/x86/include/asm/segment.h (x86_64)
GDT_ENTRY_TLS_ENTRIES = 3


class user_desc(ctypes.Structure):
    """struct user_desc (asm/ldt.h): a TLS descriptor as get_thread_area gives it."""

    _fields_ = [
        ("entry_number", ctypes.c_uint32),
        ("base_addr", ctypes.c_uint32),
        ("limit", ctypes.c_uint32),
        ("seg_32bit", ctypes.c_uint32, 1),
        ("contents", ctypes.c_uint32, 2),
        ("read_exec_only", ctypes.c_uint32, 1),
        ("limit_in_pages", ctypes.c_uint32, 1),
        ("seg_not_present", ctypes.c_uint32, 1),
        ("useable", ctypes.c_uint32, 1),
        ("lm", ctypes.c_uint32, 1),
    ]


class user_fpregs_struct(ctypes.Structure):
    """The 512-byte legacy (fxsave) region, asm/user_64.h; the first bytes
    of an NT_X86_XSTATE buffer too. ``sw_reserved`` carries the kernel's
    ``struct _fpx_sw_bytes`` (xfeatures enabled, xstate size)."""

    _fields_ = [
        ("cwd", ctypes.c_uint16),
        ("swd", ctypes.c_uint16),
        ("ftw", ctypes.c_uint16),
        ("fop", ctypes.c_uint16),
        ("rip", ctypes.c_uint64),
        ("rdp", ctypes.c_uint64),
        ("mxcsr", ctypes.c_uint32),
        ("mxcr_mask", ctypes.c_uint32),
        ("st_space", ctypes.c_uint32 * 32),
        ("xmm_space", ctypes.c_uint32 * 64),
        ("padding", ctypes.c_uint32 * 12),
        ("sw_reserved", ctypes.c_uint32 * 12),
    ]


assert ctypes.sizeof(user_fpregs_struct) == 512

XSAVE_HDR_OFFSET = 512  # struct xstate_header: xfeatures (xstate_bv), xcomp_bv
# XSAVE state components that user space sees (asm/fpu/types.h enum xfeature)
XFEATURE_YMM = 2
XFEATURE_BNDREGS = 3
XFEATURE_BNDCSR = 4
XFEATURE_OPMASK = 5
XFEATURE_ZMM_Hi256 = 6
XFEATURE_Hi16_ZMM = 7
XFEATURE_PKRU = 9


def restart_syscall_regs(regs: user_regs_struct) -> None:
    """Rewrite a thread's registers as the kernel would on its way back to
    user mode when it was interrupted in a restartable system call
    (arch/x86/kernel/signal.c, no handler to run): ``-ERESTARTSYS``,
    ``-ERESTARTNOINTR`` and ``-ERESTARTNOHAND`` restart the call (ip back
    over the 2-byte ``syscall``); ``-ERESTART_RESTARTBLOCK`` becomes
    ``-EINTR``, since its restart block lives in the kernel and is not
    saved. CRIU's compel does the same before it saves registers, and its
    restore resumes the thread from them."""
    orig = regs.orig_rax - (1 << 64) if regs.orig_rax >= 1 << 63 else regs.orig_rax
    if orig < 0:
        return
    ax = syscall_result(regs)
    if ax in (-512, -513, -514):  # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
        regs.rax = regs.orig_rax
        regs.rip -= len(SYSCALL_INSN)
    elif ax == -516:  # ERESTART_RESTARTBLOCK
        regs.rax = (1 << 64) - 4  # -EINTR
