"""``restore()``: bring a checkpoint back with CRIU's own ``criu restore``.

dumper writes images; CRIU (>= 4.0) is the restore engine. The phases:

1. find CRIU (:func:`~dumper.restore.criu.find_criu`);
2. open the checkpoint and refuse what cannot work: a checkpoint marked not
   restorable (its reasons listed), a pre-dump or memory-only set, missing
   images, a damaged set (``verify``), original pids that are taken now
   (:mod:`dumper.restore.checks`);
3. give CRIU an image directory it can read: the checkpoint itself when its
   whole chain has raw pages (``dump --no-compress``, or CRIU's own dumps),
   else a private temporary copy with raw ``pages-N.img`` for every level
   (:mod:`dumper.restore.rawimages`);
4. run ``criu restore -d`` (detached: the restored tree is not dumper's
   child; it is re-parented to the nearest child subreaper or init when CRIU
   exits), read the restored pid from CRIU's pid file;
5. remove the temporary directory, on success, failure or interruption.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..errors import CriuFailed, ImageError, NotRestorable, RestoreError
from ..image.checkpoint import open_checkpoint
from . import checks
from .criu import LOG_NAME, Criu, find_criu, run_restore
from .rawimages import materialise, needs_materialising, raw_pages_bytes

__all__ = ["restore", "RestoreResult", "find_criu", "Criu"]

_TMP_PREFIX = "dumper-restore-"


@dataclass(slots=True)
class RestoreResult:
    """What a restore did. ``pid``: the restored root task. ``images``:
    where CRIU read from (the checkpoint, or the temporary copy, gone by
    now). Times in seconds: ``prepare_s`` checks and the temporary copy,
    ``criu_s`` the ``criu restore`` run, ``total_s`` both."""

    pid: int
    dir: str
    criu: str
    criu_version: str
    leave_stopped: bool
    shell_job: bool
    materialised: bool
    levels: int
    pages_bytes: int
    prepare_s: float
    criu_s: float
    total_s: float

    def to_json(self) -> dict:
        return asdict(self)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _signals_as_exceptions(stack: ExitStack) -> None:
    """SIGTERM/SIGHUP/SIGINT raise in the main thread, so the temporary
    directory is removed whatever stops us (not possible off the main thread)."""
    if threading.current_thread() is threading.main_thread():
        from ..proc.freeze import raise_on_termination

        stack.enter_context(raise_on_termination((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))


def restore(
    path: str | os.PathLike,
    *,
    leave_stopped: bool = False,
    criu: str | os.PathLike | Criu | None = None,
    criu_args: Sequence[str] = (),
    shell_job: bool | None = None,
    tmp_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    log: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> RestoreResult:
    """Restore checkpoint directory ``path`` with ``criu restore``; return
    once the restored process runs (or, with ``leave_stopped``, is stopped:
    state T, resumed by SIGCONT).

    ``criu``: a path or a :class:`Criu` (default: :func:`find_criu`).
    ``criu_args``: more ``criu restore`` options. ``shell_job``: pass
    ``--shell-job`` (default: when the checkpoint's root task is not a
    session leader). ``tmp_dir``: where the temporary copy of a compressed
    checkpoint goes (default: ``$TMPDIR`` or /tmp; it needs room for the raw
    pages). ``threads``: decompression workers. ``log``: also copy CRIU's
    restore log (``-v4``) to this file. ``timeout``: seconds CRIU may take
    before it and the tasks it created are killed (default: no limit).

    Raises CriuNotFound (no CRIU >= 4.0), NotRestorable (marked not
    restorable, pre-dump, missing or damaged images, pids taken, no space),
    ImageError (not a readable checkpoint), CriuFailed (CRIU failed; the end
    of its log in ``details``).
    """
    t0 = time.monotonic()
    binary = criu if isinstance(criu, Criu) else find_criu(criu)
    with ExitStack() as stack:
        _signals_as_exceptions(stack)
        ck = stack.enter_context(open_checkpoint(path))
        checks.check_unrestorable(ck)
        tree = checks.check_full_dump(ck)
        compressed = needs_materialising(ck)
        # zstd frames are checked while they are decompressed for CRIU, not
        # twice; raw pages go to CRIU as they are, so their crc32s are checked
        # here (CRIU would restore damaged pages without a word).
        checks.check_verified(ck, frames=not compressed)
        checks.check_pids_free(tree)
        if shell_job is None:
            shell_job = checks.needs_shell_job(ck, tree)
        terminal = bool(shell_job) and checks.holds_terminal(ck)
        if terminal and not os.isatty(0):
            raise NotRestorable(
                f"{ck.path} holds a terminal (a job started from a shell): criu restore --shell-job gives the "
                "restored process the terminal on its own stdin, so run dumper restore from a terminal"
            )

        base = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())
        try:
            work = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=base))
        except OSError as err:
            raise NotRestorable(f"cannot create a temporary directory in {base}: {err.strerror}") from err
        stack.callback(shutil.rmtree, work, ignore_errors=True)

        levels, pages_bytes = 1, 0
        images = ck.path
        if compressed:
            need = raw_pages_bytes(ck)
            free = _free_bytes(work)
            if need > free:
                raise NotRestorable(
                    f"the raw pages CRIU reads need {need / 2**20:.0f} MiB in {base}, which has "
                    f"{free / 2**20:.0f} MiB free: name another place with --tmp-dir (or TMPDIR)"
                )
            images = work / "images"
            os.mkdir(images, 0o700)
            try:
                done = materialise(ck, images, threads=threads)
            except ImageError as err:  # a damaged frame, found as it is decompressed
                raise NotRestorable(f"{ck.path} is damaged: `dumper verify` finds the problem listed above",
                                    [str(err)]) from err
            levels, pages_bytes = done.levels, done.pages_bytes
        else:
            levels = len(ck.parent_paths) + 1
        ck.close()

        t1 = time.monotonic()
        try:
            pid = run_restore(binary, images, work, leave_stopped=leave_stopped, shell_job=shell_job,
                              extra=criu_args, timeout=timeout, inherit_stdin=terminal)
        except CriuFailed as err:
            raise _explained(err, tree, bool(shell_job)) from err
        finally:
            if log is not None:
                _keep_log(work / LOG_NAME, Path(log))
        t2 = time.monotonic()
    return RestoreResult(
        pid=pid, dir=str(Path(path).resolve()), criu=binary.path, criu_version=binary.version_text,
        leave_stopped=leave_stopped, shell_job=bool(shell_job), materialised=compressed, levels=levels,
        pages_bytes=pages_bytes, prepare_s=t1 - t0, criu_s=t2 - t1, total_s=time.monotonic() - t0,
    )


_FORK_EXISTS = re.compile(r"Can't fork for (\d+): File exists")


def _explained(err: CriuFailed, tree: list[checks.Task], shell_job: bool) -> CriuFailed:
    """``err`` with the likely cause added where CRIU's log names one."""
    m = next((m for line in err.details if (m := _FORK_EXISTS.search(line))), None)
    if m is None:
        return err
    n = int(m.group(1))
    root = tree[0]
    if any(n == t.pid or n in t.threads for t in tree):
        why = f"pid {n} of the checkpoint was taken by another process meanwhile"
    elif n in (root.pgid, root.sid) and not shell_job:
        kind = {(True, True): "session and process group", (True, False): "session"}.get(
            (n == root.sid, n == root.pgid), "process group")
        why = (f"CRIU recreates the checkpoint's {kind} {n} with a helper task, and pid {n} exists here: "
               "--shell-job makes the restored process join the current session and group instead")
    else:
        why = f"CRIU needed pid {n} for a helper task and it exists here"
    return CriuFailed(f"{err.msg.split(';')[0]}: {why}; the end of its log is above", err.details)


def _keep_log(src: Path, dst: Path) -> None:
    """Copy CRIU's log to ``dst`` through the one safe way dumper creates an
    output file (0600, atomic, an existing file or a symlink there refused)."""
    from ..image.safefs import OutputFile

    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        return  # CRIU did not get as far as its log
    with fin, OutputFile(dst, error=RestoreError) as out:
        shutil.copyfileobj(fin, out.file, 1 << 20)
        out.commit()