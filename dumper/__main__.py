"""``python -m dumper`` == the ``dumper`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads: one line, no traceback
    print("dumper: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
