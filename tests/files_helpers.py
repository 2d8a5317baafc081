"""Real targets for tests/test_files.py: tests/targets/fds_target.c, built
once per session with the system C compiler, run in a directory of its own.

A target prints its descriptor numbers on a pipe of ours, then waits. Its
stdin is /dev/null and its stdout/stderr go to DIR/out, so that nothing it
holds leads back to the test process (a restored copy must not depend on us).
Every target is killed and reaped by the fixture that made it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

TARGETS = Path(__file__).parent / "targets"

DATA_SIZE, DATA_POS = 20000, 12345
GHOST_SIZE, GHOST_POS = 5000, 100
SPARSE_SIZE, SPARSE_OFF = 45056, 40960
PIPE_BYTES, PIPE_SIZE = 3000, 128 * 1024
FIFO_BYTES = 1500
EFD_COUNTER = 42
LOG_POS = 70  # "line 0\n" .. "line 9\n"


def pattern(n: int, mul: int, add: int) -> bytes:
    return bytes((i * mul + add) & 0xFF for i in range(n))


def letters(n: int, base: str) -> bytes:
    return bytes(ord(base) + i % 26 for i in range(n))


def build_target(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        import pytest

        pytest.skip("no C compiler (cc/gcc) to build tests/targets/fds_target.c")
    exe = out_dir / "fds_target"
    subprocess.run(
        [cc, "-O1", "-Wall", "-Werror", "-o", str(exe), str(TARGETS / "fds_target.c")],
        check=True,
        capture_output=True,
    )
    return exe


def wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise RuntimeError(f"pid {pid} is gone") from None
        if data[data.rindex(b")") + 2 :].split()[0].decode() in states:
            return
        time.sleep(0.005)
    raise TimeoutError(f"pid {pid} never reached state {states}")


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` no longer exists (not even as a zombie)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still exists")
        time.sleep(0.005)


class FdsTarget:
    """A running fds_target: ``fds[name]`` is a descriptor number, ``dir``
    its working directory."""

    def __init__(self, exe: Path, workdir: Path, *args: str) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        out = open(workdir / "out", "wb")
        try:
            self.proc = subprocess.Popen(
                [str(exe), str(workdir), str(w), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=[w],
                start_new_session=True,  # its own session: CRIU restores it without --shell-job
            )
        finally:
            os.close(w)
            out.close()
        self.pid = self.proc.pid
        try:
            with os.fdopen(r, "rb") as f:
                line = f.read().decode()  # to EOF: the target has closed its end, the fd is gone
        except BaseException:
            self.close()
            raise
        if not line:
            self.close()
            raise RuntimeError(f"fds_target exited during set-up: {(workdir / 'out').read_text()}")
        self.fds = {k: int(v) for k, v in (item.split("=") for item in line.split())}

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        wait_state(self.pid, "T")

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def report(self, pid: int | None = None, timeout: float = 10.0) -> dict[str, str]:
        """Ask ``pid`` (default the target) to check what it holds; returns
        its report (see fds_target.c)."""
        pid = pid or self.pid
        path = self.dir / f"report-{pid}"
        path.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)
        return read_report(path, timeout)

    def close(self) -> None:
        """Kill and reap the target, and its --fork child first: killed while
        the parent (which ignores SIGCHLD) lives, the kernel reaps it; killed
        after, it would be re-parented to PID 1, which here never reaps."""
        child = self.fds.get("child") if hasattr(self, "fds") else None
        if child is not None and self.proc.poll() is None:
            try:
                os.kill(child, signal.SIGKILL)
                wait_gone(child)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def read_report(path: Path, timeout: float = 10.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no report at {path}")
        time.sleep(0.01)
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out
