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


def test_demo_runs_from_a_built_wheel(tmp_path):
    # Issue 13 item 13: `dumper demo` worked only from an editable install.
    # Build a wheel from a copy of the sources (no build/ left in the tree),
    # install it without dependencies into a fresh venv that borrows this
    # environment's site-packages for them, and run the demo from elsewhere.
    import shutil
    import sysconfig

    root = EXAMPLES.parent
    src = tmp_path / "src"
    shutil.copytree(root / "dumper", src / "dumper", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [wheel] = (tmp_path / "wheels").glob("dumper-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # The runtime dependencies come from this environment (a path entry: its
    # .pth files, among them the editable install of dumper, are not run).
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(purelib, "outer-deps.pth").write_text(deps + "\n")
    where = subprocess.run([str(py), "-c", "import dumper; print(dumper.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    r = subprocess.run([str(venv / "bin" / "dumper"), "demo", "--dense-mib", "4"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    # the target that ran is the wheel's copy
    assert f"{Path(where).parent / 'demo_target.py'} --dense-mib 4" in r.stdout, r.stdout
    assert "the process was running again" in r.stdout and "pages-1.zst.img" in r.stdout
