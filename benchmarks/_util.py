"""Helpers shared by the benchmarks: targets, child measurements."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn_sparse(reservation: int, touched: int = 1000) -> subprocess.Popen:
    """A process with one MAP_NORESERVE reservation and ``touched`` pages
    written, leading its own session (see spawn_ready)."""
    code = textwrap.dedent(f"""
        import ctypes, ctypes.util, os, random, sys
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        size = {reservation}
        a = libc.mmap(None, size, 3, 0x02 | 0x20 | 0x4000, -1, 0)
        if a in (None, ctypes.c_void_p(-1).value):
            sys.exit("mmap failed: " + os.strerror(ctypes.get_errno()))
        rng = random.Random(7)
        for page in rng.sample(range(size // 4096), {touched}):
            ctypes.memmove(a + page * 4096, b"x", 1)
        print(a, flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    line = p.stdout.readline()
    if not line.strip():
        p.kill()
        raise RuntimeError(f"sparse target of {reservation} bytes did not start")
    p.addr = int(line)  # type: ignore[attr-defined]
    return p


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM of /proc/self/status, the high
    water mark of its own address space.

    Not getrusage's ru_maxrss: that one survives exec, so a child spawned
    by a large parent (fork copies the parent's page tables; vfork, which
    subprocess uses, execs from the parent's very address space) starts
    with the parent's peak as its own.
    """
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


_RSS_EPILOGUE = textwrap.dedent("""
    import atexit as _atexit, sys as _sys
    from benchmarks._util import peak_rss_kib as _peak
    _atexit.register(lambda: print(f"\\nVMHWM_KIB {_peak()}", file=_sys.stderr, flush=True))
""")


def run_child(code: str, timeout: float = 900) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object.

    Adds ``max_rss_kib`` (the child's peak RSS: :func:`peak_rss_kib`, read
    as it exits) and ``child_wall_s`` to the result.
    """
    p = subprocess.Popen([sys.executable, "-c", _RSS_EPILOGUE + textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"benchmark child failed ({p.returncode}): {err.strip()[-500:]}")
    result = json.loads(out.strip().splitlines()[-1])
    hwm = [line.split()[1] for line in err.splitlines() if line.startswith("VMHWM_KIB ")]
    result["max_rss_kib"] = int(hwm[-1]) if hwm else None
    result["child_wall_s"] = time.monotonic() - t0
    return result


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f:
            f.close()


def outdir() -> str | None:
    """Where benchmarks write images: ``BENCH_TMP``, else /dev/shm (so the
    tools rather than the disk are measured)."""
    return os.environ.get("BENCH_TMP") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)


def dir_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (files gone meanwhile count 0)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


TARGETS = Path(__file__).resolve().parent / "targets"


def build_c(name: str, dest: Path, *flags: str, out: str | None = None) -> Path:
    """Compile ``benchmarks/targets/NAME.c`` with gcc into ``dest`` (``out``
    names the binary, default NAME). FileNotFoundError without gcc,
    RuntimeError with gcc's message on failure."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is not installed")
    binary = dest / (out or name)
    r = subprocess.run([gcc, "-Wall", *flags, "-o", str(binary), str(TARGETS / f"{name}.c")],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"gcc {name}.c {' '.join(flags)}: {r.stderr.strip()[-1000:]}")
    return binary


def spawn_ready(argv: list[str], *, timeout: float = 120.0, **kw) -> subprocess.Popen:
    """Start a target that prints a line beginning with READY once set up
    (``READY ADDR SIZE`` sets ``p.addr`` and ``p.size``); stdin and stdout
    are pipes (closing stdin ends the benchmarks' targets). RuntimeError,
    the target killed, if it exits or stays silent for ``timeout`` s.

    Every target leads its own session, as ``criu dump`` needs when the
    caller's session leader is outside its pid namespace (a CI runner)."""
    kw.setdefault("start_new_session", True)
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)
    ready = select.select([p.stdout], [], [], timeout)[0]
    line = p.stdout.readline() if ready else ""
    if not line.startswith("READY"):
        stop(p)
        why = f"no READY in {timeout:.0f} s" if not ready else repr(line[:80])
        raise RuntimeError(f"{Path(argv[0]).name} did not start ({why})")
    words = line.split()
    p.addr, p.size = (int(words[1]), int(words[2])) if len(words) >= 3 else (None, None)  # type: ignore[attr-defined]
    return p


# DumpSession's phases (dumper/dump/session.py), in the order they run.
PHASES = ("prepare", "pre_copy_rounds", "freeze", "list_vmas", "confirm_vmas", "collect", "check_restorable", "arm", "scan",
          "select", "share_cow", "snapshot", "copy", "copy_shared", "collected_tasks", "disarm", "reset", "thaw", "write")
# How the final freeze's phases are reported (the frozen-time breakdown).
FROZEN_PARTS = {"freeze": ("freeze",), "list_vmas": ("list_vmas", "confirm_vmas"), "collect": ("collect", "check_restorable", "collected_tasks"),
                "arm": ("arm",), "scan": ("scan",), "select": ("select",), "share_cow": ("share_cow",),
                "snapshot": ("snapshot",), "copy": ("copy",), "copy_shared": ("copy_shared",),
                "reset": ("reset", "disarm"), "thaw": ("thaw",)}


def timed_dump(pid: int, dest, **options):
    """``dumper.dump.dump(pid, dest, **options)`` with each phase of the
    session timed; returns ``(DumpResult, phases)``.

    ``phases`` (milliseconds): ``prepare``, ``rounds`` (``--pre-copy``
    rounds, target running), ``freezing`` (stop requested -> every thread
    stopped), then the final freeze split as :data:`FROZEN_PARTS` says
    (``freeze`` is the bookkeeping after the last thread stopped), ``other``
    (frozen time no phase accounts for), ``write`` (after the thaw). A phase
    the session does not have is left out.
    """
    from dumper.dump.session import DumpOptions, DumpSession

    spans: list[tuple[str, int, int]] = []

    def timed(name, orig):
        def wrapper(self, *a, **k):
            t0 = time.monotonic_ns()
            try:
                return orig(self, *a, **k)
            finally:
                spans.append((name, t0, time.monotonic_ns()))
        return wrapper

    attrs = {n: timed(n, getattr(DumpSession, n)) for n in PHASES if callable(getattr(DumpSession, n, None))}
    session = type("TimedDumpSession", (DumpSession,), attrs)(pid, dest, DumpOptions(**options))
    result = session.run()
    spans.sort(key=lambda s: s[1])
    last_freeze = max((s for s in spans if s[0] == "freeze"), key=lambda s: s[1], default=None)
    ms = lambda ns: ns / 1e6  # noqa: E731
    phases = {}
    for name, t0, t1 in spans:
        if name in ("prepare", "write"):
            phases[name] = ms(t1 - t0)
        elif name == "pre_copy_rounds":
            phases["rounds"] = ms(t1 - t0)
    phases["freezing"] = ms(result.freezing_ns)
    tree = getattr(session, "tree", None)
    if last_freeze is not None and tree is not None:
        final = [s for s in spans if s[1] >= last_freeze[1] and s[0] not in ("write", "pre_copy_rounds")]
        for part, names in FROZEN_PARTS.items():
            got = [t1 - t0 for n, t0, t1 in final if n in names]
            if part == "freeze":
                got = [last_freeze[2] - tree.stopped_ns]
            if got:
                phases[part] = ms(sum(got))
        phases["other"] = ms(result.frozen_ns) - sum(phases.get(p, 0.0) for p in FROZEN_PARTS)
    return result, phases
