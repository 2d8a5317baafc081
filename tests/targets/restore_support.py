"""Helpers of the restore tests: build the C targets, run targets, dump them
with CRIU, and kill and reap what ``criu restore`` brings back.

Restored processes are not our children: CRIU forks them and, with
``--restore-detached``, leaves them to the nearest child subreaper or init
when it exits. Not every init reaps (this machine's pid 1 does not), and a
zombie holds its pid, which a later restore of the same checkpoint needs:
:func:`become_subreaper` makes the test process their new parent, so
:func:`kill_restored` can reap them (pidfd to signal and wait, then
waitpid).
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (source, gcc flags)
C_TARGETS = {
    "counter": ("restore_counter.c", ["-O2"]),
    "threads": ("restore_threads.c", ["-O2", "-pthread"]),
    "asan": ("restore_asan.c", ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]),
    "unrestorable": ("restore_unrestorable.c", ["-O2"]),
    "dense": ("restore_dense.c", ["-O2"]),
}
PYTHON_TARGET = HERE / "restore_python.py"
PR_SET_CHILD_SUBREAPER = 36


def build_targets(dest: Path) -> dict[str, Path]:
    """Compile every C target into ``dest``; ``{name: binary}``. RuntimeError
    with gcc's message on failure; FileNotFoundError without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is not installed")
    out = {}
    for name, (src, flags) in C_TARGETS.items():
        binary = dest / f"restore_{name}"
        r = subprocess.run([gcc, *flags, "-Wall", "-o", str(binary), str(HERE / src)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"gcc {src}: {r.stderr.strip()[-2000:]}")
        out[name] = binary
    return out


def become_subreaper(on: bool = True) -> None:
    """Make this process (or, with ``on`` false, stop it being) the child
    subreaper of its descendants (prctl(2) PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def wait_for(pred, timeout: float = 20.0, what: str = "condition", interval: float = 0.02):
    """Poll ``pred()`` until it returns something truthy; return it.
    TimeoutError naming ``what`` (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (R, S, T, Z...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def thread_states(pid: int) -> dict[int, str]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        out[int(t)] = data[data.rindex(b")") + 2 :].split()[0].decode()
    return out


def kill_restored(pid: int, timeout: float = 20.0) -> int | None:
    """SIGKILL a restored process through a pidfd, wait for it to die and
    reap it if it is our child (we are a subreaper); returns its wait status,
    None if it was already gone or is not ours to reap."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def reap_zombie_children() -> list[int]:
    """Reap every exited child (restored tasks a failed restore killed)."""
    got = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return got
        if pid == 0:
            return got
        got.append(pid)


def subreaper_for_module():
    """A module fixture's body (``pytest.fixture(scope="module",
    autouse=True)(subreaper_for_module)``): this process is the child
    subreaper while the module's tests run (restored tasks, and workers of a
    killed tree, become its children: this machine's init does not reap),
    and every exited child is reaped at the end."""
    become_subreaper()
    yield
    become_subreaper(False)
    reap_zombie_children()


class Target:
    """A target started as ``*command READY_FD LOG *args`` in its own
    session (CRIU wants the root task to lead its session unless
    --shell-job), stdin /dev/null, stdout and stderr appended to
    ``NAME.out``; waits for READY on the pipe, which the target closes."""

    def __init__(self, command: list[str], workdir: Path, name: str, *, args: tuple[str, ...] = (),
                 timeout: float = 30.0) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.out = workdir / f"{name}.out"
        r, w = os.pipe()
        try:
            with open(self.out, "ab") as out:
                self.proc = subprocess.Popen(
                    [*command, str(w), str(self.log), *args], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=out, pass_fds=(w,), start_new_session=True,
                )
            os.close(w)
            w = -1
            ready, _, _ = select.select([r], [], [], timeout)
            got = os.read(r, 64) if ready else b""
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        self.pid = self.proc.pid
        if got != b"READY\n":
            self.close()
            raise RuntimeError(f"target {name} did not become ready: {self.output()[-2000:]!r}")

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def reap(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def counters(text: str, name: str) -> list[int]:
    """Values N of the ``"NAME N"`` lines of a log text, in order."""
    return [int(m) for m in re.findall(rf"^{re.escape(name)} (\d+)\b", text, re.MULTILINE)]


def python_target_argv() -> list[str]:
    return [sys.executable, str(PYTHON_TARGET)]


def criu_dump(criu: str, pid: int, dest: Path, logdir: Path, *args: str) -> None:
    """``criu dump -t PID -D DEST`` (log outside DEST); RuntimeError with
    the log's errors on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    log = logdir / f"criu-dump-{dest.name}.log"
    r = subprocess.run([criu, "dump", "-t", str(pid), "-D", str(dest), "-o", str(log), "-v4", *args],
                       capture_output=True, text=True)
    if r.returncode:
        errs = [ln for ln in log.read_text(errors="replace").splitlines() if "Error" in ln]
        raise RuntimeError(f"criu dump failed ({r.returncode}): {errs[-5:]} {r.stderr[-500:]}")


# --- image sets made from a CRIU dump, with dumper's writer


def _create_in(d: Path):

    return lambda name: _open_new(d / name)


def _copy_other_images(src: Path, dst: Path, skip) -> None:
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.is_symlink() and not skip(p.name):
            shutil.copyfile(p, dst / p.name)


def _is_memory_image(name: str) -> bool:
    return name.startswith(("pagemap-", "pages-"))


def to_zstd(src: Path, dst: Path, *, frame_pages: int = 16) -> None:
    """Copy CRIU image set ``src`` to ``dst``, with each process's pagemap
    and pages written again by dumper's PagesWriter as ``pages-N.zst.img``
    (small frames, so a restore decompresses many)."""
    from dumper.image.checkpoint import open_checkpoint
    from dumper.image.writer import PagesWriter

    _copy_other_images(src, dst, _is_memory_image)
    with open_checkpoint(src) as ck:
        for pid, proc in ck.processes.items():
            with PagesWriter(_create_in(dst), pid, proc.head.pages_id, page_size=proc.page_size,
                             compress=True, merge=False, frame_pages=frame_pages, threads=2) as pw:
                for e in proc.entries:
                    if e.present:
                        pw.add_present(e.vaddr, proc.pages.read_pages(e.pages_off, e.nr_pages))
                    elif e.in_parent:
                        pw.add_parent(e.vaddr, e.nr_pages)


def make_chain(src: Path, root: Path) -> Path:
    """A three-level incremental chain ``root/1 <- root/2 <- root/3`` from
    the CRIU dump ``src``; returns ``root/3``, whose pages equal ``src``'s.

    Entry k of each process is PE_PRESENT in level ``k % 3 + 1`` and
    PE_PARENT in the levels above it: level 3 (the full image set, zstd)
    holds a third of the pages, level 2 (raw pages-N.img, as CRIU writes)
    another third and PE_PARENT for the rest, level 1 (zstd) the first
    third. Levels 1 and 2 hold only inventory, mm, pagemap and pages, as a
    pre-dump does; ``parent`` links are relative (``../1``)."""
    from dumper.image.checkpoint import open_checkpoint
    from dumper.image.writer import PagesWriter

    levels = [root / "1", root / "2", root / "3"]
    with open_checkpoint(src) as ck:
        for n, d in enumerate(levels):
            if n < 2:
                _copy_other_images(src, d, lambda name: not name.startswith(("inventory", "mm-")))
            else:
                _copy_other_images(src, d, _is_memory_image)
            if n:
                os.symlink(f"../{n}", d / "parent")
            for pid, proc in ck.processes.items():
                with PagesWriter(_create_in(d), pid, proc.head.pages_id, page_size=proc.page_size,
                                 compress=(n != 1), merge=False, frame_pages=8, threads=2) as pw:
                    for k, e in enumerate(proc.entries):
                        if not e.present:
                            continue
                        home = k % 3
                        if home == n:
                            pw.add_present(e.vaddr, proc.pages.read_pages(e.pages_off, e.nr_pages))
                        elif home < n:
                            pw.add_parent(e.vaddr, e.nr_pages)
    return levels[-1]


# --- rseq: the bytes the kernel itself rewrites in a restored process

# struct rseq (include/uapi/linux/rseq.h): the kernel writes cpu_id_start and
# cpu_id (offsets 0..8), node_id and mm_cid (20..28) whenever the thread
# returns to user space on some CPU; a restored thread runs wherever the
# scheduler puts it, so these may differ from the checkpoint by nature.
RSEQ_KERNEL_FIELDS = ((0, 8), (20, 28))
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F  # Linux 5.13


class _RseqConfig(ctypes.Structure):
    _fields_ = [("rseq_abi_pointer", ctypes.c_uint64), ("rseq_abi_size", ctypes.c_uint32),
                ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def rseq_areas(pid: int) -> dict[int, int]:
    """``{tid: rseq area address}`` of every thread of ``pid`` that
    registered one, read with PTRACE_GET_RSEQ_CONFIGURATION while dumper's
    Freezer holds the process (and gives it back as it found it)."""
    from dumper.proc.freeze import Freezer

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    out = {}
    with Freezer(pid) as fz:
        for tid in fz.threads:
            cfg = _RseqConfig()
            if libc.ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(cfg), ctypes.byref(cfg)) < 0:
                raise OSError(ctypes.get_errno(), f"PTRACE_GET_RSEQ_CONFIGURATION {tid}")
            if cfg.rseq_abi_pointer:
                out[tid] = cfg.rseq_abi_pointer
    return out


def rseq_kernel_bytes(areas) -> set[int]:
    """Addresses of the kernel-written bytes of these rseq areas."""
    return {a + i for a in areas for s, e in RSEQ_KERNEL_FIELDS for i in range(s, e)}


def _open_new(path):
    """A new 0600 file for a test's PagesWriter."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return open(fd, "wb")
