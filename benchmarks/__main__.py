"""Run the benchmarks, print one table, write JSON (``--json PATH``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import (core, dump_dense, files_collect, incremental, metadata, peers, reader, restore, scan_sparse, startup,
               tree, warden)

BENCHMARKS = {"scan_sparse": scan_sparse, "dump_dense": dump_dense, "incremental": incremental, "reader": reader,
              "peers": peers, "files_collect": files_collect, "warden": warden, "restore": restore,
              "metadata": metadata, "startup": startup, "core": core, "tree": tree}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("names", nargs="*", choices=[*BENCHMARKS, []][:-1] or None, help="which (default: all)")
    ap.add_argument("--json", default="benchmarks/results/latest.json", help="where to write the results")
    args = ap.parse_args(argv)
    results = {"kernel": os.uname().release, "cpus": os.cpu_count(), "time": time.time()}
    for name in args.names or BENCHMARKS:
        mod = BENCHMARKS[name]
        print(f"== {name} ==", file=sys.stderr)
        results[name] = mod.run()
        print("\n".join(mod.table(results[name])))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
