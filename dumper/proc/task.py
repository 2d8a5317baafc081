"""The state of a frozen process beyond its memory: what `criu restore`
needs to bring it back (CRIU 4.2, criu/cr-dump.c, criu/pie/parasite.c,
compel/arch/x86/src/lib/infect.c).

Read from outside wherever the kernel allows it: /proc/PID/status and
friends, ptrace requests (PTRACE_GETREGS, GETREGSET NT_X86_XSTATE,
GET_THREAD_AREA, GETSIGMASK, PEEKSIGINFO, GET_RSEQ_CONFIGURATION,
SECCOMP_GET_FILTER), prlimit, get_robust_list, sched_getscheduler.
Only what has no outside interface is asked of the process itself, by
syscalls injected into its frozen threads (:mod:`dumper.proc.inject`):
sigactions, itimers, POSIX timer values, sigaltstack, clear_child_tid,
parent-death signal, securebits, child subreaper, dumpable, membarrier
registrations. Their results land in one scratch mapping that is unmapped
again before the functions return; registers are restored exactly.

:func:`collect_task` runs in the tracer (it needs the ptrace stops); it
returns plain, picklable :class:`TaskState`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct
from dataclasses import dataclass, field

from ..errors import KernelError
from ..kernel import mman, ptrace, x86_64
from ..kernel.libc import PAGE_SIZE

__all__ = ["ThreadState", "TaskState", "PosixTimer", "collect_task", "read_status", "unmap_scratch", "RLIM_NLIMITS"]

RLIM_NLIMITS = 16  # include/uapi/asm-generic/resource.h
_NSIG = 64
_RLIM_INFINITY = (1 << 64) - 1
_SIGKILL, _SIGSTOP, _SIGCHLD = 9, 19, 17

# prctl options (include/uapi/linux/prctl.h)
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_GET_SECUREBITS = 27
PR_GET_CHILD_SUBREAPER = 37
PR_GET_TID_ADDRESS = 40  # CONFIG_CHECKPOINT_RESTORE
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9  # 6.3

# compel/include/uapi/task-state.h: what CRIU's task_state means
TASK_ALIVE = 0x1
TASK_DEAD = 0x2
TASK_STOPPED = 0x3
TASK_ZOMBIE = 0x6

# Scratch layout (bytes into the scratch mapping)
_SA_OFF = 0  # 64 x struct sigaction (32 bytes)
_ITIMER_OFF = 2048  # 3 x struct itimerval (32 bytes)
_TID_ADDR_OFF = 2048 + 128  # PR_GET_TID_ADDRESS: a pointer
_PDEATH_OFF = 2048 + 136  # PR_GET_PDEATHSIG: an int
_SUBREAPER_OFF = 2048 + 144  # PR_GET_CHILD_SUBREAPER: an int
_SAS_OFF = 2048 + 160  # stack_t (24 bytes)
_RESULTS_OFF = PAGE_SIZE  # 8 bytes per injected call (the batch's rax slots)
_TIMERS_OFF = 2 * PAGE_SIZE  # struct itimerspec (32 bytes) per POSIX timer
_CODE = 4 * PAGE_SIZE  # the read+exec mapping the batched calls run from


def _scratch_size(timers: int) -> int:
    return -(-(_TIMERS_OFF + 32 * timers) // PAGE_SIZE) * PAGE_SIZE


@dataclass(slots=True)
class PosixTimer:
    """One POSIX timer (/proc/PID/timers plus timer_gettime); times in
    seconds and nanoseconds, ``interval`` then ``value``."""

    it_id: int
    clock_id: int
    si_signo: int
    sigev_notify: int
    sival_ptr: int
    notify_thread_id: int | None
    overrun: int = 0
    isec: int = 0
    insec: int = 0
    vsec: int = 0
    vnsec: int = 0


@dataclass(slots=True)
class ThreadState:
    """One thread. ``regs`` is a raw user_regs_struct with a pending
    syscall restart already applied (:func:`dumper.kernel.x86_64.restart_syscall_regs`);
    ``xstate`` the NT_X86_XSTATE buffer (or the 512-byte fxsave area when
    ``xstate_is_fxsave``); ``tls`` three raw struct user_desc."""

    tid: int
    state: str
    comm: str
    regs: bytes
    xstate: bytes
    xstate_is_fxsave: bool
    shstk: tuple[int, int] | None  # (cet, ssp) from NT_X86_SHSTK
    tls: list[bytes]
    sigmask: int
    pending: list[bytes]  # private queue, raw siginfo_t
    robust_list: tuple[int, int]  # head address, length
    sched_policy: int
    sched_prio: int | None
    sched_nice: int
    rseq: tuple[int, int, int] | None  # abi pointer, abi size, signature
    rseq_cs: int | None  # rseq_cs pointer kept for NO_RESTART critical sections
    clear_tid: int = 0
    sas: tuple[int, int, int] = (0, 0, 2)  # ss_sp, ss_size, ss_flags (SS_DISABLE)
    pdeath_sig: int = 0
    secbits: int = 0
    creds: dict = field(default_factory=dict)
    seccomp_mode: int = 0
    seccomp_filter: int | None = None  # index into TaskState.seccomp_filters
    captured_regs: bytes = b""  # user_regs_struct as PTRACE_GETREGS gave it, before any fixup


@dataclass(slots=True)
class TaskState:
    """One process. ``sigactions[n - 1]`` is signal ``n``'s
    ``(handler, flags, restorer, mask)``; ``itimers`` are real, virtual,
    prof as ``(interval_s, interval_us, value_s, value_us)``; ``rlimits``
    ``(cur, max)`` per RLIMIT_* with infinity as 2**64 - 1."""

    pid: int
    comm: str
    task_state: int
    stop_signo: int
    exit_code: int
    flags: int
    personality: int
    threads: list[ThreadState]
    shared_pending: list[bytes]
    sigactions: list[tuple[int, int, int, int]]
    itimers: list[tuple[int, int, int, int]]
    posix_timers: list[PosixTimer]
    rlimits: list[tuple[int, int]]
    loginuid: int | None
    oom_score_adj: int | None
    child_subreaper: bool
    dumpable: int
    thp_disabled: bool
    membarrier_mask: int
    seccomp_filters: list[tuple[bytes, int | None]]  # (BPF program, index of the previous)
    umask: int


# -- /proc ----------------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def read_status(path: str) -> dict[str, str]:
    """A /proc status file (``/proc/PID/status``, ``.../task/TID/status``) as
    ``{field: value}``, values stripped."""
    out = {}
    for line in _read(path).splitlines():
        k, _, v = line.partition(b":")
        out[k.decode()] = v.strip().decode(errors="replace")
    return out


def _caps(hexword: str) -> list[int]:
    v = int(hexword, 16)
    return [v & 0xFFFFFFFF, v >> 32]  # CRIU's CR_CAP_SIZE u32 words


def _creds(st: dict[str, str]) -> dict:
    uid = [int(x) for x in st["Uid"].split()]
    gid = [int(x) for x in st["Gid"].split()]
    return {
        "uid": uid[0], "euid": uid[1], "suid": uid[2], "fsuid": uid[3],
        "gid": gid[0], "egid": gid[1], "sgid": gid[2], "fsgid": gid[3],
        "groups": [int(g) for g in st.get("Groups", "").split()],
        "cap_inh": _caps(st["CapInh"]), "cap_prm": _caps(st["CapPrm"]), "cap_eff": _caps(st["CapEff"]),
        "cap_bnd": _caps(st["CapBnd"]), "cap_amb": _caps(st.get("CapAmb", "0")),
        "no_new_privs": int(st.get("NoNewPrivs", "0")),
    }


def _comm_from_stat(path: str) -> str:
    """The process's comm (the leader's, exited or not) from /proc/PID/stat."""
    data = _read(path)
    return data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")


def _stat_fields(path: str) -> list[bytes]:
    data = _read(path)
    return data[data.rindex(b")") + 2:].split()  # [0] is field 3 (state)


def _posix_timers(base: str) -> list[PosixTimer]:
    """/proc/PID/timers (fs/proc/base.c show_timer)."""
    try:
        text = _read(f"{base}/timers").decode()
    except FileNotFoundError:
        return []
    out: list[PosixTimer] = []
    cur: dict[str, str] = {}
    for line in text.splitlines() + ["ID: end"]:
        key, _, val = line.partition(":")
        if key == "ID" and cur:
            signo, _, ptr = cur["signal"].partition("/")
            how, _, target = cur["notify"].partition("/")
            tid = int(target.split(".")[1]) if "." in target else None
            notify = {"signal": 0, "none": 1, "thread": 4}.get(how, 0)  # SIGEV_* (4: SIGEV_THREAD_ID)
            out.append(PosixTimer(int(cur["ID"]), int(cur["ClockID"]), int(signo), notify, int(ptr, 16),
                                  tid if how == "thread" else None))
            cur = {}
        cur[key.strip()] = val.strip()
    return out


# -- ptrace side ------------------------------------------------------------------


def _regs(tid: int) -> tuple[bytes, bytes]:
    """(registers as captured, registers with a pending syscall restart applied)."""
    regs = x86_64.user_regs_struct()
    ptrace.getregs(tid, regs)
    captured = bytes(regs)
    x86_64.restart_syscall_regs(regs)
    return captured, bytes(regs)


def _xstate(tid: int) -> tuple[bytes, bool]:
    try:
        return ptrace.getregset(tid, ptrace.NT_X86_XSTATE, 16384), False
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENODEV, errno.EIO):
            raise
    return ptrace.getfpregs(tid), True


def _shstk(tid: int) -> tuple[int, int] | None:
    try:
        data = ptrace.getregset(tid, ptrace.NT_X86_SHSTK, 16)
    except OSError:
        return None
    return struct.unpack("<QQ", data[:16]) if len(data) >= 16 else None


def _tls(tid: int) -> list[bytes]:
    out = []
    for i in range(x86_64.GDT_ENTRY_TLS_ENTRIES):
        d = x86_64.user_desc()
        d.entry_number = x86_64.GDT_ENTRY_TLS_MIN + i
        d.seg_not_present = 1
        try:
            ptrace.get_thread_area(tid, x86_64.GDT_ENTRY_TLS_MIN + i, d)
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: no IA32 emulation, nothing to save
                raise
        out.append(bytes(d))
    return out


def _rseq(tid: int, mem_fd: int, regs: bytes) -> tuple[tuple[int, int, int] | None, int | None, bytes]:
    """The rseq registration; a thread stopped inside an rseq critical
    section resumes at its abort handler (CRIU's fixup_thread_rseq), unless
    the section asks not to be restarted, in which case its rseq_cs is kept."""
    try:
        conf = ptrace.get_rseq_configuration(tid)
    except OSError:
        return None, None, regs
    if not conf.rseq_abi_pointer:
        return None, None, regs
    rseq = (conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature)
    try:
        # struct rseq: u32 cpu_id_start, u32 cpu_id, u64 rseq_cs, u32 flags
        _, _, cs_ptr, rflags = struct.unpack("<IIQI", os.pread(mem_fd, 20, conf.rseq_abi_pointer))
        if not cs_ptr:
            return rseq, None, regs
        # struct rseq_cs: u32 version, u32 flags, u64 start_ip, post_commit_offset, abort_ip
        version, cflags, start, post, abort = struct.unpack("<IIQQQ", os.pread(mem_fd, 32, cs_ptr))
    except (OSError, struct.error):
        return rseq, None, regs
    r = x86_64.user_regs_struct.from_buffer_copy(regs)
    flags = rflags | cflags
    NO_RESTART_ON_SIGNAL = 1 << 1  # RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL
    if version == 0 and start <= r.rip < start + post:
        if flags & NO_RESTART_ON_SIGNAL:
            return rseq, cs_ptr, regs
        r.rip = abort
        return rseq, None, bytes(r)
    return rseq, (cs_ptr if flags & NO_RESTART_ON_SIGNAL else None), regs


def _sched(tid: int) -> tuple[int, int | None, int]:
    policy = os.sched_getscheduler(tid)
    prio = None
    if policy & ~0x40000000 in (os.SCHED_FIFO, os.SCHED_RR):  # without SCHED_RESET_ON_FORK
        prio = os.sched_getparam(tid).sched_priority
    return policy, prio, os.getpriority(os.PRIO_PROCESS, tid)


def _robust_list(tid: int) -> tuple[int, int]:
    from ..kernel.libc import libc

    head = ctypes.c_uint64()
    length = ctypes.c_size_t()
    ret = libc.syscall(ctypes.c_long(x86_64.NR_get_robust_list), ctypes.c_long(tid),
                       ctypes.byref(head), ctypes.byref(length))
    if ret != 0:
        err = ctypes.get_errno()
        raise KernelError(err, "get_robust_list", f"tid {tid}")
    return head.value, length.value


_SIGSTOP_ = 19


def _pending(tid: int, *, shared: bool) -> list[bytes]:
    """Queued siginfos, without SIGSTOP: a stopped task is saved stopped
    (task_state), and CRIU's restorer, re-queueing a SIGSTOP, stops itself
    before its last handshake and the restore never ends. CRIU's own dump
    consumes a pending SIGSTOP when it seizes (compel skip_sigstop)."""
    return [si for si in ptrace.peeksiginfo(tid, shared=shared) if struct.unpack_from("<i", si)[0] != _SIGSTOP_]


def _seccomp_filters(tid: int) -> list[bytes]:
    """The thread's filter chain, newest first."""
    out = []
    while True:
        try:
            out.append(ptrace.seccomp_get_filter(tid, len(out)))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return out
            raise KernelError(err.errno, "ptrace(PTRACE_SECCOMP_GET_FILTER)", f"tid {tid}") from err


# -- injected ---------------------------------------------------------------------


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise KernelError(-ret, what, "inside the target")
    return ret


def _sigaction_query(st: dict[str, str]) -> list[int]:
    """Signals whose sigaction must be asked for: the caught and ignored ones
    (SigCgt, SigIgn), and SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT act even
    with SIG_DFL. Any other signal is SIG_DFL, where flags, restorer and
    mask have no effect: it is saved as zeros, which is what it behaves as."""
    wanted = int(st.get("SigCgt", "0"), 16) | int(st.get("SigIgn", "0"), 16) | 1 << (_SIGCHLD - 1)
    return [sig for sig in range(1, _NSIG + 1) if wanted >> (sig - 1) & 1 and sig not in (_SIGKILL, _SIGSTOP)]


def _injected(ctx, pid: int, tids: list[int], timers: list[PosixTimer], mem_fd: int, signals: list[int]):
    """Everything only the process itself can tell, through one scratch
    mapping (results) and one read+exec mapping (the calls, batched: see
    :meth:`dumper.proc.inject.Injector.syscalls`)."""
    first = tids[0]
    size = _scratch_size(len(timers))
    per_thread: dict[int, tuple] = {}
    with ctx.injector(pid, first) as inj:
        scratch = _check(inj.syscall(x86_64.NR_mmap, 0, size, mman.PROT_READ | mman.PROT_WRITE,
                                     mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0), "mmap(scratch)")
        undo_scratch = ctx.on_abort(unmap_scratch, pid, first, scratch, size)
        undo_code = None
        code = inj.syscall(x86_64.NR_mmap, 0, _CODE, mman.PROT_READ | mman.PROT_EXEC,
                           mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0)
        if code < 0:
            code = None  # exec memory refused: one call at a time
        else:
            undo_code = ctx.on_abort(unmap_scratch, pid, first, code, _CODE)
        batch = dict(code=code, code_size=_CODE, results=scratch + _RESULTS_OFF)
        try:
            calls = [(x86_64.NR_rt_sigaction, (sig, 0, scratch + _SA_OFF + (sig - 1) * 32, 8)) for sig in signals]
            calls += [(x86_64.NR_getitimer, (which, scratch + _ITIMER_OFF + which * 32)) for which in range(3)]
            for i, t in enumerate(timers):
                calls += [(x86_64.NR_timer_gettime, (t.it_id, scratch + _TIMERS_OFF + 32 * i)),
                          (x86_64.NR_timer_getoverrun, (t.it_id,))]
            calls += [(x86_64.NR_prctl, (PR_GET_CHILD_SUBREAPER, scratch + _SUBREAPER_OFF)),
                      (x86_64.NR_prctl, (PR_GET_DUMPABLE,)),
                      (x86_64.NR_membarrier, (MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0))]
            res = inj.syscalls(calls, **batch)
            names = ["rt_sigaction"] * len(signals) + ["getitimer"] * 3
            for name, r in zip(names, res):
                _check(r, name)
            at = len(names)
            for i, t in enumerate(timers):
                _check(res[at + 2 * i], "timer_gettime")
                t.overrun = max(res[at + 2 * i + 1], 0)
            subreaper_ret, dumpable, mb = res[-3:]
            _check(subreaper_ret, "prctl(PR_GET_CHILD_SUBREAPER)")
            _check(dumpable, "prctl(PR_GET_DUMPABLE)")
            per_thread[first] = _thread_injected(inj, scratch, mem_fd, batch)
            for tid in tids[1:]:
                with ctx.injector(pid, tid) as tinj:
                    per_thread[tid] = _thread_injected(tinj, scratch, mem_fd, batch)
            raw = os.pread(mem_fd, _TIMERS_OFF + 32 * len(timers), scratch)
        finally:
            if code is not None:
                inj.syscall(x86_64.NR_munmap, code, _CODE)
                ctx.forget(undo_code)
            inj.syscall(x86_64.NR_munmap, scratch, size)
            ctx.forget(undo_scratch)
    for i, t in enumerate(timers):
        t.isec, t.insec, t.vsec, t.vnsec = struct.unpack_from("<qqqq", raw, _TIMERS_OFF + 32 * i)
    subreaper = struct.unpack_from("<i", raw, _SUBREAPER_OFF)[0]
    # Unasked slots of the fresh mapping read as zeros: SIG_DFL.
    sigactions = [struct.unpack_from("<QQQQ", raw, _SA_OFF + i * 32) for i in range(_NSIG)]
    itimers = [struct.unpack_from("<qqqq", raw, _ITIMER_OFF + i * 32) for i in range(3)]
    # struct itimerval is {interval, value}: CRIU's itimer_entry is isec, iusec, vsec, vusec
    return sigactions, itimers, bool(subreaper), dumpable, (mb if mb > 0 else 0), per_thread


def _thread_injected(inj, scratch: int, mem_fd: int, batch: dict) -> tuple[int, tuple[int, int, int], int, int]:
    res = inj.syscalls([(x86_64.NR_prctl, (PR_GET_TID_ADDRESS, scratch + _TID_ADDR_OFF)),
                        (x86_64.NR_sigaltstack, (0, scratch + _SAS_OFF)),
                        (x86_64.NR_prctl, (PR_GET_PDEATHSIG, scratch + _PDEATH_OFF)),
                        (x86_64.NR_prctl, (PR_GET_SECUREBITS,))], **batch)
    for name, r in zip(("prctl(PR_GET_TID_ADDRESS)", "sigaltstack", "prctl(PR_GET_PDEATHSIG)",
                        "prctl(PR_GET_SECUREBITS)"), res):
        _check(r, name)
    blob = os.pread(mem_fd, _SAS_OFF + 24 - _TID_ADDR_OFF, scratch + _TID_ADDR_OFF)
    clear_tid = struct.unpack_from("<Q", blob, 0)[0]
    pdeath = struct.unpack_from("<i", blob, _PDEATH_OFF - _TID_ADDR_OFF)[0]
    ss_sp, ss_flags, ss_size = struct.unpack_from("<Qi4xQ", blob, _SAS_OFF - _TID_ADDR_OFF)  # stack_t
    return clear_tid, (ss_sp, ss_size, ss_flags), pdeath, res[3]


def unmap_scratch(ctx, pid: int, tid: int, addr: int, size: int) -> None:
    """Undo: a scratch or code mapping must not outlive an interrupted collection."""
    with ctx.injector(pid, tid) as inj:
        inj.syscall(x86_64.NR_munmap, addr, size)


# -- the whole process ----------------------------------------------------------------


def collect_task(ctx, pid: int, tids: list[int], *, was_stopped: bool = False, stop_signo: int = 0,
                 proc_path: str | None = None) -> TaskState:
    """Everything a core image needs about frozen process ``pid`` and its
    live threads ``tids`` (leader first when it lives). Runs in the tracer.

    ``proc_path`` is where to read the process's /proc files (a live
    thread's directory when the leader exited). Raises KernelError when a
    request or an injected call fails, the ProcessError kinds when the
    process vanishes.
    """
    base = proc_path or f"/proc/{pid}"
    st = read_status(f"{base}/status")
    sf = _stat_fields(f"/proc/{pid}/stat")
    mem_fd = os.open(f"{base}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        threads = []
        filters_by_tid: dict[int, list[bytes]] = {}
        for tid in tids:
            tbase = f"/proc/{pid}/task/{tid}"
            tst = read_status(f"{tbase}/status")
            captured, regs = _regs(tid)
            xstate, fx = _xstate(tid)
            rseq, rseq_cs, regs = _rseq(tid, mem_fd, regs)
            policy, prio, nice = _sched(tid)
            mode = int(tst.get("Seccomp", "0"))
            if mode == 2:
                filters_by_tid[tid] = _seccomp_filters(tid)
            threads.append(ThreadState(
                tid=tid, state=tst.get("State", "?")[:1],
                comm=_read(f"{tbase}/comm").rstrip(b"\n").decode(errors="replace"),
                regs=regs, xstate=xstate, xstate_is_fxsave=fx, shstk=_shstk(tid), tls=_tls(tid),
                sigmask=ptrace.getsigmask(tid), pending=_pending(tid, shared=False),
                robust_list=_robust_list(tid), sched_policy=policy, sched_prio=prio, sched_nice=nice,
                rseq=rseq, rseq_cs=rseq_cs, creds=_creds(tst), seccomp_mode=mode, captured_regs=captured))
        shared = _pending(tids[0], shared=True)
        timers = _posix_timers(base)
        sigactions, itimers, subreaper, dumpable, mb, per_thread = _injected(ctx, pid, tids, timers, mem_fd,
                                                                               _sigaction_query(st))
    finally:
        os.close(mem_fd)
    for t in threads:
        t.clear_tid, t.sas, t.pdeath_sig, t.secbits = per_thread[t.tid]
    filters = _dedup_filters(threads, filters_by_tid)
    rlimits = []
    for r in range(RLIM_NLIMITS):
        cur, mx = resource.prlimit(pid, r)
        rlimits.append((cur & _RLIM_INFINITY, mx & _RLIM_INFINITY))
    return TaskState(
        pid=pid, comm=_comm_from_stat(f"/proc/{pid}/stat"),
        task_state=TASK_STOPPED if was_stopped else TASK_ALIVE, stop_signo=stop_signo if was_stopped else 0,
        exit_code=0, flags=int(sf[6]), personality=int(_read(f"{base}/personality"), 16),
        threads=threads, shared_pending=shared, sigactions=sigactions,
        itimers=[(i[0], i[1], i[2], i[3]) for i in itimers], posix_timers=timers, rlimits=rlimits,
        loginuid=_int_file(f"{base}/loginuid"), oom_score_adj=_int_file(f"{base}/oom_score_adj"),
        child_subreaper=subreaper, dumpable=dumpable, thp_disabled=st.get("THP_enabled", "1") == "0",
        membarrier_mask=mb, seccomp_filters=filters, umask=int(st.get("Umask", "0022"), 8),
    )


def _int_file(path: str) -> int | None:
    try:
        return int(_read(path))
    except (OSError, ValueError):
        return None


def _dedup_filters(threads: list[ThreadState], chains: dict[int, list[bytes]]) -> list[tuple[bytes, int | None]]:
    """Filters shared by threads (inherited chains) stored once, oldest
    first, each pointing at the one before it; sets each thread's index."""
    table: list[tuple[bytes, int | None]] = []
    index: dict[tuple[bytes, int | None], int] = {}
    for t in threads:
        chain = chains.get(t.tid)
        if not chain:
            continue
        prev = None
        for prog in reversed(chain):  # oldest first
            key = (prog, prev)
            if key not in index:
                index[key] = len(table)
                table.append(key)
            prev = index[key]
        t.seccomp_filter = prev
    return table
