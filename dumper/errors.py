"""The exception tree of dumper.

Every failure the package reports derives from :class:`DumperError`::

    DumperError
    ├── ProcessError(pid)            something about the target process
    │   ├── NoSuchProcess            the pid does not exist (or exited meanwhile)
    │   │   └── ZombieProcess        it exited and was not reaped: no memory left
    │   ├── AccessDenied             ptrace/proc access refused (EPERM/EACCES)
    │   ├── NoMemoryMap              a kernel thread: it has no mm to dump
    │   ├── RefusedTarget            the dumper's own pid or an ancestor of it
    │   └── FreezeTimeout            a thread did not stop within the freeze timeout
    ├── KernelError(errno, syscall)  a syscall or ioctl failed unexpectedly
    │   └── UnsupportedKernel        the running kernel lacks a needed feature
    ├── ScanError                    bad scan arguments (range, category names)
    │   └── UnsupportedCategory      a backend cannot compute a category here
    ├── ImageError(path, offset)     an image file is wrong (see its subclasses)
    │   ├── BadMagic
    │   ├── UnsupportedVersion
    │   └── CorruptImage
    ├── DumpError                    a dump could not be completed
    │   ├── StateDirError            the tracking state directory is unusable or unsafe
    │   └── SnapshotRefused          no copy-on-write snapshot here (the pages are copied frozen)
    ├── WardenError                  the tracer process (dumper.proc.warden) failed or is gone
    └── RestoreError(details)        a checkpoint could not be restored
        ├── CriuNotFound             no usable CRIU (missing, not runnable, < 4.0)
        ├── NotRestorable            the checkpoint cannot be restored as it is
        └── CriuFailed               ``criu restore`` ran and failed

``OSError`` is translated into these once, where the system call is made, with
``raise ... from err`` so the cause stays attached (the psutil idiom).
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "DumperError",
    "DumperWarning",
    "ProcessError",
    "NoSuchProcess",
    "ZombieProcess",
    "AccessDenied",
    "NoMemoryMap",
    "RefusedTarget",
    "FreezeTimeout",
    "KernelError",
    "UnsupportedKernel",
    "ScanError",
    "UnsupportedCategory",
    "ImageError",
    "BadMagic",
    "UnsupportedVersion",
    "CorruptImage",
    "DumpError",
    "StateDirError",
    "WardenError",
    "SnapshotRefused",
    "RestoreError",
    "CriuNotFound",
    "NotRestorable",
    "CriuFailed",
]


class DumperError(Exception):
    """Root of every error dumper raises on purpose."""

    __module__ = "dumper"


class DumperWarning(UserWarning):
    """Something the user should know that does not stop the command (an
    output directory others can write, ...). The CLI prints it as one line,
    ``dumper: warning: ...``."""

    __module__ = "dumper"


class ProcessError(DumperError):
    """An error about one target process; ``pid`` is always set."""

    __module__ = "dumper"

    def __init__(self, pid: int, msg: str | None = None) -> None:
        self.pid = pid
        self.msg = msg or self._default_msg()
        super().__init__(self.msg)

    def _default_msg(self) -> str:
        return "process error"

    def __str__(self) -> str:
        return f"{self.msg} (pid={self.pid})"

    def __reduce__(self):
        return (type(self), (self.pid, self.msg))


class NoSuchProcess(ProcessError):
    """The process does not exist, or exited while we looked at it."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "no such process"


class ZombieProcess(NoSuchProcess):
    """The process has exited but was not reaped: its memory is gone."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "process is a zombie (exited, not yet reaped): it has no memory to dump"


class AccessDenied(ProcessError):
    """The kernel refused access (ptrace mode checks, Yama, missing capability)."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "access denied (need ptrace access: run as the same user or as root)"


class NoMemoryMap(ProcessError):
    """The process has no address space: a kernel thread (PF_KTHREAD)."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "kernel thread: it has no user memory to dump"


class RefusedTarget(ProcessError):
    """The target cannot be frozen safely (the dumper itself, or its ancestor)."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "refusing to freeze the dumper itself or one of its ancestors"


class FreezeTimeout(ProcessError):
    """A thread did not stop within the freeze timeout (uninterruptible sleep,
    a vfork parent waiting for its child); the process was let go."""

    __module__ = "dumper"

    def _default_msg(self) -> str:
        return "a thread did not stop in time"


class KernelError(DumperError):
    """A system call failed in a way the caller did not expect.

    ``errno`` is the raw error number, ``syscall`` names the call (e.g.
    ``"ioctl(PAGEMAP_SCAN)"``).
    """

    __module__ = "dumper"

    def __init__(self, err: int, syscall: str, detail: str = "") -> None:
        self.errno = err
        self.syscall = syscall
        self.detail = detail
        text = f"{syscall} failed: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.errno, self.syscall, self.detail))


class UnsupportedKernel(DumperError):
    """The running kernel lacks a feature (``feature``) that was asked for."""

    __module__ = "dumper"

    def __init__(self, feature: str, reason: str = "") -> None:
        self.feature = feature
        self.reason = reason
        text = f"the running kernel ({os.uname().release}) does not support {feature}"
        if reason:
            text += f": {reason}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.feature, self.reason))


class ScanError(DumperError):
    """Invalid scan arguments: unaligned start, end before start, unknown name."""

    __module__ = "dumper"


class UnsupportedCategory(ScanError):
    """A scanner backend cannot derive a page category on this kernel.

    Raised instead of answering wrongly (e.g. PFNZERO when PFNs are hidden).
    """

    __module__ = "dumper"


class ImageError(DumperError):
    """An image file is malformed; ``path`` and byte ``offset`` say where."""

    __module__ = "dumper"

    def __init__(self, path: str | os.PathLike | None, offset: int | None, msg: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        self.msg = msg
        where = self.path or "<image>"
        if offset is not None:
            where += f" at offset {offset}"
        super().__init__(f"{where}: {msg}")

    def __reduce__(self):
        return (type(self), (self.path, self.offset, self.msg))


class BadMagic(ImageError):
    """The file does not start with the magic its name promises."""

    __module__ = "dumper"


class UnsupportedVersion(ImageError):
    """The image was written by an incompatible format version."""

    __module__ = "dumper"


class CorruptImage(ImageError):
    """Truncated data, a lying length, a checksum mismatch, a broken invariant."""

    __module__ = "dumper"


class DumpError(DumperError):
    """A dump could not be completed (disk full, destination exists, ...)."""

    __module__ = "dumper"


class StateDirError(DumpError):
    """The tracking state directory cannot be used: unwritable, or not a
    directory of the effective user with mode 0700 (dumper.track.state)."""

    __module__ = "dumper"


class SnapshotRefused(DumpError):
    """A copy-on-write snapshot of the process cannot be taken here
    (dumper.proc.snapshot); the dump copies its pages while it is frozen."""

    __module__ = "dumper"


class WardenError(DumperError):
    """The warden (the tracer process, dumper.proc.warden) failed, went away,
    or could not take a request."""

    __module__ = "dumper"


class RestoreError(DumperError):
    """A checkpoint could not be restored. ``details``: further lines for the
    user (reasons, problems, the end of CRIU's log), shown before the one-line
    message."""

    __module__ = "dumper"

    def __init__(self, msg: str, details: tuple[str, ...] | list[str] = ()) -> None:
        self.msg = msg
        self.details = tuple(details)
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.msg, self.details))


class CriuNotFound(RestoreError):
    """No usable CRIU: missing, not executable, or older than 4.0."""

    __module__ = "dumper"


class NotRestorable(RestoreError):
    """The checkpoint cannot be restored as it is: marked unrestorable, a
    pre-dump, missing or damaged images, or its pids are taken."""

    __module__ = "dumper"


class CriuFailed(RestoreError):
    """``criu restore`` ran and failed; ``details`` holds the end of its log."""

    __module__ = "dumper"
