"""Re-make the checked-in checkpoints tests/data/tiny-zst and tiny-raw.

Run as root from the repository root (needs gcc, x86_64)::

    .venv/bin/python tests/data/make_tiny.py

It builds tiny.c (a libc-free process with one 4-page anonymous mapping of
known content), starts it with an empty environment, dumps it twice with
dumper.dump.dump (zstd pages, then CRIU's raw pages) and replaces the two
directories. Only do this on purpose: these images stand for the format
version they were written with (tests/test_format_compat.py), so a new
format version gets new directories next to the old ones, not a rewrite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from dumper.dump import dump  # noqa: E402

CFLAGS = [
    "-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
    "-fno-tree-loop-distribute-patterns", "-fno-asynchronous-unwind-tables",
]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dumper-tiny-") as tmp:
        exe = Path(tmp) / "tiny"
        subprocess.run(["gcc", *CFLAGS, "-o", str(exe), str(HERE / "tiny.c")], check=True)
        proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={}, cwd=tmp)
        try:
            if proc.stdout.readline() != b"READY\n":
                raise SystemExit(f"tiny did not start (rc={proc.wait()})")
            for name, compress in (("tiny-zst", True), ("tiny-raw", False)):
                out = Path(tmp) / name
                dump(proc.pid, out, compress=compress)
                shutil.rmtree(HERE / name, ignore_errors=True)
                shutil.copytree(out, HERE / name)
                for f in (HERE / name).iterdir():
                    f.chmod(0o644)
                print(f"{name}: pid {proc.pid}, {sum(f.stat().st_size for f in (HERE / name).iterdir())} bytes")
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
