"""The kernel matrix: the ``kernel``-marked tests on this machine and under
each guest kernel, one pytest session per kernel.

    python tests/kernels/matrix.py                      # 6.1 and 6.12 from /boot, plus this host
    python tests/kernels/matrix.py --kernel /boot/vmlinuz-6.12.95+deb12-amd64 --no-host
    python tests/kernels/matrix.py -- -k soft_dirty     # extra pytest arguments

Each session first runs ``python -m dumper check --json``, then pytest on
the files holding kernel-marked tests (collected here on the host, so a
guest imports nothing else) with ``-m kernel -p kernel_needs``. Guests run
in parallel (``--jobs``, default: the number of cores), each with 1 vCPU.

Writes a JSON summary (``--summary``; tests/kernels/render.py turns it into
the README's "Kernel support" table), prints one ``N passed, N failed`` line
per kernel and one for the matrix, and exits 1 if any kernel's selection
failed, timed out or could not boot. With ``--skip-without-qemu`` (CI) a qemu
that cannot run at all skips the guests, loudly, instead of failing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import guest  # noqa: E402

SERIES = ("6.1", "6.12")  # Debian bookworm and bookworm-backports
DEFAULT_SUMMARY = REPO / "build" / "kernel-matrix" / "summary.json"


def version_key(path: str) -> list:
    release = Path(path).name.removeprefix("vmlinuz-")
    return [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", release)]


def default_kernels() -> list[str]:
    """The newest /boot/vmlinuz of each series in SERIES; KernelMissing if one has none."""
    out = []
    for s in SERIES:
        found = [p for p in glob.glob(f"/boot/vmlinuz-{s}.*") if re.match(rf"vmlinuz-{re.escape(s)}\.\d", Path(p).name)]
        if not found:
            raise guest.KernelMissing(f"no /boot/vmlinuz-{s}.* kernel image: run tests/kernels/setup-host.sh "
                                      f"(as root) to install Debian's {s} kernel")
        out.append(max(found, key=version_key))
    return out


def python() -> str:
    """The project's venv interpreter, absolute (a pyenv shim costs seconds a call in a guest)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else Path(sys.executable))


def kernel_test_files(py: str) -> list[str]:
    r = subprocess.run([py, "-m", "pytest", "-m", "kernel", "-p", "kernel_needs", "-p", "no:cacheprovider",
                        "--collect-only", "-q", "tests"], cwd=REPO, capture_output=True, text=True, env=session_env())
    if r.returncode not in (0,):
        raise SystemExit(f"matrix: collecting the kernel-marked tests failed (exit {r.returncode}):\n"
                         f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
    files = []
    for line in r.stdout.splitlines():
        if "::" in line:
            f = line.split("::")[0]
            if f not in files:
                files.append(f)
    if not files:
        raise SystemExit("matrix: no kernel-marked tests collected")
    return files


def session_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in guest.DEFAULT_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONPATH"] = str(HERE)
    return env


def session_script(py: str, out: Path, files: list[str], extra: list[str]) -> str:
    q = lambda s: "'" + str(s).replace("'", "'\\''") + "'"  # noqa: E731
    pytest_args = ["-m", "kernel", "-p", "kernel_needs", "-p", "no:cacheprovider", "-q",
                   "--junitxml", str(out / "junit.xml"), "-o", "junit_family=xunit2", *files, *extra]
    return "\n".join([
        f"cd {q(REPO)} || exit 126",
        f"{q(py)} -m dumper check --json > {q(out / 'check.json')} 2> {q(out / 'check.err')} ||",
        f"    echo \"matrix: dumper check failed: $(cat {q(out / 'check.err')})\"",
        f"exec {q(py)} -m pytest " + " ".join(q(a) for a in pytest_args),
    ]) + "\n"


def parse_junit(path: Path) -> dict[str, dict]:
    tests: dict[str, dict] = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        cls = case.get("classname", "")
        # "tests.kernels.test_x" -> tests/kernels/test_x.py (our tests are module-level functions)
        parts = cls.split(".")
        mod = [p for p in parts if not p[:1].isupper()]
        klass = [p for p in parts if p[:1].isupper()]
        nodeid = "/".join(mod) + ".py::" + "::".join(klass + [case.get("name", "")])
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:500]
            elif child.tag == "skipped" and outcome == "passed":
                outcome, message = "skipped", (child.get("message") or "")[:500]
        tests[nodeid] = {"outcome": outcome, "message": message}
    return tests


def counts(tests: dict[str, dict]) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "skipped": 0}
    for t in tests.values():
        c[t["outcome"]] += 1
    return c


def collect(entry: dict, out: Path) -> dict:
    check = out / "check.json"
    try:
        entry["check"] = json.loads(check.read_text())
    except (OSError, ValueError):
        entry["check"] = None
        entry["problems"].append("`dumper check --json` gave no JSON: " + (guest._read(out / "check.err")[-500:]))
    junit = out / "junit.xml"
    if junit.exists():
        entry["tests"] = parse_junit(junit)
    else:
        entry["problems"].append("pytest wrote no junit report")
    entry["counts"] = counts(entry["tests"])
    return entry


def run_host(py: str, files: list[str], extra: list[str], timeout: float) -> dict:
    entry = {"label": "host", "release": os.uname().release, "where": "host", "image": None,
             "status": "failed", "rc": None, "wall_s": 0.0, "boot_s": 0.0, "tests": {}, "problems": [], "output": ""}
    with tempfile.TemporaryDirectory(prefix="kmatrix-host-") as tmp:
        out = Path(tmp)
        (out / "session.sh").write_text(session_script(py, out, files, extra))
        t0 = time.monotonic()
        try:
            r = subprocess.run(["/bin/sh", str(out / "session.sh")], capture_output=True, text=True,
                               env=session_env(), timeout=timeout)
            entry["rc"], entry["output"] = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as err:
            entry["status"] = "timeout"
            entry["problems"].append(f"no result after {timeout:.0f} s")
            partial = err.stdout or ""
            entry["output"] = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        entry["wall_s"] = round(time.monotonic() - t0, 1)
        collect(entry, out)
    return finish(entry)


def run_guest(image: str, py: str, files: list[str], extra: list[str], timeout: float, memory: str) -> dict:
    release = guest.kernel_release(image)
    entry = {"label": release, "release": release, "where": "qemu-tcg", "image": image, "status": "failed",
             "rc": None, "wall_s": 0.0, "boot_s": 0.0, "tests": {}, "problems": [], "output": "", "attempts": 0}
    with tempfile.TemporaryDirectory(prefix="kmatrix-guest-") as tmp:
        out = Path(tmp)
        (out / "session.sh").write_text(session_script(py, out, files, extra))
        t0 = time.monotonic()
        try:
            res = guest.run_in_guest(image, ["/bin/sh", str(out / "session.sh")], cwd=REPO, env=session_env(),
                                     timeout=timeout, memory=memory, outdir=out)
            entry.update(rc=res.returncode, output=res.output, boot_s=round(res.boot_s, 1), attempts=res.attempts)
            entry["problems"] += res.notes
            if res.returncode not in (0, 1):  # killed (OOM?), interrupted, internal error: show the kernel's side
                entry["problems"].append(f"exit {res.returncode}; guest console tail:\n{res.console[-3000:]}")
        except guest.GuestTimeout as err:
            entry["status"] = "timeout"
            entry["problems"].append(str(err))
        except guest.GuestError as err:
            entry["status"] = {guest.BootFailed: "boot-failed", guest.GuestCrashed: "crashed"}.get(type(err), "error")
            entry["problems"].append(f"{type(err).__name__}: {err}")
        entry["wall_s"] = round(time.monotonic() - t0, 1)
        collect(entry, out)
    return finish(entry)


def finish(entry: dict) -> dict:
    c = entry["counts"]
    if entry["rc"] == 0 and entry["check"] is not None and c["failed"] == 0 and c["passed"] > 0:
        entry["status"] = "passed"
    elif entry["rc"] is not None and entry["status"] == "failed" and entry["rc"] == 5:
        entry["problems"].append("pytest ran no test")
    return entry


def line(entry: dict) -> str:
    c = entry["counts"]
    text = f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
    if entry["status"] not in ("passed", "failed"):
        text += f" ({entry['status'].upper()})"
    return f"{entry['label']}: {text}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", action="append", help="kernel image to boot (repeatable; "
                    f"default: the newest /boot/vmlinuz of each of {', '.join(SERIES)})")
    ap.add_argument("--no-host", action="store_true", help="do not run the selection on this machine too")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="guests booted at once")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per kernel before it counts as hung")
    ap.add_argument("--memory", default="2G", help="guest memory")
    ap.add_argument("--summary", type=Path, default=DEFAULT_SUMMARY, help="where to write the JSON summary")
    ap.add_argument("--skip-without-qemu", action="store_true",
                    help="if qemu cannot run at all, skip the guests loudly (exit 0) instead of failing")
    ap.add_argument("--check-readme", type=Path, metavar="README",
                    help="warn if this run's table (tests/kernels/render.py) differs from the one in README")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- extra pytest arguments")
    args = ap.parse_args(argv)
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args

    t_start = time.monotonic()
    try:
        kernels = args.kernel or default_kernels()
        for k in kernels:
            if not Path(k).is_file():
                raise guest.KernelMissing(f"kernel image {k} not found")
    except guest.KernelMissing as err:
        print(f"matrix: {err}", file=sys.stderr)
        return 1
    skipped_guests = None
    try:
        guest.probe_qemu()
    except guest.QemuUnavailable as err:
        if not args.skip_without_qemu:
            print(f"matrix: {err}", file=sys.stderr)
            return 1
        skipped_guests = str(err)
        banner = "!" * 78
        msg = (f"\n{banner}\n!!! KERNEL MATRIX SKIPPED: qemu cannot run on this machine.\n!!! {err}\n"
               f"!!! The kernels {', '.join(kernels)} were NOT tested.\n{banner}\n")
        print(msg)
        print(msg, file=sys.stderr)
        kernels = []

    py = python()
    files = kernel_test_files(py)
    print(f"matrix: {len(files)} test files with kernel-marked tests: {' '.join(files)}", flush=True)
    entries = []
    if not args.no_host:
        print(f"matrix: host {os.uname().release} ...", flush=True)
        entries.append(run_host(py, files, extra, args.timeout))
        print(f"matrix: {line(entries[-1])} in {entries[-1]['wall_s']:.0f} s", flush=True)
    if kernels:
        print(f"matrix: booting {len(kernels)} kernels, {args.jobs} at a time: {' '.join(kernels)}", flush=True)

        def one(image):
            e = run_guest(image, py, files, extra, args.timeout, args.memory)
            print(f"matrix: {line(e)} in {e['wall_s']:.0f} s (boot {e['boot_s']:.0f} s)", flush=True)
            return e

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            entries += list(pool.map(one, kernels))
    wall = time.monotonic() - t_start

    for e in entries:
        print(f"\n===== {e['label']} ({e['where']}): {e['status']}, exit {e['rc']}, {e['wall_s']:.0f} s =====")
        print(e["output"].rstrip())
        for p in e["problems"]:
            print(f"matrix: {e['label']}: {p}")
    summary = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "wall_s": round(wall, 1),
        "skipped_guests": skipped_guests,
        "kernels": [{k: v for k, v in e.items() if k != "output"} for e in entries],
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

    if args.check_readme and not skipped_guests:
        import render

        if render.main(["--summary", str(args.summary), "--readme", str(args.check_readme), "--check"]):
            print(f"matrix: WARNING: the committed table in {args.check_readme} is not what this run proved; "
                  f"update it: python tests/kernels/render.py --readme {args.check_readme}")

    print(f"\n===== kernel matrix ({wall:.0f} s wall; summary {args.summary}) =====")
    for e in entries:
        print(line(e))
    total = {k: sum(e["counts"][k] for e in entries) for k in ("passed", "failed", "skipped")}
    bad = [e["label"] for e in entries if e["status"] != "passed"]
    if bad:
        print(f"matrix: FAILED on {', '.join(bad)}")
    if skipped_guests:
        print("matrix: GUESTS SKIPPED (qemu cannot run): only this host was tested")
    # A kernel that failed without a failed test (hung, no boot) counts as one failure.
    failed = total["failed"] + sum(1 for e in entries if e["status"] != "passed" and not e["counts"]["failed"])
    print(f"matrix: {total['passed']} passed, {failed} failed, {total['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
