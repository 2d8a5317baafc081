"""ELF core file structures, as Linux writes them (x86_64).

Mirrors of include/uapi/linux/elf.h (Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr,
Elf64_Nhdr, the ``NT_*`` note types), include/uapi/linux/elfcore.h and
include/linux/elfcore.h (``struct elf_prstatus``, ``struct elf_prpsinfo``,
``struct elf_siginfo``), arch/x86/include/asm/elf.h (``ELF_NGREG``: the
general registers in ``struct user_regs_struct`` order) and
arch/x86/include/uapi/asm/elf.h (``struct x86_xfeat_component``, 6.12).
The coredump_filter bits (``MMF_DUMP_*``) are the kernel's
include/linux/mm_types.h ones, documented in core(5).

The layout fs/binfmt_elf.c ``elf_core_dump`` writes: ELF header, program
headers (PT_NOTE first, then one PT_LOAD per VMA), the notes, padding to
the page size, then each PT_LOAD's bytes. Everything is little endian,
native x86_64 alignment (ctypes.Structure).
"""

from __future__ import annotations

import ctypes

__all__ = [
    "ELFMAG", "EI_NIDENT", "ELFCLASS64", "ELFDATA2LSB", "EV_CURRENT", "ELFOSABI_NONE",
    "ET_CORE", "EM_X86_64", "PT_LOAD", "PT_NOTE", "PF_X", "PF_W", "PF_R", "PN_XNUM", "SHT_NULL",
    "NT_PRSTATUS", "NT_PRFPREG", "NT_PRPSINFO", "NT_AUXV", "NT_SIGINFO", "NT_FILE",
    "NT_X86_XSTATE", "NT_X86_SHSTK", "NT_X86_XSAVE_LAYOUT", "NN_CORE", "NN_LINUX",
    "Elf64_Ehdr", "Elf64_Phdr", "Elf64_Shdr", "Elf64_Nhdr",
    "ELF_NGREG", "ELF_PRARGSZ", "TASK_COMM_LEN", "SIGINFO_SIZE",
    "elf_siginfo", "kernel_old_timeval", "elf_prstatus_common", "elf_prstatus", "elf_prpsinfo",
    "x86_xfeat_component", "MAX_FILE_NOTE_SIZE",
    "MMF_DUMP_ANON_PRIVATE", "MMF_DUMP_ANON_SHARED", "MMF_DUMP_MAPPED_PRIVATE", "MMF_DUMP_MAPPED_SHARED",
    "MMF_DUMP_ELF_HEADERS", "MMF_DUMP_HUGETLB_PRIVATE", "MMF_DUMP_HUGETLB_SHARED",
    "MMF_DUMP_DAX_PRIVATE", "MMF_DUMP_DAX_SHARED", "MMF_DUMP_FILTER_DEFAULT",
]

# e_ident
ELFMAG = b"\x7fELF"
EI_NIDENT = 16
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0

ET_CORE = 4
EM_X86_64 = 62

PT_LOAD = 1
PT_NOTE = 4
PF_X = 0x1
PF_W = 0x2
PF_R = 0x4
# More than PN_XNUM - 1 program headers: e_phnum = PN_XNUM and the real count
# in section header 0's sh_info (include/uapi/linux/elf.h, 2.6.34).
PN_XNUM = 0xFFFF
SHT_NULL = 0

# Note types (include/uapi/linux/elf.h)
NT_PRSTATUS = 1
NT_PRFPREG = 2  # NT_FPREGSET in glibc's elf.h: the 512-byte fxsave area
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749  # "SIGI", 3.7
NT_FILE = 0x46494C45  # "FILE", 3.7
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204  # 6.6: the shadow stack pointer
NT_X86_XSAVE_LAYOUT = 0x205  # 6.12: x86_xfeat_component records
# Note owners (NN_* in 6.15's elf.h; "CORE" and "LINUX" before that)
NN_CORE = b"CORE"
NN_LINUX = b"LINUX"

# NT_FILE bigger than this is left out (fs/binfmt_elf.c fill_files_note).
MAX_FILE_NOTE_SIZE = 4 * 1024 * 1024


class Elf64_Ehdr(ctypes.Structure):
    _fields_ = [
        ("e_ident", ctypes.c_ubyte * EI_NIDENT),
        ("e_type", ctypes.c_uint16),
        ("e_machine", ctypes.c_uint16),
        ("e_version", ctypes.c_uint32),
        ("e_entry", ctypes.c_uint64),
        ("e_phoff", ctypes.c_uint64),
        ("e_shoff", ctypes.c_uint64),
        ("e_flags", ctypes.c_uint32),
        ("e_ehsize", ctypes.c_uint16),
        ("e_phentsize", ctypes.c_uint16),
        ("e_phnum", ctypes.c_uint16),
        ("e_shentsize", ctypes.c_uint16),
        ("e_shnum", ctypes.c_uint16),
        ("e_shstrndx", ctypes.c_uint16),
    ]


class Elf64_Phdr(ctypes.Structure):
    _fields_ = [
        ("p_type", ctypes.c_uint32),
        ("p_flags", ctypes.c_uint32),
        ("p_offset", ctypes.c_uint64),
        ("p_vaddr", ctypes.c_uint64),
        ("p_paddr", ctypes.c_uint64),
        ("p_filesz", ctypes.c_uint64),
        ("p_memsz", ctypes.c_uint64),
        ("p_align", ctypes.c_uint64),
    ]


class Elf64_Shdr(ctypes.Structure):
    _fields_ = [
        ("sh_name", ctypes.c_uint32),
        ("sh_type", ctypes.c_uint32),
        ("sh_flags", ctypes.c_uint64),
        ("sh_addr", ctypes.c_uint64),
        ("sh_offset", ctypes.c_uint64),
        ("sh_size", ctypes.c_uint64),
        ("sh_link", ctypes.c_uint32),
        ("sh_info", ctypes.c_uint32),
        ("sh_addralign", ctypes.c_uint64),
        ("sh_entsize", ctypes.c_uint64),
    ]


class Elf64_Nhdr(ctypes.Structure):
    """A note header; the name (NUL included in n_namesz) and the
    descriptor follow, each padded to 4 bytes."""

    _fields_ = [
        ("n_namesz", ctypes.c_uint32),
        ("n_descsz", ctypes.c_uint32),
        ("n_type", ctypes.c_uint32),
    ]


# arch/x86/include/asm/elf.h: elf_gregset_t is user_regs_struct's 27 words.
ELF_NGREG = 27
ELF_PRARGSZ = 80  # include/linux/elfcore.h
TASK_COMM_LEN = 16
SIGINFO_SIZE = 128  # sizeof(siginfo_t), the NT_SIGINFO descriptor


class elf_siginfo(ctypes.Structure):
    _fields_ = [("si_signo", ctypes.c_int), ("si_code", ctypes.c_int), ("si_errno", ctypes.c_int)]


class kernel_old_timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class elf_prstatus_common(ctypes.Structure):
    _fields_ = [
        ("pr_info", elf_siginfo),  # the signal that caused the dump
        ("pr_cursig", ctypes.c_short),
        ("pr_sigpend", ctypes.c_ulong),  # the thread's private pending set
        ("pr_sighold", ctypes.c_ulong),  # blocked signals
        ("pr_pid", ctypes.c_int),
        ("pr_ppid", ctypes.c_int),
        ("pr_pgrp", ctypes.c_int),
        ("pr_sid", ctypes.c_int),
        ("pr_utime", kernel_old_timeval),
        ("pr_stime", kernel_old_timeval),
        ("pr_cutime", kernel_old_timeval),
        ("pr_cstime", kernel_old_timeval),
    ]


class elf_prstatus(ctypes.Structure):
    """NT_PRSTATUS: one per thread (336 bytes on x86_64)."""

    _fields_ = [
        ("common", elf_prstatus_common),
        ("pr_reg", ctypes.c_ulonglong * ELF_NGREG),  # user_regs_struct order
        ("pr_fpvalid", ctypes.c_int),
    ]


class elf_prpsinfo(ctypes.Structure):
    """NT_PRPSINFO: once per process (136 bytes on x86_64)."""

    _fields_ = [
        ("pr_state", ctypes.c_char),
        ("pr_sname", ctypes.c_char),
        ("pr_zomb", ctypes.c_char),
        ("pr_nice", ctypes.c_byte),
        ("pr_flag", ctypes.c_ulong),
        ("pr_uid", ctypes.c_uint),  # __kernel_uid_t
        ("pr_gid", ctypes.c_uint),
        ("pr_pid", ctypes.c_int),
        ("pr_ppid", ctypes.c_int),
        ("pr_pgrp", ctypes.c_int),
        ("pr_sid", ctypes.c_int),
        ("pr_fname", ctypes.c_char * TASK_COMM_LEN),
        ("pr_psargs", ctypes.c_char * ELF_PRARGSZ),
    ]


class x86_xfeat_component(ctypes.Structure):
    """One record of NT_X86_XSAVE_LAYOUT: where an xsave component lives in
    the NT_X86_XSTATE buffer (offsets differ between CPUs)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


assert ctypes.sizeof(Elf64_Ehdr) == 64 and ctypes.sizeof(Elf64_Phdr) == 56 and ctypes.sizeof(Elf64_Shdr) == 64
assert ctypes.sizeof(elf_prstatus) == 336 and ctypes.sizeof(elf_prpsinfo) == 136

# /proc/PID/coredump_filter bits (core(5); MMF_DUMP_* in include/linux/mm_types.h)
MMF_DUMP_ANON_PRIVATE = 1 << 0
MMF_DUMP_ANON_SHARED = 1 << 1
MMF_DUMP_MAPPED_PRIVATE = 1 << 2
MMF_DUMP_MAPPED_SHARED = 1 << 3
MMF_DUMP_ELF_HEADERS = 1 << 4  # 2.6.24
MMF_DUMP_HUGETLB_PRIVATE = 1 << 5  # 2.6.28
MMF_DUMP_HUGETLB_SHARED = 1 << 6
MMF_DUMP_DAX_PRIVATE = 1 << 7  # 4.6
MMF_DUMP_DAX_SHARED = 1 << 8
# The kernel's default (CONFIG_CORE_DUMP_DEFAULT_ELF_HEADERS=y, as Debian's).
MMF_DUMP_FILTER_DEFAULT = 0x33
