"""ptrace: mirror of include/uapi/linux/ptrace.h, and thin call wrappers.

PTRACE_SEIZE, PTRACE_INTERRUPT and PTRACE_LISTEN (and PTRACE_EVENT_STOP)
need Linux >= 3.4; everything else here is far older.

Every wrapper raises ``OSError`` with the kernel's errno (ESRCH: no such
tracee, or it is not stopped; EPERM: not allowed to trace it). Callers
translate it at their own boundary. See ptrace(2).

A tracee belongs to the *thread* that attached, not to the process: every
request and every ``waitpid`` on the tracee must come from that same OS thread
(kernel/ptrace.c: ``child->parent == current`` in ptrace_check_attach()).
"""

from __future__ import annotations

import ctypes

from .libc import check, libc

__all__ = [
    "PTRACE_TRACEME",
    "PTRACE_PEEKDATA",
    "PTRACE_POKEDATA",
    "PTRACE_CONT",
    "PTRACE_KILL",
    "PTRACE_SINGLESTEP",
    "PTRACE_GETREGS",
    "PTRACE_SETREGS",
    "PTRACE_ATTACH",
    "PTRACE_DETACH",
    "PTRACE_SYSCALL",
    "PTRACE_SETOPTIONS",
    "PTRACE_GETEVENTMSG",
    "PTRACE_GETSIGINFO",
    "PTRACE_SETSIGINFO",
    "PTRACE_SEIZE",
    "PTRACE_INTERRUPT",
    "PTRACE_LISTEN",
    "PTRACE_EVENT_STOP",
    "PTRACE_O_TRACESYSGOOD",
    "PTRACE_O_TRACECLONE",
    "PTRACE_O_TRACEEXEC",
    "PTRACE_O_TRACEEXIT",
    "PTRACE_O_EXITKILL",
    "PTRACE_O_SUSPEND_SECCOMP",
    "WALL",
    "siginfo_t",
    "seize",
    "interrupt",
    "detach",
    "cont",
    "listen",
    "setoptions",
    "geteventmsg",
    "getsiginfo",
    "getregs",
    "setregs",
    "stop_event",
]

# -- requests (include/uapi/linux/ptrace.h; GETREGS/SETREGS from the arch's
#    asm/ptrace-abi.h, same numbers on x86_64 and i386) ------------------------
PTRACE_TRACEME = 0
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8  # deprecated: ptrace(2) says use kill(SIGKILL) instead
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_SEIZE = 0x4206  # 3.4
PTRACE_INTERRUPT = 0x4207  # 3.4
PTRACE_LISTEN = 0x4208  # 3.4

# -- events: waitpid status >> 16 --------------------------------------------
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128  # 3.4: group-stop or PTRACE_INTERRUPT stop of a SEIZEd tracee

# -- options (PTRACE_SETOPTIONS, or the data argument of PTRACE_SEIZE) -------
PTRACE_O_TRACESYSGOOD = 1
PTRACE_O_TRACEFORK = 1 << PTRACE_EVENT_FORK
PTRACE_O_TRACEVFORK = 1 << PTRACE_EVENT_VFORK
PTRACE_O_TRACECLONE = 1 << PTRACE_EVENT_CLONE
PTRACE_O_TRACEEXEC = 1 << PTRACE_EVENT_EXEC
PTRACE_O_TRACEVFORKDONE = 1 << PTRACE_EVENT_VFORK_DONE
PTRACE_O_TRACEEXIT = 1 << PTRACE_EVENT_EXIT
PTRACE_O_TRACESECCOMP = 1 << PTRACE_EVENT_SECCOMP
PTRACE_O_EXITKILL = 1 << 20  # 3.8: SIGKILL every tracee when the tracer exits
PTRACE_O_SUSPEND_SECCOMP = 1 << 21  # 4.3, needs CAP_SYS_ADMIN

# waitpid flag: wait for threads (clone children) too (include/uapi/linux/wait.h).
WALL = 0x40000000


class siginfo_t(ctypes.Structure):
    """The 128-byte siginfo_t; only the common header is named."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad", ctypes.c_int),
        ("_rest", ctypes.c_byte * 112),
    ]


assert ctypes.sizeof(siginfo_t) == 128


def _ptrace(request: int, name: str, tid: int, addr: int | None = None, data=None) -> int:
    ctypes.set_errno(0)
    return check(libc.ptrace(request, tid, addr, data), f"ptrace({name}, {tid})")


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE thread ``tid`` without stopping it (Linux >= 3.4).

    ``options`` are PTRACE_O_* bits. Raises ``OSError``: EPERM (not allowed,
    or already traced), ESRCH (no such thread), EIO/EINVAL (bad options).
    """
    _ptrace(PTRACE_SEIZE, "PTRACE_SEIZE", tid, None, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: ask a SEIZEd tracee to enter a PTRACE_EVENT_STOP.

    Returns at once; the stop is collected with ``waitpid(tid, WALL)``.
    Raises ``OSError`` ESRCH if ``tid`` is not our SEIZEd tracee.
    """
    _ptrace(PTRACE_INTERRUPT, "PTRACE_INTERRUPT", tid)


def detach(tid: int, sig: int = 0) -> None:
    """PTRACE_DETACH a stopped tracee; it runs again unless a group-stop holds.

    ``sig`` is delivered only if the tracee sits in a signal-delivery-stop.
    Raises ``OSError`` ESRCH if it is not our tracee or not stopped.
    """
    _ptrace(PTRACE_DETACH, "PTRACE_DETACH", tid, None, sig)


def cont(tid: int, sig: int = 0) -> None:
    """PTRACE_CONT a stopped tracee, injecting ``sig`` (0: none).

    Injection works only from a signal-delivery-stop (ptrace(2)). Raises
    ``OSError`` ESRCH if it is not our tracee or not stopped.
    """
    _ptrace(PTRACE_CONT, "PTRACE_CONT", tid, None, sig)


def setoptions(tid: int, options: int) -> None:
    """PTRACE_SETOPTIONS: replace the tracee's PTRACE_O_* bits with ``options``.

    Raises ``OSError`` ESRCH if it is not our stopped tracee, EINVAL for
    unknown bits.
    """
    _ptrace(PTRACE_SETOPTIONS, "PTRACE_SETOPTIONS", tid, None, options)


def geteventmsg(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the message of the tracee's last PTRACE_EVENT stop
    (for PTRACE_EVENT_CLONE/FORK/VFORK: the new task's pid)."""
    msg = ctypes.c_ulong(0)
    _ptrace(PTRACE_GETEVENTMSG, "PTRACE_GETEVENTMSG", tid, None, ctypes.addressof(msg))
    return msg.value


def listen(tid: int) -> None:
    """PTRACE_LISTEN: let a tracee in group-stop wait for SIGCONT while traced.

    Raises ``OSError`` ESRCH if it is not stopped, EIO if not in a group-stop.
    """
    _ptrace(PTRACE_LISTEN, "PTRACE_LISTEN", tid)


def getsiginfo(tid: int) -> siginfo_t:
    """PTRACE_GETSIGINFO of a stopped tracee.

    Raises ``OSError`` EINVAL in a group-stop (ptrace(2), "Group-stop"),
    ESRCH if it is not our stopped tracee.
    """
    info = siginfo_t()
    _ptrace(PTRACE_GETSIGINFO, "PTRACE_GETSIGINFO", tid, None, ctypes.addressof(info))
    return info


def getregs(tid: int, regs: ctypes.Structure) -> None:
    """PTRACE_GETREGS into ``regs``, the arch's ``struct user_regs_struct``."""
    _ptrace(PTRACE_GETREGS, "PTRACE_GETREGS", tid, None, ctypes.addressof(regs))


def setregs(tid: int, regs: ctypes.Structure) -> None:
    """PTRACE_SETREGS from ``regs``, the arch's ``struct user_regs_struct``."""
    _ptrace(PTRACE_SETREGS, "PTRACE_SETREGS", tid, None, ctypes.addressof(regs))


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a waitpid ``status`` (0 if it is not an event stop)."""
    return (status >> 16) & 0xFF


# -- thread state requests (include/uapi/linux/ptrace.h, include/uapi/linux/elf.h)

PTRACE_GETFPREGS = 14  # arch/x86: struct user_i387_struct (fxsave layout)
PTRACE_GET_THREAD_AREA = 25  # arch/x86: one GDT TLS entry, addr = entry number
PTRACE_GETREGSET = 0x4204  # 2.6.34: addr = NT_* note type, data = struct iovec
PTRACE_PEEKSIGINFO = 0x4209  # 3.10
PTRACE_GETSIGMASK = 0x420A  # 3.11
PTRACE_SETSIGMASK = 0x420B  # 3.11
PTRACE_SECCOMP_GET_FILTER = 0x420C  # 4.4, CAP_SYS_ADMIN
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F  # 5.13
PTRACE_PEEKSIGINFO_SHARED = 1 << 0

NT_PRFPREG = 2
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204  # 6.6


class ptrace_peeksiginfo_args(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


class ptrace_rseq_configuration(ctypes.Structure):
    """``struct ptrace_rseq_configuration`` (24 bytes)."""

    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


assert ctypes.sizeof(ptrace_rseq_configuration) == 24

# Fields of ``struct rseq`` the kernel writes on its own (when the thread
# migrates or is scheduled): (offset, size) in bytes. include/uapi/linux/rseq.h:
# cpu_id_start @0, cpu_id @4, (rseq_cs @8, flags @16: the thread's), node_id
# @20 (6.3), mm_cid @24 (6.3).
RSEQ_KERNEL_FIELDS = ((0, 4), (4, 4), (20, 4), (24, 4))


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def getregset(tid: int, note: int, size: int) -> bytes:
    """PTRACE_GETREGSET: the ``note`` register set (NT_*), at most ``size``
    bytes; returns the bytes the kernel filled. ``OSError``: EINVAL/ENODEV
    for a set this CPU or kernel lacks."""
    buf = ctypes.create_string_buffer(size)
    iov = _iovec(ctypes.addressof(buf), size)
    _ptrace(PTRACE_GETREGSET, "PTRACE_GETREGSET", tid, note, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def getfpregs(tid: int) -> bytes:
    """PTRACE_GETFPREGS: the 512-byte fxsave area (x86_64)."""
    buf = ctypes.create_string_buffer(512)
    _ptrace(PTRACE_GETFPREGS, "PTRACE_GETFPREGS", tid, None, ctypes.addressof(buf))
    return buf.raw


def get_thread_area(tid: int, entry: int, desc: ctypes.Structure) -> None:
    """PTRACE_GET_THREAD_AREA of GDT ``entry`` into ``desc`` (struct user_desc)."""
    _ptrace(PTRACE_GET_THREAD_AREA, "PTRACE_GET_THREAD_AREA", tid, entry, ctypes.addressof(desc))


def getsigmask(tid: int) -> int:
    """PTRACE_GETSIGMASK: the thread's blocked signals, bit ``n - 1`` for signal ``n``."""
    mask = ctypes.c_uint64()
    _ptrace(PTRACE_GETSIGMASK, "PTRACE_GETSIGMASK", tid, ctypes.sizeof(mask), ctypes.addressof(mask))
    return mask.value


def setsigmask(tid: int, mask: int) -> None:
    """PTRACE_SETSIGMASK: set the stopped thread's blocked signals (as
    :func:`getsigmask` returns them; SIGKILL and SIGSTOP are dropped by the kernel)."""
    value = ctypes.c_uint64(mask)
    _ptrace(PTRACE_SETSIGMASK, "PTRACE_SETSIGMASK", tid, ctypes.sizeof(value), ctypes.addressof(value))


def peeksiginfo(tid: int, *, shared: bool, batch: int = 32) -> list[bytes]:
    """PTRACE_PEEKSIGINFO: every queued siginfo (128 bytes each) without
    dequeuing it; the thread's private queue, or with ``shared`` the
    process's shared one."""
    out: list[bytes] = []
    buf = (siginfo_t * batch)()
    args = ptrace_peeksiginfo_args(0, PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch)
    while True:
        n = _ptrace(PTRACE_PEEKSIGINFO, "PTRACE_PEEKSIGINFO", tid, ctypes.addressof(args), ctypes.addressof(buf))
        out.extend(bytes(buf[i]) for i in range(n))
        if n < batch:
            return out
        args.off += n


def get_rseq_configuration(tid: int) -> ptrace_rseq_configuration:
    """PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13): the thread's registered
    rseq area (``rseq_abi_pointer`` 0 when none)."""
    conf = ptrace_rseq_configuration()
    _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, "PTRACE_GET_RSEQ_CONFIGURATION", tid,
            ctypes.sizeof(conf), ctypes.addressof(conf))
    return conf


def seccomp_get_filter(tid: int, index: int) -> bytes:
    """PTRACE_SECCOMP_GET_FILTER: the BPF program ``index`` filters back from
    the thread's newest (struct sock_filter, 8 bytes per instruction).
    ``OSError`` ENOENT past the oldest filter."""
    n = _ptrace(PTRACE_SECCOMP_GET_FILTER, "PTRACE_SECCOMP_GET_FILTER", tid, index, None)
    buf = ctypes.create_string_buffer(n * 8)
    _ptrace(PTRACE_SECCOMP_GET_FILTER, "PTRACE_SECCOMP_GET_FILTER", tid, index, ctypes.addressof(buf))
    return buf.raw
