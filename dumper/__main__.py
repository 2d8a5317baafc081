"""``python -m dumper`` == the ``dumper`` command."""

import sys

from .cli import main

sys.exit(main())
