"""Start-up: what a short command costs beyond the interpreter.

Wall time of, each in a fresh process, median of ``rounds`` runs taken in
turns (so a change of machine load hits them alike):

* ``python -c pass`` (the floor: interpreter and site);
* ``dumper --version`` and ``dumper --help``;
* ``dumper dump PID -D DIR`` of a small process (a C program holding 1 MiB
  of written memory, built with ``cc``; ``sleep`` where there is no compiler);
* ``dumper show DIR`` of that checkpoint;

with the package's .pyc files, and without (a copy of ``dumper/`` with no
``__pycache__``, run with ``-B``: what a read-only or fresh checkout costs;
the standard library and dependencies keep theirs). Each figure is also
given as the time over the floor. ``import_top`` lists the slowest imports
of one ``dumper dump`` (``python -X importtime``).
"""

from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._util import ROOT

TARGET_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    size_t n = 1 << 20;
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i++) p[i] = (char)(i * 7);
    printf("READY\n");
    fflush(stdout);
    for (;;) pause();
}
"""

ENTRY = "import sys; from dumper.cli import main; sys.exit(main())"


def _small_target(tmp: Path) -> tuple[subprocess.Popen, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        src, exe = tmp / "target.c", tmp / "target"
        src.write_text(TARGET_C)
        subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True)
        p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "READY":
            p.kill()
            raise RuntimeError("the small target did not start")
        return p, "C program, 1 MiB written"
    p = subprocess.Popen(["sleep", "3600"])
    time.sleep(0.1)
    return p, "sleep (no C compiler)"


def _package_copy(dest: Path, pyc: bool) -> Path:
    """A copy of dumper/ under ``dest``: compiled, or with no .pyc at all."""
    shutil.copytree(ROOT / "dumper", dest / "dumper", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if pyc:
        compileall.compile_dir(str(dest / "dumper"), quiet=1)
    return dest


def _timed(argv: list[str], env: dict) -> float:
    # cwd: the package copy (`-c` puts the current directory first on sys.path)
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv[-4:])} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return dt


def _import_top(env: dict, argv: list[str], n: int = 10) -> list[dict]:
    """The top-level imports of one run, slowest first (``-X importtime``)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, cwd=env["PYTHONPATH"],
                       capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append({"module": name.strip(), "self_ms": int(self_us) / 1e3, "cumulative_ms": int(cum_us) / 1e3,
                     "depth": depth})
    return sorted((r for r in rows if r["depth"] == 0), key=lambda r: -r["cumulative_ms"])[:n]


def run(rounds: int = 7) -> dict:
    out: dict = {"python": sys.version.split()[0], "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp_s:
        tmp = Path(tmp_s)
        target, what = _small_target(tmp)
        out["target"] = what
        try:
            for label, pyc in (("pyc", True), ("no_pyc", False)):
                src = _package_copy(tmp / label, pyc)
                env = dict(os.environ, PYTHONPATH=str(src))
                flags = [] if pyc else ["-B"]
                if not pyc:
                    env["PYTHONDONTWRITEBYTECODE"] = "1"
                dumper = [sys.executable, *flags, "-c", ENTRY]
                where = subprocess.run([sys.executable, *flags, "-c", "import dumper; print(dumper.__file__)"],
                                       env=env, cwd=src, capture_output=True, text=True).stdout.strip()
                if not where.startswith(str(src)):
                    raise RuntimeError(f"the package copy is not what runs: {where}")
                ck_root = tmp / f"ck-{label}"
                ck_root.mkdir()
                # one checkpoint for `show`, and a warm-up of every command
                shown = ck_root / "shown"
                _timed([*dumper, "dump", str(target.pid), "-D", str(shown)], env)
                counter = iter(range(10**6))
                cases = {
                    "python -c pass": lambda: _timed([sys.executable, *flags, "-c", "pass"], env),
                    "dumper --version": lambda: _timed([*dumper, "--version"], env),
                    "dumper --help": lambda: _timed([*dumper, "--help"], env),
                    "dumper dump (small)": lambda: _timed(
                        [*dumper, "dump", str(target.pid), "-D", str(ck_root / f"d{next(counter)}")], env),
                    "dumper show": lambda: _timed([*dumper, "show", str(shown)], env),
                }
                times: dict[str, list[float]] = {k: [] for k in cases}
                for _ in range(rounds):
                    for k, fn in cases.items():
                        times[k].append(fn())
                med = {k: statistics.median(v) for k, v in times.items()}
                floor = med["python -c pass"]
                out[label] = {k: {"median_s": v, "over_python_s": v - floor, "ratio": v / floor,
                                  "min_s": min(times[k])} for k, v in med.items()}
                if pyc:
                    out["import_top"] = _import_top(env, ["-c", ENTRY, "dump", str(target.pid), "-D",
                                                          str(ck_root / "importtime")])
        finally:
            target.kill()
            target.wait()
            if target.stdout:
                target.stdout.close()
    return out


def table(result: dict) -> list[str]:
    out = [f"start-up (median of {result['rounds']}, target: {result['target']})"
           "        with .pyc            without .pyc"]
    for k in result["pyc"]:
        a, b = result["pyc"][k], result["no_pyc"][k]
        out.append(f"  {k:<22} {a['median_s'] * 1e3:6.0f} ms (+{a['over_python_s'] * 1e3:4.0f})"
                   f"    {b['median_s'] * 1e3:6.0f} ms (+{b['over_python_s'] * 1e3:4.0f})")
    out.append("  (+N: milliseconds over `python -c pass`)  slowest imports of `dumper dump`:")
    for r in result.get("import_top", [])[:6]:
        out.append(f"    {r['module']:<32} {r['cumulative_ms']:6.1f} ms")
    return out


if __name__ == "__main__":
    import json

    res = run()
    print("\n".join(table(res)))
    json.dump(res, sys.stdout, indent=1)
