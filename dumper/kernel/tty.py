"""Terminals: device majors (include/uapi/linux/major.h), the tty ioctls
(include/uapi/asm-generic/ioctls.h) and ``struct termios``/``winsize``
(asm-generic/termbits.h, termios.h).

The TCGETS family are plain numbers in the header (not _IOC-encoded); the
TIOCG{PTN,PKT,PTLCK,EXCL} ones are _IOR. TIOCGPKT/TIOCGPTLCK/TIOCGEXCL are
Linux 3.8; everything else is far older. TIOCGSID and TIOCGPGRP answer only
to a process whose controlling terminal this is (or on a pty master).
"""

from __future__ import annotations

import ctypes

from .ioctl import IOR

__all__ = [
    "MEM_MAJOR", "TTY_MAJOR", "TTYAUX_MAJOR", "MISC_MAJOR", "UNIX98_PTY_MASTER_MAJOR",
    "UNIX98_PTY_MAJOR_COUNT", "UNIX98_PTY_SLAVE_MAJOR", "USB_SERIAL_MAJOR", "LOW_DENSE_SERIAL_MAJOR",
    "MIN_NR_CONSOLES", "MAX_NR_CONSOLES",
    "TCGETS", "TIOCGPGRP", "TIOCGWINSZ", "TIOCGSID", "TIOCGLCKTRMIOS",
    "TIOCGPTN", "TIOCGPKT", "TIOCGPTLCK", "TIOCGEXCL",
    "NCCS", "termios", "winsize",
]

MEM_MAJOR = 1
TTY_MAJOR = 4
TTYAUX_MAJOR = 5
MISC_MAJOR = 10
UNIX98_PTY_MASTER_MAJOR = 128
UNIX98_PTY_MAJOR_COUNT = 8
UNIX98_PTY_SLAVE_MAJOR = UNIX98_PTY_MASTER_MAJOR + UNIX98_PTY_MAJOR_COUNT
USB_SERIAL_MAJOR = 188
LOW_DENSE_SERIAL_MAJOR = 204
MIN_NR_CONSOLES = 1  # include/uapi/linux/vt.h
MAX_NR_CONSOLES = 63

TCGETS = 0x5401
TIOCGPGRP = 0x540F
TIOCGWINSZ = 0x5413
TIOCGSID = 0x5429
TIOCGLCKTRMIOS = 0x5456
TIOCGPTN = IOR("T", 0x30, ctypes.c_uint)
TIOCGPKT = IOR("T", 0x38, ctypes.c_int)
TIOCGPTLCK = IOR("T", 0x39, ctypes.c_int)
TIOCGEXCL = IOR("T", 0x40, ctypes.c_int)

NCCS = 19  # the kernel's, not glibc's 32


class termios(ctypes.Structure):
    """The kernel's ``struct termios`` (what TCGETS fills): 36 bytes."""

    _fields_ = [
        ("c_iflag", ctypes.c_uint),
        ("c_oflag", ctypes.c_uint),
        ("c_cflag", ctypes.c_uint),
        ("c_lflag", ctypes.c_uint),
        ("c_line", ctypes.c_ubyte),
        ("c_cc", ctypes.c_ubyte * NCCS),
    ]


class winsize(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ushort) for n in ("ws_row", "ws_col", "ws_xpixel", "ws_ypixel")]

