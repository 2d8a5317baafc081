"""Run one command under another Linux kernel: qemu (TCG), a tiny busybox
initramfs, and this machine's root file system shared read-only over 9p.

    python tests/kernels/guest.py --kernel /boot/vmlinuz-6.1.0-57-amd64 -- uname -r

The guest sees the host's ``/`` through virtio-9p under a tmpfs overlay (so
it can write; nothing reaches the host), runs the command as root in the
directory it was started from, with the interpreter paths it was given, and
powers off. The command's output and exit status come back through a second,
writable 9p share; the runner's exit status is the command's. The guest gets
the host's transparent_hugepage policy (Debian builds "always", these
machines run "madvise") and 1 vCPU (2 gave rare early-boot oopses under TCG).

Failures, each with its own exception and message (and CLI exit status):

- qemu missing or unable to start          QemuUnavailable  (125)
- kernel image or its modules missing      KernelMissing    (125)
- guest died before the command started    BootFailed       (125), after one retry
- guest died while the command ran         GuestCrashed     (125)
- no result within the timeout             GuestTimeout     (124, like timeout(1))

Why our own runner and not virtme-ng (PyPI ``virtme-ng``, ``vng --run``):
measured on these machines (shared/reference/guest-kernels.md) a vng boot
costs 16-19 s under TCG, this one ~4 s, because it boots the uncompressed
vmlinux through qemu's PVH entry (no in-guest decompression) and its
initramfs holds only busybox and the four modules a 9p root needs. It also
tells "died before the command started" (a boot failure, retried once) from
"died while it ran" by a marker the init writes, which vng does not expose,
and it needs nothing beyond Debian's qemu-system-x86, busybox-static and kmod.
It is one file and runs from a clean clone without installing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GuestError",
    "QemuUnavailable",
    "KernelMissing",
    "BootFailed",
    "GuestCrashed",
    "GuestTimeout",
    "GuestResult",
    "find_qemu",
    "probe_qemu",
    "kernel_release",
    "run_in_guest",
]

QEMU = "qemu-system-x86_64"
# Modules a 9p root needs (built in on some kernels: modprobe says "builtin").
MODULES = ("9p", "9pnet_virtio", "virtio_pci", "overlay")
ROOT_TAG, OUT_TAG = "hostroot", "kguestout"
STARTED, RC, OUTPUT = "started", "rc", "output"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dumper-kernels"


class GuestError(Exception):
    """Base of the runner's failures; ``str()`` is a complete message."""

    exit_status = 125


class QemuUnavailable(GuestError):
    pass


class KernelMissing(GuestError):
    pass


class BootFailed(GuestError):
    pass


class GuestCrashed(GuestError):
    pass


class GuestTimeout(GuestError):
    exit_status = 124


@dataclass
class GuestResult:
    kernel: str  # image path
    release: str  # its `uname -r`
    returncode: int
    output: str  # the command's stdout and stderr, interleaved
    console: str  # the guest's serial console (kernel messages, init)
    wall_s: float  # qemu start to exit, last attempt
    boot_s: float  # qemu start to the command's start, last attempt
    attempts: int = 1
    notes: list[str] = field(default_factory=list)


# --- host tools ------------------------------------------------------------


def find_qemu(qemu: str | None = None) -> str:
    """Absolute path of the qemu binary, or QemuUnavailable."""
    name = qemu or os.environ.get("KGUEST_QEMU") or QEMU
    path = shutil.which(name)
    if path is None:
        raise QemuUnavailable(f"{name} not found: install Debian's qemu-system-x86 "
                              f"(tests/kernels/setup-host.sh does)")
    return path


def probe_qemu(qemu: str | None = None, timeout: float = 30) -> str:
    """Start qemu with no guest at all and quit at once: can it run here?

    Returns the qemu path, raises QemuUnavailable with qemu's own words.
    """
    path = find_qemu(qemu)
    try:
        r = subprocess.run([path, "-M", "none", "-accel", "tcg", "-display", "none", "-nodefaults",
                            "-no-user-config", "-S", "-monitor", "stdio"],
                           input="quit\n", capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise QemuUnavailable(f"{path} cannot run: {err}") from err
    if r.returncode != 0:
        raise QemuUnavailable(f"{path} cannot run (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    return path


def _static_busybox() -> str:
    for cand in (os.environ.get("KGUEST_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if cand and os.path.isfile(cand) and not _elf_interp(Path(cand)):
            return cand
    raise GuestError("no static busybox found: install Debian's busybox-static")


def _elf_interp(path: Path) -> bool:
    """True if the ELF file asks for a dynamic loader (PT_INTERP)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return True  # not a 64-bit ELF: treat as unusable
        phoff, = struct.unpack_from("<Q", hdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == 3 for i in range(phnum))


# --- kernel image ------------------------------------------------------------


def kernel_release(image: str | os.PathLike) -> str:
    """``uname -r`` of a bzImage, read from its setup header (boot protocol
    2.00+: the version string pointed to by ``kernel_version`` at 0x20e)."""
    with open(image, "rb") as f:
        data = f.read(0x10000)
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        raise KernelMissing(f"{image} is not an x86 bzImage")
    off, = struct.unpack_from("<H", data, 0x20E)
    text = data[off + 0x200 : off + 0x400].split(b"\0")[0].decode(errors="replace")
    return text.split()[0]


def _extract_vmlinux(image: Path) -> Path | None:
    """The uncompressed ELF inside a bzImage, cached; None if not extractable.

    Booting it through qemu's PVH entry skips the in-guest decompression
    (~3 s for an xz kernel under TCG). Only kernels with CONFIG_PVH carry the
    XEN_ELFNOTE_PHYS32_ENTRY note qemu needs; others boot as a bzImage.
    """
    st = image.stat()
    key = hashlib.sha256(f"{image.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = CACHE / f"vmlinux-{key}"
    if out.exists():
        return out
    data = image.read_bytes()
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            import lzma

            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard

            elf = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            import zlib

            elf = zlib.decompressobj(wbits=31).decompress(payload)
        else:
            return None
    except Exception:  # a format we cannot read: boot the bzImage instead
        return None
    if not elf.startswith(b"\x7fELF") or not _has_pvh_note(elf):
        return None
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".{os.getpid()}")
        tmp.write_bytes(elf)
        os.replace(tmp, out)
    except OSError:  # no cache: boot the bzImage
        return None
    return out


def _has_pvh_note(elf: bytes) -> bool:
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# --- initramfs ---------------------------------------------------------------


def _modules(release: str) -> list[Path]:
    """The .ko files (dependencies first) a 9p root needs on ``release``."""
    moddir = Path("/lib/modules") / release
    if not (moddir / "modules.dep").exists():
        raise KernelMissing(f"modules of {release} not installed ({moddir}/modules.dep missing): "
                            f"install its linux-image package")
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    if not os.access(modprobe, os.X_OK):
        raise GuestError("modprobe not found: install Debian's kmod")
    out: list[Path] = []
    for mod in MODULES:
        r = subprocess.run([modprobe, "-S", release, "--show-depends", mod], capture_output=True, text=True)
        if r.returncode:
            raise KernelMissing(f"{release} has no module {mod}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod" and Path(parts[1]) not in out:
                out.append(Path(parts[1]))
    return out


def _ko_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.suffix == ".gz":
        import gzip

        return gzip.decompress(data)
    return data


INIT = r"""#!/bin/busybox sh
# Guest /init (generated by tests/kernels/guest.py).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "kguest: FAILED: $*"; poweroff -f; }
for m in $(cat /modules.list); do
    insmod "/modules/$m" || fail "insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 @ROOT_TAG@ /lower \
    || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the overlay root"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
mkdir -p "$R@OUT@"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 @OUT_TAG@ "$R@OUT@" \
    || fail "cannot mount the result share"
ip link set lo up 2>/dev/null
hostname kguest
echo "kguest: starting the command"
echo "$(cat /proc/uptime)" > "$R@OUT@/@STARTED@"
chroot $R /bin/sh "@OUT@/cmd.sh" > "$R@OUT@/@OUTPUT@" 2>&1 < /dev/null
echo $? > "$R@OUT@/@RC@"
sync
echo "kguest: the command exited"
poweroff -f
"""


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc archive of ``(name, mode, data, rdev)`` entries."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        nm = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(nm), 0)
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields) + nm)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for i, (name, mode, data, rdev) in enumerate(entries, 1):
        add(name, mode, data, rdev, i)
    add("TRAILER!!!", 0, b"", 0, 0)
    return bytes(out)


def build_initramfs(release: str, outdir: str, dest: Path) -> None:
    """Write the initramfs for ``release`` whose init reports into ``outdir``."""
    mods = _modules(release)
    d, f, x = 0o040755, 0o100644, 0o100755
    entries: list[tuple[str, int, bytes, int]] = [
        (n, d, b"", 0) for n in ("bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot")
    ]
    entries.append(("dev/console", 0o020600, b"", (5 << 8) | 1))
    entries.append(("bin/busybox", x, Path(_static_busybox()).read_bytes(), 0))
    names = []
    for m in mods:
        name = m.name.split(".ko")[0] + ".ko"
        names.append(name)
        entries.append((f"modules/{name}", f, _ko_bytes(m), 0))
    entries.append(("modules.list", f, "\n".join(names).encode() + b"\n", 0))
    init = INIT
    for k, v in {"@ROOT_TAG@": ROOT_TAG, "@OUT_TAG@": OUT_TAG, "@OUT@": outdir, "@STARTED@": STARTED,
                 "@RC@": RC, "@OUTPUT@": OUTPUT}.items():
        init = init.replace(k, v)
    entries.append(("init", x, init.encode(), 0))
    dest.write_bytes(_cpio(entries))


# --- running -----------------------------------------------------------------

DEFAULT_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "CI", "PYTHONHASHSEED", "HYPOTHESIS_PROFILE")


def _command_script(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    lines = ["# generated by tests/kernels/guest.py", "export HOME=/root"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    lines += [f"cd {shlex.quote(cwd)} || exit 126", "exec " + " ".join(shlex.quote(a) for a in argv)]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _panic_line(console: str) -> str:
    for line in console.splitlines():
        if any(s in line for s in ("Kernel panic", "BUG:", "Oops", "kguest: FAILED")):
            return line.strip()
    tail = [line for line in console.splitlines() if line.strip()][-3:]
    return " | ".join(tail) or "no console output"


def run_in_guest(
    kernel: str | os.PathLike,
    argv: list[str],
    *,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    memory: str = "2G",
    qemu: str | None = None,
    outdir: str | os.PathLike | None = None,
    boot_retries: int = 1,
    on_output=None,
    kernel_args: str = "",
) -> GuestResult:
    """Boot ``kernel``, run ``argv`` in it, return its exit status and output.

    ``cwd`` defaults to the current directory (it must exist on the host);
    ``env`` defaults to a few variables of ours (PATH, LANG, CI...).
    ``outdir`` (a host directory, shared writable with the guest at the same
    path) keeps what the command writes there; a temporary one otherwise.
    ``on_output(text)`` is called with new output while the guest runs.
    ``kernel_args`` are appended to the kernel command line (later wins).
    ``timeout`` covers the boot retry too.
    """
    image = Path(kernel)
    if not image.is_file():
        raise KernelMissing(f"kernel image {image} not found: install it (tests/kernels/setup-host.sh)")
    qemu_path = find_qemu(qemu)
    release = kernel_release(image)
    cwd = os.path.abspath(cwd or os.getcwd())
    if env is None:
        env = {k: os.environ[k] for k in DEFAULT_ENV if k in os.environ}
    own_tmp = None
    if outdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="kguest-")
        outdir = own_tmp.name
    out = Path(outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="kguest-boot-") as boot:
            initrd = Path(boot) / "initrd.cpio"
            build_initramfs(release, str(out), initrd)
            vmlinux = _extract_vmlinux(image)
            (out / "cmd.sh").write_text(_command_script(list(argv), cwd, env))
            notes = [] if vmlinux else ["booted the bzImage: no PVH-capable vmlinux could be extracted"]
            attempts = 0
            deadline = time.monotonic() + timeout  # for all attempts together
            while True:
                attempts += 1
                for name in (STARTED, RC, OUTPUT):
                    (out / name).unlink(missing_ok=True)
                console = Path(boot) / f"console-{attempts}.log"
                wall, boot_s = _boot_once(qemu_path, vmlinux or image, initrd, out, console, memory,
                                          deadline, timeout, on_output, kernel_args, release)
                text = _read(console)
                if not (out / STARTED).exists():
                    why = _panic_line(text)
                    if attempts <= boot_retries:
                        notes.append(f"attempt {attempts}: the guest died before the command started ({why}); retried")
                        continue
                    raise BootFailed(f"{release}: the guest died before the command started, {attempts} times; "
                                     f"last console line: {why}\n--- console tail ---\n{text[-3000:]}")
                output = _read(out / OUTPUT)
                rc_text = _read(out / RC).strip()
                if not rc_text:
                    raise GuestCrashed(f"{release}: the guest died while the command ran ({_panic_line(text)})\n"
                                       f"--- output tail ---\n{output[-3000:]}\n--- console tail ---\n{text[-3000:]}")
                return GuestResult(kernel=str(image), release=release, returncode=int(rc_text), output=output,
                                   console=text, wall_s=wall, boot_s=boot_s, attempts=attempts, notes=notes)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


def _host_thp_mode() -> str | None:
    """The host's transparent_hugepage mode ("always", "madvise", "never")."""
    m = re.search(r"\[(\w+)\]", _read(Path("/sys/kernel/mm/transparent_hugepage/enabled")))
    return m[1] if m else None


def _boot_once(qemu_path, kernel, initrd, out, console, memory, deadline, timeout, on_output,
               kernel_args, release) -> tuple[float, float]:
    # oops=panic: a kernel oops ends the guest at once (GuestCrashed, with
    # the oops line) rather than leaving a half-dead command to time out.
    append = ("console=ttyS0 rdinit=/init panic=-1 oops=panic quiet loglevel=4 mitigations=off "
              "random.trust_cpu=on tsc=reliable")
    # Debian builds THP "always"; give the guest the host's policy so a test
    # target touching scattered pages of a huge reservation gets 4 KiB pages
    # there as here (1000 touched pages would otherwise be 2 GiB of THPs).
    thp = _host_thp_mode()
    if thp:
        append += f" transparent_hugepage={thp}"
    append += " " + kernel_args
    cmd = [
        # -cpu max: numpy's wheels need x86-64-v2 (SSE4.2, POPCNT); qemu64 lacks it.
        qemu_path, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", memory,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-virtfs", f"local,path=/,mount_tag={ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag={OUT_TAG},security_model=none,multidevs=remap",
    ]
    t0 = time.monotonic()
    boot_s = None
    seen = 0
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as err:
        raise QemuUnavailable(f"{qemu_path} cannot start: {err}") from err
    try:
        while True:
            try:
                proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            if boot_s is None and (out / STARTED).exists():
                boot_s = time.monotonic() - t0
            if on_output is not None and boot_s is not None:
                text = _read(out / OUTPUT)
                if len(text) > seen:
                    on_output(text[seen:])
                    seen = len(text)
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                started = (out / STARTED).exists()
                raise GuestTimeout(
                    f"{release}: no result after {timeout:.0f} s "
                    f"({'the command was running' if started else 'the command never started'}); qemu killed\n"
                    f"--- output tail ---\n{_read(out / OUTPUT)[-3000:]}\n"
                    f"--- console tail ---\n{_read(console)[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        qemu_msgs = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    wall = time.monotonic() - t0
    if boot_s is None and (out / STARTED).exists():
        boot_s = wall
    if on_output is not None:
        text = _read(out / OUTPUT)
        if len(text) > seen:
            on_output(text[seen:])
    if proc.returncode != 0 and not (out / STARTED).exists() and "qemu" in qemu_msgs.lower():
        raise QemuUnavailable(f"{qemu_path} failed (exit {proc.returncode}): {qemu_msgs.strip()[-1000:]}")
    return wall, boot_s or 0.0


# --- CLI ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True, help="kernel image (bzImage), e.g. /boot/vmlinuz-6.1.0-57-amd64")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before the guest is killed (exit 124)")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--qemu", default=None, help=f"qemu binary (default {QEMU}, or $KGUEST_QEMU)")
    ap.add_argument("--outdir", default=None, help="host directory the guest may write (same path inside)")
    ap.add_argument("--append", default="", help="more kernel command line arguments")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given (put it after --)")
    try:
        res = run_in_guest(args.kernel, command, timeout=args.timeout, memory=args.memory, qemu=args.qemu,
                           outdir=args.outdir, kernel_args=args.append, on_output=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    except GuestError as err:
        print(f"guest: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_status
    for note in res.notes:
        print(f"guest: {note}", file=sys.stderr)
    print(f"guest: {res.release}: exit {res.returncode} (boot {res.boot_s:.1f} s, total {res.wall_s:.1f} s)",
          file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
