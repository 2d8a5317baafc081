"""Coverage-guided fuzzing of the image readers and the read-only commands
with atheris (libFuzzer for Python). Not run by pytest or CI: the file name
does not start with ``test_``; tests/test_hostile_images.py replays the seed
corpus through :func:`TestOneInput` so the harness cannot rot.

Set up once (atheris is not a dependency of dumper; it ships manylinux
wheels for CPython 3.11)::

    .venv/bin/pip install atheris

Run from the repository root::

    .venv/bin/python tests/fuzz/fuzz_images.py --make-corpus /tmp/dumper-corpus
    .venv/bin/python tests/fuzz/fuzz_images.py /tmp/dumper-corpus -max_total_time=600 \
        -max_len=65536 -len_control=0 -timeout=10 -rss_limit_mb=2048

(any libFuzzer flag works: ``-runs=N``, ``-jobs=4``; ``-max_len``/``-len_control``
let mutations reach whole files from the start). A crash
is any exception other than :class:`dumper.errors.ImageError`, a hang past
``-timeout`` or memory past ``-rss_limit_mb``; libFuzzer writes the input to
``crash-*``/``timeout-*``/``oom-*``; replay one with
``.venv/bin/python tests/fuzz/fuzz_images.py crash-...``.

An input is one byte choosing which file of a small checkpoint it replaces
(:data:`TARGETS`, over the checked-in tests/data/tiny-zst and tiny-raw),
then that file's new content. Each input runs every reader and command
that looks at the file.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

# (checkpoint, file) an input's first byte selects, modulo the length.
TARGETS: list[tuple[str, str]] = [
    ("tiny-zst", "inventory.img"),
    ("tiny-zst", "mm-*.img"),
    ("tiny-zst", "pagemap-*.img"),
    ("tiny-zst", "pages-1.zst.img"),
    ("tiny-zst", "stats-dump"),
    ("tiny-raw", "pagemap-*.img"),
    ("tiny-raw", "pages-1.img"),
    ("tiny-raw", "mm-*.img"),
]

_scratch: dict[str, Path] = {}
_originals: dict[Path, bytes] = {}


def _scratch_dir(name: str) -> Path:
    """A private copy of tests/data/NAME, made once per process."""
    if name not in _scratch:
        root = Path(tempfile.mkdtemp(prefix="dumper-fuzz-"))
        shutil.copytree(DATA / name, root / name)
        _scratch[name] = root / name
        for f in (root / name).iterdir():
            _originals[f] = f.read_bytes()
    return _scratch[name]


def _target(data: bytes) -> tuple[Path, Path, bytes]:
    name, pattern = TARGETS[data[0] % len(TARGETS)]
    d = _scratch_dir(name)
    (path,) = d.glob(pattern)
    return d, path, _originals[path]


def exercise(d: Path) -> None:
    """Run every reader and read-only command over checkpoint ``d``.
    Raises ImageError, or anything else on a bug."""
    from dumper.cli import decode, mems, rss, show
    from dumper.errors import ImageError
    from dumper.image import format as fmt
    from dumper.image import iter_present, load_pagemap, open_pages, read_image

    for f in sorted(d.iterdir()):
        if not f.name.startswith("pages-"):  # raw pages: BadMagic, always
            with contextlib.suppress(ImageError):
                read_image(f)
        with contextlib.suppress(ImageError):
            decode.decode(f, pretty=True)
    with contextlib.suppress(ImageError):
        show.summarize(str(d))
    from dumper.image.checkpoint import open_checkpoint

    with open_checkpoint(d) as ck:
        names = mems.file_names(ck)
        for pid in ck.pids:
            mems.mems_lines(ck.process(pid), names)
            rss.rss_lines(ck.process(pid), names)
            head, entries = load_pagemap(d / fmt.pagemap_name(pid))
            with open_pages(d, head) as pages:
                for _ in iter_present(entries, pages):
                    pass


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    from dumper.errors import ImageError

    if not data:
        return
    d, path, original = _target(data)
    path.write_bytes(data[1:])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exercise(d)
    except ImageError:
        pass
    finally:
        path.write_bytes(original)


def make_corpus(out: Path) -> None:
    """One seed per target: the unmodified file."""
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, pattern) in enumerate(TARGETS):
        (path,) = (DATA / name).glob(pattern)
        (out / f"seed-{i}-{name}-{path.name}").write_bytes(bytes([i]) + path.read_bytes())


def seeds() -> list[bytes]:
    out = []
    for i, (name, pattern) in enumerate(TARGETS):
        (path,) = (DATA / name).glob(pattern)
        out.append(bytes([i]) + path.read_bytes())
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--make-corpus":
        make_corpus(Path(argv[2]))
        return 0
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["dumper"]):
        import dumper.cli.decode  # noqa: F401
        import dumper.cli.mems  # noqa: F401
        import dumper.cli.rss  # noqa: F401
        import dumper.cli.show  # noqa: F401
        import dumper.image.reader  # noqa: F401
    atheris.Setup(argv, TestOneInput)
    try:
        atheris.Fuzz()
    finally:
        for d in _scratch.values():
            shutil.rmtree(d.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
