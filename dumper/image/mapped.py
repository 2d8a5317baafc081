"""The one way to open a file a checkpoint names.

A checkpoint is hostile input: it may come from another user or another
machine, and dumper often runs as root. Two kinds of files are opened:

* **Image files** (:class:`ImageDir`): always plain names inside the
  checkpoint directory, opened with ``openat`` relative to the directory's
  descriptor, ``O_NOFOLLOW`` (a symlinked ``pages-1.img`` is refused, not
  followed), ``O_NONBLOCK`` (a FIFO cannot block the open), and accepted only
  when ``fstat`` says regular file.
* **Mapped files** (:func:`open_mapped_file`): the file behind a private file
  VMA, read for its untouched pages. Opened only when the checkpoint
  directory belongs to the invoking user or to root (otherwise a user-made
  checkpoint naming ``/etc/shadow`` would make root print it) and the
  invoking user may read the file anyway; ``O_NONBLOCK|O_NOFOLLOW`` (final
  component); then it must be a regular file whose identity matches what the
  dump recorded: device and inode, and (dumps since format 1 with
  ``file_size``) size, mtime and ctime in nanoseconds. An in-place edit
  (``dd conv=notrunc``) changes mtime and ctime; ctime cannot be set back
  from user space, so a match means the file was not written since the dump.

:func:`file_identity` gathers those facts at dump time (from the mapped file
itself, ``/proc/PID/map_files/START-END``, while the target is frozen: one
``stat`` per file VMA, no file data read).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageError
from .pb import vma_pb2

__all__ = [
    "ImageDir",
    "FileIdentity",
    "MappedFileError",
    "file_identity",
    "record_file_identity",
    "recorded_identity",
    "open_mapped_file",
    "printable_path",
]

_OPEN_IMAGE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def printable_path(text: str) -> str:
    """``text`` with control and unprintable characters escaped (a hostile
    name must not drive the terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ImageDir:
    """An open checkpoint directory: image files are opened relative to its
    descriptor. ``path`` (absolute, symlinks resolved), ``fd``, ``uid`` (the
    directory's owner). ImageError if ``path`` is not a readable directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        given = os.fspath(path)
        try:
            fd = os.open(given, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            why = "not a checkpoint directory" if err.errno in (errno.ENOTDIR, errno.ENOENT) else \
                f"cannot open: {err.strerror}"
            raise ImageError(given, None, why) from err
        self.fd = fd
        st = os.fstat(fd)
        self.uid = st.st_uid
        self.dev_ino = (st.st_dev, st.st_ino)
        self.path = Path(os.path.realpath(given))

    def _name(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise ImageError(self.path, None, f"bad image file name {printable_path(name)!r}")
        return name

    def open(self, name: str) -> BinaryIO:
        """Image file ``name`` opened for reading. ImageError (naming the
        file) if it is missing, a symlink, or not a regular file."""
        path = self.path / self._name(name)
        try:
            fd = os.open(name, _OPEN_IMAGE, dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ImageError(path, None, "is a symbolic link: image files must be regular files "
                                 "inside the checkpoint directory") from err
            raise ImageError(path, None, f"cannot open: {err.strerror}") from err
        return fdopen_regular(fd, path)

    def exists(self, name: str) -> bool:
        """Whether directory entry ``name`` exists (of any type, not followed)."""
        try:
            os.lstat(self._name(name), dir_fd=self.fd)
            return True
        except OSError:
            return False

    def listdir(self) -> list[str]:
        try:
            return os.listdir(self.fd)
        except OSError as err:
            raise ImageError(self.path, None, f"cannot list: {err.strerror}") from err

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What identifies a file's contents at one instant: device numbers,
    inode, size in bytes, mtime and ctime in ns. A field that was not
    recorded is None and not compared."""

    dev_major: int | None
    dev_minor: int | None
    inode: int | None
    size: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changes(self, now: FileIdentity) -> list[str]:
        """What differs in ``now`` (fields recorded here only), as phrases."""
        out = []
        if None not in (self.dev_major, self.inode) and (self.dev_major, self.dev_minor, self.inode) != \
                (now.dev_major, now.dev_minor, now.inode):
            out.append(f"is not the file that was mapped (dump: device {self.dev_major}:{self.dev_minor} inode {self.inode}; "
                       f"now {now.dev_major}:{now.dev_minor} inode {now.inode})")
            return out
        if self.size is not None and self.size != now.size:
            out.append(f"size {self.size} bytes at the dump, now {now.size}")
        if self.mtime_ns is not None and self.mtime_ns != now.mtime_ns:
            out.append("modified since the dump (mtime changed)")
        elif self.ctime_ns is not None and self.ctime_ns != now.ctime_ns:
            out.append("changed since the dump (ctime changed)")
        return out


def file_identity(path_or_fd: str | os.PathLike | int) -> FileIdentity:
    """The identity of a file now: ``stat`` of a path (followed: pass
    ``/proc/PID/map_files/START-END`` for a mapped file) or ``fstat`` of a
    descriptor. Raises OSError."""
    st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return FileIdentity.from_stat(st)


def record_file_identity(vma: vma_pb2.vma_entry, ident: FileIdentity) -> None:
    """Store ``ident``'s size, mtime and ctime in ``vma`` (fields 41-43; its
    device and inode are already there, from /proc/PID/maps)."""
    if ident.size is not None:
        vma.file_size = ident.size
    if ident.mtime_ns is not None:
        vma.file_mtime_ns = ident.mtime_ns
    if ident.ctime_ns is not None:
        vma.file_ctime_ns = ident.ctime_ns


def recorded_identity(vma: vma_pb2.vma_entry) -> FileIdentity:
    """The identity a dumper ``vma_entry`` records for its file."""

    def get(name: str):
        return getattr(vma, name) if vma.HasField(name) else None

    return FileIdentity(get("dev_major"), get("dev_minor"), get("inode"),
                        get("file_size"), get("file_mtime_ns"), get("file_ctime_ns"))


class MappedFileError(ImageError):
    """A mapped file a checkpoint needs cannot be used: gone, changed, not
    a regular file, or not to be opened for this user."""

    __module__ = "dumper"


def open_mapped_file(path: str, want: FileIdentity, *, checkpoint_uid: int, what: str) -> tuple[int, int]:
    """Open the file at absolute ``path`` for the untouched pages ``what``
    describes (e.g. "pid 7's untouched private pages [0x..., 0x...)");
    ``(fd, size)``. ``checkpoint_uid``: the owner of the checkpoint directory.

    Raises MappedFileError (naming the file and the reason) when the
    checkpoint belongs to another non-root user ("file not read: checkpoint
    owned by uid N"), the invoking user could not read the file, it cannot
    be opened, is not a regular file, or differs from ``want``.
    """
    shown = printable_path(path)
    me = os.geteuid()
    if checkpoint_uid not in (me, 0):
        raise MappedFileError(shown, None, f"file not read: checkpoint owned by uid {checkpoint_uid} "
                              f"(needed for {what})")
    if not path.startswith("/") or "\0" in path:
        raise MappedFileError(shown, None, f"not an absolute path: cannot supply {what}")
    try:
        readable = os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids)
    except (OSError, ValueError):
        readable = False
    if not readable and os.path.lexists(path):
        raise MappedFileError(shown, None, f"file not read: uid {me} may not read it (needed for {what})")
    try:
        fd = os.open(path, _OPEN_IMAGE)
    except OSError as err:
        if err.errno == errno.ELOOP:
            why = "is now a symbolic link"
        elif err.errno == errno.ENOENT:
            why = "is gone"
        else:
            why = f"cannot be opened: {err.strerror}"
        raise MappedFileError(shown, None, f"{why}: cannot supply {what}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MappedFileError(shown, None, f"is not a regular file now: cannot supply {what}")
        changes = want.changes(FileIdentity.from_stat(st))
        if changes:
            raise MappedFileError(shown, None, f"{'; '.join(changes)}: cannot supply {what}")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def fdopen_regular(fd: int, path) -> BinaryIO:
    """``fd`` as a binary file object if it is a regular file; otherwise
    ``fd`` is closed and ImageError names ``path``."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(path, None, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
