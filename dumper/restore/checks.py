"""What must hold before ``criu restore`` is worth running.

Each check raises :class:`~dumper.errors.NotRestorable` with one line and,
in ``details``, one line per finding:

* :func:`check_unrestorable`: the inventory lists resources the dump did not
  save (``inventory_entry.unrestorable``, field 60);
* :func:`check_full_dump`: not a pre-dump, and the images CRIU cannot do
  without are there (CRIU 4.2 segfaults without ``pstree.img``, ``mm-PID``
  or ``fs-PID``, and fails later without the others; measured, see
  :data:`REQUIRED_PER_PROCESS`);
* :func:`check_pids_free`: ``criu restore`` recreates every pid and thread id
  of the tree (clone3 ``set_tid``), so each must be free now;
* :func:`check_verified`: the checkpoint's own structural verify.
"""

from __future__ import annotations

from ..errors import ImageError, NotRestorable
from ..text import plural
from ..image.checkpoint import PSTREE_NAME, Checkpoint
from ..image.criuset import (
    REQUIRED_PER_PROCESS,
    Task,
    missing_images,
    process_tree,
    shell_job_needed,
    unrestorable_lines,
)

__all__ = [
    "REQUIRED_PER_PROCESS",
    "check_unrestorable",
    "check_full_dump",
    "check_pids_free",
    "check_verified",
    "needs_shell_job",
    "holds_terminal",
    "pstree",
]

_MAX_SHOWN = 20
# The process tree (pstree.img), root first: dumper.image.criuset.Task items.
pstree = process_tree


def check_unrestorable(ck: Checkpoint) -> None:
    """NotRestorable listing ``inventory_entry.unrestorable`` if it has any."""
    lines = unrestorable_lines(ck)
    if not lines:
        return
    raise NotRestorable(
        f"{ck.path} is marked not restorable: the dump did not save {plural(len(lines), 'resource')} "
        "criu restore would need (listed above)",
        lines,
    )


def check_full_dump(ck: Checkpoint) -> list[Task]:
    """Refuse a pre-dump, a memory-only checkpoint and missing images; return
    the process tree."""
    inv = ck.inventory
    if inv.HasField("pre_dump") and inv.pre_dump:
        raise NotRestorable(
            f"{ck.path} is a pre-dump (pages only, no process state): restore the dump taken with "
            f"--parent {ck.path} instead"
        )
    if not (ck.path / PSTREE_NAME).exists():
        raise NotRestorable(
            f"{ck.path} holds memory images only (no {PSTREE_NAME}, core-PID.img, ids-PID.img, fs-PID.img...): "
            "a pre-dump, or a checkpoint from a dumper that saved no process state; criu restore needs both"
        )
    try:
        tree = pstree(ck)
    except ImageError as err:
        raise NotRestorable(f"{ck.path}: {err}") from err
    if not tree:
        raise NotRestorable(f"{ck.path}/{PSTREE_NAME} lists no process")
    missing = missing_images(ck, tree)
    if missing:
        shown = ", ".join(missing[:_MAX_SHOWN]) + (f" and {len(missing) - _MAX_SHOWN} more" if len(missing) > _MAX_SHOWN else "")
        raise NotRestorable(f"{ck.path} lacks images criu restore needs: {shown}")
    return tree


def check_verified(ck: Checkpoint, *, frames: bool) -> None:
    """NotRestorable listing what :meth:`Checkpoint.verify` finds (with
    ``frames``: every zstd frame decompressed too)."""
    problems = []
    for problem in ck.verify(parents=True, frames=frames):
        problems.append(str(problem))
        if len(problems) > _MAX_SHOWN:
            break
    if problems:
        more = " (first ones)" if len(problems) > _MAX_SHOWN else ""
        raise NotRestorable(f"{ck.path} is damaged: `dumper verify` finds the problems listed above{more}",
                            problems[:_MAX_SHOWN])


def _describe(pid: int) -> str | None:
    """``"comm, state"`` of the task holding ``pid``, None if it is free."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
    rest = data[data.rindex(b")") + 2 :].split()
    state, ppid = rest[0].decode(), int(rest[1])
    tgid = None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    tgid = int(line.split()[1])
                    break
    except OSError:
        pass
    if state == "Z":
        return f"{comm!r}, a zombie its parent {ppid} has not reaped"
    if tgid is not None and tgid != pid:
        return f"a thread of pid {tgid} ({comm!r})"
    return f"{comm!r}, state {state}"


def _pid_max() -> int | None:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def check_pids_free(tree: list[Task]) -> None:
    """NotRestorable if any pid or thread id of ``tree`` is in use (or above
    ``pid_max``): criu restore gives every task its original id back."""
    taken = []
    limit = _pid_max()
    for t in tree:
        for tid in dict.fromkeys((t.pid, *t.threads)):
            if limit is not None and tid >= limit:
                taken.append(f"pid {tid} is above this system's pid_max ({limit})")
                continue
            who = _describe(tid)
            if who is not None:
                kind = "pid" if tid == t.pid else f"thread id (of pid {t.pid})"
                taken.append(f"{kind} {tid} is in use by {who}")
    if taken:
        raise NotRestorable(
            f"criu restore recreates the checkpoint's original pids and {len(taken)} of them are taken now "
            "(listed above): end those processes (or have their parents reap them) first",
            taken,
        )


TTY_INFO_NAME = "tty-info.img"


# Whether criu restore needs --shell-job (dumper.image.criuset.shell_job_needed).
needs_shell_job = shell_job_needed


def holds_terminal(ck: Checkpoint) -> bool:
    """True when the checkpoint saved a terminal (``tty-info.img``): with
    ``--shell-job`` CRIU gives the restored process the terminal on its own
    stdin in its place, and aborts without one ("Don't have tty to inherit
    session from", criu/tty.c pty_open_unpaired_slave)."""
    return (ck.path / TTY_INFO_NAME).is_file()
