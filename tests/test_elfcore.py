"""ELF cores from checkpoints (``dumper core``, ``dumper export --format elf``),
proved with the real gdb (and readelf, eu-readelf and lldb where installed):

- a C program with four threads stopped at known places: gdb on the core
  prints the same backtraces (functions, file:line, locals), values and
  heap strings as gdb attached to the stopped process;
- a Python process: its libpython frames resolve;
- an AddressSanitizer program: a small, quickly written core (its shadow
  is MADV_DONTDUMP), a correct backtrace;
- every byte a core holds equals the live process's memory; a 64 GiB
  reservation gives a core of a few pages; incremental chains; the
  coredump_filter; hostile checkpoints give one error line and no file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dumper.cli import main as cli_main
from dumper.dump import dump
from dumper.export.elf import HOLE_ALLOWANCE, export_elf, write_core
from dumper.image.checkpoint import open_checkpoint
from dumper.image import format as fmt
from dumper.kernel import elf
from dumper.kernel.libc import PAGE_SIZE

SOURCES = Path(__file__).parent / "targets" / "elfcore"
GDB_ENV = {**os.environ, "DEBUGINFOD_URLS": "", "LC_ALL": "C"}


# --- helpers -----------------------------------------------------------------------


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _compile(src: Path, out: Path, *flags: str) -> Path:
    _need("gcc")
    r = subprocess.run(["gcc", "-g", "-O0", *flags, "-o", str(out), str(src)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"gcc {' '.join(flags)} failed here: {r.stderr.strip()[-300:]}")
    return out


class Program:
    """A spawned program that prints ``READY <pid>``; always killed and reaped."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.close()
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")

    def wait_blocked(self, n: int, timeout: float = 10.0) -> None:
        """Until ``n`` threads sit in a system call (/proc/PID/task/*/syscall)."""
        deadline = time.monotonic() + timeout
        while True:
            blocked = 0
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/syscall") as f:
                        blocked += f.read().split()[0] not in ("running", "-1")
                except OSError:
                    pass
            if blocked >= n:
                return
            assert time.monotonic() < deadline, f"only {blocked} of {n} threads blocked"
            time.sleep(0.02)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            while True:
                with open(f"/proc/{self.pid}/task/{tid}/stat", "rb") as f:
                    data = f.read()
                if data[data.rindex(b")") + 2:].split()[0] == b"T":
                    break
                assert time.monotonic() < deadline, f"thread {tid} did not stop"
                time.sleep(0.01)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def _gdb(*args: str, cmds: list[str]) -> str:
    """gdb's output after the commands start (``MARK``), normalised: thread
    names (shown live, not from a core) and attach/detach chatter dropped."""
    gdb = _need("gdb")
    argv = [gdb, "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex", "set pagination off",
            "-ex", "set width 0", "-ex", "echo MARK\\n"]
    for c in cmds:
        argv += ["-ex", c]
    r = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=300, env=GDB_ENV)
    out = r.stdout.split("MARK\n", 1)[-1]
    out = re.sub(r' "[^"]*"\):$', "):", out, flags=re.M)
    return "\n".join(line for line in out.splitlines() if not line.startswith("[Inferior "))


def _segments(core: Path) -> list[tuple[int, int, int, int, int, int]]:
    """PT_LOADs as (offset, vaddr, filesz, memsz, flags, align); checks the ELF header."""
    data = core.read_bytes()[:1 << 24]
    eh = elf.Elf64_Ehdr.from_buffer_copy(data)
    assert bytes(eh.e_ident[:4]) == elf.ELFMAG and eh.e_type == elf.ET_CORE and eh.e_machine == elf.EM_X86_64
    n = eh.e_phnum
    if n == elf.PN_XNUM:
        with open(core, "rb") as f:
            f.seek(eh.e_shoff)
            n = elf.Elf64_Shdr.from_buffer_copy(f.read(64)).sh_info
    with open(core, "rb") as f:
        f.seek(eh.e_phoff)
        raw = f.read(n * 56)
    out = []
    for i in range(n):
        ph = elf.Elf64_Phdr.from_buffer_copy(raw, i * 56)
        if i == 0:
            assert ph.p_type == elf.PT_NOTE
        else:
            assert ph.p_type == elf.PT_LOAD
            out.append((ph.p_offset, ph.p_vaddr, ph.p_filesz, ph.p_memsz, ph.p_flags, ph.p_align))
    return out


def _notes(core: Path) -> list[tuple[bytes, int, bytes]]:
    with open(core, "rb") as f:
        eh = elf.Elf64_Ehdr.from_buffer_copy(f.read(64))
        f.seek(eh.e_phoff)
        ph = elf.Elf64_Phdr.from_buffer_copy(f.read(56))
        f.seek(ph.p_offset)
        data = f.read(ph.p_filesz)
    out, pos = [], 0
    while pos < len(data):
        nh = elf.Elf64_Nhdr.from_buffer_copy(data, pos)
        name = data[pos + 12:pos + 12 + nh.n_namesz - 1]
        d = pos + 12 + (nh.n_namesz + 3) // 4 * 4
        out.append((name, nh.n_type, data[d:d + nh.n_descsz]))
        pos = d + (nh.n_descsz + 3) // 4 * 4
    return out


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _recorded_bytes(ckdir: Path) -> int:
    with open_checkpoint(ckdir) as ck:
        return ck.process().entries.pages(fmt.PE_PRESENT | fmt.PE_PARENT) * ck.page_size


# --- four threads, gdb attached vs gdb on the core ----------------------------------

GDB_THREADS = ["thread apply all bt full", "p spin_counter", "x/s heap_string", "info threads"]


@pytest.fixture(scope="module")
def threads_case(tmp_path_factory):
    """The threads program stopped, its core by ``dumper core`` and by
    ``dump`` + ``export --format elf``, and gdb's view of the live process."""
    work = tmp_path_factory.mktemp("elfcore-threads")
    prog = _compile(SOURCES / "threads.c", work / "threads", "-pthread")
    p = Program([str(prog)])
    try:
        p.wait_blocked(4)  # main in pause, sleeper, reader, waiter; the spinner runs
        p.stop()
        assert cli_main(["core", str(p.pid), "-o", str(work / "core.cli")]) == 0
        assert dump(p.pid, work / "ck", thaw="leave-stopped").was_stopped
        assert cli_main(["export", "--format", "elf", str(work / "ck"), str(work / "core.export")]) == 0
        live = _gdb("-p", str(p.pid), cmds=GDB_THREADS)
        yield {"prog": prog, "pid": p.pid, "tids": sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task")),
               "live": live, "cores": [work / "core.cli", work / "core.export"], "ck": work / "ck"}
    finally:
        p.close()


def test_gdb_on_the_core_shows_what_gdb_attached_shows(threads_case):
    live = threads_case["live"]
    # The live view is the reference: every thread in its function, locals, values.
    for func, local in (("sleeper_thread", "sleeper_local = 1001"), ("reader_thread", "reader_local = 2002"),
                        ("waiter_thread", "waiter_local = 3003"), ("spinner_thread", "spinner_local = 4004"),
                        ("main ()", "main_local = 5005")):
        assert func in live and local in live, live
    assert "threads.c:" in live and '"the known heap string of elfcore threads"' in live
    for core in threads_case["cores"]:
        got = _gdb(str(threads_case["prog"]), str(core), cmds=GDB_THREADS)
        # info threads names the target differently ("process" vs "LWP"): compare the rest exactly.
        live_bt, _, live_info = live.partition("  Id   Target Id")
        core_bt, _, core_info = got.partition("  Id   Target Id")
        assert core_bt == live_bt
        assert len(core_info.strip().splitlines()) == len(live_info.strip().splitlines()) == 6


def test_core_notes_follow_the_kernel(threads_case):
    core = threads_case["cores"][0]
    notes = _notes(core)
    types = [t for _, t, _ in notes]
    n = len(threads_case["tids"])
    per_thread = [elf.NT_PRSTATUS, elf.NT_PRFPREG, elf.NT_X86_XSTATE]
    # fs/binfmt_elf.c write_note_info: the process notes after the first thread's NT_PRSTATUS.
    assert types[:7] == [elf.NT_PRSTATUS, elf.NT_PRPSINFO, elf.NT_SIGINFO, elf.NT_AUXV, elf.NT_FILE,
                         elf.NT_PRFPREG, elf.NT_X86_XSTATE]
    assert types[7:7 + 3 * (n - 1)] == per_thread * (n - 1)
    assert {name for name, t, _ in notes if t == elf.NT_X86_XSTATE} == {b"LINUX"}
    pids = [elf.elf_prstatus.from_buffer_copy(d).common.pr_pid for _, t, d in notes if t == elf.NT_PRSTATUS]
    assert pids[0] == threads_case["pid"] and sorted(pids) == threads_case["tids"]
    ps = elf.elf_prpsinfo.from_buffer_copy(next(d for _, t, d in notes if t == elf.NT_PRPSINFO))
    assert ps.pr_fname == b"threads" and ps.pr_psargs.startswith(str(threads_case["prog"]).encode())
    assert ps.pr_sname == b"T"  # dumped while stopped
    files = next(d for _, t, d in notes if t == elf.NT_FILE)
    count, page = struct.unpack_from("<QQ", files)
    assert page == PAGE_SIZE and str(threads_case["prog"]).encode() + b"\0" in files[16 + 24 * count:]
    auxv = next(d for _, t, d in notes if t == elf.NT_AUXV)
    assert auxv[-16:] == bytes(16) and struct.unpack_from("<Q", auxv, len(auxv) - 32)[0] != 0
    for seg in _segments(core):
        assert seg[5] == PAGE_SIZE and seg[2] <= seg[3] and seg[2] % PAGE_SIZE == 0


def test_registers_are_the_captured_ones(threads_case):
    """A thread blocked in nanosleep: gdb attached shows rax = -ERESTART_RESTARTBLOCK
    and the pc after `syscall`; the core shows the same, not the restore fixup."""
    regs = ["thread apply all info registers rip rax orig_rax"]
    live = _gdb("-p", str(threads_case["pid"]), cmds=regs)
    got = _gdb(str(threads_case["prog"]), str(threads_case["cores"][1]), cmds=regs)
    assert "-516" in live or "-512" in live
    assert got == live


def test_readelf_and_eu_readelf_accept_the_core(threads_case):
    core = str(threads_case["cores"][0])
    r = subprocess.run([_need("readelf"), "-n", "-l", "-W", core], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("NT_PRSTATUS") == len(threads_case["tids"]) and "NT_FILE" in r.stdout
    eu = shutil.which("eu-readelf")
    if eu is None:
        pytest.skip("eu-readelf (elfutils) is not installed")
    r = subprocess.run([eu, "-n", "-l", core], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("PRSTATUS") == len(threads_case["tids"])


def test_lldb_opens_the_core_and_lists_the_threads(threads_case):
    lldb = _need("lldb")
    r = subprocess.run([lldb, "--batch", "-c", str(threads_case["cores"][1]), str(threads_case["prog"]),
                        "-o", "thread list"], capture_output=True, text=True, timeout=300, env=GDB_ENV)
    tids = sorted(int(t) for t in re.findall(r"thread #\d+: tid = (\d+)", r.stdout))
    assert tids == threads_case["tids"], r.stdout + r.stderr
    # the spinner is stopped somewhere in its loop: the body (line 58) or the loop's jump (line 57)
    assert re.search(r"spinner_thread\(.*\) at threads\.c:5[78]\b", r.stdout), r.stdout


# --- Python ---------------------------------------------------------------------------


def test_python_frames_resolve(tmp_path):
    code = "import time\ndef inner():\n    print('READY', flush=True)\n    time.sleep(1000)\ninner()\n"
    p = Program([sys.executable, "-c", code])
    try:
        p.wait_blocked(1)
        p.stop()
        assert cli_main(["core", str(p.pid), "-o", str(tmp_path / "core")]) == 0
        live = _gdb("-p", str(p.pid), cmds=["bt"])
    finally:
        p.close()
    got = _gdb(os.path.realpath(sys.executable), str(tmp_path / "core"), cmds=["bt"])
    frames = [line for line in got.splitlines() if line.startswith("#")]
    assert len(frames) > 5 and not [f for f in frames if " ?? (" in f], got
    assert any("PyEval" in f or "_PyObject" in f or "Py_RunMain" in f or "Py_BytesMain" in f for f in frames), got
    assert frames == [line for line in live.splitlines() if line.startswith("#")]


# --- AddressSanitizer -----------------------------------------------------------------


def test_asan_core_is_small_quick_and_right(tmp_path):
    prog = _compile(SOURCES / "asan.c", tmp_path / "asan", "-fsanitize=address")
    p = Program([str(prog), "16"])
    try:
        dump(p.pid, tmp_path / "ck")
    finally:
        p.close()
    with open_checkpoint(tmp_path / "ck") as ck, open(tmp_path / "core", "w+b") as f:
        t0 = time.process_time()
        r = write_core(ck, None, f)
        cpu = time.process_time() - t0
        dd = [v for v in ck.process().vmas if "dd" in v.vmflags.split() and v.end - v.start > 1 << 40]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU for the core"
    assert dd, "no MADV_DONTDUMP shadow found"
    recorded = _recorded_bytes(tmp_path / "ck")
    assert recorded >= 16 << 20
    assert _allocated(tmp_path / "core") <= 2 * recorded
    segs = {s[1]: s for s in _segments(tmp_path / "core")}
    for v in dd:  # the shadow: VM_DONTDUMP, nothing in the file
        assert segs[v.start][2] == 0 and segs[v.start][3] == v.end - v.start
    assert r.apparent < recorded + 2 * HOLE_ALLOWANCE
    got = _gdb(str(prog), str(tmp_path / "core"), cmds=["bt", "x/s asan_heap_string", "p asan_local"])
    assert re.search(r"#\d+ .* asan_wait \(mib=16\) at .*asan\.c:\d+", got), got
    assert re.search(r"#\d+ .* main \(argc=2, .*\) at .*asan\.c:\d+", got), got
    assert '"the known heap string of the asan program"' in got


# --- memory: every byte right, sparse, chains, filters ------------------------------------


def _core_bytes(core: Path):
    """(vaddr, bytes) of every PT_LOAD's file part."""
    with open(core, "rb") as f:
        for off, vaddr, filesz, memsz, flags, _ in _segments(core):
            if filesz:
                f.seek(off)
                yield vaddr, f.read(filesz)


def _live_mismatches(pid: int, core: Path, ck: Path) -> list[str]:
    """Pages where the core's bytes differ from /proc/PID/mem (pages the
    kernel will not read, as [vvar] or guard regions, are skipped; so are
    differences only in the rseq cpu ids the kernel rewrites when a thread
    returns to user space, which the thaw before the stop can do: the
    threads' rseq areas are those checkpoint ``ck`` recorded)."""
    from dumper.cli.verify import only_kernel_written

    with open_checkpoint(ck) as c:
        rseq = c.rseq_areas(pid)
    bad = []
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for vaddr, data in _core_bytes(core):
            for off in range(0, len(data), PAGE_SIZE):
                try:
                    live = os.pread(fd, PAGE_SIZE, vaddr + off)
                except (OSError, OverflowError):  # [vvar], [vsyscall] (above 2**63), guards
                    assert data[off:off + PAGE_SIZE] == bytes(PAGE_SIZE)  # unreadable: a hole
                    continue
                page = data[off:off + PAGE_SIZE]
                if live != page and not only_kernel_written(page, live, vaddr + off, rseq):
                    bad.append(f"{vaddr + off:#x}")
    finally:
        os.close(fd)
    return bad


def test_every_byte_equals_the_live_process(spawn_target, tmp_path):
    t = spawn_target("dense,sparse,file,guard,shared,zero")
    dump(t.pid, tmp_path / "ck", thaw="leave-stopped")
    res = export_elf(tmp_path / "ck", tmp_path / "core")
    core = tmp_path / "core"
    assert not _live_mismatches(t.pid, core, tmp_path / "ck")
    segs = {s[1]: s for s in _segments(core)}
    # The written private file mapping is whole: untouched pages from the file, as the process sees them.
    fa, flen = t.regions["file"]
    assert segs[fa][2] == flen
    # Shared anonymous memory is saved once in its object: the segment whole, as the kernel's core
    # (MMF_DUMP_ANON_SHARED); its bytes equal the live ones (checked above), untouched pages holes.
    sa, slen = t.regions["shared"]
    assert segs[sa][2] == slen and not any("shared mappings" in n for n in res.cores[0].notes)
    # A 64 GiB reservation with 100 touched pages: holes, never 64 GiB of file; its untouched stretches
    # end segments (each new one starts at a saved page), while small VMAs keep the kernel's layout.
    assert res.cores[0].apparent < 2 * HOLE_ALLOWANCE
    a, alen = t.regions["sparse"]
    pieces = [s for s in _segments(core) if a <= s[1] < a + alen]
    assert len(pieces) > 50 and sum(s[3] for s in pieces) == alen
    da, dlen = t.regions["dense"]  # (it may share its VMA with another anonymous layout)
    dseg = next(s for s in _segments(core) if s[1] <= da < s[1] + s[3])
    assert dseg[2] == dseg[3] >= dlen
    assert _allocated(core) < 4 * (res.cores[0].data_bytes + res.cores[0].note_bytes) + (1 << 20)
    assert _allocated(core) <= 2 * _recorded_bytes(tmp_path / "ck") + (1 << 20)
    # gdb reads a touched page of the reservation, and zeros where nothing was written.
    a, _ = t.regions["sparse"]
    got = _gdb(str(os.path.realpath(sys.executable)), str(core), cmds=[f"x/1xb {a:#x}", f"x/1xb {a + 2 * PAGE_SIZE:#x}"])
    assert re.findall(r":\s+(0x[0-9a-f]+)", got) == [f"{1:#04x}", "0x00"], got


def test_incremental_chain_exports_through_its_parents(spawn_target, tmp_path):
    t = spawn_target("dense")
    a, _ = t.regions["dense"]
    dump(t.pid, tmp_path / "0", track_mem=True)
    t.command("write dense 3")
    dump(t.pid, tmp_path / "1", parent=tmp_path / "0", thaw="leave-stopped")
    with open_checkpoint(tmp_path / "1") as ck:
        assert ck.process().nr_pages_parent > 0
    export_elf(tmp_path / "1", tmp_path / "core")
    assert not _live_mismatches(t.pid, tmp_path / "core", tmp_path / "1")


def test_coredump_filter_and_with_file_pages(spawn_target, tmp_path):
    t = spawn_target("dense,file")
    # Bits 0-1 only: no ELF header pages, no hugetlb.
    with open(f"/proc/{t.pid}/coredump_filter", "w") as f:
        f.write("0x3")
    dump(t.pid, tmp_path / "ck", thaw="leave-stopped")
    with open_checkpoint(tmp_path / "ck") as ck:
        assert ck.process().mm.coredump_filter == 0x3
        private_files = [v for v in ck.process().vmas if v.status & fmt.VMA_FILE_PRIVATE]
    export_elf(tmp_path / "ck", tmp_path / "plain")
    export_elf(tmp_path / "ck", tmp_path / "full", with_file_pages=True)
    plain = {s[1]: s for s in _segments(tmp_path / "plain")}
    full = {s[1]: s for s in _segments(tmp_path / "full")}
    fa, flen = t.regions["file"]
    assert plain[fa][2] == full[fa][2] == flen  # written: whole either way
    untouched = [v for v in private_files if not v.nr_pages_dumped]
    assert untouched and all(plain[v.start][2] == 0 for v in untouched)  # no header pages with 0x3
    assert all(full[v.start][2] == v.end - v.start for v in untouched)
    assert not _live_mismatches(t.pid, tmp_path / "full", tmp_path / "ck")


def test_header_pages_of_elf_mappings(threads_case):
    """MMF_DUMP_ELF_HEADERS (default): the first page of each ELF file mapping, so build-ids are found."""
    with open_checkpoint(threads_case["ck"]) as ck:
        firsts = [v for v in ck.process().vmas if v.status & fmt.VMA_FILE_PRIVATE and v.pgoff == 0
                  and ("libc.so" in v.path or v.path == str(threads_case["prog"]))]
    segs = {s[1]: s for s in _segments(threads_case["cores"][1])}
    assert len(firsts) >= 2 and all(segs[v.start][2] >= PAGE_SIZE for v in firsts)
    # elfutils finds each module's build-id in the core's memory (the header pages), as in a kernel core.
    r = subprocess.run([_need("eu-unstrip"), "-n", f"--core={threads_case['cores'][1]}"], capture_output=True,
                       text=True, timeout=120)
    ids = dict(re.findall(r"^\S+ ([0-9a-f]{40})@0x[0-9a-f]+ .* (\S+)$", r.stdout, re.M))
    libc = next(v.path for v in firsts if "libc.so" in v.path)
    own = subprocess.run([_need("readelf"), "-n", libc], capture_output=True, text=True).stdout
    assert re.search(r"Build ID: ([0-9a-f]+)", own)[1] in ids, r.stdout
    assert len(ids) >= 3, r.stdout  # the program, libc, ld.so (and the vdso)


# --- hostile checkpoints and outputs -------------------------------------------------------


def _damage(ckdir: Path, how: str, pid: int) -> None:
    if how == "core-truncated":
        p = ckdir / fmt.core_name(pid)
        p.write_bytes(p.read_bytes()[:40])
    elif how == "core-missing":
        (ckdir / fmt.core_name(pid)).unlink()
    elif how == "mm-truncated":
        p = ckdir / fmt.mm_name(pid)
        p.write_bytes(p.read_bytes()[:-7])
    elif how == "raw-pages-short":
        p = next(ckdir.glob("pages-*.img"))
        os.truncate(p, os.path.getsize(p) - PAGE_SIZE)
    elif how == "core-not-x86":
        from dumper.image.pb import core_pb2

        p = ckdir / fmt.core_name(pid)
        data = p.read_bytes()
        core = core_pb2.core_entry()
        core.ParseFromString(data[12:])
        core.mtype = core_pb2.core_entry.AARCH64
        payload = core.SerializeToString()
        p.write_bytes(data[:8] + struct.pack("<I", len(payload)) + payload)


@pytest.mark.parametrize("how", ["core-truncated", "core-missing", "core-not-x86", "mm-truncated", "raw-pages-short"])
def test_damaged_checkpoint_one_line_and_no_core(spawn_target, tmp_path, capsys, how):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "ck", compress=how != "raw-pages-short")
    _damage(tmp_path / "ck", how, t.pid)
    capsys.readouterr()
    rc = cli_main(["export", "--format", "elf", str(tmp_path / "ck"), str(tmp_path / "core")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("dumper: error: "), err
    assert not (tmp_path / "core").exists()
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary file left either


def test_zstd_frame_damage_leaves_no_core(spawn_target, tmp_path, capsys):
    t = spawn_target("dense")
    dump(t.pid, tmp_path / "ck")
    p = next((tmp_path / "ck").glob("pages-*.zst.img"))
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF  # inside the first frame
    p.write_bytes(bytes(data))
    rc = cli_main(["export", "--format", "elf", str(tmp_path / "ck"), str(tmp_path / "core")])
    err = capsys.readouterr().err
    assert rc == 1 and "dumper: error: " in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_existing_output_is_refused_before_the_process_is_touched(spawn_target, tmp_path, capsys):
    t = spawn_target("dense")
    (tmp_path / "core").write_bytes(b"mine")
    rc = cli_main(["core", str(t.pid), "-o", str(tmp_path / "core")])
    assert rc == 1 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "core").read_bytes() == b"mine"
    assert sorted(set(os.listdir(tmp_path)) - {"mapped.bin"}) == ["core"]
    os.symlink(tmp_path / "core", tmp_path / "link")
    assert cli_main(["core", str(t.pid), "-o", str(tmp_path / "link"), "--force"]) == 1
    assert (tmp_path / "core").read_bytes() == b"mine"


def test_core_of_a_wrong_pid_is_one_line(tmp_path, capsys):
    rc = cli_main(["core", "999999999", "-o", str(tmp_path / "core")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "999999999" in err
    assert os.listdir(tmp_path) == []


def test_core_file_is_private(spawn_target, tmp_path):
    t = spawn_target("dense")
    old = os.umask(0)
    try:
        assert cli_main(["core", str(t.pid), "-o", str(tmp_path / "core"), "--kill"]) == 0
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "core").st_mode & 0o777 == 0o600
    t.proc.wait(timeout=10)  # --kill
    assert sorted(set(os.listdir(tmp_path)) - {"mapped.bin"}) == ["core"]  # the temporary checkpoint is gone


# --- more than 65535 program headers ------------------------------------------------------


def test_extended_numbering_past_pn_xnum(tmp_path):
    """fs/binfmt_elf.c fill_extnum_info: e_phnum = PN_XNUM, the count in section header 0."""
    from dumper.export.elf import _headers, _note, _Segment

    segs = [_Segment(0x10000 + i * PAGE_SIZE, PAGE_SIZE, 0, elf.PF_R, "none", None) for i in range(70000)]
    segs[-1].filesz = PAGE_SIZE
    notes = _note(elf.NN_CORE, elf.NT_AUXV, bytes(16))
    head, size, shdr = _headers(segs, notes, PAGE_SIZE)
    core = tmp_path / "core"
    with open(core, "wb") as f:
        f.write(head)
        f.seek(size - len(shdr))
        f.write(shdr)
    eh = elf.Elf64_Ehdr.from_buffer_copy(core.read_bytes())
    assert eh.e_phnum == elf.PN_XNUM and eh.e_shnum == 1 and eh.e_shoff == size - 64
    parsed = _segments(core)
    assert len(parsed) == 70000 and parsed[-1][1:4] == (0x10000 + 69999 * PAGE_SIZE, PAGE_SIZE, PAGE_SIZE)
    r = subprocess.run([_need("readelf"), "-h", str(core)], capture_output=True, text=True)
    assert "65535 (70001)" in r.stdout, r.stdout + r.stderr


# --- CRIU's own images: a process tree --------------------------------------------------------


def _criu() -> str:
    for cand in (os.environ.get("DUMPER_CRIU"), str(Path(__file__).parents[1] / "build/criu-4.2/criu/criu"),
                 "/work/main/build/criu-4.2/criu/criu", shutil.which("criu")):
        if cand and os.access(cand, os.X_OK):
            v = subprocess.run([cand, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"Version: (\d+)\.", v)
            if m and int(m[1]) >= 4:
                return cand
    pytest.skip("no CRIU >= 4.0: set $DUMPER_CRIU or build CRIU 4.2 into build/criu-4.2")


def _sleep_tree() -> tuple[subprocess.Popen, int]:
    """sleep with a sleep child (its own session); (parent Popen, child pid)."""
    sleep = _need("sleep")
    p = subprocess.Popen(["/bin/sh", "-c", f"{sleep} 1000 & exec {sleep} 1001"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        if kids and Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep" and \
                Path(f"/proc/{kids[0]}/comm").read_text().strip() == "sleep":
            return p, int(kids[0])
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise AssertionError("the tree did not start")
        time.sleep(0.02)


def _check_tree_cores(res, root: int, child: int, out: Path) -> None:
    assert sorted(os.listdir(out)) == sorted([f"core.{root}", f"core.{child}"])
    assert os.stat(out).st_mode & 0o777 == 0o700
    for c in res.cores:
        got = _gdb(shutil.which("sleep"), c.path, cmds=["bt"])
        assert "clock_nanosleep" in got and " ?? (" not in got.splitlines()[0], got
        ps = elf.elf_prpsinfo.from_buffer_copy(next(d for _, t, d in _notes(Path(c.path)) if t == elf.NT_PRPSINFO))
        assert ps.pr_pid == c.pid and (c.pid == root or ps.pr_ppid == root)


def test_dumper_tree_gives_a_directory_of_cores_and_core_one_process(tmp_path):
    p, child = _sleep_tree()
    try:
        dump(p.pid, tmp_path / "ck")
        assert cli_main(["core", str(p.pid), "-o", str(tmp_path / "core.one")]) == 0
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    res = export_elf(tmp_path / "ck", tmp_path / "cores")
    _check_tree_cores(res, p.pid, child, tmp_path / "cores")
    # dumper core is gcore: this process only
    pids = [elf.elf_prstatus.from_buffer_copy(d).common.pr_pid for _, t, d in _notes(tmp_path / "core.one")
            if t == elf.NT_PRSTATUS]
    assert pids == [p.pid]


def test_criu_image_set_of_a_tree_gives_a_directory_of_cores(tmp_path):
    criu = _criu()
    if os.geteuid() != 0:
        pytest.skip("criu dump needs root")
    p, child = _sleep_tree()
    try:
        images = tmp_path / "images"
        images.mkdir()
        r = subprocess.run([criu, "dump", "-t", str(p.pid), "-D", str(images), "--leave-running", "-o", "dump.log"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (images / "dump.log").read_text()[-2000:]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    res = export_elf(images, tmp_path / "cores")
    _check_tree_cores(res, p.pid, child, tmp_path / "cores")
    # --pid: one process, OUT is its file
    export_elf(images, tmp_path / "one", pid=child)
    assert (tmp_path / "one").is_file()


# --- mapped files: past their end, changed since the dump ------------------------------------

_PAST_EOF = """
import ctypes, ctypes.util, os, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"A" * 4096 + b"B" * 2048)   # a page and a half
fd = os.open(path, os.O_RDONLY)
a = libc.mmap(None, 4 * 4096, 3, 0x02, fd, 0)   # PROT_READ|PROT_WRITE, MAP_PRIVATE: 4 pages, 2 of them past the end
ctypes.memmove(a, b"hello", 5)                  # one page written: the whole VMA goes in
print("READY", flush=True)
sys.stdin.read()
"""


def test_file_mapping_past_its_end_and_a_changed_file(tmp_path):
    data = tmp_path / "data.bin"
    p = subprocess.Popen([sys.executable, "-c", _PAST_EOF, str(data)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY"
        dump(p.pid, tmp_path / "ck", thaw="leave-stopped")
        res = export_elf(tmp_path / "ck", tmp_path / "core")
        with open_checkpoint(tmp_path / "ck") as ck:
            vma = next(v for v in ck.process().vmas if v.path == str(data))
        seg = next(s for s in _segments(tmp_path / "core") if s[1] == vma.start)
        assert seg[2] == seg[3] == 4 * PAGE_SIZE  # whole, as the kernel dumps it
        with open(tmp_path / "core", "rb") as f:
            f.seek(seg[0])
            body = f.read(seg[2])
        assert body[:5] == b"hello" and body[5:4096] == b"A" * 4091
        assert body[4096:6144] == b"B" * 2048 and body[6144:] == bytes(4 * 4096 - 6144)  # past the end: zeros
        assert not any("holes" in n for n in res.cores[0].notes), res.cores[0].notes
        assert not _live_mismatches(p.pid, tmp_path / "core", tmp_path / "ck")
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()
    # The file changed after the dump: its untouched page cannot be trusted, the saved one still is.
    with open(data, "r+b") as f:
        f.seek(4096)
        f.write(b"C")
    res = export_elf(tmp_path / "ck", tmp_path / "core2")
    assert any("untouched pages left as holes" in n for n in res.cores[0].notes), res.cores[0].notes
    with open(tmp_path / "core2", "rb") as f:
        f.seek(seg[0])
        body = f.read(seg[2])
    assert body[:5] == b"hello" and body[4096:] == bytes(3 * 4096)


_LEADER_EXITS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
void *worker(void *a) { printf("READY %d\n", getpid()); fflush(stdout); for (;;) pause(); }
int main(void) { pthread_t t; pthread_create(&t, NULL, worker, NULL); pthread_exit(NULL); }
"""


def test_core_of_a_process_whose_main_thread_exited(tmp_path):
    (tmp_path / "m.c").write_text(_LEADER_EXITS)
    prog = _compile(tmp_path / "m.c", tmp_path / "m", "-pthread")
    p = Program([str(prog)])
    try:
        deadline = time.monotonic() + 10
        while b"Z" not in Path(f"/proc/{p.pid}/stat").read_bytes().rpartition(b")")[2][:3]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert cli_main(["core", str(p.pid), "-o", str(tmp_path / "core")]) == 0
    finally:
        p.close()
    got = _gdb(str(prog), str(tmp_path / "core"), cmds=["thread apply all bt"])
    assert re.search(r"#\d+ .* worker \(a=0x0\) at .*m\.c:\d+", got), got
    pids = [elf.elf_prstatus.from_buffer_copy(d).common.pr_pid for _, t, d in _notes(tmp_path / "core")
            if t == elf.NT_PRSTATUS]
    assert len(pids) == 1 and pids[0] != p.pid  # the live thread only, as the kernel's core would
