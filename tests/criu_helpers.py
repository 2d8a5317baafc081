"""Running CRIU 4.2 from tests: dump, decode its images, restore.

``criu`` is $DUMPER_CRIU or the project's build
(build/criu-4.2/criu/criu under the main checkout); tests skip with the
reason when neither exists.

A restore runs ``criu restore -d`` from a small helper process that made
itself a child subreaper (PR_SET_CHILD_SUBREAPER): the restored tree is
re-parented to it when criu exits, and it kills and reaps that tree when
the test is done. PID 1 on these machines does not reap orphans, so a
restored process killed without a reaper would stay a zombie holding its
pid.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from dumper.image import format as fmt

_DEFAULT_CRIU = [
    Path(__file__).resolve().parents[1] / "build/criu-4.2/criu/criu",
    Path("/work/main/build/criu-4.2/criu/criu"),
]


def criu_binary() -> str:
    """Path of a runnable CRIU, or skip the test saying how to get one."""
    env = os.environ.get("DUMPER_CRIU")
    candidates = [Path(env)] if env else _DEFAULT_CRIU
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    pytest.skip(f"CRIU not built (looked for {', '.join(map(str, candidates))}; set DUMPER_CRIU)")


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def criu_dump(pid: int, dest: Path, *args: str) -> Path:
    """``criu dump --leave-running -t PID -D dest``; returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "dump.log"
    r = subprocess.run(
        [criu_binary(), "dump", "--leave-running", "-t", str(pid), "-D", str(dest), "-o", "dump.log", "-v4", *args],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise AssertionError(f"criu dump failed ({r.returncode}): {r.stderr}\n{_log_tail(log)}")
    return dest


def read_entries(path: Path) -> list[tuple[object, bytes | None]]:
    """Every entry of an image file (ours or CRIU's) with the raw bytes
    that follow it, if its type has any."""
    with open(path, "rb") as f:
        name = fmt.read_magic(f, path)
        entries = list(fmt.iter_image(f, path, name, f.tell()))
        return [(e.msg, fmt.read_extra(f, e.extra, path) if e.extra is not None else None) for e in entries]


def read_msgs(path: Path) -> list:
    return [m for m, _ in read_entries(path)]


_REAPER = textwrap.dedent(
    """
    import ctypes, os, signal, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0):  # PR_SET_CHILD_SUBREAPER
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    stdin_path = sys.argv[1]
    cmd = sys.argv[2:]
    stdin = subprocess.DEVNULL
    if stdin_path != "-":  # a terminal: make it ours, as a shell's terminal is its jobs'
        import fcntl, termios
        os.setsid()
        stdin = os.open(stdin_path, os.O_RDWR)
        fcntl.ioctl(stdin, termios.TIOCSCTTY, 0)
    r = subprocess.run(cmd, stdin=stdin)
    print(r.returncode, flush=True)
    sys.stdin.readline()  # the test is done with the restored tree: kill all we adopted
    me = os.getpid()
    while True:
        kids = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if int(data[data.rindex(b")") + 2 :].split()[1]) == me:
                    kids.add(int(name))
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            pass
    """
)


class Restored:
    """A tree restored by ``criu restore -d``; ``pid`` is its root."""

    def __init__(self, pid: int, image_dir: Path) -> None:
        self.pid = pid
        self.image_dir = image_dir


@contextlib.contextmanager
def criu_restore(image_dir: Path, *args: str, stdin: str | None = None) -> Iterator[Restored]:
    """Restore ``image_dir`` detached (``-d``), yield it, then kill and reap
    the restored tree. The dumped process must be gone (and reaped): CRIU
    restores it with its pid. ``stdin``: a terminal opened as criu's stdin
    and made the controlling terminal of its session, as when criu runs
    from a shell (``--shell-job`` gives it to the restored job).
    AssertionError with the log on failure."""
    pidfile = image_dir / "restored.pid"
    pidfile.unlink(missing_ok=True)
    cmd = [criu_binary(), "restore", "-d", "-D", str(image_dir), "-o", "restore.log", "-v4",
           "--pidfile", str(pidfile), *args]
    helper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, stdin or "-", *cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        rc = helper.stdout.readline().strip()
        if rc != "0":
            raise AssertionError(f"criu restore failed ({rc}):\n{_log_tail(image_dir / 'restore.log', 25)}")
        yield Restored(int(pidfile.read_text().split()[0]), image_dir)
    finally:
        try:
            helper.stdin.write("done\n")
            helper.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            helper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
