"""Process trees for the tree-freeze tests.

``python tree.py shape COUNTERS``: a root with two children, each with a
child of its own (so two grandchildren), plus one child that exits at once
and is never reaped (a zombie) and one that stops itself (SIGSTOP). Every
live process but the stopped one bumps its own 64-bit slot of the shared
page COUNTERS (root 0, children 1-2, grandchildren 3-4, the stopped one 5).
Prints ``{"root":..., "children": [...], "grandchildren": [...],
"zombie":..., "stopped":...}`` and READY.

``python tree.py churn COUNTERS``: a root (a child subreaper) that forks
without pause; each child forks a grandchild half of the time and exits;
the root reaps everything. Prints READY.

``python tree.py pthread_exit COUNTERS``: the main thread starts a worker
and calls pthread_exit(); the worker fills a page with 0x5A, prints
``{"addr":...}`` and READY, and bumps slot 0.

Stand-alone on purpose: it is the workload, not the tool.
"""

import ctypes
import json
import mmap
import os
import signal
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def counters(path):
    f = open(path, "r+b")
    return (ctypes.c_uint64 * 64).from_buffer(mmap.mmap(f.fileno(), PAGE))


def bump_forever(c, slot):
    while True:
        c[slot] += 1
        time.sleep(0.001)


def shape(path):
    r, w = os.pipe()
    pids = {"root": os.getpid(), "children": [], "grandchildren": []}
    for i in (1, 2):
        pid = os.fork()
        if pid == 0:
            g = os.fork()
            if g == 0:
                os.close(r)
                os.write(w, json.dumps({"grandchild": os.getpid()}).encode() + b"\n")
                bump_forever(counters(path), 2 + i)
            bump_forever(counters(path), i)
        pids["children"].append(pid)
    z = os.fork()
    if z == 0:
        os._exit(0)
    pids["zombie"] = z
    s = os.fork()
    if s == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        bump_forever(counters(path), 5)
    pids["stopped"] = s
    f = os.fdopen(r)
    for _ in (1, 2):
        pids["grandchildren"].append(json.loads(f.readline())["grandchild"])
    print(json.dumps(pids), flush=True)
    print("READY", flush=True)
    bump_forever(counters(path), 0)


def churn(path):
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        pid = os.fork()
        if pid == 0:
            if n % 2 and os.fork() == 0:
                time.sleep(0.002)
            os._exit(0)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def pthread_exit(path):
    c = counters(path)
    buf = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.write(b"\x5a" * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def worker():
        print(json.dumps({"addr": addr}), flush=True)
        print("READY", flush=True)
        bump_forever(c, 0)

    threading.Thread(target=worker).start()
    time.sleep(0.05)
    ctypes.CDLL(None).pthread_exit(None)


if __name__ == "__main__":
    {"shape": shape, "churn": churn, "pthread_exit": pthread_exit}[sys.argv[1]](sys.argv[2])
