"""/proc/PID/maps and smaps parsing: the bulk parsers against the
line-by-line one, on real processes and on text that does not line up."""

from __future__ import annotations

import pytest

from dumper.proc.maps import _parse_lines, _smaps_columns, maps_text, parse_maps


def _fields(vmas):
    return [(v.start, v.end, v.perms, v.pgoff, v.dev_major, v.dev_minor, v.inode, v.path, v.vmflags,
             v.rss, v.swap, v.anonymous) for v in vmas]


@pytest.mark.parametrize("name", ["smaps", "maps"])
def test_real_process_parses_as_line_by_line(spawn_target, name):
    t = spawn_target("dense,sparse,zero,file,shared,alt")  # file-backed, shared, names, 100s of VMAs
    data = open(f"/proc/{t.pid}/{name}", "rb").read()
    vmas = parse_maps(data)
    assert len(vmas) > 100
    assert _fields(vmas) == _fields(_parse_lines(data))
    if name == "smaps":
        # the maps text inside smaps is maps itself, byte for byte (the target is idle)
        assert maps_text(data) == open(f"/proc/{t.pid}/maps", "rb").read()
        assert _smaps_columns(data) is not None  # the fast path was the one taken
        assert any(v.vmflags for v in vmas) and any(v.rss for v in vmas)


BLOCK = (b"%x-%x rw-p 00000000 00:00 0 %s\nSize: 8 kB\nRss: %d kB\nAnonymous: %d kB\nSwap: %d kB\n"
         b"VmFlags: rd wr mr mw me ac \n")


def test_blocks_that_do_not_line_up_use_the_line_parser():
    """A block with an extra field line (not one kernel's fixed list): the
    sliced columns would shift, so the parser must notice and fall back."""
    a = BLOCK % (0x1000, 0x3000, b"", 8, 8, 0)
    b = BLOCK % (0x5000, 0x6000, b"[anon:x y]", 4, 4, 0)
    odd = b.replace(b"Swap: 0 kB\n", b"Swap: 0 kB\nLocked: 0 kB\n")
    c = BLOCK % (0x9000, 0xa000, b"", 0, 0, 4)
    for data in (a + b + c, a + odd + c):
        vmas = parse_maps(data)
        assert _fields(vmas) == _fields(_parse_lines(data))
        assert [(v.path, v.rss, v.swap) for v in vmas] == [("", 8192, 0), ("[anon:x y]", 4096, 0), ("", 0, 4096)]
    assert _smaps_columns(a + b + c) is not None
    assert _smaps_columns(a + odd + c) is None
