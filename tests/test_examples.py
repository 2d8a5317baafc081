"""The examples run, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_api_example_runs():
    r = subprocess.run([sys.executable, str(EXAMPLES / "api.py")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "pages to dump" in lines[0] and lines[1].startswith("dumped ") and "first dumped page" in lines[2]


def test_demo_runs():
    r = subprocess.run([sys.executable, "-m", "dumper", "demo", "--dense-mib", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "the process was running again" in r.stdout or "running again" in r.stdout
    assert "checkpoint " in r.stdout and "pages-1.zst.img" in r.stdout
