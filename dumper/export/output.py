"""Where ELF cores are created: the project's safe-output mechanism
(:mod:`dumper.image.safefs`: ``OutputFile``/``OutputDir``, a file or a
directory that appears complete or not at all, 0600/0700, created through
directory descriptors with O_EXCL|O_NOFOLLOW).

Until that module is on this branch, :class:`OutputFile` and
:class:`OutputDir` below offer the same surface with the same promises
for the cases a core needs: the work is created next to ``dest`` under a
temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600, through the
parent directory's descriptor), fsynced, and renamed onto ``dest`` only on
commit; an abort (or an exception in the ``with`` block) removes it, so a
failed export never leaves a partial core.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterable

from ..errors import DumperError, DumpError

try:  # the project's mechanism, once merged
    from ..image.safefs import OutputDir, OutputFile  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised until safefs lands
    OutputDir = OutputFile = None  # type: ignore[assignment,misc]

__all__ = ["OutputFile", "OutputDir"]

_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CORE_NAME = re.compile(r"^core\.\d+$")  # what a directory of cores holds


def _open_parent(dest: Path, error: type[DumperError]) -> int:
    try:
        return os.open(dest.parent, _O_DIR)
    except OSError as err:
        raise error(f"cannot create {dest}: {dest.parent}: {err.strerror}") from err


def _tmp_name(name: str) -> str:
    return f".{name[:160]}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _new_file(dir_fd: int, name: str) -> BinaryIO:
    fd = os.open(name, _O_NEW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        return open(fd, "wb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def _sync_close(f: BinaryIO) -> None:
    try:
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()


class _FallbackFile:
    """See the module docstring (the stand-in for safefs.OutputFile)."""

    def __init__(self, dest: str | os.PathLike, *, force: bool = False,
                 error: type[DumperError] = DumpError) -> None:
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.error = error
        self.force = force
        self.committed = False
        self._dir_fd = _open_parent(self.dest, error)
        self._tmp: str | None = None
        self.file: BinaryIO | None = None
        try:
            self._judge()
            self._tmp = _tmp_name(self.dest.name)
            self.file = _new_file(self._dir_fd, self._tmp)
        except OSError as err:
            self.abort()
            raise error(f"cannot create {self.dest}: {err.strerror}") from err
        except BaseException:
            self.abort()
            raise

    def _judge(self) -> None:
        try:
            st = os.lstat(self.dest.name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise self.error(f"{self.dest} exists and is not a regular file: refusing to replace it")
        if not self.force:
            raise self.error(f"{self.dest} already exists (--force replaces it)")

    def commit(self) -> Path:
        if self.committed:
            return self.dest
        try:
            _sync_close(self.file)
            self._judge()  # again: nothing may have appeared meanwhile
            os.rename(self._tmp, self.dest.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except OSError as err:
            raise self.error(f"writing {self.dest}: {err.strerror}") from err
        self.committed = True
        os.close(self._dir_fd)
        self._dir_fd = -1
        return self.dest

    def abort(self) -> None:
        if self.committed:
            return
        if self.file is not None and not self.file.closed:
            with contextlib.suppress(OSError):
                self.file.close()
        if self._tmp is not None and self._dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            self._tmp = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class _FallbackDirHandle:
    def __init__(self, fd: int, path: Path, error: type[DumperError]) -> None:
        self.fd = fd
        self.path = path
        self.error = error

    def create(self, name: str) -> BinaryIO:
        if not name or "/" in name or name in (".", ".."):
            raise self.error(f"bad file name {name!r}")
        try:
            f = _new_file(self.fd, name)
        except OSError as err:
            raise self.error(f"creating {self.path / name}: {err.strerror}") from err
        f.sync_close = lambda: _sync_close(f)  # type: ignore[attr-defined]
        return f


class _FallbackDir:
    """See the module docstring (the stand-in for safefs.OutputDir): an
    absent ``dest`` or an empty directory is filled; with ``force`` an
    existing directory of cores (only regular ``core.PID`` files in it) is
    replaced at commit; anything else is refused."""

    def __init__(self, dest: str | os.PathLike, *, force: bool = False, sources: Iterable = (),
                 error: type[DumperError] = DumpError, what: str = "directory", **_ignored) -> None:
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.error = error
        self.force = force
        self.what = what
        self.committed = False
        self._parent_fd = _open_parent(self.dest, error)
        self._tmp: str | None = None
        self.dir: _FallbackDirHandle | None = None
        try:
            self._judge()
            self._tmp = _tmp_name(self.dest.name)
            os.mkdir(self._tmp, 0o700, dir_fd=self._parent_fd)
            fd = os.open(self._tmp, _O_DIR | os.O_NOFOLLOW, dir_fd=self._parent_fd)
            os.fchmod(fd, 0o700)
            self.dir = _FallbackDirHandle(fd, self.dest, error)
        except OSError as err:
            self.abort()
            raise error(f"cannot create {self.dest}: {err.strerror}") from err
        except BaseException:
            self.abort()
            raise

    def _judge(self) -> None:
        try:
            st = os.lstat(self.dest.name, dir_fd=self._parent_fd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise self.error(f"{self.dest} exists and is not a directory: refusing to replace it")
        fd = os.open(self.dest.name, _O_DIR | os.O_NOFOLLOW, dir_fd=self._parent_fd)
        try:
            names = os.listdir(fd)
            ours = all(_CORE_NAME.match(n) and stat.S_ISREG(os.lstat(n, dir_fd=fd).st_mode) for n in names)
        finally:
            os.close(fd)
        if not names:
            return
        if not ours:
            raise self.error(f"refusing to replace {self.dest}: not empty and not a {self.what}")
        if not self.force:
            raise self.error(f"{self.dest} already exists (--force replaces a {self.what})")

    def commit(self) -> Path:
        if self.committed:
            return self.dest
        try:
            os.fsync(self.dir.fd)
            self._judge()
            old = None
            try:
                os.rename(self._tmp, self.dest.name, src_dir_fd=self._parent_fd, dst_dir_fd=self._parent_fd)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                old = _tmp_name(self.dest.name) + ".old"
                os.rename(self.dest.name, old, src_dir_fd=self._parent_fd, dst_dir_fd=self._parent_fd)
                os.rename(self._tmp, self.dest.name, src_dir_fd=self._parent_fd, dst_dir_fd=self._parent_fd)
            os.fsync(self._parent_fd)
        except OSError as err:
            raise self.error(f"writing {self.dest}: {err.strerror}") from err
        self.committed = True
        self._tmp = None
        if old is not None:
            _remove_tree(self._parent_fd, old)
        self._close()
        return self.dest

    def _close(self) -> None:
        if self.dir is not None and self.dir.fd >= 0:
            os.close(self.dir.fd)
            self.dir.fd = -1
        if self._parent_fd >= 0:
            os.close(self._parent_fd)
            self._parent_fd = -1

    def abort(self) -> None:
        if self.committed:
            return
        if self._tmp is not None and self._parent_fd >= 0:
            _remove_tree(self._parent_fd, self._tmp)
            self._tmp = None
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def _remove_tree(parent_fd: int, name: str) -> None:
    import shutil

    with contextlib.suppress(OSError):
        shutil.rmtree(name, dir_fd=parent_fd)


if OutputFile is None:
    OutputFile = _FallbackFile  # type: ignore[misc,assignment]
    OutputDir = _FallbackDir  # type: ignore[misc,assignment]
