"""The hostile-checkpoint fuzzer (tests/fuzz/hostile.py), briefly: every
target for a few seconds from a fixed seed, so the normal suite keeps each
kind of hostile input fixed in this release covered (issue 15 items 7-13).

Longer runs: ``DUMPER_FUZZ_SECONDS=600 DUMPER_FUZZ_SEED=$RANDOM
.venv/bin/python -m pytest tests/fuzz -q`` (seconds per target), or
``.venv/bin/python tests/fuzz/hostile.py SECONDS SEED``; a failure names
its target and seed, ``tests/fuzz/hostile.py --replay TARGET SEED`` replays
it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hostile  # noqa: E402

SECONDS = float(os.environ.get("DUMPER_FUZZ_SECONDS", "2.5"))
SEED = int(os.environ.get("DUMPER_FUZZ_SEED", "20261130"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    return hostile.make_bases(tmp_path_factory.mktemp("fuzz-bases"))


@pytest.mark.parametrize("target", sorted(hostile.TARGETS))
def test_hostile_checkpoints(target, bases, tmp_path):
    n = hostile.fuzz(target, SECONDS, SEED, bases, tmp_path)
    assert n >= 3


def test_fuzzer_catches_a_traceback(bases, tmp_path, monkeypatch):
    """The harness itself: an exception escaping a command is a failure
    naming target and seed (so a green run means something)."""
    from dumper.cli import mems

    def broken(path):
        raise KeyError("planted")

    monkeypatch.setattr(mems, "open_checkpoint", broken)
    with pytest.raises(hostile.FuzzFailure, match=r"target offsets seed 7 .*planted"):
        hostile.one_case("offsets", 7, bases, tmp_path)
