"""Start-up: a command imports what it uses and no more (issue 14, item 6).

Each case runs the real entry point in a fresh interpreter and lists the
modules loaded by the time it exits. Timings live in benchmarks/startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dumper.cli import COMMANDS, build_parser

HEAVY = ("numpy", "zstandard", "google.protobuf", "tqdm", "psutil", "concurrent.futures")

PROBE = """
import atexit, json, sys
def report():
    mods = sorted(m for m in sys.modules if m.split(".")[0] in ("dumper", "numpy", "zstandard", "google", "tqdm",
                  "psutil", "concurrent"))
    sys.__stderr__.write("\\nMODULES " + json.dumps(mods) + "\\n")
atexit.register(report)
from dumper.cli import main
sys.exit(main(sys.argv[1:]))
"""


def loaded(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
    line = [x for x in r.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return r, set(json.loads(line.removeprefix("MODULES ")))


def heavy(mods: set[str]) -> set[str]:
    return {m for m in mods if m.startswith(HEAVY)}


def subcommand_modules(mods: set[str]) -> set[str]:
    return {m for m in mods if m.startswith("dumper.cli.") and m != "dumper.cli.options"}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], [], ["no-such-command"]])
def test_version_and_help_load_no_subcommand(argv):
    r, mods = loaded(*argv)
    assert heavy(mods) == set()
    assert subcommand_modules(mods) == set()
    if argv == ["--help"]:
        assert r.returncode == 0
        for name in COMMANDS:  # every subcommand is still listed
            assert name in r.stdout
    if argv == ["--version"]:
        assert r.returncode == 0 and r.stdout.startswith("dumper ")
    if argv in ([], ["no-such-command"]):
        assert r.returncode == 2


def test_check_loads_no_numpy():
    r, mods = loaded("check", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[: r.stdout.rindex("}") + 1])["kernel"]
    assert heavy(mods) == set() and subcommand_modules(mods) == {"dumper.cli.check"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_subcommand_loads_only_its_own_module(name):
    r, mods = loaded(name, "--help")
    assert r.returncode == 0, r.stderr
    own = {f"dumper.cli.{COMMANDS[name][0]}"}
    # demo and pre-dump reuse dump's and show's argument definitions, export core's ELF options
    allowed = own | {"dumper.cli.dump", "dumper.cli.show", "dumper.cli.verify", "dumper.cli.mems", "dumper.cli.core"}
    assert own <= subcommand_modules(mods) <= allowed


def test_only_the_named_subcommand_is_configured():
    def configured(argv):
        sub = next(a for a in build_parser(argv)._actions if a.dest == "command")
        return {name for name, p in sub.choices.items() if len(p._actions) > 2}  # more than -h, --traceback

    assert configured(["--traceback", "scan", "1"]) == {"scan"}
    assert configured(["dump", "--help"]) == {"dump"}
    assert configured(["--version"]) == configured(["--help"]) == configured(["bogus"]) == set()
    assert configured(None) == set(COMMANDS)


def test_traceback_option_before_the_command_still_works():
    r = subprocess.run([sys.executable, "-m", "dumper", "--traceback", "scan", "4194303"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "no such process" in r.stderr


_INTERRUPT_WHILE_LOADING = r"""
import builtins, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
real = builtins.__import__

def imp(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 1 and name == "cli":  # `from .cli import main`: the command line starts loading
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, globals, locals, fromlist, level)

builtins.__import__ = imp
from dumper.__main__ import entry
sys.exit(entry())
"""


def test_ctrl_c_while_the_command_loads_is_one_line():
    """The `dumper` command's entry point: a Ctrl-C while its modules load
    (its first ~0.2 s) printed a Python traceback; now one line, 130."""
    r = subprocess.run([sys.executable, "-c", _INTERRUPT_WHILE_LOADING, "--version"], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (130, "dumper: interrupted\n")
    import tomllib

    with open(Path(__file__).parent.parent / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["dumper"] == "dumper.__main__:entry"
