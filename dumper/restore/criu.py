"""Finding CRIU and running ``criu restore``.

dumper is a dumper only: CRIU (>= 4.0) is the restore engine. Where the
binary comes from, first match wins (:func:`find_criu`):

1. an explicit path (``dumper restore --criu PATH``);
2. ``$DUMPER_CRIU``;
3. ``build/criu-4.2/criu/criu`` in the source tree dumper runs from, as
   ``.ci/build-criu`` builds it;
4. ``criu`` on ``$PATH``.

A path given by 1 or 2 is used or refused, never silently replaced by a later
one. CRIU older than 4.0 is refused: Debian 12's 3.17 stops at start-up on
Linux >= 6.13 ("vdso: Unexpected rt vDSO area bounds", ../shared/criu/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import CriuFailed, CriuNotFound, RestoreError

__all__ = [
    "Criu",
    "find_criu",
    "source_tree_criu",
    "criu_version",
    "run_restore",
    "log_tail",
    "MIN_VERSION",
    "ENV_VAR",
    "HOW_TO_GET",
    "LOG_NAME",
    "PIDFILE_NAME",
]

MIN_VERSION = (4, 0)
ENV_VAR = "DUMPER_CRIU"
HOW_TO_GET = (
    "build CRIU 4.2 with .ci/build-criu in dumper's source tree (it needs the public v4.2 source tarball in "
    f"../shared/criu/), or name a CRIU >= 4.0 with --criu PATH or {ENV_VAR}=PATH"
)
LOG_NAME = "restore.log"
PIDFILE_NAME = "restore.pid"
# Where .ci/build-criu leaves the binary, relative to the source tree.
_BUILT = Path("build") / "criu-4.2" / "criu" / "criu"
_VERSION_RE = re.compile(rb"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)
_VERSION_TIMEOUT = 30.0
# CRIU options dumper restore sets itself; passing them again would break it.
_OWN_OPTIONS = {
    "-D": "the image directory", "--images-dir": "the image directory",
    "-W": "the work directory", "--work-dir": "the work directory",
    "-o": "the log file", "--log-file": "the log file",
    "--pidfile": "the pid file",
    "-d": "detached restore", "--restore-detached": "detached restore", "--daemon": "detached restore",
}


@dataclass(frozen=True)
class Criu:
    """A usable CRIU binary: ``path`` (absolute), ``version`` (e.g. ``(4, 2)``),
    ``source`` (how it was found: ``"--criu"``, ``"DUMPER_CRIU"``, ``"source
    tree"``, ``"PATH"``)."""

    path: str
    version: tuple[int, ...]
    source: str

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def source_tree_criu() -> Path | None:
    """``build/criu-4.2/criu/criu`` of the source tree this dumper package
    lives in (an editable install), if that file exists."""
    tree = Path(__file__).resolve().parents[2]
    path = tree / _BUILT
    return path if path.exists() else None


def criu_version(path: str, what: str) -> tuple[int, ...]:
    """Run ``PATH --version`` and parse ``Version: X.Y[.Z]``. CriuNotFound
    (naming ``what``, how the path was given) if it does not run or says
    something else."""
    try:
        r = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=_VERSION_TIMEOUT)
    except OSError as err:
        raise CriuNotFound(f"{what} {path} cannot be run ({err.strerror}): {HOW_TO_GET}") from err
    except subprocess.TimeoutExpired as err:
        raise CriuNotFound(f"{what} {path}: --version did not answer in {_VERSION_TIMEOUT:.0f} s") from err
    m = _VERSION_RE.search(r.stdout)
    if r.returncode != 0 or m is None:
        said = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
        raise CriuNotFound(
            f"{what} {path} is not a working CRIU (`--version` exited {r.returncode}"
            + (f": {said[0][:200]}" if said else "") + f"): {HOW_TO_GET}"
        )
    return tuple(int(g) for g in m.groups() if g is not None)


def _check(path: str, source: str) -> Criu:
    what = {"--criu": "--criu", "DUMPER_CRIU": ENV_VAR, "source tree": "the source tree's CRIU",
            "PATH": "criu on PATH:"}[source]
    if not os.path.exists(path):
        raise CriuNotFound(f"{what} {path}: no such file: {HOW_TO_GET}")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CriuNotFound(f"{what} {path} is not an executable file: {HOW_TO_GET}")
    version = criu_version(path, what)
    if version < MIN_VERSION:
        shown = ".".join(map(str, version))
        raise CriuNotFound(
            f"{what} {path} is CRIU {shown}, older than {'.'.join(map(str, MIN_VERSION))} (CRIU < 4.0 fails "
            f"on Linux >= 6.13): {HOW_TO_GET}"
        )
    return Criu(os.path.abspath(path), version, source)


def find_criu(explicit: str | os.PathLike | None = None, *, environ=None) -> Criu:
    """The CRIU to run (see the module docstring for the order). Runs
    ``criu --version`` once. CriuNotFound with one line saying what was
    tried, what is wrong and how to get a CRIU >= 4.0."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return _check(os.fspath(explicit), "--criu")
    if env.get(ENV_VAR):
        return _check(env[ENV_VAR], "DUMPER_CRIU")
    built = source_tree_criu()
    if built is not None:
        return _check(str(built), "source tree")
    on_path = shutil.which("criu", path=env.get("PATH", os.defpath))
    if on_path:
        return _check(on_path, "PATH")
    raise CriuNotFound(f"no CRIU found (tried --criu, {ENV_VAR}, build/criu-4.2/criu/criu, PATH): {HOW_TO_GET}")


def check_extra_options(args: Sequence[str]) -> None:
    """Refuse CRIU options that ``dumper restore`` sets itself."""
    for a in args:
        name = a.split("=", 1)[0]
        if name in _OWN_OPTIONS:
            raise RestoreError(f"CRIU option {name} ({_OWN_OPTIONS[name]}) is set by dumper restore; leave it out")


def log_tail(path: Path, lines: int = 12) -> list[str]:
    """The lines of a CRIU log worth showing after a failure: its errors and
    warnings (the last ``lines`` of them, without the harmless RLIMIT_NOFILE
    complaint of an unprivileged-rlimit system), else its last lines."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (4 << 20)))  # the end is what matters; bound the read
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    all_lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in all_lines if re.search(r"\b(Error|Warn)\b", ln) and "RLIMIT_NOFILE" not in ln]
    return (errs or all_lines)[-lines:]


def run_restore(
    criu: Criu,
    images_dir: Path,
    work_dir: Path,
    *,
    leave_stopped: bool = False,
    shell_job: bool = False,
    extra: Sequence[str] = (),
    verbosity: int = 4,
    timeout: float | None = None,
    inherit_stdin: bool = False,
) -> int:
    """Run ``criu restore -D images_dir -W work_dir -d`` and return the pid
    of the restored root task (from ``--pidfile``).

    The log (``-v4``) and the pid file go to ``work_dir``, never into the
    image directory. ``leave_stopped`` adds ``--leave-stopped``,
    ``shell_job`` ``--shell-job``; ``extra`` is passed on after them.
    ``inherit_stdin``: CRIU gets our stdin (the terminal a --shell-job
    restore hands on), else /dev/null.
    CriuFailed with the end of the log when CRIU exits non-zero or writes no
    pid, or when it has not finished after ``timeout`` seconds (then CRIU and
    every task it had created are killed: a restored task that stops itself
    before CRIU's last handshake, e.g. on a pending SIGSTOP in its image,
    leaves CRIU waiting forever). KeyboardInterrupt/SystemExit during the run: CRIU blocks signals
    while it restores (criu/cr-restore.c criu_signals_setup), so it is given
    SIGINT and waited for; the interruption is re-raised once it is gone.
    """
    check_extra_options(extra)
    log = work_dir / LOG_NAME
    pidfile = work_dir / PIDFILE_NAME
    cmd = [criu.path, "restore", "-D", str(images_dir), "-W", str(work_dir), "-d",
           "-o", str(log), f"-v{verbosity}", "--pidfile", str(pidfile)]
    if leave_stopped:
        cmd.append("--leave-stopped")
    if shell_job and "--shell-job" not in extra and "-j" not in extra:
        cmd.append("--shell-job")
    cmd += list(extra)
    out_path = work_dir / "criu.out"
    # Output to a file, not a pipe: a pipe could be inherited and held open.
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(cmd, stdin=None if inherit_stdin else subprocess.DEVNULL, stdout=fd, stderr=fd,
                                cwd=work_dir)
    except OSError as err:
        raise CriuFailed(f"cannot run {criu.path}: {err.strerror}") from err
    finally:
        os.close(fd)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.wait()
        raise CriuFailed(f"criu restore did not finish in {timeout:g} s: stopped it and the tasks it had "
                         "created; the end of its log is above", log_tail(log)) from None
    except BaseException:
        _stop(proc)
        raise
    if rc != 0:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        tail = log_tail(log)
        if not tail:
            tail = log_tail(out_path)
        raise CriuFailed(f"criu restore failed ({how}); the end of its log is above", tail)
    try:
        text = pidfile.read_text().strip()
        return int(text)
    except (OSError, ValueError) as err:
        raise CriuFailed(f"criu restore succeeded but wrote no pid to {pidfile}", log_tail(log)) from err


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (``/proc/PID/task/TID/children``)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        try:
            tids = os.listdir(f"/proc/{cur}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{cur}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` (CRIU) and the tasks under it (those it restores)."""
    for victim in (*_descendants(pid), pid):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGINT, then SIGKILL after ``grace`` seconds; always reaped."""
    try:
        proc.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
