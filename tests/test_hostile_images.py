"""Hostile and broken checkpoints: one ImageError, never anything else.

Every reader (``read_image``, ``load_inventory``, ``load_pagemap``,
``PagesReader.read_pages``, ``iter_present``) and every read-only command
(``show``, ``decode``, ``mems``, ``rss``) must end a damaged checkpoint in
exactly one :class:`~dumper.errors.ImageError` naming the file and the byte
offset (the commands: exit code 1 and that error on one line), in bounded
time and memory. The fuzz test mutates real checkpoints (a Python process
dumped in this session, compressed and raw), the checked-in tests/data ones
and a CRIU-written set; the other tests build each kind of damage on
purpose. tests/fuzz/fuzz_images.py is the coverage-guided (atheris) version,
run by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dumper import cli
from dumper.dump import dump
from dumper.errors import BadMagic, CorruptImage, ImageError, UnsupportedVersion
from dumper.image import format as fmt
from dumper.image import iter_present, load_inventory, load_pagemap, open_pages, read_image
from dumper.image.pb import zpages_pb2
from dumper.image.reader import PagesReader
from test_cli_decode_mems_rss import build_criu_dir

TESTS = Path(__file__).parent
DATA = TESTS / "data"
EXAMPLE = TESTS.parent / "examples" / "target.py"
TIME_LIMIT = 20  # seconds per fuzz example (SIGALRM): a hang fails, it does not stall the suite
MEMORY_LIMIT = 512 << 20  # growth of the peak RSS over the whole fuzz run


# --- the checkpoints to damage


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Pristine checkpoints by name: real-zst, real-raw (examples/target.py
    dumped now), tiny-zst, tiny-raw (tests/data), criu (CRIU-shaped)."""
    root = tmp_path_factory.mktemp("hostile")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--dense-mib", "1", "--sparse-pages", "10", "--threads", "0", "--until-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().startswith("READY")
        dump(proc.pid, root / "real-zst", thaw="leave-stopped")
        dump(proc.pid, root / "real-raw", thaw="leave-stopped", compress=False)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    out = {"real-zst": root / "real-zst", "real-raw": root / "real-raw"}
    for name in ("tiny-zst", "tiny-raw"):
        out[name] = shutil.copytree(DATA / name, root / name)
    out["criu"] = build_criu_dir(root / "criu")
    return out


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module", autouse=True)
def _bounded_memory():
    """The peak RSS of this process grows by less than MEMORY_LIMIT over
    the module (bombs that allocate and then fail show up here)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    yield
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - before
    assert grew < MEMORY_LIMIT, f"peak RSS grew by {grew >> 20} MiB reading hostile images"


_counter = iter(range(1 << 30))


def _damaged_copy(src: Path, scratch: Path, name: str, data: bytes) -> Path:
    """A copy of checkpoint ``src`` with file ``name`` replaced by ``data``;
    the other files are hard links (never written)."""
    d = scratch / f"c{next(_counter)}"
    d.mkdir()
    for f in src.iterdir():
        if f.name != name:
            os.link(f, d / f.name)
    (d / name).write_bytes(data)
    return d


# --- running everything over a checkpoint


class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so no ``except Exception`` eats it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise _Timeout(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check_error(err: ImageError, d: Path) -> None:
    assert err.path is not None and Path(err.path).parent == d, f"error names no file of {d}: {err}"
    assert err.offset is not None or "cannot open" in err.msg, f"error names no offset: {err}"


def _pids(d: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in d.glob("pagemap-*.img"))


def run_readers(d: Path) -> dict[str, object]:
    """Every reader over ``d``: ``{what: result or ImageError}``. Any other
    exception propagates (a bug)."""
    out: dict[str, object] = {}

    def attempt(what, fn):
        try:
            out[what] = fn()
        except ImageError as err:
            _check_error(err, d)
            out[what] = err

    for f in sorted(d.iterdir()):
        attempt(f"read_image {f.name}", lambda f=f: read_image(f))
    attempt("load_inventory", lambda: load_inventory(d / fmt.INVENTORY_NAME))
    for pid in _pids(d):
        def pages(pid=pid):
            head, entries = load_pagemap(d / fmt.pagemap_name(pid))
            with open_pages(d, head) as r:
                return [(vaddr, data) for vaddr, data in iter_present(entries, r)]

        attempt(f"pages {pid}", pages)
    return out


_parser = None


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``dumper ARGV`` in this process (cli.main with its parser built once)."""
    global _parser
    if _parser is None:
        _parser = cli.build_parser()
    args = _parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.run_command(cli._module(args.command).run, args)
    return rc, out.getvalue(), err.getvalue()


def run_commands(d: Path, files: list[str]) -> dict[str, int]:
    """show, mems, rss over ``d`` and decode over ``files`` of it:
    ``{command: exit code}``; fails unless each exits 0, or 1 with exactly
    one ``dumper: error: PATH at offset N: ...`` line."""
    cmds = [["mems", str(d)], ["rss", str(d)], ["show", str(d)], ["show", "--json", "--all-vmas", str(d)]]
    for name in files:
        cmds += [["decode", str(d / name)], ["decode", "--pretty", str(d / name)]]
    codes = {}
    for argv in cmds:
        rc, out, err = _cli(argv)
        codes[" ".join(argv)] = rc
        if rc == 0:
            assert err == "", (argv, err)
        else:
            assert rc == 1 and out == "", (argv, rc, out)
            lines = err.splitlines()
            assert len(lines) == 1 and err.endswith("\n"), (argv, err)
            assert lines[0].startswith(f"dumper: error: {d}/"), (argv, err)
            assert " at offset " in lines[0] or "cannot open" in lines[0], (argv, err)
    return codes


# --- where the length fields are


def _entry_size_fields(data: bytes, start: int) -> list[tuple[int, int]]:
    fields = []
    off = start
    while off + 4 <= len(data):
        fields.append((off, 4))
        off += 4 + fmt.U32.unpack_from(data, off)[0]
    return fields


def _zstd_fields(frame: bytes, base: int) -> list[tuple[int, int]]:
    """(offset, width) of a zstd frame's content size and block sizes."""
    fhd = frame[4]
    single = fhd >> 5 & 1
    did = (0, 1, 2, 4)[fhd & 3]
    fcs = (single, 2, 4, 8)[fhd >> 6]
    fields = [(base + 5 + (1 - single) + did, fcs)] if fcs else []
    pos = zstandard.frame_header_size(frame)
    while pos + 3 <= len(frame):
        hdr = int.from_bytes(frame[pos : pos + 3], "little")
        fields.append((base + pos, 3))
        pos += 3 + (1 if (hdr >> 1) & 3 == 1 else hdr >> 3)
        if hdr & 1:
            break
    return fields


def length_fields(path: Path) -> list[tuple[int, int]]:
    """(offset, width) of the length-like fields of an image file: entry
    sizes; for a compressed pages file also the footer's index offset and
    every frame's content size and block sizes. Empty for raw pages."""
    data = path.read_bytes()
    if path.name.endswith(".zst.img"):
        with PagesReader(path) as r:
            lay = r.layout
        fields = [(8, 4), (lay.index_offset, 4), (len(data) - fmt.ZPAGES_FOOTER.size, 8)]
        for off, size in zip(lay.offsets.tolist(), lay.sizes.tolist()):
            fields += _zstd_fields(data[off : off + size], off)
        return fields
    if path.name.startswith("pages-"):
        return []
    return _entry_size_fields(data, 4 if path.name == fmt.INVENTORY_NAME else 8)


def _put(data: bytes, off: int, width: int, value: int) -> bytes:
    value &= (1 << (8 * width)) - 1
    return data[:off] + value.to_bytes(width, "little") + data[off + width :]


# --- the fuzz test

_pristine_cache: dict[Path, dict[str, object]] = {}


def _pristine(src: Path) -> dict[str, object]:
    if src not in _pristine_cache:
        _pristine_cache[src] = run_readers(src)
    return _pristine_cache[src]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzz_mutations(sources, scratch, data):
    name = data.draw(st.sampled_from(sorted(sources)), label="checkpoint")
    src = sources[name]
    fname = data.draw(st.sampled_from(sorted(f.name for f in src.iterdir())), label="file")
    orig = (src / fname).read_bytes()
    fields = length_fields(src / fname)
    kind = data.draw(st.sampled_from(["flip", "truncate", "length"] if fields else ["flip", "truncate"]), label="kind")
    if kind == "flip":
        off = data.draw(st.integers(0, len(orig) - 1), label="offset")
        mask = data.draw(st.integers(1, 255), label="xor")
        new = orig[:off] + bytes([orig[off] ^ mask]) + orig[off + 1 :]
    elif kind == "truncate":
        new = orig[: data.draw(st.integers(0, len(orig) - 1), label="length")]
    else:
        off, width = data.draw(st.sampled_from(fields), label="field")
        old = int.from_bytes(orig[off : off + width], "little")
        value = data.draw(
            st.one_of(
                st.sampled_from([0, 1, (1 << 8 * width) - 1, fmt.MAX_ENTRY_SIZE + 1, len(orig), 1 << 31]),
                st.integers(-16, 16).map(lambda delta: old + delta),
                st.integers(0, (1 << 8 * width) - 1),
            ),
            label="value",
        )
        new = _put(orig, off, width, value)
    d = _damaged_copy(src, scratch, fname, new)
    try:
        with _time_limit(TIME_LIMIT):
            got = run_readers(d)
            codes = run_commands(d, [fname])
        base = _pristine(src)
        errors = sorted({type(v).__name__ for k, v in got.items() if isinstance(v, ImageError)
                         and not isinstance(base.get(k), ImageError)})
        event(f"{kind}: readers {'/'.join(errors) or 'fine'}, commands failing {sum(codes.values())}/{len(codes)}")
        # a damaged zstd frame never reads back as different page bytes
        if fname.endswith(".zst.img"):
            for key, value in got.items():
                if key.startswith("pages ") and not isinstance(value, ImageError):
                    assert value == _pristine(src)[key], "damaged frame read back as different data"
    finally:
        shutil.rmtree(d)


# --- every flipped byte of a zstd frame


def _frame_structure(frame: bytes) -> set[int]:
    """Offsets in ``frame`` of its header, block headers and checksum."""
    hsize = zstandard.frame_header_size(frame)
    out = set(range(hsize)) | set(range(len(frame) - 4, len(frame)))
    pos = hsize
    while True:
        hdr = int.from_bytes(frame[pos : pos + 3], "little")
        out |= {pos, pos + 1, pos + 2}
        pos += 3 + (1 if (hdr >> 1) & 3 == 1 else hdr >> 3)
        if hdr & 1:
            return out


def test_frame_byte_flips_never_read_back_wrong(sources):
    # GIVEN the compressed pages of the tiny checkpoint, read through a reader
    # whose file bytes we control
    d = sources["tiny-zst"]
    head, entries = load_pagemap(next(d.glob("pagemap-*.img")))
    raw = (d / "pages-1.zst.img").read_bytes()
    silent = []
    tried = 0
    with open_pages(d, head) as r:
        good = b"".join(data for _, data in iter_present(entries, r))
        lay = r.layout
        # WHEN any byte of any frame is flipped (each single bit, and all bits)
        for off, size in zip(lay.offsets.tolist(), lay.sizes.tolist()):
            structure = _frame_structure(raw[off : off + size])
            for at in range(off, off + size):
                for mask in (1, 2, 4, 8, 16, 32, 64, 128, 255):
                    tried += 1
                    bad = raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :]
                    r._cached = None
                    r._pread = lambda n, o, what, bad=bad: bad[o : o + n]
                    try:
                        got = b"".join(data for _, data in iter_present(entries, r))
                    except CorruptImage as err:
                        assert err.path == str(d / "pages-1.zst.img") and off <= err.offset <= at
                        continue
                    # THEN reading all pages raises CorruptImage (the frame
                    # checksum, or the checks of the header against the index),
                    # or decodes exactly the original pages: compressed data
                    # is not unique (periodic data matches at several
                    # offsets), and a flip that changes no page byte cannot be
                    # seen without a checksum of the compressed bytes
                    assert got == good, f"flip {mask:#x} at {at} read back as different data"
                    assert at - off not in structure, f"flip {mask:#x} of a header byte at {at} went unnoticed"
                    silent.append((at, mask))
    assert len(silent) < tried // 100, silent


# --- each kind of damage, on purpose


def _tiny(sources, kind="zst") -> tuple[Path, int]:
    d = sources[f"tiny-{kind}"]
    return d, _pids(d)[0]


@pytest.mark.parametrize("cut", [0, 3, 7, 9, -1])
@pytest.mark.parametrize("which", ["inventory.img", "mm", "pagemap", "pages-1.zst.img", "stats-dump"])
def test_truncated(sources, scratch, which, cut):
    d, pid = _tiny(sources)
    name = {"mm": fmt.mm_name(pid), "pagemap": fmt.pagemap_name(pid)}.get(which, which)
    data = (d / name).read_bytes()
    bad = _damaged_copy(d, scratch, name, data[:cut])
    got = run_readers(bad)
    err = got[f"read_image {name}"]
    assert isinstance(err, CorruptImage) and err.path == str(bad / name)
    run_commands(bad, [name])


def test_truncated_raw_pages(sources, scratch):
    d, pid = _tiny(sources, "raw")
    data = (d / "pages-1.img").read_bytes()
    for cut, offset in ((len(data) - 1, len(data) - 4096), (len(data) - 4096, len(data) - 4096)):
        bad = _damaged_copy(d, scratch, "pages-1.img", data[:cut])
        err = run_readers(bad)[f"pages {pid}"]
        assert isinstance(err, CorruptImage) and err.path == str(bad / "pages-1.img") and err.offset == offset


@pytest.mark.parametrize(
    "which, word",
    [("inventory.img", 0)] + [(w, i) for w in ("mm", "pagemap", "pages-1.zst.img", "stats-dump") for i in (0, 1)],
)
def test_wrong_magic(sources, scratch, which, word):
    d, pid = _tiny(sources)
    name = {"mm": fmt.mm_name(pid), "pagemap": fmt.pagemap_name(pid)}.get(which, which)
    data = (d / name).read_bytes()
    bad = _damaged_copy(d, scratch, name, _put(data, 4 * word, 4, 0x12345678))
    err = run_readers(bad)[f"read_image {name}"]
    assert isinstance(err, BadMagic) and err.offset == 4 * word
    codes = run_commands(bad, [name])
    assert codes[f"decode {bad / name}"] == 1
    if which in ("inventory.img", "mm", "pagemap"):
        assert codes[f"mems {bad}"] == codes[f"rss {bad}"] == 1


@pytest.mark.parametrize("field, value", [("dumper_format_version", fmt.DUMPER_FORMAT_VERSION + 1),
                                          ("dumper_format_version", 0xFFFFFFFF), ("img_version", 3)])
def test_unknown_format_version(sources, scratch, field, value):
    d, pid = _tiny(sources)
    _, (inv,) = read_image(d / fmt.INVENTORY_NAME)
    setattr(inv, field, value)
    bad = _damaged_copy(d, scratch, fmt.INVENTORY_NAME, fmt.encode_image("INVENTORY", [inv]))
    with pytest.raises(UnsupportedVersion) as ei:
        load_inventory(bad / fmt.INVENTORY_NAME)
    assert ei.value.offset == 4 and str(value) in ei.value.msg
    codes = run_commands(bad, [fmt.INVENTORY_NAME])
    assert codes[f"show {bad}"] == codes[f"mems {bad}"] == codes[f"rss {bad}"] == 1
    # decode shows what is there, whatever the version (like crit decode)
    assert codes[f"decode {bad / fmt.INVENTORY_NAME}"] == 0


@pytest.mark.parametrize("size", [0xFFFFFFFF, fmt.MAX_ENTRY_SIZE + 1, fmt.MAX_ENTRY_SIZE, 1 << 20, 0])
@pytest.mark.parametrize("which", ["mm", "pagemap", "inventory.img"])
def test_absurd_entry_size(sources, scratch, which, size):
    d, pid = _tiny(sources)
    name = {"mm": fmt.mm_name(pid), "pagemap": fmt.pagemap_name(pid)}.get(which, which)
    data = (d / name).read_bytes()
    at = 4 if name == fmt.INVENTORY_NAME else 8
    bad = _damaged_copy(d, scratch, name, _put(data, at, 4, size))
    tracemalloc.start()
    try:
        err = run_readers(bad)[f"read_image {name}"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(err, CorruptImage) and err.offset in (at, at + 4), err
    assert peak < 16 << 20
    run_commands(bad, [name])


# --- compressed pages: lying frames and bombs


def _zfile(sources, scratch, frame: bytes) -> tuple[Path, int]:
    """tiny-zst with its only frame replaced by ``frame`` (index and footer
    rewritten to match); returns (dir, frame offset)."""
    d, _ = _tiny(sources)
    p = d / "pages-1.zst.img"
    with PagesReader(p) as r:
        lay = r.layout
    data = p.read_bytes()
    body = data[: lay.data_offset] + frame
    index = zpages_pb2.zpages_index()
    index.CopyFrom(lay.index)
    index.frame_size[0] = len(frame)
    payload = index.SerializeToString()
    new = body + fmt.U32.pack(len(payload)) + payload + fmt.ZPAGES_FOOTER.pack(len(body), zlib.crc32(payload), fmt.ZPAGES_MAGIC)
    return _damaged_copy(d, scratch, "pages-1.zst.img", new), lay.data_offset


def _with_content_size(frame: bytes, size: int) -> bytes:
    """``frame`` with its header rewritten to declare ``size`` bytes of
    content (8-byte field, keeping the window descriptor if any)."""
    fhd = frame[4]
    single = fhd >> 5 & 1
    hsize = zstandard.frame_header_size(frame)
    fcs = (single, 2, 4, 8)[fhd >> 6]
    head = frame[: hsize - fcs] if fcs else frame[:hsize]
    return head[:4] + bytes([(fhd & 0x3F) | 0xC0]) + head[5:] + struct.pack("<Q", size) + frame[hsize:]


def _read_all(d: Path):
    head, entries = load_pagemap(next(d.glob("pagemap-*.img")))
    with open_pages(d, head) as r:
        for _ in iter_present(entries, r):
            pass


def _bounded(fn, limit=32 << 20):
    tracemalloc.start()
    try:
        with pytest.raises(CorruptImage) as ei, _time_limit(10):
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak >> 20} MiB"
    return ei.value


STREAM = 7 * 4096  # the tiny checkpoint's page stream


def _zeros_frame(nbytes: int, *, content_size: bool, checksum=True) -> bytes:
    c = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size)
    if content_size:
        return c.compress(bytes(nbytes))
    obj = c.compressobj()
    chunk = bytes(1 << 20)
    return b"".join([obj.compress(chunk[: min(len(chunk), nbytes - i)]) for i in range(0, nbytes, len(chunk))]
                    + [obj.flush()])


@pytest.mark.parametrize(
    "make, match",
    [
        # declared sizes that lie, small and huge
        (lambda: _with_content_size(_zeros_frame(STREAM, content_size=True), STREAM - 4096), "content size"),
        (lambda: _with_content_size(_zeros_frame(STREAM, content_size=True), STREAM + 4096), "content size"),
        (lambda: _with_content_size(_zeros_frame(STREAM, content_size=True), 1 << 40), "content size 1099511627776"),
        (lambda: _with_content_size(_zeros_frame(STREAM, content_size=True), (1 << 64) - 3), "content size"),
        # no declared size: refused before decompressing
        (lambda: _zeros_frame(STREAM, content_size=False), "content size"),
        # a tiny frame that inflates to 256 MiB, declaring the expected size
        (lambda: _with_content_size(_zeros_frame(256 << 20, content_size=False), STREAM), "frame 0"),
        # the right content and size, no checksum
        (lambda: _zeros_frame(STREAM, content_size=True, checksum=False), "checksum absent"),
    ],
    ids=["short", "long", "1TiB", "2^64", "unknown-size", "bomb-256MiB", "no-checksum"],
)
def test_lying_frames_and_bombs(sources, scratch, make, match):
    frame = make()
    assert len(frame) < 64 << 10  # tiny on disk
    d, off = _zfile(sources, scratch, frame)
    err = _bounded(lambda: _read_all(d))
    assert err.path == str(d / "pages-1.zst.img") and err.offset == off and match in err.msg
    run_commands(d, ["pages-1.zst.img"])


def _rewrite_zpages(d: Path, scratch: Path, *, head=None, index=None) -> Path:
    p = d / "pages-1.zst.img"
    with PagesReader(p) as r:
        lay = r.layout
    data = p.read_bytes()
    h = zpages_pb2.zpages_head()
    h.CopyFrom(lay.head)
    ix = zpages_pb2.zpages_index()
    ix.CopyFrom(lay.index)
    if head:
        head(h)
    if index:
        index(ix)
    hp = h.SerializeToString()
    frames = data[lay.data_offset : lay.index_offset]
    body = data[:8] + fmt.U32.pack(len(hp)) + hp + frames
    ip = ix.SerializeToString()
    new = body + fmt.U32.pack(len(ip)) + ip + fmt.ZPAGES_FOOTER.pack(len(body), zlib.crc32(ip), fmt.ZPAGES_MAGIC)
    return _damaged_copy(d, scratch, "pages-1.zst.img", new)


@pytest.mark.parametrize(
    "head, index, match",
    [
        (lambda h: setattr(h, "frame_pages", 0xFFFFFFFF), None, "frame_pages"),
        (lambda h: setattr(h, "page_size", 1 << 30), None, "page size"),
        (None, lambda ix: setattr(ix, "nr_pages", (1 << 64) - 1), "frames for"),
        (None, lambda ix: ix.frame_size.extend([1] * 100000), "frames for"),
        (None, lambda ix: ix.frame_size.__setitem__(0, 1 << 62), "frame size"),
    ],
    ids=["frame_pages", "page_size", "nr_pages", "many-frames", "frame-size"],
)
def test_absurd_zpages_layout(sources, scratch, head, index, match):
    d, _ = _tiny(sources)
    bad = _rewrite_zpages(d, scratch, head=head, index=index)
    err = _bounded(lambda: PagesReader(bad / "pages-1.zst.img"))
    assert match in err.msg and err.offset is not None
    run_commands(bad, ["pages-1.zst.img"])


# --- pagemaps that lie about the pages


def _pagemap(d: Path, scratch: Path, edit) -> Path:
    pid = _pids(d)[0]
    name = fmt.pagemap_name(pid)
    _, msgs = read_image(d / name)
    edit(msgs)
    return _damaged_copy(d, scratch, name, fmt.encode_image("PAGEMAP", msgs))


def _wrap(e):
    e.vaddr = (1 << 64) - 4096
    e.compat_nr_pages = e.nr_pages = 2


def _swap_vaddrs(a, b):
    a.vaddr, b.vaddr = b.vaddr, a.vaddr


def _grow(msgs, i, n):
    msgs[i].compat_nr_pages += n
    if msgs[i].HasField("nr_pages"):
        msgs[i].nr_pages += n


@pytest.mark.parametrize("kind", ["zst", "raw"])
def test_entries_past_the_end_of_the_pages(sources, scratch, kind):
    # GIVEN a pagemap whose last entry has more pages than the pages file holds
    d, pid = _tiny(sources, kind)

    def edit(msgs):
        _grow(msgs, len(msgs) - 1, 1)
        msgs[-1].vaddr -= 4096
        msgs[0].ClearField("nr_present_pages")

    bad = _pagemap(d, scratch, edit)
    pages = "pages-1.zst.img" if kind == "zst" else "pages-1.img"
    err = run_readers(bad)[f"pages {pid}"]
    # THEN reading the pages names the pages file and where its length is
    assert isinstance(err, CorruptImage) and err.path == str(bad / pages) and "8 present pages" in err.msg
    with PagesReader(bad / pages) as r:
        assert err.offset == r.end_offset
        with pytest.raises(CorruptImage) as ei:
            r.read_pages(8, 2)
        assert ei.value.offset == r.end_offset
    # one answer across commands for the same damaged set (issue 15 item 12)
    codes = run_commands(bad, [])
    assert codes[f"mems {bad}"] == codes[f"rss {bad}"] == codes[f"show {bad}"] == 1


@pytest.mark.parametrize("kind", ["zst", "raw"])
def test_huge_entry_is_not_allocated(sources, scratch, kind):
    # GIVEN a last entry of 2^40 pages (4 PiB)
    d, pid = _tiny(sources, kind)

    def edit(msgs):
        msgs[-1].compat_nr_pages = 0
        msgs[-1].nr_pages = 1 << 40
        msgs[0].ClearField("nr_present_pages")

    bad = _pagemap(d, scratch, edit)
    # THEN reading the pages fails up front, in bounded memory
    err = _bounded(lambda: _read_all(bad))
    assert f"pagemap has {(1 << 40) + 6} present pages" in err.msg
    codes = run_commands(bad, [])
    assert codes[f"mems {bad}"] == codes[f"rss {bad}"] == codes[f"show {bad}"] == 1


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: setattr(m[2], "vaddr", m[1].vaddr + 4096), "overlaps or precedes"),  # overlapping
        (lambda m: setattr(m[2], "vaddr", m[1].vaddr), "overlaps or precedes"),  # same start
        (lambda m: _swap_vaddrs(m[1], m[2]), "overlaps or precedes"),  # descending
        (lambda m: setattr(m[1], "vaddr", m[1].vaddr + 1), "bad range"),  # unaligned
        (lambda m: _wrap(m[3]), "bad range"),  # past 2^64
        (lambda m: setattr(m[2], "flags", 0x80), "bad flags"),
        (lambda m: setattr(m[2], "flags", fmt.PE_PARENT | fmt.PE_PRESENT), "bad flags"),
        (lambda m: setattr(m[2], "pages_off", 1 << 40), "pages_off"),
        (lambda m: setattr(m[0], "nr_present_pages", 1 << 40), "head says"),
        (lambda m: setattr(m[0], "page_size", 12345), "page size"),
        (lambda m: setattr(m[0], "pages_file", "../../etc/passwd"), "pages_file"),
    ],
    ids=["overlap", "same-start", "descending", "unaligned", "wraps", "unknown-flag", "parent+present",
         "pages_off", "head-total", "page-size", "pages-file"],
)
def test_bad_pagemap(sources, scratch, edit, match):
    d, pid = _tiny(sources)
    name = fmt.pagemap_name(pid)
    bad = _pagemap(d, scratch, edit)
    with pytest.raises(CorruptImage, match=match) as ei:
        load_pagemap(bad / name)
    # the offset is the offending entry's (the head's for head fields)
    offsets = [o for o, _ in fmt.iter_entries(io.BytesIO((bad / name).read_bytes()[8:]), None, 8)]
    assert ei.value.path == str(bad / name) and ei.value.offset in offsets
    codes = run_commands(bad, [name])
    assert codes[f"show {bad}"] == codes[f"mems {bad}"] == codes[f"rss {bad}"] == 1
    assert codes[f"decode {bad / name}"] == 0  # framing and messages are fine


def test_invalid_utf8(sources, scratch):
    d, pid = _tiny(sources)
    name = fmt.mm_name(pid)
    data = (d / name).read_bytes()
    at = data.index(b"[stack]")
    bad = _damaged_copy(d, scratch, name, data[:at] + b"\xff" + data[at + 1 :])
    with pytest.raises(CorruptImage, match=r"mm_entry.vmas\[\d+\].path is not valid UTF-8") as ei:
        read_image(bad / name)
    assert ei.value.offset == 8
    codes = run_commands(bad, [name])
    assert all(rc == 1 for rc in codes.values())


# --- dumper show on images of the wrong type or count (regressions)


@pytest.mark.parametrize("which, content", [("mm", "empty"), ("mm", "stats"), ("stats", "pagemap")])
def test_show_refuses_wrong_images(sources, scratch, which, content):
    d, pid = _tiny(sources)
    data = {
        "empty": fmt.encode_image("MM", []),
        "stats": (d / fmt.STATS_DUMP_NAME).read_bytes(),
        "pagemap": (d / fmt.pagemap_name(pid)).read_bytes(),
    }[content]
    bad = _damaged_copy(d, scratch, fmt.mm_name(pid) if which == "mm" else fmt.STATS_DUMP_NAME, data)
    rc, out, err = _cli(["show", str(bad)])
    if which == "mm":
        assert rc == 1 and err.count("\n") == 1 and " at offset " in err and "mm-" + str(pid) in err
    else:
        # stats-dump is auxiliary: show lists the checkpoint and says the stats are
        # damaged (as mems and rss list it); verify fails on it
        assert rc == 0 and "stats      UNREADABLE: " in out and "stats-dump at offset " in out, (out, err)
        assert _cli(["mems", str(bad)])[0] == 0
        rc, out, err = _cli(["verify", str(bad)])
        assert rc == 1 and "stats-dump at offset " in out


# --- the atheris harness still runs (its seeds, without atheris)


def test_fuzz_harness_seeds():
    spec = importlib.util.spec_from_file_location("fuzz_images", TESTS / "fuzz" / "fuzz_images.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    try:
        for seed in harness.seeds():
            harness.TestOneInput(seed)
            harness.TestOneInput(seed[: len(seed) // 2])
            harness.TestOneInput(seed[:1] + bytes(len(seed) - 1))
    finally:
        for d in harness._scratch.values():
            shutil.rmtree(d.parent, ignore_errors=True)


def test_a_fifo_in_a_checkpoint_never_blocks(sources, scratch):
    # Regression: decode/show opened a FIFO and waited forever for a writer.
    d, pid = _tiny(sources)
    bad = _damaged_copy(d, scratch, fmt.mm_name(pid), b"")
    (bad / fmt.mm_name(pid)).unlink()
    os.mkfifo(bad / fmt.mm_name(pid))
    for argv in (["show", str(bad)], ["decode", str(bad / fmt.mm_name(pid))], ["mems", str(bad)]):
        rc, out, err = _cli(argv)
        assert rc == 1 and "not a regular file" in err and err.count("\n") == 1, (argv, err)


@pytest.mark.parametrize("edit", ["page_size", "extra_pid"])
def test_inventory_errors_name_an_offset_in_show(sources, scratch, edit):
    # Regressions found by the fuzzer once show read through open_checkpoint.
    from dumper.image import load_inventory

    d, pid = _tiny(sources)
    inv = load_inventory(d / fmt.INVENTORY_NAME)
    if edit == "page_size":
        inv.page_size = 4097
    else:
        inv.pids.append(64)
    bad = _damaged_copy(d, scratch, fmt.INVENTORY_NAME, fmt.encode_image("INVENTORY", [inv]))
    rc, out, err = _cli(["show", str(bad)])
    assert rc == 1 and err.count("\n") == 1 and "inventory.img at offset 4" in err, err


# --- issue 15 item 7: what a checkpoint names is opened one safe way


def _cat(d: Path, addr: int, size: int = 16) -> tuple[int, str, str]:
    r = subprocess.run([sys.executable, "-m", "dumper", "cat", str(d), "--addr", hex(addr), "--size", str(size)],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def _ckpt_mapping(tmp_path: Path, name: str, target: str, st=None) -> tuple[Path, int]:
    """A one-process checkpoint whose second VMA privately maps ``target``
    (recording ``st``'s identity, default the target's own): returns
    (directory, address of an untouched page of that VMA)."""
    from test_reader_api import VBASE, _fill, _read_mm, _vma, _write_mm, write_ckpt

    d = tmp_path / name
    write_ckpt(d, [(0, 1, _fill(1, 1))])
    st = st or os.stat(target)
    mm = _read_mm(d)
    v = mm.vmas.add()
    v.CopyFrom(_vma(VBASE + 64 * 4096, VBASE + 66 * 4096))
    v.status = fmt.VMA_AREA_REGULAR | fmt.VMA_FILE_PRIVATE
    v.path, v.inode, v.dev_major, v.dev_minor = target, st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)
    v.file_size, v.file_mtime_ns, v.file_ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
    _write_mm(d, mm)
    return d, VBASE + 64 * 4096


@pytest.fixture
def unprivileged_user():
    """A throwaway system user (created here, removed after): ``(name, uid)``."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to create an unprivileged user")
    name = f"dmpt{os.getpid() % 100000}"
    for _ in range(20):  # another useradd running side by side holds the lock for a moment
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           capture_output=True, text=True)
        if r.returncode in (0, 9):  # 9: the name exists already (a leftover of ours)
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"useradd failed: {r.stderr.strip()}")
    try:
        import pwd

        yield name, pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_mapped_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    d, addr = _ckpt_mapping(tmp_path, "c", str(fifo))
    rc, out, err = _cat(d, addr)
    assert (rc, out) == (1, "") and err.count("\n") == 1 and "is not a regular file" in err


def test_shadow_named_by_a_user_checkpoint_is_not_read(tmp_path, unprivileged_user):
    if not os.path.exists("/etc/shadow"):
        pytest.skip("no /etc/shadow here")
    _, uid = unprivileged_user
    for attempt in range(5):
        # Other users created meanwhile (tests run side by side) rewrite
        # /etc/shadow: then the recorded identity rightly no longer matches.
        before = os.stat("/etc/shadow")
        d, addr = _ckpt_mapping(tmp_path, f"c{attempt}", "/etc/shadow")  # real dev/inode/size/times: anyone can stat it
        os.chown(d, uid, uid)
        rc, out, err = _cat(d, addr)
        assert (rc, out) == (1, "") and f"file not read: checkpoint owned by uid {uid}" in err
        r = subprocess.run([sys.executable, "-m", "dumper", "verify", str(d)], capture_output=True, text=True)
        assert r.returncode == 1 and f"file not read: checkpoint owned by uid {uid}" in r.stdout
        # the same checkpoint owned by root reads the file (root could read it anyway)
        os.chown(d, 0, 0)
        rc, out, err = _cat(d, addr, 4)
        after = os.stat("/etc/shadow")
        if (before.st_ino, before.st_ctime_ns) != (after.st_ino, after.st_ctime_ns):
            continue
        assert rc == 0 and out == Path("/etc/shadow").read_text()[:4], err
        return
    pytest.fail("/etc/shadow kept changing under the test")


def test_symlinked_pages_file_in_a_user_checkpoint(tmp_path, unprivileged_user):
    from test_reader_api import VBASE, _fill, write_ckpt

    _, uid = unprivileged_user
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * 4096)
    os.chmod(secret, 0o600)
    d = write_ckpt(tmp_path / "c", [(0, 1, _fill(1, 1))], compress=False)
    (d / fmt.pages_name(1)).unlink()
    os.symlink(secret, d / fmt.pages_name(1))
    os.chown(d, uid, uid)
    rc, out, err = _cat(d, VBASE)
    assert (rc, out) == (1, "") and "pages-1.img: is a symbolic link" in err
    r = subprocess.run([sys.executable, "-m", "dumper", "export", str(d), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "is a symbolic link" in r.stderr and not (tmp_path / "out").exists()


def test_pgoff_2_63_is_bounded(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 8192)
    d, addr = _ckpt_mapping(tmp_path, "c", str(f))
    from test_reader_api import _read_mm, _write_mm

    mm = _read_mm(d)
    mm.vmas[-1].pgoff = 1 << 63
    _write_mm(d, mm)
    rc, out, err = _cat(d, addr)
    assert (rc, out) == (1, "") and "beyond any file" in err and "Traceback" not in err


# --- issue 15 item 9: memory follows the file with a small constant


# The peak RSS of the child's own address space: VmHWM, in KiB. (ru_maxrss
# is no use here: exec carries the parent's peak over, and pytest's is large.)
_HWM = "def hwm():\n    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])\n"

_RSS_CHILD = _HWM + """
import sys
from dumper.image.checkpoint import open_checkpoint
import numpy, google.protobuf
base = hwm()
with open_checkpoint(sys.argv[1]) as ck:
    n = len(ck.process().entries)
    assert ck.read(None, ck.process().entries[n - 1].vaddr, 16) == bytes(16)
peak = hwm()
print(n, (peak - base) * 1024)
"""


def test_three_million_pagemap_entries_in_bounded_memory(tmp_path):
    from synthetic import write_big_checkpoint

    n = 3_000_000
    write_big_checkpoint(tmp_path / "big", n)
    assert (tmp_path / "big" / "pagemap-1000.img").stat().st_size == 8 + 4 + 2 + 17 * n
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(tmp_path / "big")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    count, grown = map(int, r.stdout.split())
    assert count == n
    assert grown <= 64 * n, f"{grown / n:.1f} bytes per pagemap entry"


_OPEN_CHILD = _HWM + """
import sys
from dumper.image.checkpoint import open_checkpoint
import numpy, google.protobuf
base = hwm()
with open_checkpoint(sys.argv[1]) as ck:
    proc = ck.process()
    facts = [len(proc.vmas), proc.ppid, len(ck.pstree) if ck.pstree is not None else 0,
             ck.read(None, proc.entries[0].vaddr, 4) == b"ZZZZ"]
peak = hwm()
print(*facts, (peak - base) * 1024)
"""


def _open_grown(d: Path) -> list[int]:
    r = subprocess.run([sys.executable, "-c", _OPEN_CHILD, str(d)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return [int(x) if x.lstrip("-").isdigit() else x for x in r.stdout.split()]


def test_400k_vmas_in_memory_proportional_to_the_mm_file(tmp_path):
    """Issue 15 item 9: an mm of 400,000 VMAs took 1 GB in every reader."""
    from synthetic import write_big_mm_checkpoint

    n = 400_000
    mm = write_big_mm_checkpoint(tmp_path / "big", n)
    size = mm.stat().st_size
    nvmas, ppid, tree, read_ok, grown = _open_grown(tmp_path / "big")
    assert (nvmas, read_ok) == (n, "True")
    # The file's bytes plus about 61 bytes of columns a VMA (measured: 2.7x the file).
    assert grown <= 3.5 * size, f"{grown / size:.2f} x the mm file, {grown / n:.0f} bytes a VMA"


def test_million_process_pstree_in_memory_proportional_to_the_file(tmp_path):
    """Issue 15 item 9: a pstree of 1 million entries took 0.7-1.1 GB."""
    from synthetic import write_big_pstree_checkpoint

    n = 1_000_000
    pstree = write_big_pstree_checkpoint(tmp_path / "big", n)
    size = pstree.stat().st_size
    nvmas, ppid, tree, read_ok, grown = _open_grown(tmp_path / "big")
    assert (nvmas, ppid, tree, read_ok) == (0, 1 << 14, n, "True")
    # Four uint32 columns, the threads and an index: about 57 bytes an entry (2.4x the file).
    assert grown <= 3 * size, f"{grown / size:.2f} x the pstree file, {grown / n:.0f} bytes an entry"


def test_show_mems_rss_of_400k_vmas_stay_bounded(tmp_path):
    """Not only opening: the listing commands keep memory proportional too
    (show --json streams its VMAs; rss parses only the VMAs it names)."""
    from synthetic import write_big_mm_checkpoint

    n = 200_000
    mm = write_big_mm_checkpoint(tmp_path / "big", n)
    size = mm.stat().st_size
    child = _HWM + "import sys\nfrom dumper.cli import main\nrc = main(sys.argv[1:])\nprint(hwm(), file=sys.stderr)\nsys.exit(rc)"
    for argv in (["show", "--json"], ["rss"], ["show", "--all-vmas"]):
        r = subprocess.run([sys.executable, "-c", child, *argv, str(tmp_path / "big")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peak = int(r.stderr.strip().splitlines()[-1]) * 1024
        # the interpreter with numpy and protobuf is about 40 MiB
        assert peak <= (48 << 20) + 5 * size, (argv, f"peak {peak >> 20} MiB for a {size >> 20} MiB mm file")


# --- issue 15 item 13: a consistent raw set declaring 1 TiB of pages (a sparse pages file)


def _sparse_set(d: Path, nbytes: int, *, status: int) -> int:
    """A CRIU-style raw set: one VMA of ``nbytes`` at 1 TiB with ``status``
    bits, one PE_PRESENT entry over all of it, a sparse pages-1.img of that
    size holding a single data page (its first). Returns the VMA start."""
    from dumper.image.pb import inventory_pb2, mm_pb2, pagemap_pb2, vma_pb2

    start, pid = 1 << 40, 4242
    d.mkdir()
    inv = inventory_pb2.inventory_entry(img_version=fmt.CRTOOLS_IMAGES_V1_1, fdinfo_per_id=True)
    (d / fmt.INVENTORY_NAME).write_bytes(fmt.encode_image("INVENTORY", [inv]))
    vma = vma_pb2.vma_entry(start=start, end=start + nbytes, pgoff=0, shmid=1, prot=3, flags=0x22,
                            status=fmt.VMA_AREA_REGULAR | status, fd=-1)
    mm = mm_pb2.mm_entry(**{f.name: 0 for f in mm_pb2.mm_entry.DESCRIPTOR.fields
                            if f.is_required}, vmas=[vma])
    (d / fmt.mm_name(pid)).write_bytes(fmt.encode_image("MM", [mm]))
    n = nbytes // 4096
    (d / fmt.pagemap_name(pid)).write_bytes(fmt.encode_image("PAGEMAP", [
        pagemap_pb2.pagemap_head(pages_id=1),
        pagemap_pb2.pagemap_entry(vaddr=start, compat_nr_pages=n if n < 1 << 32 else 0, nr_pages=n,
                                  flags=fmt.PE_PRESENT)]))
    with open(d / fmt.pages_name(1), "wb") as f:
        f.write(b"\x5a" * 4096)
        f.truncate(nbytes)
    return start


def test_sparse_terabyte_raw_set_is_copied_in_the_time_of_its_data(tmp_path):
    """flatten and export ran without bound on 1 TiB of declared pages that
    the file does not hold: now the holes (zeros in anonymous memory, read
    as zeros without an entry too) are left out, and the copy reads the
    same as the source."""
    from dumper.image.checkpoint import open_checkpoint

    src = tmp_path / "tera"
    start = _sparse_set(src, 1 << 40, status=fmt.VMA_ANON_PRIVATE)
    for argv, out in ((["flatten", str(src), str(tmp_path / "flat")], tmp_path / "flat"),
                      (["flatten", "--no-compress", str(src), str(tmp_path / "flatraw")], tmp_path / "flatraw"),
                      (["export", str(src), str(tmp_path / "exp")], tmp_path / "exp")):
        t0 = time.monotonic()
        rc, stdout, err = _cli(argv)
        assert rc == 0 and "Traceback" not in err, (argv, err)
        assert time.monotonic() - t0 < 120, argv  # (reading 1 TiB would take hours)
        with open_checkpoint(out) as ck:
            assert ck.read(None, start, 8) == b"\x5a" * 8
            assert ck.read(None, start + (1 << 39), 8) == bytes(8)  # left out: zeros all the same
            assert ck.process().nr_pages_present == 1
        rc, stdout, err = _cli(["verify", str(out)])
        assert rc == 0, (argv, stdout, err)
    # a hole where zeros cannot be left out (a private file mapping) is refused, past 1 GiB
    src2 = tmp_path / "tera-file"
    _sparse_set(src2, 1 << 40, status=fmt.VMA_FILE_PRIVATE)
    for argv in (["flatten", str(src2), str(tmp_path / "flat2")], ["export", str(src2), str(tmp_path / "exp2")]):
        rc, stdout, err = _cli(argv)
        assert rc == 1 and err.count("\n") == 1 and "holes of the pages file" in err, (argv, err)
    assert not (tmp_path / "flat2").exists() and not (tmp_path / "exp2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


def test_vmas_lacking_required_fields_are_copied_not_a_traceback(tmp_path):
    """Readers accept a VMA without CRIU's required ``fd`` (or an mm without
    ``mm_brk``); flatten and export then crashed encoding it (found by the
    fuzzer). They write CRIU's "unknown" values instead."""
    from dumper.image.checkpoint import open_checkpoint
    from dumper.image.pb import mm_pb2

    src = tmp_path / "src"
    start = _sparse_set(src, 8 << 12, status=fmt.VMA_ANON_PRIVATE)
    (p,) = src.glob("mm-*.img")
    with open(p, "rb") as f:
        fmt.read_magic(f, p)
        ((_, payload),) = fmt.iter_entries(f, p, 8)
    mm = mm_pb2.mm_entry.FromString(payload)
    mm.vmas[0].ClearField("fd")
    mm.ClearField("mm_brk")
    payload = mm.SerializePartialToString()
    p.write_bytes(fmt._magic_words("MM") + fmt.U32.pack(len(payload)) + payload)
    for argv, out in ((["flatten", str(src), str(tmp_path / "flat")], tmp_path / "flat"),
                      (["export", str(src), str(tmp_path / "exp")], tmp_path / "exp")):
        rc, stdout, err = _cli(argv)
        assert rc == 0 and err == "", (argv, err)
        with open_checkpoint(out) as ck:
            v = ck.process().vmas[0]
            assert (v.start, v.fd) == (start, -1) and ck.process().mm.mm_brk == 0
            assert ck.read(None, start, 4) == b"\x5a" * 4


def test_interrupted_export_is_one_line_and_leaves_nothing(tmp_path):
    """Ctrl-C during a long copy: one line, status 130, no partial output."""
    src = tmp_path / "giga"
    _sparse_set(src, 1 << 30, status=fmt.VMA_FILE_PRIVATE)  # 1 GiB of zeros to write out
    for cmd in ("export", "flatten"):
        out = tmp_path / f"out-{cmd}"
        p = subprocess.Popen([sys.executable, "-m", "dumper", cmd, str(src), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # as from a terminal: SIGINT not inherited as ignored (a background job's)
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [q for q in tmp_path.iterdir() if q.name.startswith(f".out-{cmd}")]:
            time.sleep(0.01)
        # Stopped while its temporary output exists, the interrupt lands
        # mid-copy however fast this machine writes (a 0.2 s pause was
        # longer than the whole export on a quiet machine).
        p.send_signal(signal.SIGSTOP)
        assert [q for q in tmp_path.iterdir() if q.name.startswith(f".out-{cmd}")], "finished before the signal"
        p.send_signal(signal.SIGINT)
        p.send_signal(signal.SIGCONT)
        stdout, err = p.communicate(timeout=120)
        assert p.returncode == 130 and err == "dumper: interrupted\n", (cmd, p.returncode, err)
        assert not out.exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".")], \
            list(tmp_path.iterdir())


# --- issue 15 item 12: one answer across commands for a set without mm-PID.img


def test_set_without_mm_one_answer(sources, tmp_path):
    d = tmp_path / "nomm"
    shutil.copytree(sources["tiny-zst"], d)
    (mm,) = d.glob("mm-*.img")
    mm.unlink()
    outs = {}
    for argv in (["show", str(d)], ["mems", str(d)], ["rss", str(d)], ["verify", str(d)],
                 ["flatten", str(d), str(tmp_path / "flat")], ["export", str(d), str(tmp_path / "exp")]):
        rc, out, err = _cli(argv)
        assert rc == 0 and "Traceback" not in err, (argv, err)
        outs[argv[0]] = out
    assert "no mm image" in outs["show"] and "no mm image" in outs["mems"]
    from dumper.image.checkpoint import open_checkpoint

    with open_checkpoint(d) as a, open_checkpoint(tmp_path / "flat") as b:
        e = a.process().entries[0]
        assert b.read(None, e.vaddr, 4096) == a.read(None, e.vaddr, 4096)
