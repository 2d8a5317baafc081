"""``python -m dumper`` and the ``dumper`` command (``entry``)."""

import sys


def entry() -> int:
    """The command: loads the command line, then runs it. A Ctrl-C while
    the modules load gives one line and status 130, as one later does --
    also one Python would drop, landing in an import's callback
    (:mod:`dumper.interrupts`)."""
    from . import interrupts

    interrupts.install()
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("dumper: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(entry())
