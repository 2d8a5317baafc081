#!/usr/bin/env python3
"""The Python API in a few lines: scan a process, dump it, read pages back.

    python examples/api.py            # runs examples/target.py for you
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from dumper.dump import dump
from dumper.image import format as fmt
from dumper.image import iter_present, load_pagemap, open_pages
from dumper.scan import Category, scan

here = Path(__file__).parent
target = subprocess.Popen([sys.executable, str(here / "target.py"), "--dense-mib", "16"],
                          stdout=subprocess.PIPE, text=True)
try:
    target.stdout.readline()  # READY
    pid = target.pid

    # 1. The mask scanner: which pages a dump would take, as page_region runs.
    regions = scan(pid, anyof="PRESENT,SWAPPED", excluded="FILE,PFNZERO", returned="PRESENT,SWAPPED")
    swapped = sum(r.nr_pages for r in regions if r.categories & Category.SWAPPED)
    print(f"{len(regions)} regions, {regions.nr_pages} pages to dump ({swapped} swapped), backend {regions.backend}")

    # 2. A checkpoint.
    with tempfile.TemporaryDirectory() as tmp:
        result = dump(pid, Path(tmp) / "ckpt")
        print(f"dumped {result.pages_written} pages in {result.total_ns / 1e6:.0f} ms, "
              f"frozen {result.frozen_ns / 1e6:.1f} ms, image {result.bytes_written} bytes")

        # 3. Reading the pages back from the image files.
        head, entries = load_pagemap(Path(tmp) / "ckpt" / fmt.pagemap_name(pid))
        with open_pages(Path(tmp) / "ckpt", head) as pages:
            vaddr, data = next(iter_present(entries, pages))
            print(f"first dumped page at {vaddr:#x}: {bytes(data[:16]).hex()}...")
finally:
    target.kill()
    target.wait()
