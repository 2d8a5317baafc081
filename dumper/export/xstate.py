"""The FPU notes of an ELF core, rebuilt from CRIU's ``user_x86_fpregs_entry``.

:mod:`dumper.dump.core` splits the ``PTRACE_GETREGSET NT_X86_XSTATE``
buffer into CRIU's fields (the fxsave fields, then one repeated field per
xsave component); this module puts them back where the kernel's regset
puts them (arch/x86/kernel/fpu/xstate.c ``__copy_xstate_to_uabi_buf``):

* ``NT_PRFPREG``: the 512-byte fxsave area (``struct user_i387_struct``),
  ``sw_reserved`` zeroed as ``xfpregs_get`` leaves it;
* ``NT_X86_XSTATE``: the fxsave area with the user xfeatures (XCR0) at byte
  464 (``USER_XSTATE_XCR0_WORD``: gdb reads it there to pick its register
  description), the xsave header (``xstate_bv``; ``xcomp_bv`` 0: the
  standard, uncompacted format) at 512, each component at the offset CPUID
  leaf 0xD gives, the buffer as long as the kernel's
  (``fpu_user_cfg.max_size``);
* ``NT_X86_XSAVE_LAYOUT``: one ``struct x86_xfeat_component`` per
  extended user feature (6.12+).

The layout is this machine's (CPUID and ``arch_prctl(ARCH_GET_XCOMP_SUPP)``,
5.16+; the kernel writes the same values into its own cores). A component
the checkpoint holds but this CPU lacks cannot be placed: it is dropped,
its ``xstate_bv`` bit cleared, and :func:`xstate_note` says so.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass

from ..dump.core import XSAVE_FIELDS  # CRIU's user_x86_xsave_entry field and word size per component
from ..errors import CorruptImage
from ..kernel import x86_64
from ..kernel.cpuid import cpuid
from ..kernel.elf import x86_xfeat_component
from ..kernel.libc import libc

__all__ = ["XstateLayout", "xstate_layout", "fxsave_bytes", "xstate_bytes", "xsave_layout_desc"]

ARCH_GET_XCOMP_SUPP = 0x1021  # arch/x86/include/uapi/asm/prctl.h, 5.16
_XCR0_OFFSET = 464  # in sw_reserved: where the regset puts the user xfeatures
_FXSAVE_SIZE = 512
_HEADER_SIZE = 64
_FIRST_EXTENDED = 2  # XFEATURE_YMM; 0 and 1 (x87, SSE) live in the fxsave area
_X87_SSE = 0b11

@dataclass(frozen=True, slots=True)
class XstateLayout:
    """``xfeatures``: the user features the kernel enables (XCR0 as the
    regset reports it); ``components``: feature bit -> (offset, size) in
    bytes for every extended feature of ``xfeatures``; ``size``: bytes of
    an NT_X86_XSTATE buffer."""

    xfeatures: int
    components: dict[int, tuple[int, int]]
    size: int


def _xcomp_supp() -> int | None:
    val = ctypes.c_uint64()
    ret = libc.syscall(ctypes.c_long(x86_64.NR_arch_prctl), ctypes.c_long(ARCH_GET_XCOMP_SUPP),
                       ctypes.byref(val))
    return val.value if ret == 0 else None


@functools.cache
def xstate_layout() -> XstateLayout:
    """This machine's xsave layout (see the module docstring). Without
    XSAVE (CPUID.1:ECX.OSXSAVE clear) ``xfeatures`` is 0 and there is no
    NT_X86_XSTATE note."""
    _, _, ecx1, _ = cpuid(1)
    if not ecx1 & (1 << 27):
        return XstateLayout(0, {}, 0)
    feats = _xcomp_supp()
    if feats is None:  # before 5.16: what CPUID offers, less MPX (dropped by 5.6)
        eax, _, _, edx = cpuid(0xD, 0)
        feats = (eax | edx << 32) & ~(1 << x86_64.XFEATURE_BNDREGS | 1 << x86_64.XFEATURE_BNDCSR)
    comps = {}
    for bit in range(_FIRST_EXTENDED, 64):
        if feats >> bit & 1:
            size, offset, _, _ = cpuid(0xD, bit)
            if size:
                comps[bit] = (offset, size)
    end = max([_FXSAVE_SIZE + _HEADER_SIZE] + [o + s for o, s in comps.values()])
    return XstateLayout(feats, comps, end)


def _check_len(values, n: int, what: str, path, offset) -> None:
    if len(values) != n:
        raise CorruptImage(path, offset, f"{what} holds {len(values)} words, expected {n}")


def fxsave_bytes(fp, path=None, offset=None) -> bytearray:
    """The 512-byte fxsave area of ``user_x86_fpregs_entry`` ``fp``.
    CorruptImage (naming ``path``/``offset``) when st_space or xmm_space
    does not hold 32/64 words."""
    _check_len(fp.st_space, 32, "fpregs.st_space", path, offset)
    _check_len(fp.xmm_space, 64, "fpregs.xmm_space", path, offset)
    fx = x86_64.user_fpregs_struct()
    fx.cwd, fx.swd, fx.ftw, fx.fop = fp.cwd & 0xFFFF, fp.swd & 0xFFFF, fp.twd & 0xFFFF, fp.fop & 0xFFFF
    fx.rip, fx.rdp, fx.mxcsr, fx.mxcr_mask = fp.rip, fp.rdp, fp.mxcsr, fp.mxcsr_mask
    fx.st_space[:] = list(fp.st_space)
    fx.xmm_space[:] = list(fp.xmm_space)
    return bytearray(bytes(fx))


def xstate_bytes(fp, layout: XstateLayout, path=None, offset=None) -> tuple[bytes, list[str]]:
    """The NT_X86_XSTATE buffer of ``fp`` (which must have ``xsave``) for
    ``layout``, and the names of components dropped because this machine
    has no slot for them. CorruptImage when a component holds more words
    than its slot."""
    buf = fxsave_bytes(fp, path, offset) + bytearray(layout.size - _FXSAVE_SIZE)
    struct.pack_into("<Q", buf, _XCR0_OFFSET, layout.xfeatures)
    xs = fp.xsave
    bv = xs.xstate_bv & _X87_SSE
    dropped = []
    for bit, (name, word) in XSAVE_FIELDS.items():
        words = getattr(xs, name)
        if not words:
            continue
        if bit not in layout.components:
            dropped.append(name)
            continue
        off, size = layout.components[bit]
        if len(words) * word > size:
            raise CorruptImage(path, offset, f"fpregs.xsave.{name} holds {len(words) * word} bytes, "
                               f"its xsave slot {size}")
        struct.pack_into(f"<{len(words)}{'I' if word == 4 else 'Q'}", buf, off, *words)
        bv |= xs.xstate_bv & (1 << bit)
    struct.pack_into("<QQ", buf, _FXSAVE_SIZE, bv, 0)  # xstate_bv, xcomp_bv (standard format)
    return bytes(buf), dropped


def xsave_layout_desc(layout: XstateLayout) -> bytes:
    """NT_X86_XSAVE_LAYOUT's descriptor: the extended components, ascending."""
    out = bytearray()
    for bit in sorted(layout.components):
        off, size = layout.components[bit]
        out += bytes(x86_xfeat_component(type=bit, size=size, offset=off, flags=0))
    return bytes(out)
