"""A target process seen through /proc/PID, with errors translated once."""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import AccessDenied, NoMemoryMap, NoSuchProcess, ProcessError, ZombieProcess
from .maps import Vma, maps_text, parse_maps

__all__ = ["Process", "ProcStat", "PF_KTHREAD", "PF_EXITING"]

PF_EXITING = 0x00000004  # include/linux/sched.h
PF_KTHREAD = 0x00200000


@dataclass(frozen=True, slots=True)
class ProcStat:
    """Fields of /proc/PID/stat that dumper uses (see proc(5) for indices)."""

    pid: int
    comm: str
    state: str  # R S D T t Z X I ...
    ppid: int
    flags: int
    starttime: int  # clock ticks after boot
    num_threads: int
    pgid: int = 0
    sid: int = 0


def _parse_stat(pid: int, data: bytes) -> ProcStat:
    # comm may hold spaces and parentheses: it ends at the *last* ')'.
    lpar = data.index(b"(")
    rpar = data.rindex(b")")
    rest = data[rpar + 2 :].split()
    return ProcStat(
        pid=pid,
        comm=os.fsdecode(data[lpar + 1 : rpar]),
        state=rest[0].decode(),
        ppid=int(rest[1]),
        flags=int(rest[6]),
        num_threads=int(rest[17]),
        starttime=int(rest[19]),
        pgid=int(rest[2]),
        sid=int(rest[3]),
    )


# Files that show the process's mm. The kernel takes the mm from the task the
# directory names, so for a group whose leader exited (``pthread_exit`` in
# main: the leader is a zombie, other threads live) they must be read through
# a live thread's /proc/PID/task/TID/ directory: the leader's show nothing.
MM_FILES = frozenset({"mem", "pagemap", "maps", "smaps", "smaps_rollup", "numa_maps",
                      "clear_refs", "auxv", "environ",
                      # the leader's exit also dropped its files and fs: read them through a live thread
                      "fd", "fdinfo", "mountinfo", "mounts", "cwd", "root", "exe"})


def _thread_state(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


class Process:
    """Read-only view of a process. Methods raise :class:`ProcessError` kinds.

    ``Process(pid)`` checks that the pid exists. It does not freeze anything.

    A thread group whose leader exited while other threads live is a live
    process: :attr:`leader_exited` is True, and the files in
    :data:`MM_FILES` (mem, pagemap, smaps, ...) are opened through a live
    thread, ``/proc/PID/task/TID/NAME`` with TID = :meth:`mm_tid`.
    """

    PROCFS = "/proc"

    def __init__(self, pid: int) -> None:
        if not isinstance(pid, int) or pid <= 0:
            raise NoSuchProcess(pid if isinstance(pid, int) else -1, f"invalid pid {pid!r}")
        self.pid = pid
        self.path = f"{self.PROCFS}/{pid}"
        self._stat0 = self.stat()  # identity for pid-reuse checks

    # -- error translation ---------------------------------------------------

    def _gone_or_zombie(self) -> ProcessError | None:
        """The error that explains a vanished /proc file, or None if alive."""
        try:
            with open(f"{self.path}/stat", "rb") as f:
                st = _parse_stat(self.pid, f.read())
        except OSError:
            return NoSuchProcess(self.pid)
        if st.state in ("Z", "X") and self._live_thread() is None:
            return ZombieProcess(self.pid)
        return None

    def _live_thread(self) -> int | None:
        """The leader if it lives, else the lowest live thread id, else None."""
        if _thread_state(self.pid, self.pid) not in (None, "Z", "X"):
            return self.pid
        try:
            tids = sorted(int(t) for t in os.listdir(f"{self.path}/task"))
        except OSError:
            return None
        for tid in tids:
            if tid != self.pid and _thread_state(self.pid, tid) not in (None, "Z", "X"):
                return tid
        return None

    @property
    def leader_exited(self) -> bool:
        """The group leader is a zombie while other threads still run."""
        return _thread_state(self.pid, self.pid) in ("Z", "X") and self._live_thread() is not None

    def mm_tid(self) -> int:
        """The thread whose /proc/PID/task/TID/ files show the mm: the leader
        while it lives, else a live thread. Raises ZombieProcess/NoSuchProcess."""
        tid = self._live_thread()
        if tid is None:
            raise self._gone_or_zombie() or ZombieProcess(self.pid)
        return tid

    def file_path(self, name: str) -> str:
        """Where to read /proc file ``name``: through a live thread for the
        files in :data:`MM_FILES` when the leader exited, else /proc/PID/NAME."""
        if name.split("/", 1)[0] in MM_FILES:
            tid = self.mm_tid()
            if tid != self.pid:
                return f"{self.path}/task/{tid}/{name}"
        return f"{self.path}/{name}"

    @contextlib.contextmanager
    def translate(self, what: str = "") -> Iterator[None]:
        """Turn an OSError raised inside into the matching ProcessError."""
        try:
            yield
        except (PermissionError,) as err:
            raise AccessDenied(self.pid, f"access denied{': ' + what if what else ''}") from err
        except (FileNotFoundError, ProcessLookupError) as err:
            # A missing per-process file is not a dead process (psutil #2418).
            raise (self._gone_or_zombie() or err) from err
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise (self._gone_or_zombie() or NoSuchProcess(self.pid)) from err
            if err.errno in (errno.EPERM, errno.EACCES):
                raise AccessDenied(self.pid) from err
            raise

    # -- /proc files ---------------------------------------------------------

    def read_file(self, name: str) -> bytes:
        with self.translate(name), open(self.file_path(name), "rb", buffering=0) as f:
            chunks = []
            while chunk := f.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)

    def open(self, name: str, flags: int = os.O_RDONLY) -> int:
        """Open /proc/PID/NAME; returns a raw fd (O_CLOEXEC added)."""
        with self.translate(name):
            return os.open(self.file_path(name), flags | os.O_CLOEXEC)

    def stat(self) -> ProcStat:
        return _parse_stat(self.pid, self.read_file("stat"))

    def status(self) -> dict[str, str]:
        out = {}
        for line in self.read_file("status").splitlines():
            key, _, value = line.partition(b":")
            out[key.decode()] = value.strip().decode(errors="replace")
        return out

    @property
    def name(self) -> str:
        return self._stat0.comm

    def same_process(self) -> bool:
        """False if the pid now names another process (pid reuse)."""
        try:
            return self.stat().starttime == self._stat0.starttime
        except NoSuchProcess:
            return False

    def threads(self) -> list[int]:
        with self.translate("task"):
            return sorted(int(t) for t in os.listdir(f"{self.path}/task"))

    def children(self) -> list[int]:
        """Pids of the children of every thread (/proc/PID/task/TID/children,
        CONFIG_PROC_CHILDREN, Linux 3.5)."""
        out: list[int] = []
        for tid in self.threads():
            try:
                with open(f"{self.path}/task/{tid}/children", "rb") as f:
                    out.extend(int(x) for x in f.read().split())
            except FileNotFoundError:
                continue
        return sorted(set(out))

    def check_has_mm(self) -> ProcStat:
        """Raise ZombieProcess / NoMemoryMap if there is no memory to look at.

        Must pass before any pagemap ioctl: the kernel gives a NULL mm for
        zombies and kernel threads.
        """
        st = self.stat()
        if st.state in ("Z", "X"):
            if self._live_thread() is None:
                raise ZombieProcess(self.pid)
            return st  # the leader exited, other threads live: the mm is theirs
        if st.flags & PF_EXITING:
            raise NoSuchProcess(self.pid, "process is exiting")
        if st.flags & PF_KTHREAD:
            raise NoMemoryMap(self.pid)
        return st

    def vmas(self, smaps: bool = True) -> list[Vma]:
        """The process's VMAs in address order (from smaps unless ``smaps=False``).

        Raises ZombieProcess / NoMemoryMap instead of returning an empty list.
        """
        return self._read_vmas("smaps" if smaps else "maps")[0]

    def vmas_and_maps(self) -> tuple[list[Vma], bytes]:
        """:meth:`vmas` from smaps, and the /proc/PID/maps text of that same
        read (:func:`~dumper.proc.maps.maps_text`), to tell later whether
        the VMAs changed. Raises as :meth:`vmas`."""
        vmas, data = self._read_vmas("smaps")
        return vmas, maps_text(data)

    def _read_vmas(self, name: str) -> tuple[list[Vma], bytes]:
        self.check_has_mm()
        data = self.read_file(name)
        vmas = parse_maps(data)
        if not vmas:
            self.check_has_mm()  # it may have exited meanwhile
            raise NoSuchProcess(self.pid, "process has no memory mappings (exiting?)")
        return vmas, data

    def mm_layout(self, vmas: list[Vma] | None = None) -> dict[str, int]:
        """mm addresses from /proc/PID/stat fields 26-28 and 45-51 (proc(5)).

        Keys are CRIU's ``mm_entry`` names; the kernel shows them as 0 to a
        reader without ptrace access. ``mm_brk`` is the end of ``[heap]``
        (from ``vmas`` when given, else from /proc/PID/maps).
        """
        tid = self.mm_tid()  # a zombie leader's stat shows 0 for the mm fields
        data = self.read_file("stat" if tid == self.pid else f"task/{tid}/stat")
        f = data[data.rindex(b")") + 2 :].split()  # f[0] is field 3 (state)
        def field(n: int) -> int:
            return int(f[n - 3]) if len(f) > n - 3 else 0
        # One [heap] at most, near the start: stop there (64,000 VMAs follow it).
        heap_end = next((v.end for v in (vmas if vmas is not None else self.vmas(smaps=False))
                         if v.path == "[heap]"), 0)
        return {
            "mm_start_code": field(26),
            "mm_end_code": field(27),
            "mm_start_stack": field(28),
            "mm_start_data": field(45),
            "mm_end_data": field(46),
            "mm_start_brk": field(47),
            "mm_brk": heap_end or field(47),
            "mm_arg_start": field(48),
            "mm_arg_end": field(49),
            "mm_env_start": field(50),
            "mm_env_end": field(51),
        }

    def auxv(self) -> list[int]:
        """/proc/PID/auxv as native u64 words (key, value pairs)."""
        import struct

        data = self.read_file("auxv")
        return list(struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]))

    def exe(self) -> str:
        with self.translate("exe"):
            try:
                return os.readlink(f"{self.path}/exe")
            except FileNotFoundError:
                return ""

    def timens_offsets(self) -> dict[str, int]:
        """Clock offsets of the process's time namespace, nanoseconds by
        clock name (``monotonic``, ``boottime``): /proc/PID/timens_offsets
        (kernel/time/namespace.c proc_timens_show_offsets, Linux 5.6); zero
        in the initial time namespace. ProcessError if unreadable."""
        out = {"monotonic": 0, "boottime": 0}
        for line in self.read_file("timens_offsets").splitlines():
            name, sec, nsec = line.split()
            if name.decode() in out:
                out[name.decode()] = int(sec) * 1_000_000_000 + int(nsec)
        return out

    def cmdline(self) -> list[str]:
        return [os.fsdecode(a) for a in self.read_file("cmdline").split(b"\0") if a]

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, name={self.name!r})"
