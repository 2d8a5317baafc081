"""Exporting checkpoints into other tools' formats.

Only one format so far: ``criu``, a CRIU 4.2 image directory. From a
checkpoint with process state (what ``dumper dump`` writes) it is complete:
plain ``criu restore -D OUT`` brings the process tree back, and ``crit``
reads it (``decode``, ``show``, ``x OUT ps|fds|mems|rss``). From a
checkpoint with memory only (pre-dumps, older dumper checkpoints) it holds
memory images, which crit reads. See :mod:`.criu` and docs/criu-export.md::

    from dumper.export import export
    result = export("/ckpt/2", "/tmp/criu-set")              # chain flattened
    result.complete, result.restore_command                  # True, "criu restore -D /tmp/criu-set"
    result = export("/ckpt/2", "/tmp/criu-chain", keep_chain=True)
"""

from __future__ import annotations

import os

from .criu import COMPLETE, MEMORY, ExportedSet, ExportError, ExportResult, criu_fields_only, export_criu

__all__ = ["FORMATS", "export", "export_criu", "ExportError", "ExportResult", "ExportedSet", "criu_fields_only",
           "COMPLETE", "MEMORY"]

FORMATS = ("criu", "elf")  # elf: dumper.export.elf.export_elf (its own options), called by the CLI


def export(src, out: str | os.PathLike, *, format: str = "criu", keep_chain: bool = False,
           force: bool = False, force_unrestorable: bool = False, threads: int | None = None) -> ExportResult:
    """Export checkpoint ``src`` to ``out`` in ``format`` (one of
    :data:`FORMATS`); see :func:`~dumper.export.criu.export_criu`.
    ExportError for an unknown format."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r} (choose from {', '.join(FORMATS)})")
    if format == "elf":
        from .elf import export_elf

        return export_elf(src, out, force=force)
    return export_criu(src, out, keep_chain=keep_chain, force=force, force_unrestorable=force_unrestorable,
                       threads=threads)
