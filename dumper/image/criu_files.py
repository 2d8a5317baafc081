"""CRIU's regular-file records: which file a VMA of a CRIU image set maps.

A CRIU ``vma_entry`` names its file by id (``shmid``); the file's name,
size and mode are in ``files.img`` (CRIU 4.x: ``file_entry`` messages, the
REG ones carrying a ``reg_file_entry``) or, in CRIU 3.x sets,
``reg-files.img`` (bare ``reg_file_entry`` messages). Both are read with
CRIU's field numbers (images/fdinfo.proto, images/regfile.proto, v4.2);
dumper's own ``export`` writes ``files.img``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptImage, ImageError
from . import format as fmt

__all__ = ["CriuFile", "load_criu_files", "FILES_NAME", "REG_FILES_NAME"]

FILES_NAME = "files.img"
REG_FILES_NAME = "reg-files.img"
_FD_TYPE_REG = 1
# Most regular-file records a set may hold: bounds the work of a hostile one.
MAX_FILES = 1 << 20


@dataclass(frozen=True, slots=True)
class CriuFile:
    """One regular file of a CRIU set: ``id``, ``name`` (as recorded, may
    be relative or hostile: print with care), ``size`` in bytes and
    ``mode`` (st_mode) when recorded, else None."""

    id: int
    name: str
    size: int | None
    mode: int | None


def _classes():
    """``(file_entry, reg_file_entry)`` message classes: the generated
    ones when proto/ has them, else a private minimal pool with CRIU's field
    numbers (only what is read here)."""
    try:
        from .pb import fdinfo_pb2, regfile_pb2  # type: ignore[attr-defined]

        return fdinfo_pb2.file_entry, regfile_pb2.reg_file_entry
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="dumper_image_criu_files.proto", syntax="proto2")
    reg = fdp.message_type.add(name="reg_file_entry")
    for name, number, typ in (("id", 1, F.TYPE_UINT32), ("flags", 2, F.TYPE_UINT32), ("pos", 3, F.TYPE_UINT64),
                              ("name", 6, F.TYPE_STRING), ("size", 8, F.TYPE_UINT64), ("mode", 10, F.TYPE_UINT32)):
        reg.field.add(name=name, number=number, type=typ, label=F.LABEL_OPTIONAL)
    fe = fdp.message_type.add(name="file_entry")
    fe.field.add(name="type", number=1, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    fe.field.add(name="id", number=2, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    fe.field.add(name="reg", number=3, type=F.TYPE_MESSAGE, type_name=".reg_file_entry", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("file_entry")), get(pool.FindMessageTypeByName("reg_file_entry"))


_CLASSES = None


def _parse(cls, payload: bytes, path, off: int):
    from google.protobuf.message import DecodeError

    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as err:
        raise CorruptImage(path, off, f"bad {cls.DESCRIPTOR.name}: {err}") from err
    return msg


def _reg(reg, path, off: int) -> CriuFile:
    name = reg.name
    if isinstance(name, bytes):
        raise CorruptImage(path, off, "reg_file_entry.name is not valid UTF-8")
    return CriuFile(reg.id, name, reg.size if reg.HasField("size") else None,
                    reg.mode if reg.HasField("mode") else None)


def load_criu_files(image_dir) -> dict[int, CriuFile]:
    """The regular files of a CRIU set by id, from ``files.img`` (preferred)
    or ``reg-files.img`` in ``image_dir`` (an
    :class:`~dumper.image.mapped.ImageDir`); {} when it has neither.
    ImageError (file and offset) for a damaged one."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _classes()
    file_entry, reg_file_entry = _CLASSES
    out: dict[int, CriuFile] = {}
    for name, magic in ((FILES_NAME, "FILES"), (REG_FILES_NAME, "REG_FILES")):
        if not image_dir.exists(name):
            continue
        path = image_dir.path / name
        with image_dir.open(name) as f:
            got = fmt.read_magic(f, path)
            if got != magic:
                raise ImageError(path, 4, f"expected a {magic} image, found {got}")
            for off, payload in fmt.iter_entries(f, path, 8):
                if len(out) >= MAX_FILES:
                    raise CorruptImage(path, off, f"more than {MAX_FILES} file records")
                if magic == "FILES":
                    fe = _parse(file_entry, payload, path, off)
                    if fe.type != _FD_TYPE_REG or not fe.HasField("reg"):
                        continue
                    cf = _reg(fe.reg, path, off)
                    out.setdefault(fe.id, CriuFile(fe.id, cf.name, cf.size, cf.mode))
                else:
                    cf = _reg(_parse(reg_file_entry, payload, path, off), path, off)
                    out.setdefault(cf.id, cf)
        return out
    return out
