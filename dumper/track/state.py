"""Which checkpoint last reset a process's write tracking, and what dumper
armed in it.

Tracking answers "written since the last reset", so an incremental dump is
only right on top of the checkpoint whose dump did that reset. Each reset
gets a random id, stored in that checkpoint's inventory and in a small state
file per process (keyed by pid and start time, so a reused pid never matches,
and by the pid namespace whose numbers they are: dumpers in two pid
namespaces may share the directory, and each sees only its own files).
The state file is written *before* the reset: if the dump then fails, no
checkpoint carries the new id and every ``--parent`` is refused into a full
dump instead of silently missing pages.

For uffd-wp the file is written before the userfaultfd is created, too
(``armed=False``, the descriptor number it will get), then again with the
descriptor and its inode (each userfaultfd has an inode of its own,
fs/anon_inodes.c anon_inode_create_getfile()): whatever happens to the
dump, ``dumper untrack`` finds what dumper created. A state file exists only
while tracking is armed: ``untrack`` and a failed dump's undo remove it, and
files of processes that are gone (or whose pid was reused) are removed by
:func:`clean_stale`, which every dump calls.

Files live in ``$DUMPER_STATE_DIR``, else ``/run/dumper`` for root, else
``$XDG_RUNTIME_DIR/dumper``, else ``/tmp/dumper-UID/dumper``. The directory
is created 0700 and used only if it is a directory (not a symlink) owned by
the effective user with no group or other permission bits; files are created
0600 through the directory's descriptor with O_EXCL|O_NOFOLLOW under random
names and renamed into place, so no other user can redirect a write.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import secrets
import uuid
from dataclasses import asdict, dataclass

from ..errors import StateDirError

__all__ = ["TrackingState", "StateDirError", "load", "save", "clear", "new_id", "state_dir",
           "clean_stale", "records"]

_PREFIX, _SUFFIX = "track-", ".json"


@dataclass(slots=True)
class TrackingState:
    """``tracking_id`` of the last reset ("" before the first), by which
    ``tracker``, into which ``checkpoint`` (absolute path; it may not exist
    if that dump failed). For uffd-wp: ``uffd_fd`` the target's descriptor,
    ``uffd_ino`` its inode (None until known), ``armed`` False while the
    userfaultfd is being created and registered."""

    tracking_id: str
    tracker: str
    checkpoint: str
    uffd_fd: int | None = None
    uffd_ino: int | None = None
    armed: bool = True


def state_dir() -> str:
    if os.environ.get("DUMPER_STATE_DIR"):
        return os.environ["DUMPER_STATE_DIR"]
    if os.geteuid() == 0:
        return "/run/dumper"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/dumper-{os.getuid()}", "dumper")


@functools.cache
def _pidns() -> int:
    """The inode of our pid namespace: the one /proc's numbers belong to."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no namespaces: one numbering
        return 0


def _name(pid: int, start_time: int) -> str:
    return f"{_PREFIX}{_pidns()}-{pid}-{start_time}{_SUFFIX}"


def _legacy_name(pid: int, start_time: int) -> str:
    """The name older dumpers gave the record (no pid namespace): still
    read, replaced on the next save, removed by :func:`clear`."""
    return f"{_PREFIX}{pid}-{start_time}{_SUFFIX}"


def _parse_name(name: str) -> tuple[int, int] | None:
    """``(pid, start_time)`` of a record name of our pid namespace, else None.
    Names without a namespace (written by older dumpers) count as ours."""
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    try:
        fields = [int(x) for x in name[len(_PREFIX) : -len(_SUFFIX)].split("-")]
    except ValueError:
        return None
    if len(fields) == 3 and fields[0] == _pidns():
        return fields[1], fields[2]
    return (fields[0], fields[1]) if len(fields) == 2 else None


def _fail(path: str, why: str) -> StateDirError:
    return StateDirError(f"cannot use the tracking state directory {path}: {why}; set DUMPER_STATE_DIR "
                         "to a directory of your own (mode 0700)")


def _check_dir(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise _fail(path, f"it belongs to uid {st.st_uid}, not {os.geteuid()}")
    if st.st_mode & 0o077:
        raise _fail(path, f"its mode is {st.st_mode & 0o777:04o}, not 0700")


def _open_dir(create: bool) -> int | None:
    """A descriptor of the checked state directory; None if it does not exist
    and ``create`` is False. Raises StateDirError."""
    path = state_dir()
    if create:
        parent = os.path.dirname(path.rstrip("/"))
        # Our own per-user parent (/tmp/dumper-UID) is created 0700 too.
        for d in ([parent] if parent.startswith("/tmp/dumper-") else []) + [path]:
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise _fail(d, err.strerror or str(err)) from err
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None
        raise _fail(path, "it does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP or os.path.islink(path):
            raise _fail(path, "it is a symbolic link") from err
        if err.errno == errno.ENOTDIR:
            raise _fail(path, "it is not a directory") from err
        raise _fail(path, err.strerror or str(err)) from err
    try:
        _check_dir(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def new_id() -> str:
    return uuid.uuid4().hex


def load(pid: int, start_time: int) -> TrackingState | None:
    """The recorded state, or None (never tracked, or the record is unreadable).
    Raises StateDirError if the directory exists but is not safely ours."""
    rec = _load_name(_name(pid, start_time))
    return rec if rec is not None else _load_name(_legacy_name(pid, start_time))


def _load_name(name: str) -> TrackingState | None:
    dfd = _open_dir(create=False)
    if dfd is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        with open(fd, "rb") as f:
            data = json.loads(f.read(1 << 16))
        return TrackingState(**data)
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(dfd)


def save(pid: int, start_time: int, state: TrackingState) -> None:
    """Write the record atomically (a new 0600 file, fsync, rename).
    Raises StateDirError (one line) when that cannot be done."""
    dfd = _open_dir(create=True)
    name = _name(pid, start_time)
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            with open(fd, "w") as f:
                json.dump(asdict(state), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            try:
                os.unlink(_legacy_name(pid, start_time), dir_fd=dfd)  # replaced by the new name
            except FileNotFoundError:
                pass
        except OSError as err:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise _fail(state_dir(), f"writing {name}: {err.strerror or err}") from err
    finally:
        os.close(dfd)


def clear(pid: int, start_time: int, *, ino: int | None = None) -> None:
    """Remove the record (with ``ino``: only if it names that userfaultfd inode)."""
    try:
        dfd = _open_dir(create=False)
    except StateDirError:
        return
    if dfd is None:
        return
    try:
        if ino is not None:
            rec = load(pid, start_time)
            if rec is not None and rec.uffd_ino not in (None, ino):
                return
        for name in (_name(pid, start_time), _legacy_name(pid, start_time)):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
    except OSError:
        pass
    finally:
        os.close(dfd)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def records() -> list[tuple[int, int, TrackingState]]:
    """Every readable record: ``(pid, start_time, state)``."""
    try:
        dfd = _open_dir(create=False)
    except StateDirError:
        return []
    if dfd is None:
        return []
    try:
        names = os.listdir(dfd)
    finally:
        os.close(dfd)
    out = []
    for name in names:
        key = _parse_name(name)
        if key is not None:
            rec = _load_name(name)
            if rec is not None:
                out.append((*key, rec))
    return out


def clean_stale() -> int:
    """Remove records of processes that are gone or whose pid was reused, and
    temporary files of writers that are gone; returns how many. Never raises."""
    try:
        dfd = _open_dir(create=False)
    except StateDirError:
        return 0
    if dfd is None:
        return 0
    removed = 0
    try:
        for name in os.listdir(dfd):
            stale = False
            key = _parse_name(name)
            if key is not None:
                stale = _start_time(key[0]) != key[1]
            elif name.startswith(f".{_PREFIX}") and name.endswith(".tmp"):
                parts = name.split(".")
                if len(parts) < 5 or _parse_name(parts[1] + "." + parts[2]) is None:
                    continue  # another pid namespace's writer
                try:
                    stale = not os.path.exists(f"/proc/{int(parts[-3])}")
                except ValueError:
                    continue
            if stale:
                try:
                    os.unlink(name, dir_fd=dfd)
                    removed += 1
                except OSError:
                    pass
    except OSError:
        pass
    finally:
        os.close(dfd)
    return removed
