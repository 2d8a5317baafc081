"""``struct iovec`` and process_vm_readv(2) (include/uapi/linux/uio.h,
mm/process_vm_access.c; Linux >= 3.2).

process_vm_readv copies straight from the other process's pages into ours
(one copy; /proc/PID/mem bounces every page through a kernel buffer), and
takes up to UIO_MAXIOV scattered remote ranges per call. It needs
PTRACE_MODE_ATTACH_REALCREDS. It does not force access: a range without
PROT_READ, a guard marker or a hole ends the transfer early — the result is
then a short count, possibly in the middle of an iovec element (the kernel
pins and copies page by page).
"""

from __future__ import annotations

import ctypes

import numpy as np

from .libc import check, libc

__all__ = ["UIO_MAXIOV", "IOVEC_DTYPE", "process_vm_readv"]

UIO_MAXIOV = 1024  # include/uapi/linux/uio.h

# struct iovec { void *iov_base; size_t iov_len; } on 64-bit.
IOVEC_DTYPE = np.dtype([("iov_base", "<u8"), ("iov_len", "<u8")])

libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                                  ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
libc.process_vm_readv.restype = ctypes.c_ssize_t


def process_vm_readv(pid: int, local: np.ndarray, remote: np.ndarray) -> int:
    """Copy the ``remote`` ranges of ``pid`` into the ``local`` ranges.

    Both are C-contiguous IOVEC_DTYPE arrays of at most UIO_MAXIOV rows
    (checked). Returns the bytes copied, which is less than asked when the
    transfer stopped at a range it could not read. Raises ``OSError`` when
    nothing could be copied (EFAULT, ENOMEM, ESRCH, EPERM).
    """
    if len(local) > UIO_MAXIOV or len(remote) > UIO_MAXIOV:
        raise ValueError(f"at most {UIO_MAXIOV} iovecs per call")
    if local.dtype != IOVEC_DTYPE or remote.dtype != IOVEC_DTYPE:
        raise TypeError("iovec arrays must have IOVEC_DTYPE")
    local = np.ascontiguousarray(local)
    remote = np.ascontiguousarray(remote)
    return check(libc.process_vm_readv(pid, local.ctypes.data, len(local), remote.ctypes.data, len(remote), 0),
                 f"process_vm_readv({pid})")
