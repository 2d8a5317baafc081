#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 that plays one guest fate, for the
runner's own tests (tests/kernels/test_guest_runner.py).

``FAKE_QEMU`` picks the fate: ``ok`` (run the command on the host as the
guest init would), ``panic`` (kernel panic before the command), ``panic-once``
(a panic on the first boot only, counted in ``FAKE_QEMU_STATE``), ``hang``,
``crash`` (dies while the command runs) or ``broken`` (qemu itself fails).
Started with ``-M none`` (the runner's probe) it just exits 0.
"""

import os
import subprocess
import sys
import time


def arg(name: str) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else None


def main() -> int:
    if arg("-M") == "none":
        return 0
    fate = os.environ.get("FAKE_QEMU", "ok")
    console = arg("-serial").removeprefix("file:")
    out = next(v.split("path=")[1].split(",")[0] for i, v in enumerate(sys.argv)
               if sys.argv[i - 1] == "-virtfs" and "mount_tag=kguestout" in v)
    with open(console, "w") as f:
        f.write("[    0.000000] Linux version 0.0-fake\n")
    if fate == "panic-once":
        state = os.environ["FAKE_QEMU_STATE"]
        fate = "ok" if os.path.exists(state) else "panic"
        open(state, "a").close()
    if fate == "broken":
        print("qemu-system-x86_64: -virtfs: cannot initialize fsdev", file=sys.stderr)
        return 1
    if fate == "panic":
        with open(console, "a") as f:
            f.write("[    1.000000] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
        return 0  # -no-reboot: a panicking guest resets and qemu exits 0
    if fate == "hang":
        time.sleep(3600)
        return 0
    with open(os.path.join(out, "started"), "w") as f:
        f.write("1.0 1.0\n")
    if fate == "crash":
        with open(console, "a") as f:
            f.write("[    2.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n")
        return 0
    with open(os.path.join(out, "output"), "w") as f:
        rc = subprocess.run(["/bin/sh", os.path.join(out, "cmd.sh")], stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    with open(os.path.join(out, "rc"), "w") as f:
        f.write(f"{rc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
