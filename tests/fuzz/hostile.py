"""A seeded, structure-aware fuzzer of hostile checkpoints, one target per
kind of hostile input fixed in this release (issue 15), run against every
reading command.

Each target (:data:`TARGETS`) takes a fresh copy of a base checkpoint
(dumper's compressed and raw sets, a raw set with page checksums, a two-link
chain, a CRIU set with core, pstree, files, fdinfo, pipes-data and tty
images) and damages it the way its kind attacks: image files replaced by
symlinks, FIFOs or directories; mapped-file identities and paths; offsets
and counts at 0, 2**31, 2**63, 2**64 - 1; parent links and checkpoint ids;
raw pages and their checksums; fields of CRIU images. Then
:func:`run_commands` runs show, show --json, mems, rss, verify, cat, diff,
decode, and sometimes flatten and export, in this process, and checks:

* no exception but DumperError leaves a command (a traceback is a bug);
* a failing command prints one ``dumper: error:`` line (verify: its
  problem lines and one summary line), never hangs (alarm);
* one answer across commands: a set that ``show`` cannot open fails every
  command; one that it opens is listed by mems and rss.

Brief by default (the normal suite runs each target for a few seconds,
tests/fuzz/test_fuzz_hostile.py); longer runs::

    DUMPER_FUZZ_SECONDS=600 DUMPER_FUZZ_SEED=$RANDOM .venv/bin/python -m pytest tests/fuzz -q

or ``.venv/bin/python tests/fuzz/hostile.py SECONDS [SEED]``, which prints
the seed of every failing case; replay one with
``.venv/bin/python tests/fuzz/hostile.py --replay TARGET SEED``.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from dumper import cli  # noqa: E402
from dumper.image import format as fmt  # noqa: E402

EXTREMES = [0, 1, 2, 0x7F, 0x80, 4095, 4096, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 52),
            (1 << 63) - 1, 1 << 63, (1 << 64) - 4096, (1 << 64) - 1]
COMMAND_SECONDS = 30  # a command taking longer hangs


class FuzzFailure(AssertionError):
    pass


# --- base checkpoints, made once


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``dumper ARGV`` in this process: (exit code, stdout, stderr).
    Exceptions other than those the CLI turns into one line propagate."""
    parser = cli.build_parser(argv)
    args = parser.parse_args(argv)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape", write_through=True)
    err = io.StringIO()

    def on_alarm(signum, frame):
        raise FuzzFailure(f"dumper {' '.join(argv)} still running after {COMMAND_SECONDS} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(COMMAND_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.run_command(cli._module(args.command).run, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.buffer.getvalue().decode("utf-8", "replace"), err.getvalue()


def _write_chain(base: Path, d0: Path, d1: Path) -> None:
    """``d0`` a copy of ``base`` with a checkpoint id; ``d1`` its child:
    every other entry PE_PARENT, the rest its own pages (raw, checksums)."""
    from dumper.image.checkpoint import new_checkpoint_id, open_checkpoint
    from dumper.image.pb import inventory_pb2
    from dumper.image.writer import CheckpointWriter

    shutil.copytree(base, d0)
    inv_path = d0 / fmt.INVENTORY_NAME
    with open_checkpoint(d0) as ck:
        inv = inventory_pb2.inventory_entry()
        inv.CopyFrom(ck.inventory)
    inv.checkpoint_id = new_checkpoint_id()
    inv_path.write_bytes(fmt.encode_image("INVENTORY", [inv]))
    with open_checkpoint(d0) as ck:
        proc = ck.process()
        with CheckpointWriter(d1, page_size=ck.page_size) as w:
            with w.pages_writer(proc.pid, 1, compress=False) as pw:
                for k, e in enumerate(proc.entries):
                    if k % 2:
                        pw.add_parent(e.vaddr, e.nr_pages)
                    else:
                        pw.add_present(e.vaddr, ck.read(None, e.vaddr, e.nr_pages * ck.page_size))
            w.write_mm(proc.pid, proc.mm.to_message())
            child = inventory_pb2.inventory_entry()
            child.CopyFrom(inv)
            child.checkpoint_id = new_checkpoint_id()
            child.parent_checkpoint_id = inv.checkpoint_id
            child.compression = fmt.COMPRESSION_NONE
            w.write_inventory(child)
            w.commit()
    os.symlink("../" + d0.name, d1 / fmt.PARENT_LINK)


def _add_criu_images(d: Path) -> None:
    """CRIU images dumper reads besides memory: files.img naming the mapped
    file, fdinfo, pipes-data with its payload, tty data, and a real core."""
    from dumper.image.pb import core_pb2, fdinfo_pb2, fown_pb2, pipe_data_pb2, regfile_pb2, tty_pb2

    fown = fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)
    files = [fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=i, reg=regfile_pb2.reg_file_entry(
        id=i, flags=0, pos=0, fown=fown, name=name, size=4096)) for i, name in ((1, "/usr/lib/libc.so.6"),
                                                                                (2, "relative\x1b[31m"))]
    (d / "files.img").write_bytes(fmt.encode_image("FILES", files))
    (d / "fdinfo-2.img").write_bytes(fmt.encode_image("FDINFO", [
        fdinfo_pb2.fdinfo_entry(id=1, flags=0, type=fdinfo_pb2.REG, fd=3)]))
    with open(d / "pipes-data.img", "wb") as f:
        fmt.write_magic(f, "PIPES_DATA")
        fmt.write_entry(f, pipe_data_pb2.pipe_data_entry(pipe_id=7, bytes=5))
        fmt.write_extra(f, b"hello")
    (d / "tty-data.img").write_bytes(fmt.encode_image("TTY_DATA", [tty_pb2.tty_data_entry(tty_id=1, data=b"\x1b]0;x\x07")]))
    core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    core.tc.task_state = 1
    core.tc.exit_code = 0
    core.tc.personality = 0
    core.tc.flags = 0
    core.tc.blk_sigset = 0
    core.tc.comm = "fuzz"
    core.thread_core.futex_rla = 0
    core.thread_core.futex_rla_len = 0
    (d / "core-100.img").write_bytes(fmt.encode_image("CORE", [core]))


def make_bases(root: Path) -> dict[str, Path]:
    """The base checkpoints, in ``root``."""
    from test_cli_decode_mems_rss import build_criu_dir

    data = ROOT / "tests" / "data"
    bases = {}
    for name in ("tiny-zst", "tiny-raw"):
        shutil.copytree(data / name, root / name)
        bases[name] = root / name
    rc, out, err = _run(["flatten", "--no-compress", str(root / "tiny-raw"), str(root / "raw-crc")])
    assert rc == 0, err
    bases["raw-crc"] = root / "raw-crc"
    chain = root / "chain"
    chain.mkdir()
    _write_chain(data / "tiny-zst", chain / "0", chain / "1")
    bases["chain"] = chain / "1"
    criu = build_criu_dir(root / "criu")
    _add_criu_images(criu)
    bases["criu"] = criu
    return bases


# --- mutations


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _scalar_fields(msg, path=()):
    """``(message, field descriptor, index or None)`` of every scalar field
    set in ``msg``, recursively."""
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            items = value if fd.is_repeated else [value]
            for sub in list(items)[:64]:
                yield from _scalar_fields(sub, path + (fd.name,))
        elif fd.is_repeated:
            for i in range(min(len(value), 64)):
                yield msg, fd, i
        else:
            yield msg, fd, None


def _extreme_for(fd, rng: random.Random):
    t = fd.type
    if t in (fd.TYPE_STRING,):
        return rng.choice(["", "/", "../../../../etc/shadow", "/proc/self/mem", "/dev/zero", "x" * 5000,
                           "/tmp/\x1b[2J\x1b]0;owned\x07", "/usr/lib/libc.so.6 (deleted)", "\udcff".encode(
                               "utf-8", "surrogatepass").decode("latin-1")])
    if t == fd.TYPE_BYTES:
        return rng.choice([b"", b"\x00" * 4096, os.urandom(64)])
    if t == fd.TYPE_BOOL:
        return rng.random() < 0.5
    if t == fd.TYPE_ENUM:
        vals = [v.number for v in fd.enum_type.values]
        return rng.choice(vals + [max(vals) + 1, 1 << 20])
    signed = t in (fd.TYPE_INT32, fd.TYPE_INT64, fd.TYPE_SINT32, fd.TYPE_SINT64, fd.TYPE_SFIXED32,
                   fd.TYPE_SFIXED64)
    bits = 32 if t in (fd.TYPE_INT32, fd.TYPE_UINT32, fd.TYPE_SINT32, fd.TYPE_FIXED32, fd.TYPE_SFIXED32) else 64
    if t in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308])
    v = rng.choice(EXTREMES)
    if signed:
        v = rng.choice([v >> 1, -(v >> 1) - 1, -1])
    return v & ((1 << bits) - 1) if not signed else max(min(v, (1 << (bits - 1)) - 1), -(1 << (bits - 1)))


def _set_field(msg, fd, index, value) -> None:
    if fd.type == fd.TYPE_STRING and isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = "bad"
    if index is None:
        setattr(msg, fd.name, value)
    else:
        getattr(msg, fd.name)[index] = value


def mutate_messages(path: Path, rng: random.Random) -> str:
    """Decode image ``path`` (entries and extra payloads), set one to three
    scalar fields of its messages to extreme values, write it back."""
    from dumper.errors import ImageError

    try:
        with open(path, "rb") as f:
            name = fmt.read_magic(f, path)
            if name not in fmt.ENTRY_TYPES:
                return mutate_bytes(path, rng)
            entries = list(fmt.iter_image(f, path, name, f.tell()))
            extras = [fmt.read_extra(f, e.extra) if e.extra is not None else None for e in entries]
    except (ImageError, OSError):
        return mutate_bytes(path, rng)
    fields = [x for e in entries for x in _scalar_fields(e.msg)]
    if not fields:
        return mutate_bytes(path, rng)
    done = []
    for _ in range(rng.randint(1, 3)):
        msg, fd, index = rng.choice(fields)
        if index is None and rng.random() < 0.15:  # a field gone, required ones too
            msg.ClearField(fd.name)
            done.append(f"{fd.name} cleared")
            continue
        value = _extreme_for(fd, rng)
        try:
            _set_field(msg, fd, index, value)
            done.append(f"{fd.name}={value!r:.40}")
        except (ValueError, TypeError):
            continue
    with open(path, "wb") as f:
        fmt.write_magic(f, name)
        for e, extra in zip(entries, extras):
            payload = e.msg.SerializePartialToString()  # required fields may be gone
            f.write(fmt.U32.pack(len(payload)) + payload)
            if extra is not None:
                f.write(extra if rng.random() < 0.8 else extra[: rng.randint(0, len(extra))])
    return f"fields {path.name}: " + ", ".join(done)


def mutate_bytes(path: Path, rng: random.Random) -> str:
    """Flip bytes, overwrite a 4-byte length with an extreme value, cut or
    extend the file."""
    data = bytearray(path.read_bytes())
    what = rng.choice(["flip", "length", "cut", "extend"]) if data else "extend"
    if what == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif what == "length" and len(data) >= 4:
        at = rng.randrange(0, len(data) - 3)
        struct.pack_into("<I", data, at, rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(data), 1 << 28]))
    elif what == "cut":
        del data[rng.randrange(len(data)):]
    else:
        data += rng.randbytes(rng.randint(1, 64))
    path.write_bytes(bytes(data))
    return f"bytes {path.name}: {what}"


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink())


def target_file_kinds(d: Path, rng: random.Random) -> str:
    """Symlinked, FIFO, directory or empty image files (item 7)."""
    victim = rng.choice(_image_files(d))
    what = rng.choice(["symlink-outside", "symlink-sibling", "dangling", "fifo", "directory", "empty"])
    victim.unlink()
    if what == "symlink-outside":
        os.symlink("/etc/passwd", victim)
    elif what == "symlink-sibling":
        os.symlink(rng.choice([p.name for p in _image_files(d)] or ["x"]), victim)
    elif what == "dangling":
        os.symlink("/nonexistent/dumper-fuzz", victim)
    elif what == "fifo":
        os.mkfifo(victim)
    elif what == "directory":
        victim.mkdir()
    else:
        victim.write_bytes(b"")
    return f"{victim.name} -> {what}"


def _mm_file(d: Path) -> Path:
    return next(iter(sorted(d.glob("mm-*.img"))))


def target_mapped_identity(d: Path, rng: random.Random) -> str:
    """What a VMA says of its mapped file: path, device, inode, size, times
    (items 7, issue 13 item 5)."""
    from dumper.image.pb import mm_pb2

    mm_path = _mm_file(d)
    with open(mm_path, "rb") as f:
        fmt.read_magic(f, mm_path)
        (_, payload), = fmt.iter_entries(f, mm_path, 8)
    mm = mm_pb2.mm_entry.FromString(payload)
    changes = []
    files = [v for v in mm.vmas if v.status & fmt.VMA_FILE_PRIVATE] or list(mm.vmas)
    for _ in range(rng.randint(1, 3)):
        v = rng.choice(files)
        field = rng.choice(["path", "dev_major", "dev_minor", "inode", "file_size", "file_mtime_ns", "file_ctime_ns",
                            "pgoff", "shmid", "status"])
        if field == "path":
            v.path = rng.choice(["/etc/shadow", "/dev/zero", "/proc/self/mem", "relative", "/tmp",
                                 str(d / fmt.INVENTORY_NAME), "/nonexistent", "/etc/passwd (deleted)"])
        elif field == "status":
            v.status = rng.choice([v.status | fmt.VMA_FILE_PRIVATE, fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_SHARED,
                                   v.status | fmt.VMA_AREA_GUARD, 0xFFFFFFFF])
        else:
            setattr(v, field, rng.choice(EXTREMES) & ((1 << (32 if field.startswith("dev") else 64)) - 1))
        changes.append(f"{field}={getattr(v, field)!r:.40}")
    mm_path.write_bytes(fmt.encode_image("MM", [mm]))
    return "mm: " + ", ".join(changes)


def target_offsets(d: Path, rng: random.Random) -> str:
    """Offsets and addresses near the ends of their ranges: pgoff, VMA
    bounds, vaddr, pages_off (item 7, item 12)."""
    files = [p for p in _image_files(d) if p.name.startswith(("mm-", "pagemap-"))]
    return mutate_messages(rng.choice(files), rng)


def target_counts(d: Path, rng: random.Random) -> str:
    """Huge counts and sizes: nr_pages, entry sizes, frame counts (item 9)."""
    files = [p for p in _image_files(d) if p.name.startswith(("pagemap-", "pages-", "pstree", "stats"))]
    victim = rng.choice(files)
    if victim.name.startswith("pages-") or rng.random() < 0.3:
        return mutate_bytes(victim, rng)
    return mutate_messages(victim, rng)


def target_parent(d: Path, rng: random.Random) -> str:
    """Broken parent links and ids (item 8, issue 13 item 10)."""
    from dumper.image.pb import inventory_pb2

    link = d / fmt.PARENT_LINK
    what = rng.choice(["dangling", "loop", "outside", "self", "no-parent", "id", "parent-id", "parent-damaged"])
    if what in ("dangling", "loop", "outside", "self", "no-parent"):
        if os.path.lexists(link):
            link.unlink()
        target = {"dangling": "../nonexistent", "loop": ".", "outside": "/tmp", "self": "../" + d.name}.get(what)
        if target is not None:
            os.symlink(target, link)
    elif what == "parent-damaged" and os.path.isdir(link):
        parent = Path(os.path.realpath(link))
        return "parent " + target_file_kinds(parent, rng)
    else:
        inv_path = d / fmt.INVENTORY_NAME
        with open(inv_path, "rb") as f:
            fmt.read_magic(f, inv_path)
            (_, payload), = fmt.iter_entries(f, inv_path, 4)
        inv = inventory_pb2.inventory_entry.FromString(payload)
        value = rng.choice(["", "0" * 32, "x" * 1000, "\x1b[2J"])
        setattr(inv, "checkpoint_id" if what == "id" else "parent_checkpoint_id", value)
        inv_path.write_bytes(fmt.encode_image("INVENTORY", [inv]))
    return f"parent: {what}"


def target_raw_checksums(d: Path, rng: random.Random) -> str:
    """Raw pages and their checksums (item 10)."""
    raw = [p for p in _image_files(d) if p.name.startswith("pages-") and not p.name.endswith(".zst.img")]
    if raw and rng.random() < 0.6:
        p = raw[0]
        data = bytearray(p.read_bytes())
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(data))
        return f"flipped bits in {p.name}"
    return mutate_messages(rng.choice([p for p in _image_files(d) if p.name.startswith("pagemap-")]), rng)


def target_criu_images(d: Path, rng: random.Random) -> str:
    """CRIU images dumper reads now: core, pstree, files/fdinfo, pipes-data
    and tty payloads (decode, criu_files, rseq areas)."""
    files = [p for p in _image_files(d) if p.name.split("-")[0].split(".")[0] in
             ("core", "pstree", "files", "fdinfo", "pipes", "tty", "inventory")]
    victim = rng.choice(files)
    return (mutate_messages if rng.random() < 0.7 else mutate_bytes)(victim, rng)


# target name -> (bases it applies to, mutation)
TARGETS = {
    "file-kinds": (("tiny-zst", "tiny-raw", "criu", "chain"), target_file_kinds),
    "mapped-identity": (("tiny-zst", "raw-crc"), target_mapped_identity),
    "offsets": (("tiny-zst", "tiny-raw", "criu", "chain"), target_offsets),
    "counts": (("tiny-zst", "tiny-raw", "criu", "raw-crc"), target_counts),
    "parent": (("chain",), target_parent),
    "raw-checksums": (("raw-crc", "chain"), target_raw_checksums),
    "criu-images": (("criu",), target_criu_images),
}


# --- the checks


def run_commands(d: Path, base: Path, rng: random.Random, scratch: Path) -> dict[str, int]:
    """Every reading command over damaged checkpoint ``d``; raises
    FuzzFailure (or the escaping exception) on a broken rule."""
    from dumper.errors import DumperError
    from dumper.image.checkpoint import open_checkpoint

    addr = None
    try:
        with open_checkpoint(base) as ck:
            e = ck.process().entries[0]
            addr, size = e.vaddr, e.nr_pages * ck.page_size
    except DumperError:
        pass
    cmds = [["show", str(d)], ["show", "--json", "--all-vmas", str(d)], ["mems", str(d)], ["rss", str(d)],
            ["verify", str(d)], ["verify", "--no-parents", "--json", str(d)], ["diff", str(base), str(d)]]
    if addr is not None:
        cmds += [["cat", str(d), "--addr", hex(addr), "--size", str(min(size, 1 << 20))],
                 ["cat", str(d), "--addr", hex(addr + 100), "--size", "16", "--hexdump"]]
    for p in sorted(d.iterdir())[:6]:
        cmds.append(["decode", "--pretty", str(p)])
    if rng.random() < 0.3:
        cmds.append(["flatten", str(d), str(scratch / "flat")])
        cmds.append(["export", str(d), str(scratch / "exp")])
    codes = {}
    for argv in cmds:
        rc, out, err = _run(argv)
        key = argv[0] + (" --json" if "--json" in argv else "") + (" --no-parents" if "--no-parents" in argv else "")
        codes.setdefault(key, rc)
        if "Traceback" in err:
            raise FuzzFailure(f"dumper {' '.join(argv)}: traceback:\n{err}")
        if rc not in (0, 1):
            raise FuzzFailure(f"dumper {' '.join(argv)}: exit {rc}: {err}")
        lines = err.splitlines()
        if argv[0] == "verify":
            if rc == 1 and not (len(lines) == 1 or "--json" in argv):
                raise FuzzFailure(f"dumper {' '.join(argv)}: {len(lines)} stderr lines:\n{err}")
        elif argv[0] == "diff":
            if rc == 1 and lines and not (len(lines) == 1 and lines[0].startswith("dumper: error: ")):
                raise FuzzFailure(f"dumper {' '.join(argv)}: {err}")
        elif rc == 1:
            if len(lines) != 1 or not lines[0].startswith("dumper: error: "):
                raise FuzzFailure(f"dumper {' '.join(argv)}: not one error line:\n{err}")
        elif err:
            raise FuzzFailure(f"dumper {' '.join(argv)}: succeeded with stderr:\n{err}")
        for name in ("flat", "exp"):
            shutil.rmtree(scratch / name, ignore_errors=True)
    # One answer across commands for the same damaged set.
    if codes["show"] == 1:
        for cmd in ("mems", "rss", "show --json", "verify", "flatten", "export"):
            if codes.get(cmd, 1) != 1:
                raise FuzzFailure(f"show cannot open {d}, {cmd} exits {codes[cmd]}")
    else:
        for cmd in ("mems", "rss", "show --json"):
            if codes[cmd] != 0:
                raise FuzzFailure(f"show opens {d}, {cmd} exits {codes[cmd]}")
    return codes


def one_case(target: str, seed: int, bases: dict[str, Path], scratch: Path) -> str:
    """Damage a copy of a base as ``target`` does (seeded), run the
    commands; returns what was done. Raises on a broken rule, the message
    naming target and seed."""
    rng = random.Random(seed)
    names, mutate = TARGETS[target]
    base = bases[rng.choice(names)]
    work = scratch / "case"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # The chain's child keeps its parent next to it.
    if os.path.lexists(base / fmt.PARENT_LINK):
        parent = Path(os.path.realpath(base / fmt.PARENT_LINK))
        shutil.copytree(parent, work / parent.name, symlinks=True)
    d = work / base.name
    shutil.copytree(base, d, symlinks=True)
    what = []
    try:
        for _ in range(rng.randint(1, 2)):
            what.append(mutate(d, rng))
        run_commands(d, base, rng, scratch)
    except BaseException as err:
        raise FuzzFailure(f"target {target} seed {seed} ({'; '.join(what)}): {err}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "; ".join(what)


def fuzz(target: str, seconds: float, seed: int, bases: dict[str, Path], scratch: Path) -> int:
    """Cases of ``target`` with seeds ``seed``, ``seed + 1``... for about
    ``seconds`` (at least 3 cases); returns how many ran."""
    t0 = time.monotonic()
    n = 0
    while n < 3 or time.monotonic() - t0 < seconds:
        one_case(target, seed + n, bases, scratch)
        n += 1
    return n


def main(argv: list[str]) -> int:
    root = Path(tempfile.mkdtemp(prefix="dumper-fuzz-"))
    try:
        bases = make_bases(root / "bases")
        scratch = root / "scratch"
        scratch.mkdir()
        if argv[1:2] == ["--replay"]:
            print(one_case(argv[2], int(argv[3]), bases, scratch))
            return 0
        seconds = float(argv[1]) if len(argv) > 1 else 60
        seed = int(argv[2]) if len(argv) > 2 else random.randrange(1 << 30)
        failures = 0
        for target in TARGETS:
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < seconds / len(TARGETS):
                try:
                    one_case(target, seed + n, bases, scratch)
                except FuzzFailure as err:
                    failures += 1
                    print(f"FAIL {str(err)[:2000]}", flush=True)
                n += 1
            print(f"{target}: {n} cases from seed {seed}", flush=True)
        return 1 if failures else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
