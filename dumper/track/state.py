"""Which checkpoint last reset a process's write tracking.

Tracking answers "written since the last reset", so an incremental dump is
only right on top of the checkpoint whose dump did that reset. Each reset
gets a random id, stored in that checkpoint's inventory and in a small state
file per process (keyed by pid and start time, so a reused pid never matches).
The state file is written *before* the reset: if the dump then fails, no
checkpoint carries the new id and every ``--parent`` is refused into a full
dump instead of silently missing pages.

Files live in ``$DUMPER_STATE_DIR``, else ``/run/dumper`` for root, else
``$XDG_RUNTIME_DIR/dumper``; directory 0700, files 0600.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass

__all__ = ["TrackingState", "load", "save", "clear", "new_id", "state_dir"]


@dataclass(slots=True)
class TrackingState:
    """``tracking_id`` of the last reset, by which ``tracker``, into which
    ``checkpoint`` (absolute path; it may not exist if that dump failed);
    ``uffd_fd`` is the target's userfaultfd for uffd-wp."""

    tracking_id: str
    tracker: str
    checkpoint: str
    uffd_fd: int | None = None


def state_dir() -> str:
    if os.environ.get("DUMPER_STATE_DIR"):
        return os.environ["DUMPER_STATE_DIR"]
    if os.geteuid() == 0:
        return "/run/dumper"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/dumper-{os.getuid()}", "dumper")


def _path(pid: int, start_time: int) -> str:
    return os.path.join(state_dir(), f"track-{pid}-{start_time}.json")


def new_id() -> str:
    return uuid.uuid4().hex


def load(pid: int, start_time: int) -> TrackingState | None:
    """The recorded state, or None (never tracked, or the record is unreadable)."""
    try:
        with open(_path(pid, start_time)) as f:
            data = json.load(f)
        return TrackingState(**data)
    except (OSError, ValueError, TypeError):
        return None


def save(pid: int, start_time: int, state: TrackingState) -> None:
    """Write the record atomically (temp file + rename). OSError on failure."""
    d = state_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = _path(pid, start_time)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        json.dump(asdict(state), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clear(pid: int, start_time: int) -> None:
    try:
        os.unlink(_path(pid, start_time))
    except FileNotFoundError:
        pass
