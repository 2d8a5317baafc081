"""Creating output in directories other users may control: the one mechanism.

dumper runs as root and writes process memory (secrets) into directories
that other users may own or write (``dumper dump PID -D /home/alice/ck``).
Every command that creates a file or a checkpoint-like directory goes
through this module:

- :class:`OutputDir` -- a directory (dump, pre-dump, flatten, export; any
  later writer of an image set) that appears at ``dest`` complete, or not at
  all; write into its :attr:`OutputDir.dir`;
- :class:`OutputFile` -- the same for one file (``cat -o``, an ELF core);
  write into its :attr:`OutputFile.file`;
- :class:`Dir` -- an open directory: :meth:`Dir.create`, :meth:`Dir.mkdir`
  and :meth:`Dir.symlink` work relative to its file descriptor.

Use::

    with OutputDir(dest, force=force, sources=[src]) as out:
        f = out.dir.create("inventory.img")          # 0600, O_EXCL|O_NOFOLLOW
        ...
        f.sync_close()                               # flush + fsync + close
        sub = out.dir.mkdir("parent")                # 0700
        out.commit()                                 # or leave the block: nothing appears

Layout while writing::

    PARENT/                        opened once, then used only through its fd
      .NAME.tmp-PID-START-RAND/    the stage: mkdir 0700, opened O_NOFOLLOW,
                                   checked to be ours and empty
        NAME                       the work: our directory (or file)

What holds, and why:

1. **Nothing is created outside the work.** The stage is opened right after
   ``mkdir`` with ``O_DIRECTORY|O_NOFOLLOW`` and refused unless it is an
   empty directory owned by our euid (someone who swapped the name in that
   instant cannot make us adopt their directory). The work is made inside
   the stage, which only we can write. Every file is created relative to a
   directory fd with ``O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC``. A user who
   renames the stage and puts a symlink in its place changes nothing we
   write: no path is looked up again.
2. **What appears at ``dest`` is our work, or nothing.** Commit is
   ``renameat2(stage_fd, NAME, parent_fd, NAME, RENAME_NOREPLACE)``. The
   source is looked up inside the stage, where nobody else can rename
   anything, and the stage cannot be moved out of PARENT by another user
   (moving a directory to another parent needs write permission on it).
   Before the rename the work is checked to hold exactly the entries we
   created (same inodes), so even a stage emptied by another root process
   is never installed half-written.
3. **Replacing is atomic.** An existing ``dest`` that may be replaced is
   swapped with ours by ``RENAME_EXCHANGE``: readers see the old or the new
   one, never neither. The old entry, now inside the stage, must be the very
   inode that was checked (else it is swapped back and the command fails);
   then it is removed through descriptors (``shutil.rmtree`` with
   ``dir_fd``, which never follows symlinks).
4. **Private.** Directories 0700, files 0600, whatever the umask (``fchmod``
   through the descriptor).
5. **Durable.** Files are fsynced through their descriptors by their writer
   (``sync_close()``), the work directory (and its subdirectories) before
   the rename, PARENT after it.
6. **Leftovers of killed runs are removed, and only they.** A stage is named
   after its creator's pid and start time; the next output into the same
   PARENT/NAME removes stages whose creator is gone -- only ones that are
   ours (a real directory owned by our euid, opened ``O_NOFOLLOW``, holding
   nothing but its work entry, also ours), through descriptors.
7. **PARENT's permissions.** World-writable without the sticky bit: refused
   (anyone could replace the output after it is written). Group-writable
   without the sticky bit: a :class:`~dumper.errors.DumperWarning`. PARENT's
   owner can always rename or replace what is in it, once written: that is
   their directory; what we wrote stays root's and 0600.

Replacement rules, one for every command that writes a checkpoint:

==============================  ==============================================
``dest`` is                     :class:`OutputDir`
==============================  ==============================================
absent                          created
an empty directory              filled (CRIU users ``mkdir`` it first): our
                                directory takes its place atomically, so it
                                becomes ours and 0700
a checkpoint (a directory with  replaced only with ``force``, and only if
a regular ``inventory.img``)    ``replace_check`` does not object
anything else                   refused, ``force`` or not: a non-empty
                                directory, a regular file, a symlink (never
                                followed, never replaced), a device
inside a ``sources`` directory  refused (checked by inode, up every ``..``)
==============================  ==============================================

:class:`OutputFile` creates an absent ``dest`` and replaces a regular file
only with ``force``; anything else is refused.

On file systems without ``renameat2`` flags (EINVAL: NFS, older FUSE) the
same checks run, but the last step falls back to ``link``/``rename`` and an
existing ``dest`` is moved aside before ours takes its place (a moment
without ``dest``).

Errors: the ``error`` class given (default :class:`~dumper.errors.DumpError`),
one line naming the path and the reason, with the OSError as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import secrets
import shutil
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from ..errors import DumperError, DumpError, DumperWarning, NoSuchProcess
from ..kernel.fs import RENAME_EXCHANGE, RENAME_NOREPLACE
from ..kernel.libc import libc
from ..proc.process import Process

__all__ = ["Dir", "OutputDir", "OutputFile", "renameat2", "CHECKPOINT_MARKER"]

# A directory holding this regular file is a checkpoint (or an image set).
CHECKPOINT_MARKER = "inventory.img"

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Bytes of NAME kept in a stage's name: the rest (".tmp-PID-START-RAND")
# must fit in NAME_MAX (255) too.
_STAGE_NAME_BYTES = 160
_OLD = ".old"  # where an existing dest waits inside the stage (rename fallback)
# renameat2 flags unsupported: by the file system (EINVAL), or at all (ENOSYS: seccomp, old kernels).
_NO_FLAGS = (errno.EINVAL, errno.ENOSYS)

libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.renameat2.restype = ctypes.c_int


def renameat2(olddirfd: int, oldname: str, newdirfd: int, newname: str, flags: int) -> None:
    """``renameat2(2)``: ``flags`` from :mod:`dumper.kernel.fs` (RENAME_*).
    Raises OSError (EINVAL where the file system lacks the flag)."""
    if libc.renameat2(olddirfd, os.fsencode(oldname), newdirfd, os.fsencode(newname), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), newname)


def _check_name(name: str, error: type[DumperError]) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise error(f"bad file name {name!r}")


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _a(what: str) -> str:
    return f"an {what}" if what[:1] in "aeiou" else f"a {what}"


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


class _PrivateFile(io.BufferedWriter):
    """A new file of a :class:`Dir` (a BufferedWriter). ``close()`` is the
    usual one; :meth:`sync_close` makes the data durable first, and
    :meth:`discard` drops a file that will not be kept. ``display_name`` is
    the path to name in messages."""

    display_name: str

    def sync_close(self) -> None:
        """Flush, fsync and close (OSError as usual; the file is closed anyway)."""
        if not self.closed:
            try:
                self.flush()
                os.fsync(self.fileno())
            finally:
                self.discard()

    def discard(self) -> None:
        """Close without syncing, ignoring write errors (the file is dropped)."""
        if not self.closed:
            with contextlib.suppress(OSError):
                super().close()
            if not self.closed:
                with contextlib.suppress(OSError):
                    self.raw.close()


class Dir:
    """An open directory; everything is created relative to its descriptor.

    ``path`` is for messages only (the place the directory will have once
    committed); it is never opened. Entries created through this object are
    remembered with their inode, so :meth:`check_contents` can prove the
    directory holds exactly them. Errors: ``error`` (one line, the path and
    the reason).
    """

    def __init__(self, fd: int, path: Path, error: type[DumperError] = DumpError) -> None:
        self.fd = fd
        self.path = path
        self.error = error
        self.entries: dict[str, tuple[int, int]] = {}  # name -> (st_dev, st_ino)
        self._children: dict[str, Dir] = {}

    def _fail(self, what: str, name: str, err: OSError) -> DumperError:
        return self.error(f"{what} {self.path / name}: {err.strerror}")

    def _live(self) -> None:
        if self.fd < 0:
            raise self.error(f"{self.path}: the output is already closed")

    def _remember(self, name: str, st: os.stat_result) -> None:
        self.entries[name] = (st.st_dev, st.st_ino)

    def create(self, name: str, *, buffering: int = 1 << 20) -> BinaryIO:
        """A new file ``name``, mode 0600, open for writing (buffered).
        ``O_CREAT|O_EXCL|O_NOFOLLOW``: an existing entry, even a symlink, is
        an error. Close it with ``sync_close()`` (flush + fsync) to keep it,
        ``discard()`` to drop it; a plain ``close()`` does not fsync."""
        self._live()
        _check_name(name, self.error)
        try:
            fd = os.open(name, _O_NEW, 0o600, dir_fd=self.fd)
        except OSError as err:
            raise self._fail("creating", name, err) from err
        try:
            os.fchmod(fd, 0o600)  # the umask may have cleared bits
            self._remember(name, os.fstat(fd))
            raw = open(fd, "wb", buffering=0, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        f = _PrivateFile(raw, buffer_size=max(buffering, 1))
        f.display_name = os.fspath(self.path / name)
        return f

    def mkdir(self, name: str) -> Dir:
        """A new subdirectory ``name``, mode 0700, opened ``O_NOFOLLOW``."""
        self._live()
        _check_name(name, self.error)
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
            fd = os.open(name, _O_DIR, dir_fd=self.fd)
        except OSError as err:
            raise self._fail("creating directory", name, err) from err
        try:
            os.fchmod(fd, 0o700)
            self._remember(name, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        child = Dir(fd, self.path / name, self.error)
        self._children[name] = child
        return child

    def symlink(self, target: str | os.PathLike, name: str) -> None:
        """A symlink ``name`` -> ``target`` (stored as given, not followed)."""
        self._live()
        _check_name(name, self.error)
        try:
            os.symlink(os.fspath(target), name, dir_fd=self.fd)
            self._remember(name, os.stat(name, dir_fd=self.fd, follow_symlinks=False))
        except OSError as err:
            raise self._fail("creating link", name, err) from err

    def fsync(self) -> None:
        """fsync this directory and, first, every subdirectory made here."""
        self._live()
        for child in self._children.values():
            child.fsync()
        try:
            os.fsync(self.fd)
        except OSError as err:
            raise self.error(f"syncing {self.path}: {err.strerror}") from err

    def check_contents(self) -> None:
        """``error`` unless the directory (and each subdirectory made here)
        holds exactly the entries created through this object, same inodes."""
        self._live()
        try:
            names = set(os.listdir(self.fd))
            for name in names | set(self.entries):
                st = _lstat_at(self.fd, name)
                if st is None or self.entries.get(name) != (st.st_dev, st.st_ino):
                    raise self.error(f"{self.path / name} was changed by someone else while being written")
        except OSError as err:
            raise self.error(f"checking {self.path}: {err.strerror}") from err
        for child in self._children.values():
            child.check_contents()

    def close(self) -> None:
        """Close this descriptor and those of its subdirectories. Idempotent."""
        for child in self._children.values():
            child.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_parent(parent: Path, dest: Path, error: type[DumperError]) -> int:
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise error(f"{os.fsdecode(dest)[:80]}...: path too long ({err.strerror})") from err
        if err.errno == errno.ENOENT:
            raise error(f"{parent}: no such directory") from err
        if err.errno == errno.ENOTDIR:
            raise error(f"{parent}: not a directory") from err
        raise error(f"{parent}: {err.strerror}") from err


def _check_parent(fd: int, parent: Path, name: str, error: type[DumperError]) -> None:
    mode = os.fstat(fd).st_mode
    if mode & stat.S_ISVTX:
        return
    if mode & stat.S_IWOTH:
        raise error(f"{parent} is writable by every user and has no sticky bit (mode {stat.S_IMODE(mode):04o}): "
                    f"anyone could replace {name} once written; use another directory")
    if mode & stat.S_IWGRP:
        warnings.warn(DumperWarning(
            f"{parent} is writable by its group (mode {stat.S_IMODE(mode):04o}): "
            f"the group's members can rename or replace {name} once written"), stacklevel=4)


def _creator_alive(pid: int, start: int) -> bool:
    try:
        st = Process(pid).stat()
    except NoSuchProcess:
        return False
    except DumperError:
        return True  # cannot tell: keep it
    return st.starttime == start and st.state not in ("Z", "X")


def _stage_prefix(name: str) -> str:
    short = os.fsdecode(os.fsencode(name)[:_STAGE_NAME_BYTES])
    return f".{short}.tmp-"


class _Stage:
    """The parent, the private stage inside it, and the final renames."""

    def __init__(self, dest: str | os.PathLike, error: type[DumperError]) -> None:
        self.error = error
        text = os.fspath(dest)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        if not text:
            raise error("empty output name")
        self.dest = Path(os.path.abspath(text))
        self.name = self.dest.name
        if not self.name:
            raise error(f"{text}: not a name for a new file or directory")
        if len(os.fsencode(self.name)) > 255:
            raise error(f"{self.name[:40]}...: file name longer than 255 bytes (NAME_MAX)")
        self.parent_fd = _open_parent(self.dest.parent, self.dest, error)
        self.stage_fd = -1
        self.stage_name: str | None = None
        self.prefix = _stage_prefix(self.name)
        try:
            _check_parent(self.parent_fd, self.dest.parent, self.name, error)
        except BaseException:
            self.close()
            raise

    # --- looking at dest

    def lstat_dest(self) -> os.stat_result | None:
        try:
            return _lstat_at(self.parent_fd, self.name)
        except OSError as err:
            raise self.error(f"{self.dest}: {err.strerror}") from err

    def open_dest_dir(self, st: os.stat_result) -> int:
        """The existing ``dest`` directory ``st``, opened O_NOFOLLOW."""
        try:
            fd = os.open(self.name, _O_DIR, dir_fd=self.parent_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise self.error(f"{self.dest} changed while being examined: {err.strerror}") from err
            raise self.error(f"cannot examine {self.dest}: {err.strerror}") from err
        if not _same(os.fstat(fd), st):
            os.close(fd)
            raise self.error(f"{self.dest} changed while being examined")
        return fd

    # --- stage

    def make_stage(self) -> None:
        """Remove stale stages for NAME, then create ours (mkdtemp semantics)."""
        self.remove_stale()
        me = Process(os.getpid()).stat()
        for _ in range(100):
            name = f"{self.prefix}{me.pid}-{me.starttime}-{secrets.token_hex(4)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self.parent_fd)
            except FileExistsError:
                continue
            except OSError as err:
                raise self.error(f"cannot create a directory in {self.dest.parent}: {err.strerror}") from err
            break
        else:
            raise self.error(f"cannot create a directory in {self.dest.parent}: every name taken")
        self.stage_name = name
        try:
            fd = os.open(name, _O_DIR, dir_fd=self.parent_fd)
        except OSError as err:
            raise self.error(f"{self.dest.parent / name} was replaced while being created "
                             f"({err.strerror}): is someone else writing in {self.dest.parent}?") from err
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or os.listdir(fd):
            os.close(fd)
            owner = "" if st.st_uid == os.geteuid() else f" (it belongs to uid {st.st_uid}, not {os.geteuid()})"
            raise self.error(f"{self.dest.parent / name} was replaced while being created{owner}: "
                             f"is someone else writing in {self.dest.parent}?")
        os.fchmod(fd, 0o700)
        self.stage_fd = fd
        self.stage_st = st

    def remove_stale(self) -> None:
        """Remove stages for NAME whose creator is gone (see the module doc, 6)."""
        try:
            names = [n for n in os.listdir(self.parent_fd) if n.startswith(self.prefix)]
        except OSError:
            return
        for n in names:
            m = re.fullmatch(r"(\d+)-(\d+)-[0-9a-f]{8}", n[len(self.prefix):])
            if m and not _creator_alive(int(m.group(1)), int(m.group(2))):
                with contextlib.suppress(OSError):
                    self._remove_stage(n)

    def _remove_stage(self, name: str) -> None:
        fd = os.open(name, _O_DIR, dir_fd=self.parent_fd)
        try:
            st = os.fstat(fd)
            euid = os.geteuid()
            if st.st_uid != euid:
                return
            items = os.listdir(fd)
            if not set(items) <= {self.name}:
                return  # not the shape of a stage (or an old entry a fallback left aside): keep it
            for item in items:
                ist = os.stat(item, dir_fd=fd, follow_symlinks=False)
                if ist.st_uid != euid:
                    return  # e.g. a user's directory a killed run was replacing
                if stat.S_ISDIR(ist.st_mode):
                    shutil.rmtree(item, dir_fd=fd)
                else:
                    os.unlink(item, dir_fd=fd)
        finally:
            os.close(fd)
        again = _lstat_at(self.parent_fd, name)
        if again is not None and _same(again, st):
            os.rmdir(name, dir_fd=self.parent_fd)  # only ever removes an empty directory

    # --- install

    def install(self, replaceable: Callable[[os.stat_result], None]) -> os.stat_result | None:
        """Move the work (``stage/NAME``) to ``dest``. ``replaceable(st)``
        raises ``error`` unless an existing ``dest`` with stat ``st`` may be
        replaced. Returns the replaced entry's stat (it now sits in the
        stage as NAME), or None."""
        for _ in range(3):
            st = self.lstat_dest()
            if st is None:
                try:
                    self._rename(RENAME_NOREPLACE)
                    return None
                except FileExistsError:
                    continue  # appeared meanwhile: judge it
            replaceable(st)
            self._exchange(st)
            return st
        raise self.error(f"{self.dest} keeps changing while being written: is someone else writing there?")

    def _rename(self, flags: int) -> None:
        try:
            renameat2(self.stage_fd, self.name, self.parent_fd, self.name, flags)
        except OSError as err:
            if err.errno == errno.EEXIST:
                raise FileExistsError(err.errno, err.strerror) from err
            if err.errno not in _NO_FLAGS:
                raise self.error(f"installing {self.dest}: {err.strerror}") from err
            self._rename_fallback()

    def _rename_fallback(self) -> None:
        # No RENAME_NOREPLACE here. A file: link() never replaces. A
        # directory: rename() replaces at most an empty directory.
        work = os.stat(self.name, dir_fd=self.stage_fd, follow_symlinks=False)
        try:
            if stat.S_ISDIR(work.st_mode):
                if self.lstat_dest() is not None:
                    raise FileExistsError(errno.EEXIST, "exists")
                os.rename(self.name, self.name, src_dir_fd=self.stage_fd, dst_dir_fd=self.parent_fd)
            else:
                os.link(self.name, self.name, src_dir_fd=self.stage_fd, dst_dir_fd=self.parent_fd,
                        follow_symlinks=False)
                os.unlink(self.name, dir_fd=self.stage_fd)
        except FileExistsError:
            raise
        except OSError as err:
            raise self.error(f"installing {self.dest}: {err.strerror}") from err

    def _exchange(self, st: os.stat_result) -> None:
        try:
            renameat2(self.stage_fd, self.name, self.parent_fd, self.name, RENAME_EXCHANGE)
        except OSError as err:
            if err.errno not in _NO_FLAGS:
                raise self.error(f"replacing {self.dest}: {err.strerror}") from err
            self._exchange_fallback(st)
            return
        old = _lstat_at(self.stage_fd, self.name)
        if old is None or not _same(old, st):
            with contextlib.suppress(OSError):  # put back whatever we took
                renameat2(self.stage_fd, self.name, self.parent_fd, self.name, RENAME_EXCHANGE)
            raise self.error(f"{self.dest} changed while being replaced: nothing replaced")

    def _exchange_fallback(self, st: os.stat_result) -> None:
        # No RENAME_EXCHANGE: move the old entry into the stage, check it is
        # the one we judged, then put ours in its place.
        try:
            os.rename(self.name, _OLD, src_dir_fd=self.parent_fd, dst_dir_fd=self.stage_fd)
        except OSError as err:
            raise self.error(f"replacing {self.dest}: {err.strerror}") from err
        old = _lstat_at(self.stage_fd, _OLD)
        if old is None or not _same(old, st):
            self._put_back_old()
            raise self.error(f"{self.dest} changed while being replaced: nothing replaced")
        try:
            self._rename(RENAME_NOREPLACE)
        except (FileExistsError, DumperError):
            self._put_back_old()
            raise self.error(f"{self.dest} changed while being replaced: nothing replaced") from None
        # Ours is in place; the old entry waits as NAME in the stage, as after an exchange.
        os.rename(_OLD, self.name, src_dir_fd=self.stage_fd, dst_dir_fd=self.stage_fd)

    def _put_back_old(self) -> None:
        with contextlib.suppress(OSError):
            if self.lstat_dest() is None:
                os.rename(_OLD, self.name, src_dir_fd=self.stage_fd, dst_dir_fd=self.parent_fd)

    def sync_parent(self) -> None:
        try:
            os.fsync(self.parent_fd)
        except OSError as err:
            raise self.error(f"syncing {self.dest.parent}: {err.strerror}") from err

    # --- clean-up

    def discard_stage(self, *, old_was_empty: bool = False) -> None:
        """Remove the stage and what it holds (our work, or the entry we
        replaced). A replaced directory that was judged empty is removed
        with rmdir only: if its owner wrote into it meanwhile it is moved
        next to ``dest`` as ``NAME.replaced-RAND`` and a warning names it."""
        if self.stage_fd < 0:
            return
        st = _lstat_at(self.stage_fd, self.name)
        gone = True
        if st is not None:
            try:
                if stat.S_ISDIR(st.st_mode) and old_was_empty:
                    try:
                        os.rmdir(self.name, dir_fd=self.stage_fd)
                    except OSError as err:
                        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                        self._keep_aside()
                elif stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(self.name, dir_fd=self.stage_fd)
                else:
                    os.unlink(self.name, dir_fd=self.stage_fd)
            except OSError:
                gone = False  # left for the next run's stale clean-up
        if gone and self.stage_name is not None:
            again = _lstat_at(self.parent_fd, self.stage_name)
            if again is not None and _same(again, self.stage_st):
                with contextlib.suppress(OSError):
                    os.rmdir(self.stage_name, dir_fd=self.parent_fd)
        os.close(self.stage_fd)
        self.stage_fd = -1

    def _keep_aside(self) -> None:
        short = os.fsdecode(os.fsencode(self.name)[:_STAGE_NAME_BYTES])
        aside = f"{short}.replaced-{secrets.token_hex(4)}"
        renameat2(self.stage_fd, self.name, self.parent_fd, aside, RENAME_NOREPLACE)
        warnings.warn(DumperWarning(
            f"the empty directory {self.dest} received files while being replaced: "
            f"they are kept in {self.dest.parent / aside}"), stacklevel=4)

    def close(self) -> None:
        if self.stage_fd >= 0:
            os.close(self.stage_fd)
            self.stage_fd = -1
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
            self.parent_fd = -1


def _refuse_inside(stage: _Stage, sources: Iterable[str | os.PathLike]) -> None:
    """``error`` if ``dest`` is, or would be inside, one of ``sources``
    (compared by inode, walking up from PARENT through ``..``)."""
    ids: dict[tuple[int, int], str] = {}
    for s in sources:
        with contextlib.suppress(OSError):
            st = os.stat(s)
            ids[(st.st_dev, st.st_ino)] = os.fspath(s)
    if not ids:
        return
    st = stage.lstat_dest()
    if st is not None and (st.st_dev, st.st_ino) in ids:
        raise stage.error(f"{stage.dest} would overwrite {ids[(st.st_dev, st.st_ino)]}, a checkpoint it reads")
    fd = os.dup(stage.parent_fd)
    try:
        for _ in range(4096):
            st = os.fstat(fd)
            src = ids.get((st.st_dev, st.st_ino))
            if src is not None:
                raise stage.error(f"{stage.dest} would be written inside {src}, a checkpoint it reads")
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            if _same(os.fstat(up), st):
                os.close(up)
                return
            os.close(fd)
            fd = up
    finally:
        os.close(fd)


class _Output:
    """What :class:`OutputDir` and :class:`OutputFile` share: the stage, the
    checks before anything is written, commit and abort."""

    def __init__(self, dest: str | os.PathLike, force: bool, error: type[DumperError]) -> None:
        self.force = force
        self.error = error
        self.committed = False
        self._judged_empty = False
        self._stage = _Stage(dest, error)
        self.dest = self._stage.dest
        try:
            self._prepare()
        except OSError as err:
            self.abort()
            raise error(f"cannot create {self.dest}: {err.strerror}") from err
        except BaseException:
            self.abort()
            raise

    def _prepare(self) -> None:
        """Judge an existing ``dest``, make the stage and the work in it."""
        raise NotImplementedError

    def _judge(self, st: os.stat_result) -> None:
        """Raise ``error`` unless the existing ``dest`` (stat ``st``) may be replaced."""
        raise NotImplementedError

    def _finish_work(self) -> None:
        """Check and fsync the work before it is installed."""
        raise NotImplementedError

    def _close_work(self) -> None:
        raise NotImplementedError

    def commit(self) -> Path:
        """Install the work at ``dest`` (see the class doc), fsync the parent,
        remove the stage (and the replaced entry). Returns ``dest``. On
        failure nothing is installed; call :meth:`abort` (a ``with`` block
        does)."""
        if self.committed:
            return self.dest
        self._finish_work()
        self.replaced = self._stage.install(self._judge) is not None
        self.committed = True
        self._close_work()
        self._stage.sync_parent()
        # A replaced entry sits in the stage now: removed with it.
        self._stage.discard_stage(old_was_empty=self._judged_empty)
        self._stage.close()
        return self.dest

    def abort(self) -> None:
        """Drop the work and the stage. Idempotent; nothing after commit."""
        if self.committed:
            return
        self._close_work()
        self._stage.discard_stage()
        self._stage.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


class OutputDir(_Output):
    """A directory that appears at ``dest`` complete, or not at all.

    Write into :attr:`dir` (a :class:`Dir`), then :meth:`commit`. Leaving a
    ``with`` block without commit, or :meth:`abort`, removes everything.
    The rules for an existing ``dest`` (module doc): absent or an empty
    directory -- fine; a checkpoint (holds a regular ``inventory.img``) --
    only with ``force`` and when ``replace_check(dest, fd)`` (given the
    existing directory's path and an O_NOFOLLOW descriptor of it) returns
    without raising; anything else refused. ``dest`` inside or equal to any
    of ``sources`` is refused. All of it is checked here, before anything is
    written, and again at :meth:`commit`, on the very entry replaced.
    After commit, ``replaced`` says whether something was replaced.

    ``what`` names the output in messages ("checkpoint", "image set").
    Raises ``error`` (default DumpError).
    """

    dir: Dir

    def __init__(
        self,
        dest: str | os.PathLike,
        *,
        force: bool = False,
        sources: Iterable[str | os.PathLike] = (),
        replace_check: Callable[[Path, int], None] | None = None,
        error: type[DumperError] = DumpError,
        what: str = "checkpoint",
    ) -> None:
        self.replace_check = replace_check
        self.what = what
        self._sources = list(sources)
        super().__init__(dest, force, error)

    def _prepare(self) -> None:
        _refuse_inside(self._stage, self._sources)
        st = self._stage.lstat_dest()
        if st is not None:
            self._judge(st)
        self._stage.make_stage()
        os.mkdir(self._stage.name, 0o700, dir_fd=self._stage.stage_fd)
        fd = os.open(self._stage.name, _O_DIR, dir_fd=self._stage.stage_fd)
        self.dir = Dir(fd, self.dest, self.error)
        os.fchmod(fd, 0o700)

    @property
    def work_path(self) -> Path:
        """Where the files are being written (for messages; may have been renamed)."""
        return self.dest.parent / (self._stage.stage_name or "") / self.dest.name

    def _judge(self, st: os.stat_result) -> None:
        s = self._stage
        if not stat.S_ISDIR(st.st_mode):
            raise self.error(f"{self.dest} exists and is {_kind(st)}: refusing to replace it "
                             f"({_a(self.what)} only replaces an empty directory or, with --force, "
                             f"{_a(self.what)})")
        fd = s.open_dest_dir(st)
        self._judged_empty = False
        try:
            if not os.listdir(fd):
                self._judged_empty = True
                return
            marker = _lstat_at(fd, CHECKPOINT_MARKER)
            if marker is None or not stat.S_ISREG(marker.st_mode):
                raise self.error(f"refusing to replace {self.dest}: not empty and not {_a(self.what)} "
                                 f"(no {CHECKPOINT_MARKER})")
            if not self.force:
                raise self.error(f"{self.dest} already exists (--force replaces {_a(self.what)})")
            if self.replace_check is not None:
                self.replace_check(self.dest, fd)
        except OSError as err:
            raise self.error(f"{self.dest}: {err.strerror}") from err
        finally:
            os.close(fd)

    def _finish_work(self) -> None:
        self.dir.check_contents()
        self.dir.fsync()

    def _close_work(self) -> None:
        if hasattr(self, "dir"):
            self.dir.close()


class OutputFile(_Output):
    """A file that appears at ``dest`` complete, or not at all (mode 0600).

    Write into :attr:`file`, then :meth:`commit` (it flushes and fsyncs).
    Without ``force`` an existing ``dest`` is refused here, before anything
    is written; with ``force`` only a regular file is replaced, atomically,
    at commit -- never a symlink (not followed either), a directory or a
    device.
    """

    file: BinaryIO

    def __init__(self, dest: str | os.PathLike, *, force: bool = False,
                 error: type[DumperError] = DumpError) -> None:
        super().__init__(dest, force, error)

    def _prepare(self) -> None:
        st = self._stage.lstat_dest()
        if st is not None:
            self._judge(st)
        self._stage.make_stage()
        self._dir = Dir(os.dup(self._stage.stage_fd), self.dest.parent, self.error)
        self.file = self._dir.create(self._stage.name)

    def _judge(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise self.error(f"{self.dest} exists and is {_kind(st)}: refusing to replace it")
        if not self.force:
            raise self.error(f"{self.dest} already exists (--force replaces it)")

    def _finish_work(self) -> None:
        try:
            self.file.sync_close()
        except OSError as err:
            raise self.error(f"writing {self.dest}: {err.strerror}") from err

    def _close_work(self) -> None:
        f = getattr(self, "file", None)
        if f is not None:
            f.discard()
        if hasattr(self, "_dir"):
            self._dir.close()
