"""The guest runner's own behaviour: exit status, output, and each bad case.

Most tests drive it with a fake qemu (fake_qemu.py) so they take no boot;
two boot a real kernel where qemu and one of the matrix kernels are here.
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest

import guest
import matrix

FAKE = Path(__file__).with_name("fake_qemu.py")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """run_in_guest(argv, fate=...) against the fake qemu and a fake bzImage."""
    image = tmp_path / "vmlinuz-0.0-fake"
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x300)
    data[0x500:0x516] = b"0.0-fake (fake@build)"
    image.write_bytes(bytes(data))
    qemu = tmp_path / "qemu"
    qemu.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    qemu.chmod(0o755)
    # No modules to pack for a fake kernel.
    monkeypatch.setattr(guest, "build_initramfs", lambda release, outdir, dest: dest.write_bytes(b""))

    def run(argv, fate="ok", **kw):
        monkeypatch.setenv("FAKE_QEMU", fate)
        monkeypatch.setenv("FAKE_QEMU_STATE", str(tmp_path / "booted-once"))
        return guest.run_in_guest(image, argv, qemu=str(qemu), **kw)

    run.image, run.qemu = image, qemu
    return run


def test_exit_status_output_and_cwd_come_back(fake, tmp_path):
    res = fake(["sh", "-c", "echo out; echo err >&2; pwd; exit 7"], cwd=tmp_path)
    assert res.returncode == 7
    assert res.output.split() == ["out", "err", str(tmp_path)]
    assert res.release == "0.0-fake" and res.attempts == 1


def test_outdir_is_shared_with_the_command(fake, tmp_path):
    out = tmp_path / "out"
    res = fake(["sh", "-c", f"echo hello > {out}/note"], outdir=out)
    assert res.returncode == 0 and (out / "note").read_text() == "hello\n"


def test_a_panic_before_the_command_is_retried_once(fake):
    res = fake(["true"], fate="panic-once")
    assert res.returncode == 0 and res.attempts == 2
    assert any("died before the command started" in n and "Kernel panic" in n for n in res.notes)


def test_two_panics_before_the_command_fail_the_boot(fake):
    with pytest.raises(guest.BootFailed, match=r"died before the command started, 2 times.*Kernel panic"):
        fake(["true"], fate="panic")


def test_dying_while_the_command_runs_is_not_retried(fake):
    with pytest.raises(guest.GuestCrashed, match="died while the command ran.*BUG: kernel NULL pointer"):
        fake(["true"], fate="crash")


def test_a_hung_guest_times_out(fake):
    with pytest.raises(guest.GuestTimeout, match="no result after 2 s.*the command never started"):
        fake(["true"], fate="hang", timeout=2)


def test_qemu_failing_to_start_is_named(fake):
    with pytest.raises(guest.QemuUnavailable, match="cannot initialize fsdev"):
        fake(["true"], fate="broken")


def test_missing_qemu_and_kernel(fake, tmp_path):
    with pytest.raises(guest.QemuUnavailable, match="not found: install Debian's qemu-system-x86"):
        guest.run_in_guest(fake.image, ["true"], qemu=str(tmp_path / "no-qemu"))
    with pytest.raises(guest.KernelMissing, match="not found"):
        guest.run_in_guest(tmp_path / "vmlinuz-nope", ["true"], qemu=str(fake.qemu))
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    with pytest.raises(guest.KernelMissing, match="not an x86 bzImage"):
        guest.run_in_guest(tmp_path / "junk", ["true"], qemu=str(fake.qemu))


def test_cli_exit_statuses(fake, monkeypatch, capsys):
    base = ["--kernel", str(fake.image), "--qemu", str(fake.qemu)]
    monkeypatch.setenv("FAKE_QEMU", "ok")
    assert guest.main(base + ["--", "sh", "-c", "echo hi; exit 3"]) == 3
    assert "hi" in capsys.readouterr().out
    monkeypatch.setenv("FAKE_QEMU", "hang")
    assert guest.main(base + ["--timeout", "1", "--", "true"]) == 124
    assert "GuestTimeout" in capsys.readouterr().err
    monkeypatch.setenv("FAKE_QEMU", "panic")
    assert guest.main(base + ["--", "true"]) == 125
    assert "BootFailed" in capsys.readouterr().err
    assert guest.main(["--kernel", "/nonexistent/vmlinuz", "--", "true"]) == 125


def test_matrix_refuses_a_missing_kernel(capsys):
    assert matrix.main(["--kernel", "/nonexistent/vmlinuz-6.1.0", "--no-host"]) == 1
    assert "kernel image /nonexistent/vmlinuz-6.1.0 not found" in capsys.readouterr().err


# --- real boots ------------------------------------------------------------


def real_kernel() -> str:
    if shutil.which(guest.QEMU) is None:
        pytest.skip(f"{guest.QEMU} not installed (tests/kernels/setup-host.sh installs it)")
    try:
        return matrix.default_kernels()[-1]
    except guest.KernelMissing as err:
        pytest.skip(str(err))


@pytest.mark.slow
def test_real_boot_returns_status_output_and_release(tmp_path):
    image = real_kernel()
    res = guest.run_in_guest(image, ["sh", "-c", "uname -r; pwd; test -w /tmp && echo writable; exit 5"],
                             cwd=tmp_path, timeout=300)
    assert res.returncode == 5
    assert res.output.split() == [guest.kernel_release(image), str(tmp_path), "writable"]


@pytest.mark.slow
def test_real_panic_before_the_command(tmp_path):
    image = real_kernel()
    with pytest.raises(guest.BootFailed, match="2 times"):
        guest.run_in_guest(image, ["true"], kernel_args="rdinit=/no-such-init", timeout=300)


def test_matrix_without_a_runnable_qemu(tmp_path, monkeypatch, capsys):
    image = tmp_path / "vmlinuz-6.1.0-fake"
    image.write_bytes(b"")
    monkeypatch.setenv("KGUEST_QEMU", str(tmp_path / "no-qemu"))
    args = ["--kernel", str(image), "--no-host", "--summary", str(tmp_path / "summary.json")]
    assert matrix.main(args) == 1
    assert "no-qemu not found" in capsys.readouterr().err
    # CI: skipped, loudly, and said again in the closing lines.
    assert matrix.main(args + ["--skip-without-qemu"]) == 0
    out = capsys.readouterr().out
    assert "KERNEL MATRIX SKIPPED: qemu cannot run" in out and "were NOT tested" in out
    assert "GUESTS SKIPPED" in out.splitlines()[-2]
