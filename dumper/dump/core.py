"""Collected process state -> CRIU's per-task images: core-TID.img,
ids-PID.img, pstree.img, seccomp.img, timens-0.img and the inventory's
CRIU fields, filled the way `criu dump` 4.2 fills them (criu/cr-dump.c
dump_task_core_all / dump_thread_core, criu/arch/x86/crtools.c
save_task_regs, criu/namespaces.c, criu/image.c write_img_inventory).
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
import uuid
from dataclasses import dataclass

from ..image.pb import core_pb2, inventory_pb2, pstree_pb2, seccomp_pb2, timens_pb2
from ..kernel import x86_64
from ..kernel.cpuid import cpuid
from ..proc.task import TASK_DEAD, TASK_STOPPED, TaskState, ThreadState

__all__ = ["core_entry", "zombie_core_entry", "ids_entry", "NamespaceIds", "KobjIds", "pstree_entry", "seccomp_entry",
           "timens_entry", "fill_inventory", "xsave_layout", "XSAVE_FIELDS"]

_MTYPE_X86_64 = 1  # core_entry.march
_REGS_NATIVE = 1  # user_x86_regs_mode
_NS_KINDS = ("pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup")  # CRIU's ns_desc order

# XSAVE components CRIU saves: feature bit -> (user_x86_xsave_entry field, bytes per word)
XSAVE_FIELDS = {
    x86_64.XFEATURE_YMM: ("ymmh_space", 4),
    x86_64.XFEATURE_BNDREGS: ("bndreg_state", 8),
    x86_64.XFEATURE_BNDCSR: ("bndcsr_state", 8),
    x86_64.XFEATURE_OPMASK: ("opmask_reg", 8),
    x86_64.XFEATURE_ZMM_Hi256: ("zmm_upper", 8),
    x86_64.XFEATURE_Hi16_ZMM: ("hi16_zmm", 8),
    x86_64.XFEATURE_PKRU: ("pkru", 4),
}


@dataclass(frozen=True, slots=True)
class XsaveLayout:
    """What compel (compel/arch/x86/src/lib/cpu.c) derives from CPUID and
    CRIU's restore checks again: whether OSXSAVE is on, the user xfeatures,
    each component's (offset, size) in the standard XSAVE format, and
    whether the CPU has shadow stacks (then a cet entry is always saved)."""

    osxsave: bool
    features: dict[int, tuple[int, int]]
    shstk: bool


_layout: XsaveLayout | None = None


def xsave_layout() -> XsaveLayout:
    global _layout
    if _layout is None:
        _, _, ecx1, _ = cpuid(1)
        _, _, ecx7, _ = cpuid(7, 0)
        feats: dict[int, tuple[int, int]] = {}
        osxsave = bool(ecx1 & (1 << 27))
        if ecx1 & (1 << 26):  # XSAVE
            eax, _, _, edx = cpuid(0xD, 0)
            mask = eax | edx << 32
            for bit in XSAVE_FIELDS:
                if mask >> bit & 1:
                    size, offset, _, _ = cpuid(0xD, bit)
                    feats[bit] = (offset, size)
        _layout = XsaveLayout(osxsave, feats, bool(ecx7 & (1 << 7)))
    return _layout


def _words(data: bytes, word: int) -> list[int]:
    return list(struct.unpack(f"<{len(data) // word}{'I' if word == 4 else 'Q'}", data))


def _fill_fpregs(fp, t: ThreadState, layout: XsaveLayout) -> None:
    fx = x86_64.user_fpregs_struct.from_buffer_copy(t.xstate[:512])
    fp.cwd, fp.swd, fp.twd, fp.fop = fx.cwd, fx.swd, fx.ftw, fx.fop
    fp.rip, fp.rdp, fp.mxcsr, fp.mxcsr_mask = fx.rip, fx.rdp, fx.mxcsr, fx.mxcr_mask
    fp.st_space.extend(fx.st_space)
    fp.xmm_space.extend(fx.xmm_space)
    if not layout.osxsave:
        return
    xs = fp.xsave
    buf = t.xstate if not t.xstate_is_fxsave else t.xstate + bytes(16)
    xs.xstate_bv = struct.unpack_from("<Q", buf, x86_64.XSAVE_HDR_OFFSET)[0] if len(buf) >= 520 else 3
    for bit, (offset, size) in layout.features.items():
        name, word = XSAVE_FIELDS[bit]
        chunk = buf[offset:offset + size]
        getattr(xs, name).extend(_words(chunk.ljust(size, b"\0"), word))
    if layout.shstk:
        cet, ssp = t.shstk or (0, 0)
        xs.cet.cet, xs.cet.ssp = cet, ssp


def _fill_gpregs(g, raw: bytes) -> None:
    r = x86_64.user_regs_struct.from_buffer_copy(raw)
    for name in ("r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8"):
        setattr(g, name, getattr(r, name))
    g.bp, g.bx, g.ax, g.cx, g.dx, g.si, g.di = r.rbp, r.rbx, r.rax, r.rcx, r.rdx, r.rsi, r.rdi
    g.orig_ax, g.ip, g.cs, g.flags, g.sp, g.ss = r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss
    g.fs_base, g.gs_base, g.ds, g.es, g.fs, g.gs = r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs
    g.mode = _REGS_NATIVE


def _fill_thread_info(ti, t: ThreadState, layout: XsaveLayout) -> None:
    _fill_gpregs(ti.gpregs, t.regs)
    if t.captured_regs:  # ours (field 32): what an ELF core shows
        _fill_gpregs(ti.captured_gpregs, t.captured_regs)
    ti.clear_tid_addr = t.clear_tid
    _fill_fpregs(ti.fpregs, t, layout)
    for raw in t.tls:
        d = x86_64.user_desc.from_buffer_copy(raw)
        ti.tls.add(entry_number=d.entry_number, base_addr=d.base_addr, limit=d.limit,
                   seg_32bit=bool(d.seg_32bit), contents_h=bool(d.contents & 2), contents_l=bool(d.contents & 1),
                   read_exec_only=bool(d.read_exec_only), limit_in_pages=bool(d.limit_in_pages),
                   seg_not_present=bool(d.seg_not_present), usable=bool(d.useable))


def _fill_thread_core(tc, t: ThreadState, *, leader: bool) -> None:
    tc.futex_rla, tc.futex_rla_len = t.robust_list
    tc.sched_nice, tc.sched_policy = t.sched_nice, t.sched_policy
    if t.sched_prio is not None:
        tc.sched_prio = t.sched_prio
    if not leader:  # the leader's mask is the task's (tc.blk_sigset), as CRIU writes it
        tc.blk_sigset = t.sigmask
    tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags = t.sas
    if t.pdeath_sig:
        tc.pdeath_sig = t.pdeath_sig
    tc.signals_p.SetInParent()
    for info in t.pending:
        tc.signals_p.signals.add(siginfo=info)
    c = t.creds
    cr = tc.creds
    for k in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid"):
        setattr(cr, k, c[k])
    for k in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
        getattr(cr, k).extend(c[k])
    cr.groups.extend(c["groups"])
    cr.secbits = t.secbits
    if c["no_new_privs"]:
        cr.no_new_privs = c["no_new_privs"]
    if t.seccomp_mode:
        tc.seccomp_mode = t.seccomp_mode
        if t.seccomp_filter is not None:
            tc.seccomp_filter = t.seccomp_filter
    tc.comm = t.comm
    if t.rseq is not None:
        tc.rseq_entry.rseq_abi_pointer, tc.rseq_entry.rseq_abi_size, tc.rseq_entry.signature = t.rseq
        if t.rseq_cs is not None:
            tc.rseq_entry.rseq_cs_pointer = t.rseq_cs
    tc.cg_set = 1  # CRIU's: the root cgroup set (no cgroup.img is written for one set)


def _fill_task_core(tc, task: TaskState) -> None:
    tc.task_state = task.task_state
    tc.exit_code = task.exit_code
    tc.personality = task.personality
    tc.flags = task.flags
    tc.blk_sigset = task.threads[0].sigmask
    tc.comm = task.comm
    for name, (isec, iusec, vsec, vusec) in zip(("real", "virt", "prof"), task.itimers):
        it = getattr(tc.timers, name)
        it.isec, it.iusec, it.vsec, it.vusec = isec, iusec, vsec, vusec
    for pt in task.posix_timers:
        e = tc.timers.posix.add(it_id=pt.it_id, clock_id=pt.clock_id, si_signo=pt.si_signo,
                                it_sigev_notify=pt.sigev_notify, sival_ptr=pt.sival_ptr, overrun=pt.overrun,
                                isec=pt.isec, insec=pt.insec, vsec=pt.vsec, vnsec=pt.vnsec)
        if pt.notify_thread_id is not None:
            e.notify_thread_id = pt.notify_thread_id
    for cur, mx in task.rlimits:
        tc.rlimits.rlimits.add(cur=cur, max=mx)
    tc.signals_s.SetInParent()
    for info in task.shared_pending:
        tc.signals_s.signals.add(siginfo=info)
    if task.loginuid is not None:
        tc.loginuid = task.loginuid
    if task.oom_score_adj is not None:
        tc.oom_score_adj = task.oom_score_adj
    # One entry per signal 1..64 but SIGKILL and SIGSTOP, in order (criu/cr-dump.c dump_sigact).
    for sig, (handler, flags, restorer, mask) in enumerate(task.sigactions, 1):
        if sig not in (9, 19):
            tc.sigactions.add(sigaction=handler, flags=flags, restorer=restorer, mask=mask, compat_sigaction=False)
    tc.child_subreaper = task.child_subreaper
    if task.task_state == TASK_STOPPED:
        tc.stop_signo = task.stop_signo
    if task.membarrier_mask:
        tc.membarrier_registration_mask = task.membarrier_mask


def core_entry(task: TaskState, thread: ThreadState, *, leader: bool) -> core_pb2.core_entry:
    """The core_entry of one thread; the leader's also carries the task's
    ``tc`` (task_core_entry) and ``ids``... as CRIU writes them."""
    layout = xsave_layout()
    c = core_pb2.core_entry(mtype=_MTYPE_X86_64)
    _fill_thread_info(c.thread_info, thread, layout)
    _fill_thread_core(c.thread_core, thread, leader=leader)
    if leader:
        _fill_task_core(c.tc, task)
    return c


def zombie_core_entry(pid: int) -> core_pb2.core_entry:
    """A zombie's core: the task part only, TASK_DEAD with its exit code
    (criu/cr-dump.c dump_one_zombie; /proc/PID/stat field 52 is the wait status)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
    rest = data[data.rindex(b")") + 2:].split()
    c = core_pb2.core_entry(mtype=_MTYPE_X86_64)
    tc = c.tc
    tc.task_state, tc.exit_code, tc.comm = TASK_DEAD, int(rest[49]) if len(rest) > 49 else 0, comm
    tc.personality, tc.flags, tc.blk_sigset = 0, 0, 0
    return c


# -- ids and namespaces ------------------------------------------------------------


class NamespaceIds:
    """CRIU's namespace ids: numbered from 1 in the order they are met,
    the dumper's own first (they become the inventory's root_ids), each
    namespace kind in CRIU's order."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, int], int] = {}

    def of(self, pid: int | str) -> dict[str, int]:
        out = {}
        for kind in _NS_KINDS:
            try:
                ino = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
            except FileNotFoundError:
                continue
            out[kind] = self._ids.setdefault((kind, ino), len(self._ids) + 1)
        return out


class KobjIds:
    """vm, files, fs and sighand ids: one number per kernel object, shared
    between processes that share it (kcmp(2), as CRIU's kid trees); the
    dumper itself holds 1 of each."""

    KINDS = ("vm", "files", "fs", "sighand")
    _KCMP = {"vm": 1, "files": 2, "fs": 3, "sighand": 4}  # KCMP_* (include/uapi/linux/kcmp.h)

    def __init__(self) -> None:
        self._seen: dict[str, list[tuple[int, int]]] = {k: [] for k in self.KINDS}  # (pid, id)

    def of(self, pid: int) -> dict[str, int]:
        out = {}
        for kind in self.KINDS:
            seen = self._seen[kind]
            found = next((i for p, i in seen if _kcmp_same(p, pid, self._KCMP[kind])), None)
            if found is None:
                found = len(seen) + 2  # 1 is the dumper's
                seen.append((pid, found))
            out[kind] = found
        return out


def _kcmp_same(pid1: int, pid2: int, kind: int) -> bool:
    from ..kernel.libc import libc

    NR_kcmp = 312
    return libc.syscall(ctypes.c_long(NR_kcmp), ctypes.c_long(pid1), ctypes.c_long(pid2),
                        ctypes.c_long(kind), ctypes.c_long(0), ctypes.c_long(0)) == 0


def ids_entry(kobj: dict[str, int], ns: dict[str, int]) -> core_pb2.task_kobj_ids_entry:
    e = core_pb2.task_kobj_ids_entry(vm_id=kobj["vm"], files_id=kobj["files"], fs_id=kobj["fs"],
                                     sighand_id=kobj["sighand"])
    for kind, nid in ns.items():
        setattr(e, f"{kind}_ns_id", nid)
    return e


def pstree_entry(pid: int, ppid: int, pgid: int, sid: int, threads) -> pstree_pb2.pstree_entry:
    return pstree_pb2.pstree_entry(pid=pid, ppid=ppid, pgid=pgid, sid=sid, threads=list(threads))


def seccomp_entry(tasks: list[TaskState]) -> seccomp_pb2.seccomp_entry:
    """seccomp.img: every filter of every task, one table; thread_core's
    seccomp_filter indexes it (criu/seccomp.c)."""
    e = seccomp_pb2.seccomp_entry()
    for task in tasks:
        base = len(e.seccomp_filters)
        for prog, prev in task.seccomp_filters:
            f = e.seccomp_filters.add(filter=prog)
            if prev is not None:
                f.prev = base + prev
        if base:
            for t in task.threads:
                if t.seccomp_filter is not None:
                    t.seccomp_filter += base
    return e


def timens_entry(offsets: dict[str, int] | None = None) -> timens_pb2.timens_entry:
    """The clocks a time namespace is restored against (criu/timens.c
    dump_time_ns reads them inside the namespace: the host's clocks plus
    the namespace's ``offsets``, nanoseconds by clock name)."""
    e = timens_pb2.timens_entry()
    offsets = offsets or {}
    for name, clk in (("monotonic", time.CLOCK_MONOTONIC), ("boottime", time.CLOCK_BOOTTIME)):
        ns = time.clock_gettime_ns(clk) + offsets.get(name, 0)
        ts = getattr(e, name)
        ts.tv_sec, ts.tv_nsec = divmod(ns, 1_000_000_000)
    return e


def fill_inventory(inv: inventory_pb2.inventory_entry, root_ids: core_pb2.task_kobj_ids_entry) -> None:
    """CRIU's fields of inventory.img as `criu dump` writes them."""
    inv.fdinfo_per_id = True
    inv.root_ids.CopyFrom(root_ids)
    inv.ns_per_id = True
    inv.root_cg_set = 1
    inv.lsmtype = 0  # NO_LSM
    inv.network_lock_method = 0
    inv.plugins_entry.SetInParent()
    inv.dump_criu_run_id = str(uuid.uuid4())
