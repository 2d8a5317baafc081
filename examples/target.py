#!/usr/bin/env python3
"""A sample process worth checkpointing: runs ``dumper/demo_target.py``.

The program itself ships inside the package, so that ``dumper demo`` finds
it after a plain ``pip install``; this file runs that copy from a checkout
(no install needed)::

    python examples/target.py --dense-mib 64 &
    dumper dump $! -D /tmp/ckpt
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "dumper" / "demo_target.py"), run_name="__main__")
