"""Shared fixtures: real target processes, always reaped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TARGETS = Path(__file__).parent / "targets"

# The suite runs as from a terminal, whatever the runner passed on: dumper
# keeps a termination signal ignored if it was ignored at start (nohup, a
# script's background job), and a CI runner may start pytest so. The tests
# that interrupt dumper, here or in a child (which inherits SIG_IGN but not
# a handler), need the signals delivered; the one test of the ignored case
# ignores them in its own child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, signal.SIG_DFL)

# @pytest.mark.kernel(needs=...) skips, with the reason, where the running
# kernel lacks a feature (the kernel matrix loads the same plugin).
sys.path.insert(0, str(Path(__file__).parent / "kernels"))
pytest_plugins = ["kernel_needs"]


class Target:
    """A spawned layouts.py process; ``regions[name] = (addr, length)``.

    ``new_session``: the target leads a session of its own, as ``criu dump``
    wants of a root task whose session leader would otherwise be outside
    the pid namespace (CI runs the suite in one).
    """

    def __init__(self, layouts: str, tmp_path: Path, *, new_session: bool = False) -> None:
        args = [sys.executable, str(TARGETS / "layouts.py"), layouts, "--file", str(tmp_path / "mapped.bin")]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=new_session)
        self.pid = self.proc.pid
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"target exited during setup (rc={self.proc.wait()})")
        info = json.loads(first)
        self.regions = {k: tuple(v) for k, v in info["regions"].items()}
        self.errors = info["errors"]
        assert self.proc.stdout.readline().strip() == "READY"

    def command(self, line: str) -> list[str]:
        """Send one command; returns the lines it printed before OK."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = []
        while True:
            reply = self.proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"target died on {line!r}")
            reply = reply.strip()
            if reply == "OK":
                return out
            if reply.startswith("ERR"):
                raise RuntimeError(f"target: {line!r}: {reply}")
            out.append(reply)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        _wait_state(self.pid, "T")

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _wait_state(pid: int, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        if data[data.rindex(b")") + 2 :].split()[0].decode() == state:
            return
        time.sleep(0.005)
    raise TimeoutError(f"pid {pid} never reached state {state}")


@pytest.fixture
def spawn_target(tmp_path):
    """``spawn_target("dense,zero", new_session=False)`` -> Target; every
    target is killed and reaped."""
    made: list[Target] = []

    def spawn(layouts: str, *, new_session: bool = False) -> Target:
        t = Target(layouts, tmp_path, new_session=new_session)
        made.append(t)
        return t

    yield spawn
    for t in made:
        t.close()


@pytest.fixture(scope="session")
def swapfile(tmp_path_factory):
    """A temporary swap file, swapped on for the session and removed after.

    Skips (with the reason) where swapon is refused: not root, or a file
    system that cannot hold swap.
    """
    if os.geteuid() != 0:
        pytest.skip("swapon needs root")
    if not shutil.which("mkswap") or not shutil.which("swapon"):
        pytest.skip("mkswap/swapon not installed")
    path = tmp_path_factory.mktemp("swap") / "swapfile"
    with open(path, "wb") as f:
        f.write(b"\0" * (64 << 20))
    os.chmod(path, 0o600)
    r = subprocess.run(["mkswap", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mkswap failed: {r.stderr.strip()}")
    r = subprocess.run(["swapon", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"swapon refused: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["swapoff", str(path)], capture_output=True)
        path.unlink(missing_ok=True)


@pytest.fixture
def zombie():
    """A child that exited and is not reaped yet; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # 60 s: a Python child can take over 5 s to start and exit in a TCG guest.
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            data = f.read()
        if data[data.rindex(b")") + 2 :].split()[0] == b"Z":
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"pid {proc.pid} did not become a zombie within 60 s")
        time.sleep(0.01)
    yield proc.pid
    proc.wait()
