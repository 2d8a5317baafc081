"""Syscall injection into a frozen target (x86_64)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

from dumper.kernel import x86_64
from dumper.proc.freeze import Freezer
from dumper.proc.inject import Injector

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall injection is x86_64 only")

BLOCKED_READER = """
import os, sys
r, w = os.pipe()
print(w, flush=True)
data = os.read(r, 100)   # blocks in read(2) while we inject
print("got", data.decode(), flush=True)
"""


def test_injected_syscalls_run_as_the_target_and_leave_no_trace():
    p = subprocess.Popen([sys.executable, "-c", BLOCKED_READER], stdout=subprocess.PIPE, text=True)
    try:
        wfd = int(p.stdout.readline())
        time.sleep(0.1)  # let it block in read(2)
        with open(f"/proc/{p.pid}/syscall") as f:
            before_syscall = f.read().split()[0]
        maps_before = open(f"/proc/{p.pid}/maps").read()
        with Freezer(p.pid) as fz:
            with Injector(fz) as inj:
                saved = bytes(inj.saved)
                assert inj.syscall(39) == p.pid  # getpid
                addr = inj.syscall(x86_64.NR_mmap, 0, 4096, 3, 0x22, -1, 0)
                assert addr > 0
                assert inj.syscall(x86_64.NR_munmap, addr, 4096) == 0
                assert inj.syscall(x86_64.NR_munmap, 1, 4096) == -22  # EINVAL comes back as -errno
            from dumper.kernel import ptrace

            after = x86_64.user_regs_struct()
            ptrace.getregs(p.pid, after)
            assert bytes(after) == saved  # registers restored exactly
        assert open(f"/proc/{p.pid}/maps").read() == maps_before  # no scratch mapping left
        time.sleep(0.1)
        with open(f"/proc/{p.pid}/syscall") as f:
            assert f.read().split()[0] == before_syscall  # back in the same read(2)
        # The interrupted read(2) was restarted, not failed with ERESTARTSYS.
        os.write(os.open(f"/proc/{p.pid}/fd/{wfd}", os.O_WRONLY), b"hello")
        assert p.stdout.readline().strip() == "got hello"
    finally:
        p.kill()
        p.wait()


def test_batched_syscalls_give_the_results_of_one_by_one_calls_and_leave_no_trace():
    """Injector.syscalls runs a list of calls as one program from a read+exec
    mapping (1 ptrace round trip instead of 4 per call: a quarter of a
    millisecond of frozen time each). Same results as one call at a time,
    failures as -errno without stopping the rest, registers and mappings as
    found, and the interrupted read(2) restarted afterwards."""
    from dumper.kernel import mman, ptrace

    p = subprocess.Popen([sys.executable, "-c", BLOCKED_READER], stdout=subprocess.PIPE, text=True)
    try:
        wfd = int(p.stdout.readline())
        time.sleep(0.1)
        maps_before = open(f"/proc/{p.pid}/maps").read()
        calls = [(39, ()), (110, ()), (x86_64.NR_munmap, (1, 4096)), (x86_64.NR_prctl, (3,))]  # getpid, getppid
        with Freezer(p.pid) as fz:
            with Injector(fz) as inj:
                saved = bytes(inj.saved)
                one_by_one = inj.syscalls(calls)
                code = inj.syscall(x86_64.NR_mmap, 0, 4096, mman.PROT_READ | mman.PROT_EXEC,
                                   mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0)
                data = inj.syscall(x86_64.NR_mmap, 0, 4096, mman.PROT_READ | mman.PROT_WRITE,
                                   mman.MAP_PRIVATE | mman.MAP_ANONYMOUS, -1, 0)
                assert code > 0 and data > 0
                batched = inj.syscalls(calls, code=code, code_size=4096, results=data)
                # more calls than the code mapping holds: split, same answers
                many = inj.syscalls([(39, ())] * 300, code=code, code_size=4096, results=data)
                assert inj.syscall(x86_64.NR_munmap, code, 4096) == 0
                assert inj.syscall(x86_64.NR_munmap, data, 4096) == 0
            after = x86_64.user_regs_struct()
            ptrace.getregs(p.pid, after)
            assert bytes(after) == saved
        assert one_by_one == batched == [p.pid, os.getpid(), -22, 1]
        assert many == [p.pid] * 300
        assert open(f"/proc/{p.pid}/maps").read() == maps_before
        os.write(os.open(f"/proc/{p.pid}/fd/{wfd}", os.O_WRONLY), b"hello")
        assert p.stdout.readline().strip() == "got hello"
    finally:
        p.kill()
        p.wait()


def _build(tmp_path, name: str) -> str:
    import shutil
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler to build tests/targets/{name}.c")
    exe = tmp_path / name
    subprocess.run([cc, "-O1", "-pthread", "-o", str(exe), str(Path(__file__).parent / "targets" / f"{name}.c")],
                   check=True, capture_output=True)
    return str(exe)


def _state(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f)
    return st["State"].split()[0], st["TracerPid"].strip()


def test_a_thread_running_32_bit_code_is_refused_not_hung(tmp_path):
    """A thread that far-jumped to the compat code segment: the bytes of our
    64-bit ``syscall`` mean something else there and single-stepping them
    faulted for ever (the warden spun, the process stayed frozen: a trial).
    The dump stops with one clear error and the process runs on, untraced."""
    from dumper import DumperError
    from dumper.dump import dump

    p = subprocess.Popen([_build(tmp_path, "compat_thread")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(DumperError, match="32-bit code"):
            dump(p.pid, tmp_path / "ck")
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "ck").exists()
        assert _state(p.pid) in (("R", "0"), ("S", "0"))
    finally:
        p.kill()
        p.wait()


def test_a_fault_in_injected_code_is_an_error_not_a_loop():
    """Injected code that faults (here: run from an unmapped address) stops
    with KernelError; resumed, it would fault again at once, for ever. The
    signal is not delivered: the process runs on as it was."""
    from dumper.errors import KernelError

    p = subprocess.Popen([sys.executable, "-c", BLOCKED_READER], stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        with Freezer(p.pid) as fz, Injector(fz) as inj:
            regs = x86_64.user_regs_struct()
            import ctypes

            ctypes.pointer(regs)[0] = inj.saved
            regs.rip = 0x1000  # never mapped (mmap_min_addr)
            with pytest.raises(KernelError, match="SIGSEGV"):
                inj.run_code(regs, 0x1001)
        time.sleep(0.2)
        assert p.poll() is None and _state(p.pid) == ("S", "0")
    finally:
        p.kill()
        p.wait()
